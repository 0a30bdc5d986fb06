"""A task's print(): what a task writes to sys.stdout or sys.stderr becomes log lines of its run.

Each line is a log line of the task run that wrote it (`say_hello[2] | text`), INFO for stdout
and WARNING for stderr, so it reaches the terminal of `flowspec run`, the run's logs in the
backend (`flowspec runs logs`) and an agent's run alike, on every executor: the process that
runs the tasks (the runner's, a pool process, a Dask worker) installs the capture and its log
lines travel as the task's other log lines do.

Cheap per task: a proxy replaces each stream once per run (or once per pool process or
worker), not per task. At each write it looks up the writing thread's task context (a
ContextVar): text written outside a task (the runner itself, hooks, threads a task started
without its context) goes to the stream as before, and so does a line whose level the task
logger would drop (`flowspec run -q` drops INFO: a print is then shown as it is). A line is
logged once its newline comes (print() writes its text and its newline in two calls), when the
same thread starts another task's line, or when the task attempt ends.

Once a secret is resolved in the process (flowspec.run_refs), `mask_streams` puts a
MaskedOutput beneath: what is written outside a task (a hook's print) is masked too, a whole
line at a time.

Only Python-level writes are seen: output of subprocesses or C code that writes to the file
descriptors directly goes to the process's stdout and stderr as before.
"""
from __future__ import annotations

import logging
import sys
import threading

from flowspec import context as ctxmod
from flowspec import masking

MAX_LINE = 1 << 16  # a line longer than this (no newline: a progress bar) is logged in pieces

# thread ident -> [proxy, task context, text]: a line started and not ended yet. Read without a
# lock by `end_of_attempt` on every attempt's end: an empty dict is the common case.
partial: dict = {}
_lock = threading.Lock()
_installed = 0  # runs in this process that have the capture installed (runs may nest)
_busy = threading.local()  # set while a captured line is logged: what logging writes passes


class TaskOutput:
    """Stands in for sys.stdout or sys.stderr (`stream`); see the module docstring."""

    def __init__(self, stream, level: int) -> None:
        self.stream = stream
        self.level = level
        self.logger = logging.getLogger(ctxmod.TASK_LOGGER)

    def write(self, text: str) -> int:
        ctx = ctxmod._current.get()
        if (ctx is None or ctx.task_name is None or getattr(_busy, "on", False)
                or not self.logger.isEnabledFor(self.level)):
            return self.stream.write(text)
        if not text:
            return 0
        me = threading.get_ident()
        held = partial.get(me)
        if held is not None and (held[0] is not self or held[1] is not ctx):
            _emit(*partial.pop(me))  # another stream's or task's line: it ends here
            held = None
        pending = text if held is None else held[2] + text
        cut = pending.rfind("\n") + 1
        rest = pending[cut:]
        if len(rest) >= MAX_LINE:
            cut, rest = len(pending), ""
        if rest:
            partial[me] = [self, ctx, rest]
        elif held is not None:
            del partial[me]
        if cut:
            for line in pending[:cut].splitlines():
                _log(self.level, ctx, line)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # encoding, fileno, isatty, buffer...: the stream's own
        return getattr(self.stream, name)


def _log(level: int, ctx, line: str) -> None:
    line = line.rstrip("\r")
    if not line.strip():
        return  # a blank line is layout on a terminal, not a log line
    _busy.on = True
    try:
        ctx.logger.log(level, line)
    finally:
        _busy.on = False


def _emit(proxy: TaskOutput, ctx, text: str) -> None:
    _log(proxy.level, ctx, text)


def end_of_attempt() -> None:
    """The line this thread's task left unfinished (print(..., end="")) is logged now."""
    held = partial.pop(threading.get_ident(), None)
    if held is not None:
        _emit(*held)


def install() -> None:
    """Capture task output in this process until `uninstall` (calls nest)."""
    global _installed
    with _lock:
        _installed += 1
        if _installed == 1:
            if not isinstance(sys.stdout, TaskOutput) and sys.stdout is not None:
                sys.stdout = TaskOutput(sys.stdout, logging.INFO)
            if not isinstance(sys.stderr, TaskOutput) and sys.stderr is not None:
                sys.stderr = TaskOutput(sys.stderr, logging.WARNING)


def uninstall() -> None:
    """Log every unfinished line, and give the streams back (unless replaced meanwhile)."""
    global _installed
    with _lock:
        _installed -= 1
        if _installed:
            return
        for key in list(partial):
            held = partial.pop(key, None)
            if held is not None:
                _emit(*held)
        if isinstance(sys.stdout, TaskOutput):
            sys.stdout = sys.stdout.stream
        if isinstance(sys.stderr, TaskOutput):
            sys.stderr = sys.stderr.stream


class MaskedOutput:
    """Stands in for sys.stdout or sys.stderr once secrets are resolved in this process: what is
    written outside a task (a hook's print, the runner's own output) goes out a whole line at a
    time with every resolved secret masked, so that a secret printed in pieces is masked too.
    A task's lines are log lines, masked where they are written."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.held: dict[int, str] = {}  # thread ident -> the start of a line not ended yet

    def write(self, text: str) -> int:
        me = threading.get_ident()
        pending = self.held.pop(me, "") + text if self.held else text
        cut = pending.rfind("\n") + 1
        if len(pending) - cut >= MAX_LINE:
            cut = len(pending)
        if cut < len(pending):
            self.held[me] = pending[cut:]
        if cut:
            self.stream.write(masking.mask_text(pending[:cut], ()))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Write every unfinished line as it is, masked (print(..., end="", flush=True); the
        interpreter flushes the standard streams at exit)."""
        rests = [self.held.pop(k, "") for k in list(self.held)]
        for rest in rests:
            if rest:
                self.stream.write(masking.mask_text(rest, ()))
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def mask_streams() -> None:
    """From now on, mask resolved secrets in what this process writes to stdout and stderr
    (beneath a task output capture, when one is installed)."""
    with _lock:
        for name in ("stdout", "stderr"):
            holder = getattr(sys, name)
            if isinstance(holder, TaskOutput):
                if not isinstance(holder.stream, MaskedOutput):
                    holder.stream = MaskedOutput(holder.stream)
            elif holder is not None and not isinstance(holder, MaskedOutput):
                setattr(sys, name, MaskedOutput(holder))


def original(stream):
    """The stream a capture stands in for (a log handler must write there, not to the capture)."""
    return stream.stream if isinstance(stream, TaskOutput) else stream
