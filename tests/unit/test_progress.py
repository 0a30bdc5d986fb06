"""The progress line: what it counts, from the runner's records and the states announced since."""
from __future__ import annotations

from flowspec.progress import Counts
from flowspec.runner import TaskRecord


def record(name: str, state: str, children: list[str] | None = None) -> TaskRecord:
    rec = TaskRecord(name)
    rec.state, rec.children = state, children
    return rec


def test_failed_and_cancelled_are_counted_apart() -> None:
    records = {
        "a": record("a", "Success"),
        "b": record("b", "Running", ["Success", "Failed", "Running", "Pending"]),
        "c": record("c", "Pending"),
        "d": record("d", "Pending"),
    }
    seen = {("b", 2): "Cancelled", ("b", 3): "Cancelled", ("c", None): "TriggerFailed", ("d", None): "Cancelled"}
    line = Counts(records, seen).line(61.0)
    assert line == "4/4 tasks, 4/4 mapped runs done | 2 failed, 3 cancelled | 01:01"


def test_running_tasks_and_mapped_progress_are_shown() -> None:
    records = {"a": record("a", "Running"), "b": record("b", "Running", ["Success", "Pending"])}
    line = Counts(records, {("a", None): "Retrying"}).line(5.0)
    assert line == "0/2 tasks, 1/2 mapped runs done | running: a, b 1/2 | 00:05"
