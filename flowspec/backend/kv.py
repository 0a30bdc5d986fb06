"""The KV store: JSON values by key, for state that outlives a run (watermarks).

Each write is one statement (an upsert or a delete): writers of distinct keys never lose each
other's writes, and for one key the last writer wins. There is no read-modify-write: a counter
kept here by many task runs at once may lose increments (documented in docs/secrets-and-kv.md).
"""
from __future__ import annotations

import json
import time
from typing import Any

from flowspec.backend.core import Store

_MISSING = object()


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a KV key must be a non-empty string, got {key!r}")
    return key


class KVStore(Store):
    """`kv_set`, `kv_get`, `kv_list`, `kv_delete`: values are stored as JSON text."""

    def kv_set(self, key: str, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        with self._transaction() as tx:
            tx.run("INSERT INTO kv (key, value, updated) VALUES (?, ?, ?)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                   _check_key(key), text, time.time())

    def kv_get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of `key`; `default` when it is missing, else KeyError."""
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT value FROM kv WHERE key = ?", _check_key(key))
        if row is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return json.loads(row[0])

    def kv_items(self, prefix: str = "") -> list[tuple[str, Any, float]]:
        """(key, value, updated) of every key starting with `prefix`, by key."""
        with self._transaction(write=False) as tx:
            rows = tx.all("SELECT key, value, updated FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
                          len(prefix), prefix)
        return [(key, json.loads(value), updated) for key, value, updated in rows]

    def kv_delete(self, key: str) -> bool:
        """Remove `key`; False if it was not there."""
        with self._transaction() as tx:
            return tx.run("DELETE FROM kv WHERE key = ?", _check_key(key)) > 0
