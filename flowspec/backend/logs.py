"""Log lines of flow runs."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flowspec.backend.core import Store


@dataclass(frozen=True)
class LogLine:
    """One log line of a flow run; `id` grows, so a follower asks for lines after the last id."""

    id: int
    run_id: str
    time: float
    level: str
    task: str | None
    message: str


_LOG_COLS = "id, run_id, time, level, task, message"


class LogStore(Store):
    """Log lines: appended in batches, read after the last id a follower saw."""

    run_tables = ("logs",)  # rows of one flow run (see RunStore.run_tables)

    def add_logs(self, run_id: str, lines: Iterable[tuple[float, str, str | None, str]]) -> int:
        """Append `(time, level, task, message)` lines in one transaction; returns how many."""
        rows = [(run_id, *line) for line in lines]
        if rows:
            with self._transaction() as tx:
                tx.many("INSERT INTO logs (run_id, time, level, task, message) VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def logs(self, run_id: str, after_id: int = 0, limit: int | None = None) -> list[LogLine]:
        """A run's log lines with id > `after_id`, oldest first (poll with the last id seen)."""
        sql = f"SELECT {_LOG_COLS} FROM logs WHERE run_id = ? AND id > ? ORDER BY id"
        params: list[Any] = [run_id, after_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._transaction(write=False) as tx:
            return [LogLine(*row) for row in tx.all(sql, *params)]
