"""Keep a flow run in the backend: its task states, log lines and a heartbeat, written in batches.

`Recorder` is a FlowRunner observer. The runner's threads only append to a buffer; a background
thread writes the buffer every FLUSH_INTERVAL_S and heartbeats the run, so recording never
waits on the database in the middle of a task. An agent's child process and a local
`flowspec run FILE` both use it.

Values of parameters named like credentials (flowspec.masking) are masked in every log line and
message it writes: the backend never holds them in what it shows.

A backend that fails (a database restart, a file locked by another process) only delays the
writes: the buffer is kept, the heartbeat is retried first and the rest after it, with backoff
(flowspec.backend.outage); one log line says that recording is behind, one that it caught up.
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

from flowspec import context as ctxmod
from flowspec.backend.outage import MAX_DELAY_S, Outage
from flowspec.errors import BackendError, FlowspecError, SpecError
from flowspec.masking import runtime_values, scrub, scrub_batch

FLUSH_INTERVAL_S = 0.2
FLUSH_ROWS = 2000  # task states that wake the thread before its interval: a fast run writes as it goes
HEARTBEAT_INTERVAL_S = 1.0
LOCAL_OUTAGE_S = 10.0  # a local run waits this long, at its end, for a failing backend to record it
EXIT_CODES = {"Success": 0, "Failed": 1, "TimedOut": 1, "Cancelled": 130}
_ACTIVE = {"Submitted", "Running", "Cancelling"}


_RECORDING: set = set()  # the runs this process records now (a parent and its subflow children)


class _Capture(logging.Handler):
    """A logging handler that hands each record to the recorder's buffer: the records of its own
    run, not those of another run recorded in this process (subflow children run here, several at
    once on threads), which each go to their own run's log."""

    def __init__(self, sink: Callable[[tuple], None], run_id: str | None = None) -> None:
        super().__init__(logging.DEBUG)
        self._sink, self._run_id = sink, run_id

    def emit(self, record: logging.LogRecord) -> None:
        ctx = ctxmod._current.get()
        if ctx is not None and ctx.run_id != self._run_id and ctx.run_id in _RECORDING:
            return
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self._sink((record.created, record.levelname, getattr(record, "task", None), text))


class Recorder:
    """Writes a flow run's task states and flowspec log lines to the backend.

    Each tick of its thread it calls `guard` (if given), writes what was buffered and, every
    `heartbeat_s`, heartbeats the run; when the heartbeat finds the run Cancelling it calls
    `on_cancel` once. A backend that fails for a while only delays the writes: the buffer is
    kept and written on a later tick; `finish` retries within `outage_s`.

    With `create`, the run is created (by calling it) only when the runner starts it: a run
    that stops before anything ran (a task module that does not import) is not recorded.

    `secrets`: the texts to mask (flowspec.masking.secret_values); without it, those of the
    run's stored parameters, read when the recorder starts.
    """

    def __init__(self, backend, run_id: str, *, heartbeat_s: float = HEARTBEAT_INTERVAL_S,
                 on_cancel: Callable[[], None] | None = None,
                 guard: Callable[[], None] | None = None,
                 outage_s: float = LOCAL_OUTAGE_S,
                 create: Callable[[], object] | None = None,
                 secrets: tuple[str, ...] | None = None,
                 upstream: dict[str, list] | None = None) -> None:
        self.backend, self.run_id = backend, run_id
        self.upstream = upstream  # per task, the tasks it waits for: recorded with the run's tasks
        self.secrets = secrets
        self.heartbeat_s, self.on_cancel, self.guard = heartbeat_s, on_cancel, guard
        self.create = create
        self.outage = Outage(backend.url, outage_s, self._say)
        self._states: list[tuple] = []
        self._logs: list[tuple] = []
        self._tasks: list[str] = []
        self._names: list[tuple] = []  # (task, names) of tasks with a `run_name` (see add_run_names)
        self._stores: list[dict] = []  # result stores the run opened (see result_store)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one flush at a time keeps rows in order
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by `_stop` too: one wait serves both
        self._thread = threading.Thread(target=self._loop, name="flowspec-recorder", daemon=True)
        self._handler = _Capture(self._add_log, run_id)
        self._last_beat = time.monotonic()
        self._cancel_seen = False
        self._retry_at = 0.0
        self._gave_up = False

    # -- observer interface ------------------------------------------------------------------
    def task_state(self, task: str, index: int | None, state: str, attempt: int, message: str | None) -> None:
        with self._lock:
            self._states.append((task, index, state, attempt, time.time(), message))
            if len(self._states) == FLUSH_ROWS:
                self._wake.set()

    def task_finished(self, record: Any) -> None:
        """A task is final: the names of its task runs, when it has a `run_name`, are written."""
        names = record.run_names
        if names is None:
            return
        with self._lock:
            self._names.append((record.name, names))

    def result_store(self, settings: dict) -> None:
        """The run keeps results in this store: noted in the backend (`results prune` and the
        deletion of runs look there)."""
        with self._lock:
            self._stores.append(settings)

    def flow_state(self, result: Any) -> None:
        """Create the run when it starts (with `create`), and record its flow's tasks (written
        with the first batch); the owner sets its final state, with the exit code, through
        `finish`."""
        if result.state != "Running":
            return
        with self._lock:
            self._tasks = list(result.tasks)  # every task, so that a run cut short still lists them all
        if self.create is not None:
            create, self.create = self.create, None
            try:
                create()
            except FlowspecError as exc:
                self._warn("it is not recorded in the backend", exc)
                self.task_state = lambda *_: None  # nothing to record it in: buffer nothing
                return
            self.start()

    def _add_log(self, line: tuple) -> None:
        with self._lock:
            self._logs.append(line)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Recorder:
        if self.secrets is None:
            from flowspec.masking import secret_values

            run = self.outage.call(self.backend.get_run, self.run_id)
            self.secrets = secret_values(run.parameters) if run is not None else ()
        _RECORDING.add(self.run_id)
        logging.getLogger("flowspec").addHandler(self._handler)
        self._thread.start()
        return self

    def finish(self, state: str, message: str | None, exit_code: int | None = None,
               outputs: dict | None = None) -> bool:
        """Stop the thread, write everything buffered (and the run's `outputs`, when it has
        some), then set the run's final state."""
        if self._thread.ident is None:
            return False  # never started: nothing ran, nothing is recorded
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        logging.getLogger("flowspec").removeHandler(self._handler)
        _RECORDING.discard(self.run_id)
        try:
            self.outage.call(self.flush)
        except FlowspecError as exc:  # the final state matters more: still try to write it
            self._warn("its last log lines and task states were not recorded", exc)
        if outputs:
            if self.secrets or runtime_values():  # `runs show` and the UI show them: a secret reads MASK
                from flowspec.masking import mask_value

                outputs = mask_value(outputs, self.secrets or ())
            try:
                self.outage.call(self.backend.set_run_outputs, self.run_id, outputs)
            except FlowspecError as exc:
                self._warn("its outputs were not recorded", exc)
        try:
            return self.outage.call(self.backend.set_run_state, self.run_id, state, self._mask(message),
                                    expected_from=_ACTIVE, exit_code=exit_code)
        except FlowspecError as exc:
            self._warn("its final state was not recorded", exc)
            return False

    def _warn(self, what: str, exc: FlowspecError) -> None:
        print(f"flowspec: warning: run {self.run_id}: {what}: {exc.message}", file=sys.stderr)

    def _say(self, level: str, text: str) -> None:
        # Through the flowspec logger: shown where the run's output goes, and recorded with the
        # run's logs once the backend is back.
        logging.getLogger("flowspec.recorder").log(logging.getLevelName(level.upper()), "recording: %s", text)

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                states, logs, self._states, self._logs = self._states, self._logs, [], []
                tasks, self._tasks = self._tasks, []
                names, self._names = self._names, []
                stores, self._stores = self._stores, []
            if self.secrets or runtime_values():
                states, logs = self._masked(states, logs)
            try:
                if tasks:
                    self.backend.add_run_tasks(self.run_id, tasks, self.upstream)
                    tasks = []
                self.backend.add_task_states(self.run_id, states)
                states = []
                if names:
                    self.backend.add_run_names(self.run_id, names)
                    names = []
                self.backend.add_logs(self.run_id, logs)
                while stores:
                    self.backend.note_result_store(stores[0])
                    stores.pop(0)
            except FlowspecError:
                with self._lock:  # keep them for the next tick
                    self._states[:0], self._logs[:0], self._names[:0] = states, logs, names
                    self._stores[:0] = stores
                    self._tasks = self._tasks or tasks
                raise

    def _mask(self, text: str | None) -> str | None:
        from flowspec.masking import mask_text

        return mask_text(text, self.secrets or ())

    def _masked(self, states: list[tuple], logs: list[tuple]) -> tuple[list[tuple], list[tuple]]:
        """The buffered rows with credentials masked in task messages and log lines."""
        values = (*(self.secrets or ()), *runtime_values())  # once per batch, not per line
        if scrub_batch([row[5] for row in states if row[5]], values):
            states = [row if not row[5] else (*row[:5], scrub(row[5], values)) for row in states]
        if scrub_batch([line[3] for line in logs], values):
            logs = [(*line[:3], scrub(line[3], values)) for line in logs]
        return states, logs

    def _loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.guard is not None:
                self.guard()
            if time.monotonic() < self._retry_at:
                continue
            try:
                self._tick()
            except FlowspecError as exc:
                self._retry_at = time.monotonic() + self._retry_delay(exc)
            else:
                self.outage.ok()

    def _retry_delay(self, exc: FlowspecError) -> float:
        try:
            return self.outage.failed(exc)
        except BackendError as too_long:  # past the tolerance: whoever owns the run decides; keep trying
            if not self._gave_up:
                self._gave_up = True
                self._warn("recording has stopped", too_long)
            return MAX_DELAY_S

    def _tick(self) -> None:
        # After an outage the heartbeat goes first: the run must not look lost while its
        # buffered lines are written.
        if self.outage.ongoing or time.monotonic() - self._last_beat >= self.heartbeat_s:
            state = self.backend.run_heartbeat(self.run_id)
            self._last_beat = time.monotonic()
            if state == "Cancelling" and not self._cancel_seen and self.on_cancel is not None:
                self._cancel_seen = True
                self.on_cancel()
        self.flush()


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


def task_upstream(spec) -> dict[str, list]:
    """Per task of `spec`, the tasks it waits for: [[upstream, kind], ...] (flowspec.graph.edges)."""
    from flowspec.graph import edges

    out: dict[str, list] = {name: [] for name in spec.tasks}
    for up, down, kind in edges(spec):
        out[down].append([up, kind])
    return out


def outcome_of(exc: BaseException) -> tuple[str, str]:
    """The final state and message of a run that ended with `exc` instead of a result."""
    if isinstance(exc, KeyboardInterrupt):
        return "Cancelled", "interrupted"
    if isinstance(exc, SpecError):
        return "Failed", "\n".join(d.text() for d in exc.diagnostics)
    if isinstance(exc, FlowspecError):
        return "Failed", str(exc)
    return "Failed", f"internal error: {type(exc).__name__}: {exc}"


_URLS: list = []  # the backend URL of each local run being recorded, innermost last (child runs use it)


def current_url() -> str | None:
    return _URLS[-1] if _URLS else None


def create_local(backend, spec, params: dict, run_id: str, runner: str, heartbeat_timeout: float | None) -> None:
    """The backend's row of a local run, with where its spec is (for `runs restart`) and, for a
    restart, what it restarts: never for a subflow's child run, which is a new run (its parent
    task runs again in a restart)."""
    from flowspec import restart

    backend.create_flow_run(None, params, (), "Running", flow_name=spec.name, run_id=run_id, runner=runner,
                            heartbeat_timeout=heartbeat_timeout)
    from flowspec.subflow_run import current_parent

    parent = current_parent()
    plan = restart.active() if parent is None else None
    parent = parent or (None, None)
    backend.set_run_link(run_id, spec.path, spec.checksum, plan and plan.of, plan and plan.notes, *parent)


def record_local_run(spec, params: dict, execute: Callable[[tuple, str | None], Any], url: str | None = None,
                     heartbeat_timeout: float | None = None, interrupted_code: Callable[[], int] = lambda: 130) -> Any:
    """Call `execute(observers, run_id)` with the run recorded in the backend at `url`.

    When the backend cannot be opened, one warning line is printed and the run goes on
    unrecorded. The run is created Running when the runner starts it (a run that stops before,
    e.g. on a module that does not import, is not recorded), without labels: it holds no
    concurrency slot. It heartbeats, and names this process, so that a killed `flowspec run`
    is seen as lost by whoever reads it after `heartbeat_timeout`. `interrupted_code()` is the
    exit code recorded for a Cancelled run (130 for Ctrl-C, 128 + N for signal N).
    """
    from flowspec.backend import open_backend
    from flowspec.errors import UsageError

    try:
        backend = open_backend(url)
    except UsageError:
        raise  # a misconfigured FLOWSPEC_HOME is the user's to fix, not a reason to run unrecorded
    except (FlowspecError, OSError) as exc:
        print(f"flowspec: warning: this run is not recorded in the backend: {getattr(exc, 'message', exc)}",
              file=sys.stderr)
        return execute((), None)
    _URLS.append(url)
    try:
        return _record(backend, spec, params, execute, heartbeat_timeout, interrupted_code)
    finally:
        _URLS.pop()


def _record(backend, spec, params: dict, execute, heartbeat_timeout, interrupted_code) -> Any:
    import socket
    import uuid

    from flowspec.masking import mask_params, secret_values

    with backend:
        run_id = uuid.uuid4().hex
        runner = f"a local `flowspec run`, pid {os.getpid()} on {socket.gethostname()}"
        # Several beats fit in one timeout, so one slow beat never makes a live run look lost.
        beat = min(HEARTBEAT_INTERVAL_S, heartbeat_timeout / 5) if heartbeat_timeout else HEARTBEAT_INTERVAL_S
        # The backend keeps credentials only where the run reads them back: a flow that runs from
        # an image (docker, Kubernetes, Fargate) gets its parameters there, as a registered flow's
        # run does in its agent's child, `secret: true` ones encrypted as for an agent's run; a
        # flow run in this process has them at hand, and they are stored masked. What is shown
        # and logged is masked either way.
        in_process = spec.environment.type in ("local", "remote")
        secret_names = [p.name for p in spec.parameters.values() if getattr(p, "secret", False)]
        if in_process:
            stored = mask_params(params, secret_names)
        else:  # read back inside the container (flowspec.inside), which decrypts: refused without the key
            from flowspec.secrets import encrypt_params

            stored = encrypt_params(params, secret_names)
        # A run of a spec that is not registered keeps its task graph with its tasks: the
        # backend has no spec to draw it from
        recorder = Recorder(backend, run_id, heartbeat_s=beat, on_cancel=interrupt_self,
                            secrets=secret_values(params, secret_names), upstream=task_upstream(spec),
                            create=lambda: create_local(backend, spec, stored, run_id, runner, heartbeat_timeout))
        try:
            result = execute((recorder,), run_id)
        except BaseException as exc:
            recorder.finish(*outcome_of(exc), exit_code=interrupted_code() if isinstance(exc, KeyboardInterrupt) else 1)
            raise
        code = interrupted_code() if result.state == "Cancelled" else EXIT_CODES.get(result.state, 1)
        recorder.finish(result.state, run_message(result), code, getattr(result, "outputs", None))
        return result
