"""Concurrency limits: a cap per label on the active runs carrying it."""
from __future__ import annotations

import json
from dataclasses import dataclass

from flowspec.backend.core import Store, Tx, _marks, normalize_labels
from flowspec.backend.runs import ACTIVE_STATES


@dataclass(frozen=True)
class ConcurrencyLimit:
    """A per-label cap on active flow runs, with the runs holding its slots now."""

    label: str
    limit: int
    in_use: int
    holders: tuple[str, ...]


class LimitStore(Store):
    """Limits by label, and which active runs hold their slots."""

    def set_limit(self, label: str, limit: int) -> None:
        """Cap the active runs carrying `label` at `limit` (0 stops new ones)."""
        normalize_labels([label])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"a concurrency limit must be an integer >= 0, got {limit!r}")
        with self._transaction() as tx:
            tx.run(
                "INSERT INTO concurrency_limits (label, slots) VALUES (?, ?)"
                " ON CONFLICT (label) DO UPDATE SET slots = excluded.slots",
                label, limit,
            )

    def delete_limit(self, label: str) -> bool:
        """Remove a label's limit; False if it had none."""
        with self._transaction() as tx:
            return tx.run("DELETE FROM concurrency_limits WHERE label = ?", label) > 0

    def list_limits(self) -> list[ConcurrencyLimit]:
        with self._transaction(write=False) as tx:
            limits, holders = self._slots(tx)
        return [
            ConcurrencyLimit(label, limits[label], len(holders[label]), tuple(holders[label]))
            for label in sorted(limits)
        ]

    def _slots(self, tx: Tx) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Limits by label, and the active runs holding each limited label's slots."""
        limits = {label: slots for label, slots in tx.all("SELECT label, slots FROM concurrency_limits")}
        holders: dict[str, list[str]] = {label: [] for label in limits}
        rows = tx.all(
            f"SELECT id, labels FROM flow_runs WHERE state IN ({_marks(ACTIVE_STATES)}) ORDER BY seq",
            *ACTIVE_STATES,
        )
        for run_id, labels in rows:
            for label in json.loads(labels):
                if label in holders:
                    holders[label].append(run_id)
        return limits, holders
