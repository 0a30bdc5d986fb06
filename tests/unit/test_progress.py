"""The progress display: counters kept up to date event by event, a status line redrawn a few
times a second at most and as wide as the terminal it is drawn on, whole lines from tasks."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import sys
import termios
import threading
import time

import pytest

from flowspec.progress import Counts, Progress, _AboveStatus
from flowspec.runner import TaskRecord


def record(name: str, children: list[str] | None = None) -> TaskRecord:
    rec = TaskRecord(name)
    rec.children = children
    return rec


def test_failed_and_cancelled_are_counted_apart() -> None:
    counts = Counts(4)
    counts.task("a", "Running")
    counts.task("a", "Success")
    for i, state in enumerate(["Success", "Failed", "Running"]):
        counts.child("b", i, state, 4)
    counts.finished("b", ["Success", "Failed", "Cancelled", "Cancelled"])  # the run was cancelled
    counts.task("c", "TriggerFailed")
    counts.task("d", "Cancelled")
    assert counts.line(61.0) == "4/4 tasks, 4/4 mapped runs done | 2 failed, 3 cancelled | 01:01"


def test_running_tasks_and_mapped_progress_are_shown() -> None:
    counts = Counts(2)
    counts.task("a", "Running")
    counts.task("a", "Retrying")
    counts.child("b", 0, "Running", 2)
    counts.child("b", 0, "Success", 2)
    assert counts.line(5.0) == "0/2 tasks, 1/2 mapped runs done | running: a, b 1/2 | 00:05"
    counts.child("b", 1, "Failed", 2)
    counts.finished("b", ["Success", "Failed"])
    counts.finished("b", ["Success", "Failed"])  # told twice (cancelled as a whole too): counted once
    assert counts.line(5.0) == "1/2 tasks, 2/2 mapped runs done | running: a | 1 failed | 00:05"


def test_many_running_tasks_are_counted_not_listed() -> None:
    counts = Counts(1000)
    for i in range(1000):
        counts.task(f"t{i}", "Running")
    line = counts.line(0)
    assert line.startswith("0/1000 tasks done | running: t0, t1, t2, t3, t4, t5, t6, t7, 992 more |")


def _feed(n: int) -> float:
    """Seconds for the plain (not live) display to take every state change of an n-child map."""
    progress = Progress(io.StringIO(), live=False)
    rec = record("inc", ["Pending"] * n)
    progress.records = {"inc": rec, "sum": record("sum")}
    progress.counts.tasks = 2
    t = time.perf_counter()
    for i in range(n):
        progress.task_state("inc", i, "Running", 1, None)
        progress.task_state("inc", i, "Success", 1, None)
        rec.children[i] = "Success"
    progress.task_finished(rec)
    elapsed = time.perf_counter() - t
    assert progress.status().startswith(f"1/2 tasks, {n}/{n} mapped runs done |")
    return elapsed


def test_a_state_change_costs_the_same_however_large_the_map() -> None:
    # The display used to recount every child on every change: 4x the time for twice the children.
    _feed(2_000)  # warm up
    small, large = min(_feed(20_000) for _ in range(2)), min(_feed(40_000) for _ in range(2))
    assert large < 3 * small, (small, large)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_is_redrawn_a_few_times_a_second_whatever_happens(flow, monkeypatch) -> None:
    stream = Terminal()
    monkeypatch.setattr(sys, "stdout", stream)  # the tasks print to the terminal too
    progress = Progress(stream, live=True)  # every 0.25 s
    started = time.monotonic()
    with progress.attached():
        result = flow.run("""
            version: 1
            name: many
            parameters: {xs: {type: array}}
            tasks:
              inc: {run: "steps.py:inc", map: {x: "${{ params.xs }}"}}
              total: {run: "steps.py:total", with: {values: "${{ tasks.inc }}"}}
        """, "import time\ndef inc(x):\n    time.sleep(0.00002)\n    print('line', x)\n    return x + 1\n"
             "def total(values):\n    return sum(values)\n", params={"xs": list(range(20_000))},
            observers=[progress])
    elapsed = time.monotonic() - started
    assert result.state == "Success" and result.tasks["total"].result == sum(range(1, 20_001))
    # 40 000 state changes and 20 000 printed lines: the line was drawn on a timer, not for each.
    assert 1 <= progress.draws <= elapsed * 5 + 3, (progress.draws, elapsed)
    assert stream.getvalue().count("line ") == 20_000
    assert progress.status().startswith("2/2 tasks, 20000/20000 mapped runs done |")


def test_the_line_fits_the_terminal_it_is_drawn_on_not_stdout(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
        terminal = os.fdopen(follower, "w", closefd=False)
        with open(tmp_path / "stdout.txt", "w") as redirected:
            monkeypatch.setattr(sys, "stdout", redirected)
            monkeypatch.setattr(sys, "__stdout__", redirected)
            progress = Progress(terminal, live=True)
            progress.records = {f"task_with_a_long_name_{i}": record(f"t{i}") for i in range(20)}
            progress.counts.tasks = 20
            for i in range(20):
                progress.counts.task(f"task_with_a_long_name_{i}", "Running")
            assert progress.width() == 39
            progress.draw(force=True)
            terminal.flush()
        drawn = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    line = drawn.split("\x1b[K")[-1]
    assert line.startswith("flowspec: 0/20 tasks done | running:") and len(line) == 39


def test_concurrent_prints_come_out_as_whole_lines() -> None:
    """print() writes its text, then its newline: another thread's line used to land between."""
    stream = Terminal()
    progress = Progress(stream, live=True)
    above = _AboveStatus(stream, progress)
    a_wrote, b_done = threading.Event(), threading.Event()

    def task_a() -> None:
        above.write("from a")
        a_wrote.set()
        b_done.wait(5)
        above.write("\n")

    def task_b() -> None:
        a_wrote.wait(5)
        above.write("from b")
        above.write("\n")
        b_done.set()

    threads = [threading.Thread(target=task_a), threading.Thread(target=task_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stream.getvalue() == "from b\nfrom a\n"
    above.write("no newline yet")
    above.close_lines()  # the end of the run: an unfinished line is still shown, on its own line
    assert stream.getvalue().endswith("from a\nno newline yet\n")


@pytest.mark.parametrize("verbose", [False, True])
def test_plain_lines_report_each_task_and_each_finished_map(flow, verbose) -> None:
    stream = io.StringIO()
    progress = Progress(stream, live=False, verbose=verbose)
    flow.run("""
        version: 1
        name: plain
        tasks:
          inc: {run: "steps.py:inc", map: {x: [1, 2, 3]}}
          none: {run: "steps.py:inc", map: {x: []}}
          total: {run: "steps.py:total", with: {values: "${{ tasks.inc }}"}}
    """, "def inc(x):\n    return x + 1\ndef total(values):\n    return sum(values)\n", observers=[progress])
    written = stream.getvalue().splitlines()
    assert all(re.match(r"^\d\d:\d\d:\d\d\.\d{3} INFO    progress \| ", line) for line in written), written
    lines = [line.split(" | ", 1)[1] for line in written]
    if verbose:
        assert len(lines) == 3 * 2 + 2 and lines[-1].startswith("total Success | 3/3 tasks, 3/3 mapped runs done")
    else:
        assert lines == ["inc: 3/3 mapped runs done | 1/3 tasks, 3/3 mapped runs done | 00:00",
                         "none: 0/0 mapped runs done | 2/3 tasks, 3/3 mapped runs done | 00:00",
                         "total Success | 3/3 tasks, 3/3 mapped runs done | 00:00"]
