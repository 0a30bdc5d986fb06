"""Keep a flow run in the backend: its task states, log lines and a heartbeat, written in batches.

`Recorder` is a FlowRunner observer. The runner's threads only append to a buffer; a background
thread writes the buffer every FLUSH_INTERVAL_S and heartbeats the run, so recording never
waits on the database in the middle of a task. An agent's child process and a local
`flowspec run FILE` both use it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from flowspec.errors import FlowspecError, SpecError

FLUSH_INTERVAL_S = 0.2
HEARTBEAT_INTERVAL_S = 1.0
EXIT_CODES = {"Success": 0, "Failed": 1, "Cancelled": 130}
_ACTIVE = {"Submitted", "Running", "Cancelling"}


class _Capture(logging.Handler):
    """A logging handler that hands each record to the recorder's buffer."""

    def __init__(self, sink: Callable[[tuple], None]) -> None:
        super().__init__(logging.DEBUG)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self._sink((record.created, record.levelname, getattr(record, "task", None), text))


class Recorder:
    """Writes a flow run's task states and flowspec log lines to the backend.

    Each tick of its thread it calls `guard` (if given), writes what was buffered and, every
    `heartbeat_s`, heartbeats the run; when the heartbeat finds the run Cancelling it calls
    `on_cancel` once. A backend that fails for a while only delays the writes: the buffer is
    kept and written on a later tick.
    """

    def __init__(self, backend, run_id: str, *, heartbeat_s: float = HEARTBEAT_INTERVAL_S,
                 on_cancel: Callable[[], None] | None = None,
                 guard: Callable[[], None] | None = None) -> None:
        self.backend, self.run_id = backend, run_id
        self.heartbeat_s, self.on_cancel, self.guard = heartbeat_s, on_cancel, guard
        self._states: list[tuple] = []
        self._logs: list[tuple] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one flush at a time keeps rows in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowspec-recorder", daemon=True)
        self._handler = _Capture(self._add_log)
        self._last_beat = time.monotonic()
        self._cancel_seen = False
        self._warned = False

    # -- observer interface ------------------------------------------------------------------
    def task_state(self, task: str, index: int | None, state: str, attempt: int, message: str | None) -> None:
        with self._lock:
            self._states.append((task, index, state, attempt, time.time(), message))

    def flow_state(self, result: Any) -> None:
        """The owner sets the run's final state (with the exit code) through `finish`."""

    def _add_log(self, line: tuple) -> None:
        with self._lock:
            self._logs.append(line)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Recorder:
        logging.getLogger("flowspec").addHandler(self._handler)
        self._thread.start()
        return self

    def finish(self, state: str, message: str | None, exit_code: int | None = None) -> bool:
        """Stop the thread, write everything buffered, then set the run's final state."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        logging.getLogger("flowspec").removeHandler(self._handler)
        try:
            self.flush()
        except FlowspecError as exc:  # the final state matters more: still try to write it
            self._warn("its last log lines and task states were not recorded", exc)
        try:
            return self.backend.set_run_state(self.run_id, state, message, expected_from=_ACTIVE,
                                              exit_code=exit_code)
        except FlowspecError as exc:
            self._warn("its final state was not recorded", exc)
            return False

    def _warn(self, what: str, exc: FlowspecError) -> None:
        print(f"flowspec: warning: run {self.run_id}: {what}: {exc.message}", file=sys.stderr)

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                states, logs, self._states, self._logs = self._states, self._logs, [], []
            try:
                self.backend.add_task_states(self.run_id, states)
                states = []
                self.backend.add_logs(self.run_id, logs)
            except FlowspecError:
                with self._lock:  # keep them for the next tick
                    self._states[:0], self._logs[:0] = states, logs
                raise

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self._tick()
            except FlowspecError as exc:
                if not self._warned:
                    self._warned = True
                    self._warn("recording is behind, retrying", exc)

    def _tick(self) -> None:
        if self.guard is not None:
            self.guard()
        self.flush()
        if time.monotonic() - self._last_beat >= self.heartbeat_s:
            self._last_beat = time.monotonic()
            state = self.backend.run_heartbeat(self.run_id)
            if state == "Cancelling" and not self._cancel_seen and self.on_cancel is not None:
                self._cancel_seen = True
                self.on_cancel()


def interrupt_self() -> None:
    """Interrupt this process's main thread as Ctrl-C would: the runner cancels the flow run."""
    os.kill(os.getpid(), signal.SIGINT)


def run_message(result: Any) -> str | None:
    """The run's own message, or which tasks did not succeed."""
    if result.message:
        return result.message
    bad = [f"{name} ({rec.state})" for name, rec in result.tasks.items()
           if rec.state in ("Failed", "TimedOut", "TriggerFailed", "Cancelled")]
    return f"tasks that did not succeed: {', '.join(bad)}" if bad else None


def outcome_of(exc: BaseException) -> tuple[str, str]:
    """The final state and message of a run that ended with `exc` instead of a result."""
    if isinstance(exc, KeyboardInterrupt):
        return "Cancelled", "interrupted"
    if isinstance(exc, SpecError):
        return "Failed", "\n".join(d.text() for d in exc.diagnostics)
    if isinstance(exc, FlowspecError):
        return "Failed", str(exc)
    return "Failed", f"internal error: {type(exc).__name__}: {exc}"


def record_local_run(spec, params: dict, execute: Callable[[tuple, str | None], Any]) -> Any:
    """Call `execute(observers, run_id)` with the run recorded in the backend.

    When the backend cannot be opened, one warning line is printed and the run goes on
    unrecorded. The run is created Running, without labels: it holds no concurrency slot.
    """
    from flowspec.backend import open_backend

    try:
        backend = open_backend()
    except (FlowspecError, OSError) as exc:
        print(f"flowspec: warning: this run is not recorded in the backend: {getattr(exc, 'message', exc)}",
              file=sys.stderr)
        return execute((), None)
    with backend:
        run = backend.create_flow_run(None, params, (), "Running", flow_name=spec.name)
        recorder = Recorder(backend, run.id, on_cancel=interrupt_self).start()
        try:
            result = execute((recorder,), run.id)
        except BaseException as exc:
            recorder.finish(*outcome_of(exc), exit_code=130 if isinstance(exc, KeyboardInterrupt) else 1)
            raise
        recorder.finish(result.state, run_message(result), EXIT_CODES.get(result.state, 1))
        return result
