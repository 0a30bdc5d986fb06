"""Progress of a flow run for `flowspec run`: a runner observer.

On a terminal it keeps one status line at the bottom of stderr (tasks and mapped runs done out of
all, what is running, failures, elapsed time), redrawn in place a few times a second from
counters that each state change updates (never from a scan of the tasks), as wide as the
terminal it is drawn on. Whatever else reaches the
terminal goes above it: log lines (flowspec.logs clears the status line, prints, redraws) and
the tasks' own print() output (standard streams are wrapped for the run). Not on a terminal
(a file, a pipe, CI), it writes plain log lines instead, without any escape code.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time

from flowspec import logs
from flowspec.masking import mask_text
from flowspec.runner import FAILED_STATES, FINAL_STATES, LOOPING, RETRYING, RUNNING, TASK_STATES

CLEAR = "\r\x1b[K"  # back to column 0, erase to the end of the line
CANCELLED = "Cancelled"


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


_CODE = {state: i for i, state in enumerate(TASK_STATES)}
# What a state adds to the counts: (done, failed, cancelled), by state code.
_WEIGHT = tuple((int(s in FINAL_STATES), int(s in FAILED_STATES), int(s == CANCELLED)) for s in TASK_STATES)
_ACTIVE = (RUNNING, RETRYING, LOOPING)
MAX_RUNNING_SHOWN = 8  # names on the status line; the rest are counted
DRAWS_PER_S, DRAW_BURST = 3.0, 2.0  # how often the live line may be drawn (see Progress)
SETTLE_S = 0.02  # after a task starts or ends, the line is drawn this much later
PLAIN_FLUSH_S = 0.1  # plain lines reach the stream at most this late (one write per batch)


class _Mapped:
    """A mapped task's children as the counts know them: a state code per child."""

    __slots__ = ("codes", "done")

    def __init__(self, n: int) -> None:
        self.codes = bytearray(n)  # 0 is Pending
        self.done = 0


class Counts:
    """Where a run stands, kept up to date one state change at a time: every update costs the
    same whatever the size of the run (a child of a million-child map included), and the line
    is made from the counters, never from a scan of the tasks."""

    def __init__(self, tasks: int = 0) -> None:
        self.tasks = tasks
        self.tasks_done = self.runs = self.runs_done = self.failed = self.cancelled = 0
        self.active: dict = {}  # task name → None (unmapped) or its _Mapped, while it runs; in start order
        self.mapped: dict[str, _Mapped] = {}
        self._state: dict[str, int] = {}  # unmapped task → state code
        self._finished: set[str] = set()  # mapped tasks counted done

    def _apply(self, old: int, new: int) -> int:
        d0, f0, c0 = _WEIGHT[old]
        d1, f1, c1 = _WEIGHT[new]
        self.failed += f1 - f0
        self.cancelled += c1 - c0
        return d1 - d0

    def task(self, name: str, state: str) -> None:
        """An unmapped task (or a mapped one not started) changed state."""
        new = _CODE[state]
        old = self._state.get(name, 0)
        if old == new:  # told again (the runner's word that it is final): nothing moves
            return
        self.tasks_done += self._apply(old, new)
        self._state[name] = new
        if state in _ACTIVE:
            self.active.setdefault(name, None)
        else:
            self.active.pop(name, None)

    def child(self, name: str, index: int, state: str, size: int) -> None:
        """Child `index` of mapped task `name` (of `size` children) changed state."""
        m = self.mapped.get(name)
        if m is None:
            m = self.mapped[name] = _Mapped(size)
            self.runs += size
            if name not in self._finished:
                self.active[name] = m
        new = _CODE[state]
        step = self._apply(m.codes[index], new)
        m.codes[index] = new
        m.done += step
        self.runs_done += step

    def finished(self, name: str, children: list[str]) -> None:
        """A mapped task reached its final state: its children as the runner has them settle
        the counts (cancelled all at once, say); once per task, so linear in all."""
        m = self.mapped.get(name)
        if m is None:
            m = self.mapped[name] = _Mapped(len(children))
            self.runs += len(children)
        for i, state in enumerate(children):
            new = _CODE[state]
            if m.codes[i] != new:
                step = self._apply(m.codes[i], new)
                m.codes[i] = new
                m.done += step
                self.runs_done += step
        if name not in self._finished:
            self._finished.add(name)
            self.tasks_done += 1
        self.active.pop(name, None)

    def line(self, elapsed: float) -> str:
        minutes, seconds = divmod(int(elapsed), 60)
        if not (self.runs or self.active or self.failed or self.cancelled):  # the common case, at once
            return f"{self.tasks_done}/{self.tasks} tasks done | {minutes:02d}:{seconds:02d}"
        parts = [f"{self.tasks_done}/{self.tasks} tasks"]
        if self.runs:
            parts.append(f"{self.runs_done}/{self.runs} mapped runs")
        text = ", ".join(parts) + " done"
        if self.active:
            shown = []
            for name, m in self.active.items():
                if len(shown) == MAX_RUNNING_SHOWN:
                    shown.append(f"{len(self.active) - MAX_RUNNING_SHOWN} more")
                    break
                shown.append(name if m is None else f"{name} {m.done}/{len(m.codes)}")
            text += " | running: " + ", ".join(shown)
        bad = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.cancelled, "cancelled")) if n]
        if bad:
            text += " | " + ", ".join(bad)
        return text + f" | {minutes:02d}:{seconds:02d}"


class Progress:
    """The runner observer behind `flowspec run`'s progress display (see the module docstring).

    State changes only update counters. On a terminal the line is drawn by a ticker every
    `interval` seconds and shortly after a task starts or ends, and again after other output;
    all of these draw from one budget of DRAWS_PER_S on average (a burst of DRAW_BURST after a
    quiet spell, so that a task that starts is shown at once): never more than DRAW_BURST +
    DRAWS_PER_S draws in any second, whatever the size of the run."""

    def __init__(self, stream, live: bool, verbose: bool = False, interval: float = 0.25) -> None:
        self.stream, self.live, self.verbose, self.interval = stream, live, verbose, interval
        self.lock = threading.RLock()  # one writer at a time on the terminal
        self.records: dict = {}
        self.counts = Counts()
        self.start = time.time()
        self.shown = False  # is the status line on screen
        self.held = 0  # writes in the middle of a line: no redraw until it ends
        self.draws = 0
        self._tokens, self._filled = DRAW_BURST, time.monotonic()  # the drawing budget (a token bucket)
        self._stop = threading.Event()
        # A task started or ended: worth drawing soon. A plain flag the ticker looks at, not an
        # Event: setting an Event wakes the ticker's thread at every task of a 10 000-task chain.
        self._changed = False
        self._second, self._clock = -1, ""  # the time of day of plain lines, made once a second
        # Plain lines waiting to be written, and when they last were: a write to a pipe per
        # finished task costs as much as running the task; a batch every PLAIN_FLUSH_S does not.
        self._pending: list[str] = []
        self._written = 0.0

    # -- runner observer -------------------------------------------------------------------------
    def flow_state(self, result) -> None:
        with self.lock:
            if not self.records:
                self.records = result.tasks
                self.counts.tasks = len(result.tasks)
            if result.start:
                self.start = result.start
            if result.state in FINAL_STATES:  # the run is over: no plain line waits any longer
                self.clear()
        self.draw(force=True)

    def task_state(self, task: str, index, state: str, attempt: int, message) -> None:
        if index is not None and (self.live or not self.verbose):
            # The common case, once or twice per mapped child: only counters move (Counts.child, inlined).
            with self.lock:
                counts = self.counts
                m = counts.mapped.get(task)
                if m is not None:
                    new = _CODE[state]
                    d0, f0, c0 = _WEIGHT[m.codes[index]]
                    d1, f1, c1 = _WEIGHT[new]
                    m.codes[index] = new
                    m.done += d1 - d0
                    counts.runs_done += d1 - d0
                    counts.failed += f1 - f0
                    counts.cancelled += c1 - c0
                    return
                self._count(task, index, state)  # the map's first child: the task starts
            if self.live:
                self._changed = True
            return
        with self.lock:
            self._count(task, index, state)
        if self.live:
            self._changed = True  # the ticker shows it shortly, within the drawing budget
        else:
            self._plain(task, index, state, attempt, message)

    def _count(self, task: str, index, state: str) -> None:
        rec = self.records.get(task)
        children = rec.children if rec is not None else None
        if index is not None and children is not None:
            self.counts.child(task, index, state, len(children))
        elif children is not None and state in FINAL_STATES:  # a mapped task cancelled as a whole
            self.counts.finished(task, children)
        else:
            self.counts.task(task, state)

    def task_finished(self, record) -> None:
        """The runner's word that a task is final; a mapped task is counted done here."""
        with self.lock:
            if record.children is None:  # e.g. Failed before it ran: its map lists did not fit
                return self.counts.task(record.name, record.state)
            self.counts.finished(record.name, record.children)
        if not self.live and not self.verbose:
            n = len(record.children)
            self._line(f"{record.name}: {n}/{n} mapped runs done")

    # -- the status line ---------------------------------------------------------------------------
    def status(self) -> str:
        with self.lock:
            return self.counts.line(time.time() - self.start)

    def width(self) -> int:
        """Columns of the terminal the line is drawn on (not stdout's: it may be redirected)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        if columns <= 0:
            columns = shutil.get_terminal_size((80, 24)).columns
        return max(columns - 1, 10)

    def draw(self, force: bool = False) -> None:
        """Draw the status line if the budget allows (or `force`, at the start and the end);
        output that cleared it in between leaves it off screen until the next draw."""
        if not self.live or not self.records:
            return
        with self.lock:
            if self.held:
                return
            now = time.monotonic()
            self._tokens = min(DRAW_BURST, self._tokens + (now - self._filled) * DRAWS_PER_S)
            self._filled = now
            if not force:  # the first and the last draw of a run do not count
                if self._tokens < 1:
                    return
                self._tokens -= 1
            self.draws += 1
            self.stream.write(CLEAR + mask_text("flowspec: " + self.status(), ())[:self.width()])  # no wider than the screen
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        """Off the screen before other output: the status line on a terminal, or else the plain
        lines still waiting, so that they stay in order with what follows them."""
        with self.lock:
            if self._pending:
                self._write_pending()
            if self.shown:
                self.stream.write(CLEAR)
                self.stream.flush()
                self.shown = False

    @contextlib.contextmanager
    def attached(self):
        """For the run: on a terminal, redraw every `interval` and keep other output above the
        line; otherwise write the waiting plain lines every PLAIN_FLUSH_S (and before any log line)."""
        thread = threading.Thread(target=self._tick if self.live else self._flush_plain, name="flowspec-progress",
                                  daemon=True)
        saved = sys.stdout, sys.stderr
        if self.live:
            sys.stdout, sys.stderr = _AboveStatus(sys.stdout, self), _AboveStatus(sys.stderr, self)
        logs.set_status_line(self)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            logs.set_status_line(None)
            for stream in (sys.stdout, sys.stderr):  # a masked stream (flowspec.task_output) may hold a line
                stream.flush()
            if self.live:
                wrapped, sys.stdout, sys.stderr = (sys.stdout, sys.stderr), *saved
                for stream in wrapped:
                    if isinstance(stream, _AboveStatus):
                        stream.close_lines()
            self.clear()

    def _tick(self) -> None:
        ticked = time.monotonic()
        while not self._stop.wait(SETTLE_S):
            # Changes come in bursts (a task ends, the next starts): drawn SETTLE_S later, where
            # they lead; otherwise every `interval` for the clock.
            now = time.monotonic()
            if self._changed or now - ticked >= self.interval:
                self._changed, ticked = False, now
                self.draw()

    # -- plain lines -------------------------------------------------------------------------------
    def _flush_plain(self) -> None:
        while not self._stop.wait(PLAIN_FLUSH_S):
            if self._pending:
                self.clear()

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        self.stream.write(mask_text("".join(lines), ()))  # resolved secrets read MASK
        self.stream.flush()
        self._written = time.monotonic()

    def _plain(self, task: str, index, state: str, attempt: int, message) -> None:
        if index is None and state in FINAL_STATES or self.verbose:
            label = task if index is None else f"{task}[{self._child_name(task, index)}]"
            detail = f" (attempt {attempt})" if state in (RUNNING, RETRYING) else ""
            detail += f": {message}" if message and state != RUNNING else ""
            self._line(f"{label} {state}{detail}")

    def _child_name(self, task: str, index: int):
        """A child's `run_name` when its task has one, else its index."""
        rec = self.records.get(task)
        names = rec.run_names if rec is not None else None
        return names[index] if isinstance(names, list) and names[index] is not None else index

    def _line(self, text: str) -> None:
        """A plain progress line, in the log lines' layout (`12:03:04.567 INFO    progress | ...`),
        `text` followed by the status. Written to the stream itself, not through `logging`: a
        line per finished task of a 10 000-task flow costs a third as much, and the backend
        records the task states themselves, not these lines about them."""
        now = time.time()
        second = int(now)
        with self.lock:
            if second != self._second:
                self._second, self._clock = second, time.strftime("%H:%M:%S", time.localtime(second))
            self._pending.append(f"{self._clock}.{int((now - second) * 1000):03d} INFO    progress | {text}"
                                 f" | {self.counts.line(now - self.start)}\n")
            if time.monotonic() - self._written >= PLAIN_FLUSH_S:
                self._write_pending()


class _AboveStatus:
    """A standard stream for the run: text written to it appears above the status line, a
    whole line at a time. print() writes its text and its newline in two calls; with tasks on
    several threads, each thread's unfinished line waits here for its newline (or a flush), so
    that two tasks' lines are never glued together."""

    def __init__(self, stream, progress: Progress) -> None:
        self._stream, self._progress = stream, progress
        self._partial: dict[int, str] = {}  # thread id → the start of a line not ended yet

    def write(self, text: str) -> int:
        if not text:
            return 0
        me = threading.get_ident()
        with self._progress.lock:
            pending = self._partial.pop(me, "") + text
            cut = pending.rfind("\n") + 1
            if cut < len(pending):
                self._partial[me] = pending[cut:]
            if cut:
                self._emit(pending[:cut])
        return len(text)

    def _emit(self, text: str) -> None:
        progress = self._progress
        progress.clear()
        self._stream.write(mask_text(text, ()))  # whole lines: a secret printed in pieces reads MASK too
        self._stream.flush()
        progress.held = 0 if text.endswith("\n") else 1
        progress.draw()

    def flush(self) -> None:
        """Write this thread's unfinished line as it is (print(..., end="", flush=True))."""
        with self._progress.lock:
            rest = self._partial.pop(threading.get_ident(), None)
            if rest:
                self._emit(rest)
        self._stream.flush()

    def close_lines(self) -> None:
        """At the end of the run: every thread's unfinished line, each on a line of its own."""
        with self._progress.lock:
            rests, self._partial = list(self._partial.values()), {}
            for rest in rests:
                self._emit(rest + "\n")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
