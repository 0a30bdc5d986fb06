"""Progress of a flow run for `flowspec run`: a runner observer.

On a terminal it keeps one status line at the bottom of stderr (tasks and mapped runs done out of
all, what is running, failures, elapsed time), redrawn in place. Whatever else reaches the
terminal goes above it: log lines (flowspec.logs clears the status line, prints, redraws) and
the tasks' own print() output (standard streams are wrapped for the run). Not on a terminal
(a file, a pipe, CI), it writes plain log lines instead, without any escape code.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time

from flowspec import logs
from flowspec.runner import FAILED_STATES, FINAL_STATES, RETRYING, RUNNING

CLEAR = "\r\x1b[K"  # back to column 0, erase to the end of the line
CANCELLED = "Cancelled"
log = logging.getLogger("flowspec.progress")


@contextlib.contextmanager
def reporter(verbosity: int = 0, stream=None):
    """Observers for a run: none when quiet (-1); live on a terminal; plain lines otherwise."""
    if verbosity < 0:
        yield ()
        return
    stream = stream or sys.stderr
    progress = Progress(stream, live=is_terminal(stream), verbose=verbosity > 0)
    with progress.attached():
        yield (progress,)


def is_terminal(stream) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


class Counts:
    """Where a run stands, from the runner's records and the newest states it announced."""

    def __init__(self, records: dict, seen: dict) -> None:
        self.tasks = len(records)
        self.tasks_done = self.runs = self.runs_done = self.failed = self.cancelled = 0
        self.running: list[str] = []
        for name, rec in records.items():
            self._add(name, rec, seen)

    def _add(self, name: str, rec, seen: dict) -> None:
        if rec.children is None:
            state = seen.get((name, None), rec.state)
            self.tasks_done += state in FINAL_STATES
            self.failed += state in FAILED_STATES
            self.cancelled += state == CANCELLED
            if state in (RUNNING, RETRYING):
                self.running.append(name)
            return
        states = [seen.get((name, i), s) for i, s in enumerate(rec.children)]
        done = sum(s in FINAL_STATES for s in states)
        self.runs += len(states)
        self.runs_done += done
        self.failed += sum(s in FAILED_STATES for s in states)
        self.cancelled += states.count(CANCELLED)
        self.tasks_done += done == len(states)
        if done < len(states):
            self.running.append(f"{name} {done}/{len(states)}")

    def line(self, elapsed: float) -> str:
        parts = [f"{self.tasks_done}/{self.tasks} tasks"]
        if self.runs:
            parts.append(f"{self.runs_done}/{self.runs} mapped runs")
        text = ", ".join(parts) + " done"
        if self.running:
            text += " | running: " + ", ".join(self.running)
        bad = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.cancelled, "cancelled")) if n]
        if bad:
            text += " | " + ", ".join(bad)
        minutes, seconds = divmod(int(elapsed), 60)
        return text + f" | {minutes:02d}:{seconds:02d}"


class Progress:
    """The runner observer behind `flowspec run`'s progress display (see the module docstring)."""

    def __init__(self, stream, live: bool, verbose: bool = False, interval: float = 0.5) -> None:
        self.stream, self.live, self.verbose, self.interval = stream, live, verbose, interval
        self.lock = threading.RLock()  # one writer at a time on the terminal
        self.records: dict = {}
        self.seen: dict = {}
        self.start = time.time()
        self.shown = False  # is the status line on screen
        self.held = 0  # writes in the middle of a line: no redraw until it ends
        self._stop = threading.Event()

    # -- runner observer -------------------------------------------------------------------------
    def flow_state(self, result) -> None:
        self.records = result.tasks
        if result.start:
            self.start = result.start
        self.draw()

    def task_state(self, task: str, index, state: str, attempt: int, message) -> None:
        with self.lock:
            self.seen[(task, index)] = state
        if self.live:
            self.draw()
        else:
            self._plain(task, index, state, attempt, message)

    # -- the status line ---------------------------------------------------------------------------
    def status(self) -> str:
        with self.lock:
            return Counts(self.records, self.seen).line(time.time() - self.start)

    def draw(self) -> None:
        if not self.live or not self.records:
            return
        with self.lock:
            if self.held:
                return
            width = max(shutil.get_terminal_size((80, 24)).columns - 1, 10)
            self.stream.write(CLEAR + ("flowspec: " + self.status())[:width])  # never wider than the screen: no wrap
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        with self.lock:
            if self.shown:
                self.stream.write(CLEAR)
                self.stream.flush()
                self.shown = False

    @contextlib.contextmanager
    def attached(self):
        """For the run: redraw every `interval` (elapsed time), keep other output above the line."""
        if not self.live:
            yield self
            return
        ticker = threading.Thread(target=self._tick, name="flowspec-progress", daemon=True)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _AboveStatus(sys.stdout, self), _AboveStatus(sys.stderr, self)
        logs.set_status_line(self)
        ticker.start()
        try:
            yield self
        finally:
            self._stop.set()
            ticker.join()
            logs.set_status_line(None)
            sys.stdout, sys.stderr = saved
            self.clear()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.draw()

    # -- plain lines -------------------------------------------------------------------------------
    def _plain(self, task: str, index, state: str, attempt: int, message) -> None:
        final = state in FINAL_STATES
        label = task if index is None else f"{task}[{index}]"
        if index is None and final or self.verbose:
            detail = f" (attempt {attempt})" if state in (RUNNING, RETRYING) else ""
            detail += f": {message}" if message and state != RUNNING else ""
            log.info("%s %s%s | %s", label, state, detail, self.status(), extra={"task": "progress"})
        elif final and self._all_children_final(task):
            rec = self.records[task]
            log.info("%s: %d/%d mapped runs done | %s", task, len(rec.children), len(rec.children),
                     self.status(), extra={"task": "progress"})

    def _all_children_final(self, task: str) -> bool:
        rec = self.records.get(task)
        if rec is None or rec.children is None:
            return False
        return all(self.seen.get((task, i), s) in FINAL_STATES for i, s in enumerate(rec.children))


class _AboveStatus:
    """A standard stream for the run: text written to it appears above the status line."""

    def __init__(self, stream, progress: Progress) -> None:
        self._stream, self._progress = stream, progress

    def write(self, text: str) -> int:
        progress = self._progress
        with progress.lock:
            progress.clear()
            n = self._stream.write(text)
            self._stream.flush()
            if text:
                progress.held = 0 if text.endswith("\n") else 1
            progress.draw()
        return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
