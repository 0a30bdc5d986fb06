"""The `dask` executor: task runs on a Dask distributed cluster.

One Dask task per task run (all its attempts run on the worker, as on every executor). The
task's value stays on the worker as that Dask task's result: a downstream task run receives the
Dask future inside its arguments, so Dask moves the value worker to worker and the client never
sees it until the run ends (then every task's result is gathered once, for `RunResult`).
What the client needs to track states (final state, attempts, timing), the task runs' state
changes and their log lines come back as small Dask events on a topic of the run's own, which
the scheduler relays in order, ahead of the task's completion.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Set as AbstractSet

from flowspec import serialize
from flowspec.errors import FlowspecError, require
from flowspec.executors.base import Executor

CHECK_S = 0.25  # how often a wait looks for task runs that failed outside flowspec's code
log = logging.getLogger("flowspec.executor")


class ExecutorError(FlowspecError):
    """The cluster cannot be used; `spec_path` names the spec key the problem is about."""

    def __init__(self, message: str, hint: str | None = None, spec_path: tuple = ("executor", "type")) -> None:
        super().__init__(message, hint)
        self.spec_path = spec_path


class DaskExecutor(Executor):
    """A Dask distributed cluster. YAML keys: `address` (the scheduler, `tcp://host:8786`);
    without it, a temporary local cluster that lives for the run, of `workers` processes
    (default: one per core) with `threads` threads each (default: enough for
    min(32, cores + 4) threads in all, so that tasks waiting on I/O run together)."""

    ships_code = True  # run_in_process registers the spec's own modules for pickling by value

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None,
                 **options) -> None:
        super().__init__(address=address, workers=workers, threads=threads, **options)
        self.address, self.workers, self.threads = address, workers, threads
        self.client = self.cluster = None
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.units: dict = {}  # uid -> Unit in flight
        self.finished: list = []  # reported finished since the last wait()
        self.held: list = []  # finished but not among the futures of the last wait()
        self.checked = 0.0
        self.plain: set = set()  # futures of calls that are not task runs
        self.uids = iter(range(1, 1 << 62))
        self.topics: set = set()
        self.stdout_to_stderr = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        from flowspec.logs import fileno

        require("distributed", "dask", "the dask executor")
        self.client, self.cluster = connect(self.address, self.workers, self.threads)
        # The workers of a temporary cluster write to the terminal of `flowspec run`: when its
        # stdout carries the JSON report (`--format json` sends print() to stderr), so must theirs.
        self.stdout_to_stderr = self.cluster is not None and fileno(sys.stdout) == 2
        link = dashboard_link(self.client)
        if link:
            log.info("Dask dashboard: %s", link)

    def shutdown(self, cancel: bool = False) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        if cancel and self.units:
            try:  # on a shared cluster, what was submitted must not go on running
                client.cancel([unit.future for unit in self.units.values()], reason="the flow run was cancelled")
            except Exception:
                log.debug("cancelling the Dask futures failed", exc_info=True)
        self.units.clear()
        for topic in self.topics:
            client.unsubscribe_topic(topic)
        client.close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    # -- submitting --------------------------------------------------------------------------
    def submit(self, fn, *args):
        return self.submit_many(fn, (args,))[0]

    def submit_many(self, fn, arg_tuples) -> list:
        """Task runs of one task go to the scheduler in one message (client.map)."""
        from flowspec.runner import run_unit

        arg_tuples = list(arg_tuples)
        if fn is not run_unit:
            plain = [Plain(self.client.submit(call_plain, Shipped(None, (fn, args)), pure=False)) for args in arg_tuples]
            self.plain.update(plain)
            return plain
        task_fn, _, ctx, retries, retry_delay, timeout, notify = arg_tuples[0]
        self._listen(ctx.run_id)
        from flowspec.keeping import plain_callable

        serialize.ship(plain_callable(task_fn))
        template = Shipped(new_key(), (task_fn, ctx.run_id, ctx.flow_name, dict(ctx.params), ctx.task_name,
                                       retries, retry_delay, timeout, notify is not None or retries > 0,
                                       logging.getLogger("flowspec.task").getEffectiveLevel()))
        units = [Unit(next(self.uids), args[2].map_index, args[1], template, notify, retries, ctx.task_name,
                      args[2].run_name) for args in arg_tuples]
        self._send(units, 1, 0.0)
        return units

    def _send(self, units: list, first_attempt: int, retry_delay: float) -> None:
        run8 = units[0].template.obj[1][:8]
        keys = [(f"{unit.task}-{run8}", -1 if unit.index is None else unit.index, first_attempt) for unit in units]
        # A named task run (its task's `run_name`) travels with its index: (index, name)
        futures = self.client.map(remote_unit, [u.uid for u in units],
                                  [u.index if u.run_name is None else (u.index, u.run_name) for u in units],
                                  [pack(u.kwargs) for u in units], key=keys, template=units[0].template,
                                  first_attempt=first_attempt, pause=retry_delay,
                                  stdout_to_stderr=self.stdout_to_stderr, pure=False)
        for unit, future in zip(units, futures):
            unit.future, unit.first_attempt, unit.attempt, unit.misses = future, first_attempt, first_attempt, 0
            self.units[unit.uid] = unit

    def _listen(self, run_id: str) -> None:
        topic = topic_of(run_id)
        if topic not in self.topics:
            self.topics.add(topic)
            self.client.subscribe_topic(topic, self.events.put)

    # -- waiting -----------------------------------------------------------------------------
    def wait(self, futures) -> list:
        wanted = futures if isinstance(futures, (AbstractSet, dict)) else set(futures)
        while True:
            self._drain(0.01 if self.plain else CHECK_S)
            done = [f for f in self.plain if f.done()]
            self.plain.difference_update(done)
            ready = self.held + self.finished + done
            self.finished = []
            out = [f for f in ready if f in wanted]
            self.held = [f for f in ready if f not in wanted]
            if out:
                return out

    def _drain(self, timeout: float) -> None:
        try:
            self._handle(self.events.get(timeout=timeout))
            while True:
                self._handle(self.events.get_nowait())
        except queue.Empty:
            pass
        if time.monotonic() - self.checked > CHECK_S * max(1.0, len(self.units) / 2000):  # O(in flight)
            self.checked = time.monotonic()
            self._check()

    def _handle(self, event) -> None:
        kind, uid, *rest = event[1]
        if kind == "log":
            serialize.emit_forwarded(rest[0])
            return
        unit = self.units.get(uid)
        if unit is None:
            return
        if kind == "state":
            unit.attempt = rest[1]
            if unit.notify is not None:
                unit.notify(unit.task, unit.index, *rest)
        elif kind == "done":
            from flowspec.runner import OK_STATES, Outcome

            state, attempts, start, end, message = rest
            unit.outcome = Outcome(state, unit.future if state in OK_STATES else None, attempts, start, end, message)
            self._retire(unit)

    def _retire(self, unit) -> None:
        self.units.pop(unit.uid, None)
        unit.kwargs = None
        self.finished.append(unit)

    def _check(self) -> None:
        """Task runs whose Dask task failed without reporting: the worker died, the code could
        not be loaded there, or the run was cancelled from elsewhere."""
        from flowspec.runner import SUCCESS, Outcome

        for unit in list(self.units.values()):
            status = unit.future.status
            if status == "finished":
                unit.misses += 1  # its event should be on its way; after a while, take it as done
                if unit.misses > 8:
                    unit.outcome = Outcome(SUCCESS, unit.future, unit.attempt, None, time.time(), None)
                    self._retire(unit)
            elif status in ("error", "cancelled", "lost"):
                self._failed_outside(unit, status)

    def _failed_outside(self, unit, status: str) -> None:
        from flowspec.runner import FAILED, RETRYING, Outcome

        message = describe_failure(unit.future, status)
        logger = logging.LoggerAdapter(logging.getLogger("flowspec.task"), {"task": unit.label})
        del self.units[unit.uid]
        if unit.attempt <= unit.retries and status != "cancelled":
            retry_delay = unit.template.obj[6]
            logger.warning("attempt %d failed: %s; retrying in %gs (retry %d of %d)", unit.attempt, message,
                           retry_delay, unit.attempt, unit.retries)
            if unit.notify is not None:
                unit.notify(unit.task, unit.index, RETRYING, unit.attempt, message)
            return self._send([unit], unit.attempt + 1, retry_delay)
        logger.error("%s: %s", FAILED, message)
        unit.outcome = Outcome(FAILED, None, unit.attempt, None, time.time(), message)
        self._retire(unit)

    # -- results -----------------------------------------------------------------------------
    def fetch(self, value):
        """`value` with every Dask future in it replaced by its result (None where the task
        run has no result), in one round trip."""
        from distributed import Future

        def usable(v):
            if isinstance(v, Future):  # a pending one is fine: its "done" event came ahead of it
                return None if v.status in ("error", "cancelled") else v
            if isinstance(v, (list, tuple)):
                return type(v)(usable(x) for x in v)
            if isinstance(v, dict):
                return {k: usable(x) for k, x in v.items()}
            return v

        value = usable(value)
        try:
            return self.client.gather(value)
        except Exception as exc:
            log.warning("could not fetch task results from the Dask cluster: %s: %s", type(exc).__name__, exc)
            return None


class Unit:
    """The client's handle on one task run: the runner waits on it; its Outcome's result is
    the Dask future of the task's value."""

    __slots__ = ("uid", "index", "kwargs", "template", "notify", "retries", "task", "future", "outcome",
                 "first_attempt", "attempt", "misses", "run_name")

    def __init__(self, uid: int, index, kwargs: dict, template, notify, retries: int, task: str,
                 run_name: str | None = None) -> None:
        self.uid, self.index, self.kwargs, self.template = uid, index, kwargs, template
        self.run_name = run_name
        self.notify, self.retries, self.task = notify, retries, task
        self.future = self.outcome = None

    @property
    def label(self) -> str:
        if self.run_name is not None:
            return f"{self.task}[{self.run_name}]"
        return self.task if self.index is None else f"{self.task}[{self.index}]"

    def done(self) -> bool:
        return self.outcome is not None

    def result(self):
        return self.outcome


class Plain:
    """A future for a call that is not a task run (the executor used directly)."""

    __slots__ = ("future",)

    def __init__(self, future) -> None:
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self):
        return self.future.result()


def describe_failure(future, status: str) -> str:
    if status == "cancelled":
        return "its Dask task was cancelled outside flowspec"
    if status == "lost":
        return "its result was lost with the worker that held it"
    try:
        exc = future.exception(timeout=10)
    except Exception as problem:
        exc = problem
    if type(exc).__name__ == "KilledWorker":
        return f"the Dask worker running it died ({exc})"
    return f"it could not run on the Dask cluster: {type(exc).__name__}: {exc}"


# -- the cluster ------------------------------------------------------------------------------
def default_layout(workers: int | None, threads: int | None) -> tuple[int, int]:
    """Processes and threads of a temporary cluster: one process per core, and enough threads
    in all for tasks that wait on I/O, as the local-dask default."""
    from flowspec.executors.local_dask import default_workers

    workers = workers or max(1, os.cpu_count() or 1)
    return workers, threads or max(1, -(-default_workers() // workers))


def connect(address: str | None, workers: int | None, threads: int | None):
    """A client of the scheduler at `address`, or of a new local cluster; (client, cluster)."""
    import dask
    from distributed import Client, LocalCluster

    if address:
        try:
            return Client(address, timeout=10, set_as_default=False), None
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {address}: {exc}",
                                "start it (`dask scheduler`), fix executor.address, or remove address to run "
                                "on a temporary local cluster", ("executor", "address")) from None
    n, per = default_layout(workers, threads)
    # flowspec's `retries` decide what happens when a worker dies, not Dask's own re-runs
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=per, processes=True, silence_logs=logging.ERROR,
                               dashboard_address="127.0.0.1:0")  # a free port: runs side by side do not clash
    return Client(cluster, set_as_default=False), cluster


def dashboard_link(client) -> str | None:
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    return client.dashboard_link


# -- on the worker ----------------------------------------------------------------------------
def topic_of(run_id: str) -> str:
    return f"flowspec-{run_id}"


def new_key() -> str:
    return uuid.uuid4().hex


_LOADED: dict = {}  # Shipped key -> loaded object, so that a worker unpickles a task's code once


class Shipped:
    """An object pickled by value (cloudpickle) and unpickled only where it is used: the
    scheduler, which unpickles task graphs, passes it on as bytes and never needs the spec's
    modules. With a key, each process loads it once (a task's code, shared by its runs)."""

    __slots__ = ("key", "obj", "blob")

    def __init__(self, key: str | None, obj=None, blob: bytes | None = None) -> None:
        self.key, self.obj, self.blob = key, obj, blob

    def __reduce__(self):
        if self.blob is None:
            self.blob = serialize.dumps(self.obj)
        return Shipped, (self.key, None, self.blob)

    def load(self):
        if self.obj is None:
            if self.key is None:
                return serialize.loads(self.blob)
            if self.key not in _LOADED:
                if len(_LOADED) > 256:
                    _LOADED.clear()
                _LOADED[self.key] = serialize.loads(self.blob)
            self.obj = _LOADED[self.key]
        return self.obj


_PLAIN = (str, int, float, bool, type(None))


def pack(kwargs: dict) -> dict:
    """Arguments for the scheduler: plain data and Dask futures as they are (Dask must see
    the futures), anything else (objects of the spec's own classes) shipped by value."""
    from distributed import Future

    def plain(v) -> bool:
        if type(v) in _PLAIN or isinstance(v, Future):
            return True
        if type(v) in (list, tuple):
            return all(plain(x) for x in v)
        return type(v) is dict and all(type(k) is str and plain(x) for k, x in v.items())

    return {k: v if plain(v) else Shipped(None, v) for k, v in kwargs.items()}


def unpack(kwargs: dict) -> dict:
    return {k: v.load() if isinstance(v, Shipped) else v for k, v in kwargs.items()}


def call_plain(shipped: Shipped):
    fn, args = shipped.load()
    return fn(*args)


def remote_unit(uid: int, index, kwargs: dict, template: Shipped, first_attempt: int = 1, pause: float = 0.0,
                stdout_to_stderr: bool = False):
    """Runs on a worker: every attempt of one task run. Reports the outcome as an event and
    returns the task's value, which stays on the worker for the tasks downstream."""
    from types import MappingProxyType

    from distributed import get_worker

    from flowspec import context
    from flowspec.runner import OK_STATES, run_unit

    fn, run_id, flow, params, task, retries, delay, timeout, notify, level = template.load()
    worker, topic = get_worker(), topic_of(run_id)
    forward_logs(level)
    if stdout_to_stderr:
        print_to_stderr()
    capture_output()
    run_name = None
    if type(index) is tuple:  # a named task run: (index, its name)
        index, run_name = index
    ctx = context.TaskContext(run_id, flow, MappingProxyType(params), task, index, 0, run_name)
    tell = (lambda *a: worker.log_event(topic, ("state", uid, *a[2:]))) if notify else None
    if pause:  # the retry delay, when the worker of the previous attempt died
        time.sleep(pause)
    _running.topic = topic  # for the log lines run_unit writes outside the task's context
    try:
        outcome = run_unit(fn, unpack(kwargs), ctx, retries, delay, timeout, tell, first_attempt)
    finally:
        _running.topic = None
    worker.log_event(topic, ("done", uid, outcome.state, outcome.attempts, outcome.start, outcome.end,
                             outcome.message))
    return outcome.result if outcome.state in OK_STATES else None


def print_to_stderr() -> None:
    """A task's print() on this worker (of a temporary cluster) goes to stderr, a whole line
    per write, as on the other executors: `flowspec run --format json` keeps stdout for its report."""
    global _printing_to_stderr
    with _streams_lock:  # the worker's threads start task runs side by side
        if not _printing_to_stderr:
            from flowspec.logs import whole_lines
            from flowspec.task_output import TaskOutput

            _printing_to_stderr = True
            if isinstance(sys.stdout, TaskOutput):  # what the capture lets through (a line it does not log)
                sys.stdout.stream = whole_lines(2)
            else:
                sys.stdout = whole_lines(2)


def capture_output() -> None:
    """A task's print() on this worker comes back to its run as log lines (installed once per
    worker process, for its life: text written outside a task run passes as before)."""
    global _capturing
    with _streams_lock:
        if not _capturing:
            from flowspec import task_output

            _capturing = True
            task_output.install()


_printing_to_stderr = False
_capturing = False
_streams_lock = threading.Lock()
_forwarding = None
_running = threading.local()  # the topic of the task run on this worker thread


def forward_logs(level: int) -> None:
    """Send the flowspec log records of task runs on this worker to their run's client."""
    global _forwarding
    logger = logging.getLogger("flowspec")
    if _forwarding is None:
        _forwarding = serialize.ForwardingHandler(_send_log)
        logger.addHandler(_forwarding)
        logger.propagate = False  # a local cluster's workers share the terminal: no doubles
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)


def _send_log(data: dict) -> None:
    from distributed import get_worker

    from flowspec import context

    run_id = context.current().run_id  # set in the task's own threads too (contextvars)
    topic = getattr(_running, "topic", None) or (topic_of(run_id) if run_id else None)
    if topic:  # only records written by a task run have a client to go to
        get_worker().log_event(topic, ("log", 0, data))
