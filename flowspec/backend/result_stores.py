"""The result stores the backend's runs keep results in, so that `flowspec results prune` and the
deletion of runs and flows find them (a store is named by its spec's `results`, which may be an
S3 bucket no command could guess).

A store is its settings as JSON (`ResultStore.describe()`: type, folder or bucket and prefix,
endpoint, region, profile; never credentials), noted by the recorder of each run that opens it.
The rows outlive the runs: a store keeps cache keys and targets of runs deleted since.
"""
from __future__ import annotations

import json
import time

from flowspec.backend.core import Store


class ResultStoreRegistry(Store):
    """`note_result_store`, `result_stores`."""

    def note_result_store(self, settings: dict) -> None:
        text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        now = time.time()
        with self._transaction() as tx:
            tx.run("INSERT INTO result_stores (store, first_used, last_used) VALUES (?, ?, ?)"
                   " ON CONFLICT (store) DO UPDATE SET last_used = excluded.last_used", text, now, now)

    def result_stores(self) -> list[dict]:
        """The settings of every store a run of this backend used, the most recently used first."""
        with self._transaction(write=False) as tx:
            rows = tx.all("SELECT store FROM result_stores ORDER BY last_used DESC")
        return [json.loads(row[0]) for row in rows]
