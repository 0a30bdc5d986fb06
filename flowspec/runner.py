"""The flow runner: task states, triggers, mapping, retries, timeouts and hooks.

The runner is an explicit state machine. Each task waits for its upstreams (a counter per task,
so scheduling is linear in the graph's size); when they are all finished its trigger decides
whether it runs, and its task runs (one, or one per mapped index) go to the executor as
self-contained units: `run_unit` performs every attempt of one task run and returns an Outcome.
No exception is used for control flow except the two that come from outside: a timeout alarm
and the user's Ctrl-C.
"""
from __future__ import annotations

import contextvars
import gc
import logging
import math
import os
import signal
import threading
import time
import traceback
import uuid
from collections import deque
from types import MappingProxyType

from flowspec import context as ctxmod
from flowspec import keeping, loops
from flowspec import references as refs
from flowspec import task_output
from flowspec.executors.base import Executor

PENDING, RUNNING, RETRYING, SUCCESS = "Pending", "Running", "Retrying", "Success"
FAILED, TIMED_OUT, TRIGGER_FAILED = "Failed", "TimedOut", "TriggerFailed"
SKIPPED, CANCELLED, LOOPING = "Skipped", "Cancelled", "Looping"
CACHED = keeping.CACHED  # a result loaded from the store, not called: a Success in every count
TASK_STATES = (PENDING, RUNNING, RETRYING, SUCCESS, FAILED, TIMED_OUT, TRIGGER_FAILED, SKIPPED, CANCELLED, LOOPING,
               CACHED)
FINAL_STATES = frozenset((SUCCESS, FAILED, TIMED_OUT, TRIGGER_FAILED, SKIPPED, CANCELLED, CACHED))
OK_STATES = frozenset((SUCCESS, CACHED))
FAILED_STATES = frozenset((FAILED, TIMED_OUT, TRIGGER_FAILED))  # what `any_failed` looks for
FLOW_FAILING = FAILED_STATES | {CANCELLED}  # a task in one of these fails the flow run

log = logging.getLogger("flowspec.runner")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class TaskTimeout(BaseException):
    """Raised inside a task attempt at its deadline. A BaseException, so that a task's own
    `except Exception` cannot swallow it."""


class Outcome:
    """What one task run came to after all its attempts."""

    __slots__ = ("state", "result", "attempts", "start", "end", "message")

    def __init__(self, state, result, attempts, start, end, message=None) -> None:
        self.state, self.result, self.attempts = state, result, attempts
        self.start, self.end, self.message = start, end, message


# -- one task run, all attempts: runs on the executor -------------------------------------------
def run_unit(fn, kwargs, ctx: ctxmod.TaskContext, retries: int, retry_delay: float,
             timeout: float | None, notify=None, first_attempt: int = 1) -> Outcome:
    if type(fn) is keeping.Kept:  # a task that uses the result store: it calls back here
        return keeping.run_kept(fn, kwargs, ctx, retries, retry_delay, timeout, notify, first_attempt)
    start = time.time()
    attempt = first_attempt - 1  # > 0 when an executor resumes a unit whose worker died
    while True:
        attempt += 1
        ctx.attempt = attempt
        if notify is not None:
            notify(ctx.task_name, ctx.map_index, RUNNING, attempt, None)
        token = ctxmod.set_current(ctx)
        try:
            if type(fn) is loops.LoopCall:  # the loop calls the task itself, iteration by iteration
                value = fn.run(kwargs, ctx, timeout, notify)
            else:
                value = fn(**kwargs) if timeout is None else call_with_timeout(fn, kwargs, timeout)
            return Outcome(SUCCESS, value, attempt, start, time.time())
        except loops.LoopError as exc:  # `until` cannot be read, or `max` passed: no retry helps
            ctx.logger.error("%s: %s", FAILED, exc)
            return Outcome(FAILED, None, attempt, start, time.time(), str(exc))
        except TaskTimeout:
            state, message, detail = TIMED_OUT, f"attempt {attempt} exceeded the timeout of {timeout:g}s", ""
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # A task's sys.exit() or `raise KeyboardInterrupt` fails the task, not the flow run:
            # only a real interrupt (Ctrl-C, SIGTERM) of this process cancels the run.
            if isinstance(exc, KeyboardInterrupt) and stop_requested():
                raise
            state, message = FAILED, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            detail = "\n" + user_traceback(exc)
        finally:
            if task_output.partial:  # a line the task left unfinished is its own, not the next task's
                task_output.end_of_attempt()
            ctxmod.reset(token)
        if attempt > retries:
            ctx.logger.error("%s: %s%s", state, message, detail)
            return Outcome(state, None, attempt, start, time.time(), message)
        ctx.logger.warning("attempt %d %s: %s; retrying in %gs (retry %d of %d)", attempt,
                           "timed out" if state == TIMED_OUT else "failed", message, retry_delay, attempt, retries)
        if notify is not None:
            notify(ctx.task_name, ctx.map_index, RETRYING, attempt, message)
        if retry_delay:
            time.sleep(retry_delay)


JOIN_SLICE_S = 0.1  # how often a thread waiting for a task run on another thread can be interrupted


def call_with_timeout(fn, kwargs, timeout: float):
    """Call fn(**kwargs), raising TaskTimeout at the deadline.

    On the main thread a SIGALRM timer interrupts the task itself, so a timed-out attempt really
    stops. Elsewhere (a thread of a pool) Python cannot stop a thread: the attempt is marked
    TimedOut on time and its thread is left to finish in the background; the calling thread
    waits in short slices, so that a stop that interrupts it (a flow timeout of a child flow run
    on a thread, `timeout` inf: see FlowRunner._untimed) is taken at once. A callable with its
    own `call_with_timeout` (a task sent to a child process) enforces the deadline itself."""
    own = getattr(fn, "call_with_timeout", None)
    if own is not None:
        return own(kwargs, timeout)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            raise TaskTimeout()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn(**kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: dict = {}
    run_in = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = run_in.run(fn, **kwargs)
        except BaseException as exc:  # handed over to the waiting thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name="flowspec-timeout")
    worker.start()
    deadline = time.monotonic() + timeout
    while worker.is_alive():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TaskTimeout()
        worker.join(min(left, JOIN_SLICE_S))  # a KeyboardInterrupt sent to this thread lands between slices
    if "error" in box:
        raise box["error"]
    return box["value"]


def user_traceback(exc: BaseException) -> str:
    """The traceback of the task's own code, without flowspec's frames."""
    shipped = getattr(exc, "_flowspec_traceback", None)  # formatted in the process that ran the task
    if shipped is not None:
        return shipped
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


_interrupted = False  # a stop signal reached this process during a run (see InterruptWatch)
_STOPPING: dict = {}  # thread ident → flow timeouts that interrupted the run on that thread (see FlowTimeout)
_TIMED: dict = {}  # thread ident (not the main thread's) → flow timeouts armed for the runs on that thread


def stop_requested() -> bool:
    """Whether a KeyboardInterrupt here is a real stop (a signal, the cancel of a parent run, the
    timeout of the flow run on this thread), not a task's own `raise KeyboardInterrupt`."""
    return _interrupted or threading.get_ident() in _STOPPING


def interrupt_thread(ident: int) -> None:
    """Raise KeyboardInterrupt in thread `ident` as a Ctrl-C does on the main thread: when it next
    runs Python code (not inside a blocking call, which Python cannot interrupt on a thread)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))


class InterruptWatch:
    """While a flow run runs: notes that a stop signal arrived before the handler in place
    (Python's Ctrl-C, `flowspec run`'s SIGTERM and SIGHUP, an agent child's) raises
    KeyboardInterrupt, so that `run_unit` can tell it from a task's own `raise KeyboardInterrupt`.
    Only Python-level handlers are wrapped, and only on the main thread (where signals land)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        global _interrupted
        self.previous: dict = {}
        if threading.current_thread() is not threading.main_thread():
            return  # a subflow's child run on a thread: the stop it must see is its parent's
        _interrupted = False
        for signum in self.SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                self.previous[signum] = handler
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        global _interrupted
        _interrupted = True
        self.previous[signum](signum, frame)

    def close(self) -> None:
        for signum, handler in self.previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self.previous = {}


# -- records ------------------------------------------------------------------------------------
class TaskRecord:
    """A task's state in a flow run; for a mapped task, also each child's state and result."""

    __slots__ = ("name", "state", "result", "attempts", "start", "end", "message", "children",
                 "child_results", "open", "run_names")

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = PENDING
        self.result = None
        self.attempts = 0
        self.start = self.end = None
        self.message = None
        self.children = None  # list of child states when the task was mapped
        self.child_results = None
        self.open = 0  # children not finished yet
        self.run_names = None  # the task's `run_name`: a str (unmapped), or one per child (mapped)

    @property
    def duration(self) -> float:
        return (self.end - self.start) if self.start is not None and self.end is not None else 0.0

    def child_counts(self) -> dict:
        counts: dict = {}
        for s in self.children or ():
            counts[s] = counts.get(s, 0) + 1
        return counts

    def to_json(self, children: bool = False) -> dict:
        out = {"state": self.state, "attempts": self.attempts, "duration_s": round(self.duration, 6),
               "children": self.child_counts(), "message": self.message}
        if isinstance(self.run_names, str):
            out["run_name"] = self.run_names
        if children and self.children is not None:
            names = self.run_names if isinstance(self.run_names, list) else [None] * len(self.children)
            out["children"] = [{"map_index": i, "run_name": n, "state": s}
                               for i, (s, n) in enumerate(zip(self.children, names))]
        return out


class RunResult:
    """The outcome of a flow run; `to_json()` is the shape `flowspec run --format json` prints."""

    def __init__(self, flow: str, run_id: str, params: dict, tasks: dict) -> None:
        self.flow, self.run_id, self.params, self.tasks = flow, run_id, params, tasks
        self.state = PENDING
        self.message = None
        self.start = self.end = None
        self.outputs: dict | None = None  # the flow's `outputs` (when it has some), evaluated when the run ends

    @property
    def duration(self) -> float:
        return (self.end or time.time()) - self.start if self.start else 0.0

    def to_json(self, children: bool = False) -> dict:
        """With `children`, a mapped task's `children` lists each child (map_index, run_name,
        state) rather than counting them by state."""
        out = {"flow": self.flow, "run_id": self.run_id, "state": self.state,
               "duration_s": round(self.duration, 6), "message": self.message,
               "tasks": {name: rec.to_json(children) for name, rec in self.tasks.items()}}
        if self.outputs is not None:
            out["outputs"] = self.outputs
        return out


class ReadOnlyDict(dict):
    """A dict that refuses changes: what hooks receive. A dict, so that json.dumps takes it."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("this run summary is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse


def frozen(value):
    """A read-only deep copy of JSON-like data, handed to hooks (json.dumps of it works)."""
    if isinstance(value, dict):
        return ReadOnlyDict({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def aggregate(states: list[str]) -> str:
    """The state of a mapped task from its children's states (no children: Success)."""
    present = set(states)
    for state in (CANCELLED, FAILED, TIMED_OUT, TRIGGER_FAILED):
        if state in present:
            return FAILED if state == TIMED_OUT else state
    if present == {SKIPPED}:
        return SKIPPED
    return CACHED if present == {CACHED} else SUCCESS


def trigger_decision(trigger: str, upstream: list[tuple[str, str]],
                     merge: tuple = ()) -> tuple[str | None, str | None]:
    """(None, None) to run, or (final state, reason) when the trigger says not to. `merge`: groups
    of upstream names joined by `||` (Prefect's merge): a Skipped member of a group of which
    another member succeeded does not skip the task."""
    failed = [(n, s) for n, s in upstream if s in FAILED_STATES or s == CANCELLED]
    if trigger == "all_finished":
        return None, None
    if trigger == "any_failed":
        if any(s in FAILED_STATES for _, s in upstream):
            return None, None
        return SKIPPED, "no upstream task failed (trigger any_failed)"
    if trigger == "all_failed":
        if all(s in FAILED_STATES for _, s in upstream):
            return None, None
        names = ", ".join(f"{n} ({s})" for n, s in upstream if s not in FAILED_STATES)
        return SKIPPED, f"not every upstream task failed (trigger all_failed): {names}"
    if trigger == "any_successful":
        if not upstream or any(s in OK_STATES for _, s in upstream):
            return None, None
        if failed:
            names = ", ".join(f"{n} ({s})" for n, s in failed)
            return TRIGGER_FAILED, f"no upstream task succeeded (trigger any_successful): {names}"
        return SKIPPED, "every upstream task was skipped (trigger any_successful)"
    if failed:
        names = ", ".join(f"{n} ({s})" for n, s in failed)
        return TRIGGER_FAILED, f"upstream did not succeed: {names}"
    if trigger == "none_failed":
        return None, None
    skipped = [n for n, s in upstream if s == SKIPPED]
    if skipped and merge:
        states = dict(upstream)
        merged = {n for group in merge if any(states.get(m) in OK_STATES for m in group) for n in group}
        skipped = [n for n in skipped if n not in merged]
    if skipped:
        return SKIPPED, f"upstream skipped: {', '.join(skipped)}"
    return None, None


def resolve_arg(value, lookup):
    """A task argument's value: as refs.resolve, except that a whole reference to a task that was
    Skipped gives None (as it always has) rather than an error; inside an expression such a task
    is unset, which is what `||` falls through."""
    if type(value) is refs.Ref and not value.accessors:
        found = lookup(value)
        return None if found is refs.UNSET else found
    return refs.resolve(value, lookup)


def make_namer(run_name):
    """A function of a task run's arguments that gives its name: the common templates
    (`item-${{ args.x }}`, `${{ args.table }}`) without walking the template for every child."""
    fmt = refs._fmt
    if type(run_name) is str:
        return lambda kwargs: run_name
    if type(run_name) is refs.Ref and not run_name.accessors:
        key = run_name.name
        return lambda kwargs: v if type(v := kwargs[key]) is str else fmt(v)
    if type(run_name) is refs.Template and all(type(p) is str or type(p) is refs.Ref and not p.accessors
                                               for p in run_name.parts):
        parts = tuple((True, p) if type(p) is str else (False, p.name) for p in run_name.parts)
        if len(parts) == 2 and parts[0][0] and not parts[1][0]:  # "prefix-${{ args.x }}"
            prefix, key = parts[0][1], parts[1][1]
            return lambda kwargs: prefix + (v if type(v := kwargs[key]) is str else fmt(v))

        def name(kwargs) -> str:
            return "".join(p if literal else (v if type(v := kwargs[p]) is str else fmt(v)) for literal, p in parts)
        return name

    def general(kwargs) -> str:
        value = refs.resolve(run_name, lambda ref: kwargs[ref.name])
        return value if type(value) is str else fmt(value)
    return general


def condition_text(cond) -> str:
    """An `if` as written inside its ${{ }}."""
    if isinstance(cond, refs.Expr):
        return cond.text
    if isinstance(cond, refs.Ref):
        return str(cond)[4:-3]
    return str(cond).lower()


def iso(t: float | None) -> str | None:
    import datetime

    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def formats_task_result(value) -> bool:
    """Whether a task's result is formatted into a string inside `value` (a compiled argument), or
    read by an expression or an accessor: the value itself is needed, not a handle to it."""
    if isinstance(value, (refs.Template, refs.Expr)):  # an expression compares the values themselves
        return any(r.kind == "tasks" for r in value.refs())
    if isinstance(value, refs.Ref):  # an accessor picks from the value itself
        return value.kind == "tasks" and bool(value.accessors)
    if isinstance(value, (list, dict)):
        return any(formats_task_result(v) for v in (value.values() if isinstance(value, dict) else value))
    return False


def run_summary_message(result) -> str | None:
    """The run's message, or which tasks did not succeed (as flowspec.recorder.run_message says it)."""
    if result.message or result.state == SUCCESS:
        return result.message
    bad = [f"{n} ({r.state})" for n, r in result.tasks.items() if r.state in FLOW_FAILING]
    return f"tasks that did not succeed: {', '.join(bad)}" if bad else None


class FlowTimeout:
    """A flow's `timeout`: at the deadline, the thread running the flow run is interrupted as by
    Ctrl-C, and the runner, seeing `_timed_out`, ends the run TimedOut.

    On the main thread by a signal, so that a task asleep or waiting is woken. A child flow run on
    another thread (the mapped subflow children of a `local-dask` parent) has its thread
    interrupted as the cancel of its parent does it (flowspec.subflow_run): at once when it waits
    for its executor, and, on a `local` executor, its task runs are made on threads of their own
    (FlowRunner._untimed) that it waits for in slices, and that finish in the background, as a
    timed-out task on a pool thread does. `stop_requested()` is true on that thread meanwhile, so
    that the run's tasks and nested child runs take the interrupt for the stop it is."""

    SIGNAL = getattr(signal, "SIGUSR2", None)

    def __init__(self, runner: "FlowRunner", seconds: float) -> None:
        self.runner, self.lock, self.armed, self.fired = runner, threading.Lock(), True, False
        self.thread, self.previous, self.closed = threading.get_ident(), None, False
        self.on_main = self.SIGNAL is not None and threading.current_thread() is threading.main_thread()
        if self.on_main:
            self.previous = signal.signal(self.SIGNAL, self._on_signal)
        else:
            _count(_TIMED, self.thread, 1)
        self.timer = threading.Timer(seconds, self._expire if self.on_main else self._expire_thread)
        self.timer.daemon = True
        self.timer.start()

    def _expire(self) -> None:
        with self.lock:
            if self.armed:
                self.runner._timed_out = True
                signal.pthread_kill(self.thread, self.SIGNAL)

    def _expire_thread(self) -> None:
        with self.lock:
            if self.armed:
                self.runner._timed_out = self.fired = True
                _count(_STOPPING, self.thread, 1)
                interrupt_thread(self.thread)

    def _on_signal(self, signum, frame) -> None:
        global _interrupted
        if self.runner._timed_out and self.armed:
            _interrupted = True  # a task's KeyboardInterrupt handling lets it through (see run_unit)
            raise KeyboardInterrupt

    def disarm(self) -> None:
        """The run's work is done (the last statement of the part a timeout interrupts): no
        interrupt from here on. One sent to its thread just before is raised here, where the
        runner takes it (Python raises it at its next bytecode, not at a time of our choosing)."""
        with self.lock:
            self.armed = False
        if self.fired:
            for _ in range(1_000_000):  # the interrupt lands in this loop, at once
                pass
            raise KeyboardInterrupt  # (it was raised and taken elsewhere: the deadline passed all the same)

    def close(self) -> None:
        with self.lock:
            self.armed = False
            if self.closed:
                return
            self.closed = True
            if self.fired:
                _count(_STOPPING, self.thread, -1)
        self.timer.cancel()
        if not self.on_main:
            _count(_TIMED, self.thread, -1)
        elif self.previous is not None:  # None: not set from Python, nothing to put back
            signal.signal(self.SIGNAL, self.previous)


_COUNTS_LOCK = threading.Lock()  # _TIMED and _STOPPING change on a run's thread and on its timer's


def _count(counts: dict, key, step: int) -> None:
    with _COUNTS_LOCK:
        left = counts.get(key, 0) + step
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)


class MapError(Exception):
    """A mapped argument that is not a list, or lists of different lengths."""


# -- the runner ---------------------------------------------------------------------------------
class FlowRunner:
    """Runs one flow run of a compiled FlowSpec on an executor.

    `observers` receive `task_state(task, index, state, attempt, message)` and
    `flow_state(result)` calls (the backend recorder and the progress display use them).
    `keep_results` (True, False, or the names of the tasks whose results are wanted): the
    records of the other tasks hold None at the end, and an executor that keeps results where
    they were computed (dask) is asked only for these. Callers that report states only pass
    False, which spares bringing every task run's value back."""

    def __init__(self, spec, params: dict, executor: Executor, callables: dict,
                 observers=(), run_id: str | None = None, keep_results: bool = True) -> None:
        self.spec = spec
        self.params = MappingProxyType(dict(params))
        self.executor = executor
        self.callables = callables  # task name / hook key → the imported callable
        self.keep_results = keep_results if isinstance(keep_results, bool) else frozenset(keep_results)
        # An executor that keeps results where they were computed (dask) has `fetch`: a result
        # formatted into a string, split for `map` or kept in the RunResult is brought here.
        self._fetch = getattr(executor, "fetch", None)
        self._fetch_first = () if self._fetch is None else {
            t.name for t in spec.tasks.values()
            if formats_task_result(dict(t.with_args)) or formats_task_result(dict(t.map_args))
            or t.condition_upstream}  # a condition reads the values themselves
        self.observers = list(observers)
        self.notify = self._notify_task if self.observers else None
        # Observers that want a word when a task is final (the progress display counts a mapped
        # task done from it, children or none), beside the state changes everyone gets.
        self._on_finish = [obs.task_finished for obs in self.observers if hasattr(obs, "task_finished")]
        self._started: dict = {}  # (task, index) → attempt now running, as notified; for cancelling
        self.run_id = run_id or uuid.uuid4().hex
        self.services: dict = {}  # (kind, name) → value of kv and secrets references (flowspec.run_refs)
        self.records = {name: TaskRecord(name) for name in spec.tasks}
        self.result = RunResult(spec.name, self.run_id, dict(params), self.records)
        self.base_ctx = ctxmod.TaskContext(self.run_id, spec.name, self.params)
        self._downstream: dict = {name: [] for name in spec.tasks}
        for task in spec.tasks.values():
            for up in task.upstream:
                self._downstream[up].append(task.name)
        self._waiting = {name: len(t.upstream) for name, t in spec.tasks.items()}
        self._ready: deque = deque(n for n, c in self._waiting.items() if c == 0)
        self._in_flight: dict = {}
        self._prepare_extras(spec)

    def _prepare_extras(self, spec) -> None:
        """What the keys of the expression language need during the run: each cleanup's own
        record and how many consumers it waits for, the tasks with hooks, the flow timeout."""
        self._hooked = frozenset(n for n, t in spec.tasks.items()
                                 if t.on_success is not None or t.on_failure is not None)
        self._cleanup_left: dict = {}  # task with a cleanup → consumers of its result not finished
        self._consumes: dict = {}  # task → the tasks with a cleanup whose result it takes
        for name, task in spec.tasks.items():
            if task.cleanup is not None:
                self._cleanup_left[name] = 0
                self.records[f"{name}.cleanup"] = TaskRecord(f"{name}.cleanup")
        if self._cleanup_left:
            for name, task in spec.tasks.items():
                takes = [up for up in dict.fromkeys(task.data_upstream) if up in self._cleanup_left]
                for up in takes:
                    self._cleanup_left[up] += 1
                if takes:
                    self._consumes[name] = takes
        self._timed_out = False
        # The timeout of a run on a thread other than the main one (a child flow run of a mapped
        # subflow) interrupts that thread (FlowTimeout), which Python cannot do inside a blocking
        # call: the task runs a `local` executor would make on it are made on threads of their own
        # (call_with_timeout without a deadline), which it waits for in slices. None: as they are.
        self._untimed = math.inf if self.executor.synchronous and threading.current_thread() is not \
            threading.main_thread() and (spec.timeout or threading.get_ident() in _TIMED) else None
        self._namers: dict = {}  # task → make_namer(its run_name)
        self._hook_args: dict = {}  # flow hook → its `with`, resolved before the results go
        self._plans: dict = {}  # task → its keeping.KeepPlan (persist, cache, target)
        from flowspec import restart

        plan = restart.active()
        self._reuse = plan.reuse if plan is not None and plan.flow == spec.name else {}
        self._store_token = None
        persist_default = getattr(spec, "results", None) is not None
        for name, task in spec.tasks.items():
            persist = task.persist if task.persist is not None else persist_default
            if (persist or task.cache is not None or task.target is not None) and task.run:
                self._plans[name] = self._plan(task, persist)

    def _plan(self, task, persist: bool) -> keeping.KeepPlan:
        if self._store_token is None:
            self._plan_store()
        plan = keeping.KeepPlan(self._store_token, self._store_settings, self._home, self.spec.name, task,
                                self.spec.base_dir, dict(self.params), self.run_id, persist)
        if task.cache is not None and task.cache.key is None:
            from flowspec.cache_key import code_digest

            plan.code = code_digest(self.callables[task.name], self.spec.base_dir)
        return plan

    def _plan_store(self) -> None:
        from flowspec import results
        from flowspec.backend import flowspec_home

        self._store_token = keeping.new_token()
        self._store_settings = results.settings(self.spec)
        self._home = str(flowspec_home())

    def _open_store(self) -> None:
        """This process's store for the run: writes behind (a local store), flushed at the end."""
        from flowspec.results import ResultStore

        store = keeping._STORES[self._store_token] = ResultStore.from_spec(self._store_settings, self._home,
                                                                           write_behind=True)
        for obs in self.observers:  # the recorder notes the store in the backend, for prune and deletions
            if hasattr(obs, "result_store"):
                obs.result_store(store.describe())

    def _close_store(self) -> None:
        store = keeping._STORES.pop(self._store_token, None)
        if store is not None:
            try:
                store.close()
            except Exception as exc:  # noqa: BLE001 - a store that fails at the end: said, the states stand
                log.error("the result store could not be written: %s", exc)

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every task, then on_exit; Ctrl-C cancels what has not finished."""
        result = self.result
        # The executor starts before the run does: a cluster that cannot be had (an unreachable
        # Dask scheduler) stops it before anything ran, and nothing is recorded, as for a module
        # that does not import.
        self._start_executor()
        if self._store_token is not None or self._reuse:
            self._store()
        result.start = time.time()
        self._set_flow_state(RUNNING)
        token = ctxmod.set_current(self.base_ctx)
        # What exists before the run (the compiled spec, hundreds of thousands of objects for a
        # large flow) is left out of the collections during it, which would walk it again and
        # again; unfrozen at the end, so that nothing stays out of reach of the collector.
        gc.freeze()
        signals = InterruptWatch()
        task_output.install()  # the tasks' print() becomes log lines of their task runs
        deadline = FlowTimeout(self, self.spec.timeout) if self.spec.timeout else None
        try:
            if self._call_hook("on_start"):
                try:
                    self._schedule()
                    if self._cleanup_left:
                        self._cleanup_rest()
                    if self.spec.outputs:
                        self._outputs()
                    self._flow_hook_args()  # while the executor still holds the tasks' results
                    self._keep_results()
                except BaseException:
                    self.executor.shutdown(cancel=True)
                    raise
                self.executor.shutdown()
                result.state = FAILED if any(r.state in FLOW_FAILING for r in self.records.values()) else SUCCESS
            else:
                self.executor.shutdown(cancel=True)
                result.state = FAILED
                self._not_run("not run: the on_start hook failed")
                result.message += "; no task ran"
            if deadline is not None:
                deadline.disarm()
        except KeyboardInterrupt:
            timed_out = self._timed_out
            self._cancel_all("the flow run timed out" if timed_out else "the flow run was cancelled")
            if timed_out:
                result.state = TIMED_OUT
                result.message = f"the flow run exceeded its timeout of {self.spec.timeout:g}s"
            else:
                result.state, result.message = CANCELLED, "interrupted by the user"
        finally:
            if deadline is not None:
                deadline.close()
            task_output.uninstall()
            signals.close()
            result.end = time.time()
            if self._store_token is not None:
                self._close_store()
            self._flow_hooks()
            self._call_hook("on_exit")
            ctxmod.reset(token)
            gc.unfreeze()
            self._set_flow_state(result.state)
        return result

    def _start_executor(self) -> None:
        try:
            self.executor.start()
        except BaseException:
            try:  # what it started before it failed (a local cluster without its client) goes
                self.executor.shutdown(cancel=True)
            except Exception:
                log.debug("executor shutdown after a failed start failed", exc_info=True)
            raise

    def _call_hook(self, key: str) -> bool:
        fn = self.callables.get(key)
        if fn is None:
            return True
        from flowspec.callables import takes_argument

        try:
            fn(frozen(self.result.to_json() | {"parameters": dict(self.params)})) if takes_argument(fn) else fn()
            return True
        except Exception as exc:
            message = f"{key} hook {getattr(self.spec.environment, key)} failed: {type(exc).__name__}: {exc}"
            log.error("%s\n%s", message, user_traceback(exc))
            self.result.message = self.result.message or message
            return False

    def _not_run(self, message: str) -> None:
        """Every task Cancelled with `message`: the run stopped before any task ran."""
        now = time.time()
        for rec in self.records.values():
            rec.state, rec.message, rec.start, rec.end = CANCELLED, message, now, now
            if self.notify is not None:
                self.notify(rec.name, None, CANCELLED, 0, message)

    def _cancel_all(self, why: str = "the flow run was cancelled") -> None:
        try:
            self.executor.shutdown(cancel=True)
        except Exception:  # shutting down after Ctrl-C must never hide the cancellation
            log.debug("executor shutdown after cancel failed", exc_info=True)
        for (name, _), attempt in list(self._started.items()):  # attempts cut short count as run
            self.records[name].attempts += attempt
        if self._cleanup_left:  # what was set up is cleaned up, on a cancel too
            self._cleanup_rest()
        now = time.time()
        for rec in self.records.values():
            if rec.state in FINAL_STATES:
                continue
            if rec.children is not None:
                rec.children = [CANCELLED if s not in FINAL_STATES else s for s in rec.children]
            rec.state, rec.message, rec.end = CANCELLED, why, now
            self._notify_task(rec.name, None, CANCELLED, rec.attempts, rec.message)

    # -- scheduling --------------------------------------------------------------------------
    def _schedule(self) -> None:
        ready, in_flight = self._ready, self._in_flight
        while ready or in_flight:
            while ready:
                self._launch(self.spec.tasks[ready.popleft()])
            if in_flight:
                for future in self.executor.wait(in_flight.keys()):  # a view: no copy per wait
                    name, index = in_flight.pop(future)
                    self._record(name, index, future.result())

    def _upstream_states(self, task, index: int | None = None) -> list[tuple[str, str]]:
        out = []
        for up in task.upstream:
            rec = self.records[up]
            if index is not None and up in task.per_child and rec.children is not None:
                out.append((f"{up}[{index}]", rec.children[index]))
            elif index is None and up in task.per_child and rec.children is not None:
                continue  # judged child by child
            else:
                out.append((up, rec.state))
        return out

    def _launch(self, task) -> None:
        records = self.records
        rec = records[task.name]
        rec.start = time.time()
        for up in task.upstream:  # the common case at once: every upstream succeeded
            if records[up].state not in OK_STATES:
                break
        else:
            up = None
        if up is not None or task.trigger != "all_successful":
            state, reason = trigger_decision(task.trigger, self._upstream_states(task), task.merge)
            if state is not None:
                return self._finish(rec, state, reason)
        if task.name in self._reuse and self._reuse[task.name][1] is None and self._reused(rec):
            return
        try:
            lookup = self._lookup_here if task.name in self._fetch_first else self._lookup
            if task.condition is not None and not self._condition_true(task, lookup):
                return self._finish(rec, SKIPPED, f"condition false: {condition_text(task.condition)}")
            kwargs = {k: resolve_arg(v, lookup) for k, v in task.with_args.items()} if task.with_args else {}
            lists = self._map_lists(task) if task.mapped else None
        except (MapError, refs.ResolveError) as exc:
            return self._finish(rec, FAILED, str(exc))
        if task.subflow is not None:
            return self._launch_subflow(task, rec, kwargs, lists)
        fn = self.callables[task.name]
        if task.loop is not None:
            fn = loops.LoopCall(fn, task.loop)
        if task.name in self._plans:
            fn = keeping.Kept(fn, self._plans[task.name])
        rec.state = RUNNING
        if lists is None:
            name = None if task.run_name is None else self._run_name(task, kwargs)
            rec.run_names = name
            ctx = self.base_ctx.for_task(task.name, None, 0, name)
            timeout = task.timeout if task.timeout is not None else self._untimed
            future = self.executor.submit(run_unit, fn, kwargs, ctx, task.retries, task.retry_delay,
                                          timeout, self.notify if task.on_retry is None else self._notify_retry)
            return self._collect(task.name, None, future)
        self._launch_children(task, rec, fn, kwargs, lists)

    def _say_cached(self, rec: TaskRecord) -> None:
        plan = self._plans[rec.name]
        n = rec.children.count(CACHED)
        where = self._store().location(plan.folder()) if plan.cache is not None else self._store().location("targets/")
        log.info("%s: %d of %d mapped runs %s: results loaded from %s, not called", rec.name, n, len(rec.children),
                 CACHED, where)

    def _launch_subflow(self, task, rec: TaskRecord, kwargs: dict, lists: dict | None) -> None:
        """A subflow task: each child flow run runs here, on this thread, or, mapped on an executor
        with several workers, on as many threads of this process (see subflow_run)."""
        from flowspec.executors.local import Done
        from flowspec.subflow_run import RegisteredCall, SubflowCall

        from flowspec.subflows import SUBFLOW_KEY

        sub = task.subflow  # a stored flow carries its file children's callables (flowspec.storage.base)
        fn = (RegisteredCall(sub) if sub.registered
              else SubflowCall(sub.spec, self.callables.get((SUBFLOW_KEY, sub.path))))
        rec.state = RUNNING
        notify = self.notify if task.on_retry is None else self._notify_retry
        options = (task.retries, task.retry_delay, task.timeout, notify)
        if lists is None:
            name = None if task.run_name is None else self._run_name(task, kwargs)
            rec.run_names = name
            outcome = run_unit(fn, kwargs, self.base_ctx.for_task(task.name, None, 0, name), *options)
            return self._record(task.name, None, outcome)
        n = len(next(iter(lists.values())))
        rec.children, rec.child_results, rec.open = [PENDING] * n, [None] * n, n
        if n == 0:
            return self._finish(rec, SUCCESS, None, result=[])
        threads = 1 if self.executor.synchronous else getattr(self.executor, "workers", None) or 1
        if threads > 1 and n > 1:  # the executor's parallelism, on threads of this process
            from flowspec.subflow_run import run_concurrently

            units = list(self._child_units(task, rec, fn, kwargs, lists))
            return run_concurrently(fn, units, threads, lambda i, outcome: self._record(task.name, i, outcome))
        for i, args in self._child_units(task, rec, fn, kwargs, lists):
            self._record(task.name, i, Done(run_unit(*args)).result())

    def _reused(self, rec: TaskRecord, index: int | None = None) -> bool:
        """Task run `rec`[index] of a restart Cached from the run it restarts (False: its result
        cannot be loaded after all; it runs, and a warning says why)."""
        source = self._reuse[rec.name][0]
        plan = self._plans.get(rec.name)
        try:
            value = keeping.reuse(self._store(), self.spec.name, rec.name, keeping.run_key(source, index),
                                  keeping.run_key(self.run_id, index) if plan is not None and plan.persist else None)
        except Exception as exc:  # noqa: BLE001 - a damaged or vanished result: the task runs again
            log.warning("%s: the kept result of run %s cannot be reused, it runs again: %s", rec.name, source[:8], exc)
            return False
        message = f"reused from run {source[:8]}"
        if index is not None:
            self._record(rec.name, index, Outcome(CACHED, value, 0, rec.start, time.time(), None))
            return True
        if self.notify is not None:
            self.notify(rec.name, None, CACHED, 0, message)
        self._finish(rec, CACHED, message, value)
        return True

    def _store(self):
        store = keeping._STORES.get(self._store_token)
        if store is None:
            if self._store_token is None:
                self._plan_store()
            self._open_store()
            store = keeping._STORES[self._store_token]
        return store

    def _condition_true(self, task, lookup) -> bool:
        cond = task.condition
        if isinstance(cond, bool):
            return cond
        try:
            value = refs.resolve(cond, lookup)
            return bool(value)
        except refs.ResolveError as exc:
            raise refs.ResolveError(f"if {condition_text(cond)}: {exc}") from None
        except Exception as exc:  # a value whose truth is ambiguous
            raise refs.ResolveError(f"if {condition_text(cond)}: {type(exc).__name__}: {exc}") from None

    def _run_name(self, task, kwargs: dict) -> str | None:
        """The task run's name from its arguments, or None (it is then named by its index) when
        the name cannot be made, which a warning says."""
        namer = self._namers.get(task.name)
        if namer is None:
            namer = self._namers[task.name] = make_namer(task.run_name)
        try:
            return namer(kwargs)
        except Exception as exc:  # an argument without the key the name reads
            log.warning("%s: run_name %s: %s", task.name, task.run_name, exc)
            return None

    def _launch_children(self, task, rec: TaskRecord, fn, kwargs: dict, lists: dict) -> None:
        n = len(next(iter(lists.values())))
        rec.children, rec.child_results, rec.open = [PENDING] * n, [None] * n, n
        if n == 0:
            return self._finish(rec, SUCCESS, None, result=[])
        if self.executor.synchronous:
            # Each child runs as it is submitted: made, run and recorded one at a time, so that a
            # million children never hold a million argument sets at once.
            submit, record, name = self.executor.submit, self._record, task.name
            for i, args in self._child_units(task, rec, fn, kwargs, lists):
                record(name, i, submit(run_unit, *args).result())
            return
        units = list(self._child_units(task, rec, fn, kwargs, lists))
        if not units:  # every child recorded already (reused by a restart, or not run by its trigger)
            return
        futures = self.executor.submit_many(run_unit, [args for _, args in units])
        for (i, _), future in zip(units, futures):
            self._collect(task.name, i, future)

    def _child_units(self, task, rec: TaskRecord, fn, kwargs: dict, lists: dict):
        """(index, run_unit arguments) of each child to run; a child whose own upstream child
        did not succeed is recorded here instead, as its trigger says."""
        names = list(lists)
        columns = [lists[k] for k in names]
        for_task, name = self.base_ctx.for_task, task.name
        notify = self.notify if task.on_retry is None else self._notify_retry
        timeout = task.timeout if task.timeout is not None or task.subflow is not None else self._untimed
        options = (task.retries, task.retry_delay, timeout, notify)
        one = names[0] if len(names) == 1 else None
        named = task.run_name is not None
        if named:
            rec.run_names = [None] * len(columns[0])
        reused = self._reuse.get(name, (None, ()))[1] or ()
        for i in range(len(columns[0])):
            if i in reused and self._reused(rec, i):
                continue
            if task.per_child:
                state, reason = trigger_decision(task.trigger, self._upstream_states(task, i), task.merge)
                if state is not None:
                    self._record(name, i, Outcome(state, None, 0, rec.start, time.time(), reason))
                    continue
            child_kwargs = dict(kwargs)
            if one is not None:
                child_kwargs[one] = columns[0][i]
            else:
                for k, col in zip(names, columns):
                    child_kwargs[k] = col[i]
            if named:
                run_name = rec.run_names[i] = self._run_name(task, child_kwargs)
                yield i, (fn, child_kwargs, for_task(name, i, 0, run_name), *options)
            else:
                yield i, (fn, child_kwargs, for_task(name, i, 0), *options)

    def _collect(self, name: str, index: int | None, future) -> None:
        if self.executor.synchronous:
            self._record(name, index, future.result())
        else:
            self._in_flight[future] = (name, index)

    def _map_lists(self, task) -> dict:
        lists = {}
        lookup = self._lookup_here if task.name in self._fetch_first else self._lookup
        for key, value in task.map_args.items():
            resolved = resolve_arg(value, lookup)
            if self._fetch is not None and not isinstance(resolved, (list, tuple)):
                resolved = self._fetch(resolved)  # an unmapped task's list: the client splits it
            if not isinstance(resolved, (list, tuple)):
                raise MapError(f"map argument '{key}' resolved to {type(resolved).__name__}, not a list")
            lists[key] = resolved
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
            raise MapError(f"mapped arguments have different lengths ({shown}); they are zipped and must match")
        return lists

    def _lookup(self, ref: refs.Ref):
        if ref.kind == "params":
            return self.params[ref.name]
        if ref.kind == "tasks":
            rec = self.records[ref.name]
            return rec.result if rec.state != SKIPPED else refs.UNSET  # unset, for `||` (merge)
        if ref.kind in ("kv", "secrets"):
            return self.services[(ref.kind, ref.name)]
        if ref.name in os.environ:
            return os.environ[ref.name]
        if ref.fallback is not None:
            return ref.fallback
        raise refs.UnsetEnvError(f"environment variable {ref.name} is not set (referenced as {ref})")

    def _lookup_here(self, ref: refs.Ref):
        value = self._lookup(ref)
        return self._fetch(value) if ref.kind == "tasks" and value is not refs.UNSET else value

    def _keep_results(self) -> None:
        """The results that are kept, brought here from the executor in one round trip (when it
        keeps them where they were computed); the others are dropped."""
        keep, recs = self.keep_results, []
        if keep is True and self._fetch is None:
            return
        for rec in self.records.values():
            if keep is not True and not (keep and rec.name in keep):
                rec.result = rec.child_results = None
            elif rec.result is not None:
                recs.append(rec)
        if self._fetch is None or not recs:
            return
        values = self._fetch([rec.result for rec in recs]) or [None] * len(recs)
        for rec, value in zip(recs, values):
            rec.result = value
            if rec.child_results is not None:
                rec.child_results = value

    # -- recording ---------------------------------------------------------------------------
    def _record(self, name: str, index: int | None, outcome: Outcome) -> None:
        rec = self.records[name]
        rec.attempts += outcome.attempts
        if self.notify is not None:
            self._started.pop((name, index), None)
            self.notify(name, index, outcome.state, outcome.attempts, outcome.message)
        if name in self._hooked:
            self._task_hook(name, index, outcome.state, outcome.message, outcome.attempts, outcome.start, outcome.end)
        if index is None:
            return self._finish(rec, outcome.state, outcome.message, outcome.result, outcome.start, outcome.end)
        rec.children[index] = outcome.state
        rec.child_results[index] = outcome.result
        if outcome.message and rec.message is None:
            names = rec.run_names
            rec.message = f"[{index if names is None or names[index] is None else names[index]}] {outcome.message}"
        rec.open -= 1
        if rec.open == 0:
            if name in self._plans and CACHED in rec.children:
                self._say_cached(rec)
            self._finish(rec, aggregate(rec.children), rec.message, rec.child_results)

    def _finish(self, rec: TaskRecord, state: str, message: str | None, result=None,
                start: float | None = None, end: float | None = None) -> None:
        rec.state, rec.message, rec.result = state, message, result
        rec.start = start if start is not None else rec.start
        rec.end = end if end is not None else time.time()
        # Recorded here when no attempt was (a failed trigger, or arguments that could not be resolved)
        if (state in (TRIGGER_FAILED, SKIPPED) or state == FAILED and rec.attempts == 0) \
                and self.notify is not None and rec.children is None:
            self.notify(rec.name, None, state, 0, message)
        if state in (TRIGGER_FAILED, SKIPPED, FAILED) and rec.attempts == 0 and message:
            log.log(logging.WARNING if state != SKIPPED else logging.INFO, "%s: %s (%s)", rec.name, state, message)
            if rec.name in self._hooked and rec.children is None:  # no attempt: the hook is told here
                self._task_hook(rec.name, None, state, message, 0, rec.start, rec.end)
        for tell in self._on_finish:
            tell(rec)
        if self._cleanup_left:
            self._cleanup_step(rec.name)
        for down in self._downstream[rec.name]:
            self._waiting[down] -= 1
            if self._waiting[down] == 0:
                self._ready.append(down)

    # -- cleanups ----------------------------------------------------------------------------
    def _cleanup_step(self, name: str) -> None:
        """Task `name` is finished: a cleanup whose task and consumers are all finished runs."""
        left = self._cleanup_left
        if name in left and left[name] == 0:
            self._run_cleanup(name)
        for up in self._consumes.get(name, ()):
            if up in left:
                left[up] -= 1
                if left[up] == 0 and self.records[up].state in FINAL_STATES:
                    self._run_cleanup(up)

    def _cleanup_rest(self) -> None:
        """The cleanups not run yet (the run was cancelled, or stopped early)."""
        for name in list(self._cleanup_left):
            self._run_cleanup(name)

    def _run_cleanup(self, name: str) -> None:
        """Call task `name`'s cleanup with its result, once, in this process; its own record
        (`NAME.cleanup`) says how it went. A task that did not succeed set nothing up: Skipped."""
        del self._cleanup_left[name]
        rec, task = self.records[f"{name}.cleanup"], self.spec.tasks[name]
        producer = self.records[name]
        rec.start = time.time()
        if producer.state not in OK_STATES:
            return self._cleanup_done(rec, SKIPPED, f"not run: {name} ended {producer.state}", 0)
        fn = self.callables[(name, "cleanup")]
        self._notify_task(rec.name, None, RUNNING, 1, None)
        ctx = self.base_ctx.for_task(rec.name, None, 1)
        token = ctxmod.set_current(ctx)
        try:
            value = producer.result
            if self._fetch is not None and value is not None:  # kept by the executor: brought here
                value = self._fetch(value)
            fn(value)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ctx.logger.error("%s: cleanup %s failed: %s\n%s", FAILED, task.cleanup, message, user_traceback(exc))
            return self._cleanup_done(rec, FAILED, f"cleanup {task.cleanup} failed: {message}", 1)
        finally:
            if task_output.partial:
                task_output.end_of_attempt()
            ctxmod.reset(token)
        self._cleanup_done(rec, SUCCESS, None, 1)

    def _cleanup_done(self, rec: TaskRecord, state: str, message: str | None, attempts: int) -> None:
        rec.state, rec.message, rec.attempts, rec.end = state, message, attempts, time.time()
        self._notify_task(rec.name, None, state, attempts, message)
        for tell in self._on_finish:
            tell(rec)

    # -- outputs and hooks -------------------------------------------------------------------
    def _outputs(self) -> None:
        """The flow's `outputs`, from the parameters and the tasks' results. One that cannot be
        evaluated is None, and fails the run with its reason."""
        lookup = self._lookup_here if self._fetch is not None else self._lookup
        self.result.outputs = {}
        for key, value in self.spec.outputs.items():
            try:
                self.result.outputs[key] = resolve_arg(value, lookup)
            except Exception as exc:  # a missing key, or a result the executor could not give back
                self.result.outputs[key] = None
                message = f"output {key}: {exc}"
                log.error("%s", message)
                self.records.setdefault(f"outputs.{key}", TaskRecord(f"outputs.{key}"))
                out = self.records[f"outputs.{key}"]
                out.state, out.message, out.start, out.end = FAILED, message, time.time(), time.time()
                self.result.message = self.result.message or message

    def _notify_retry(self, task: str, index, state: str, attempt: int, message) -> None:
        """The notify of a task with `on_retry`: the hook hears each Retrying state."""
        self._notify_task(task, index, state, attempt, message)
        if state == RETRYING:
            self._task_hook(task, index, state, message, attempt, None, time.time())

    def _task_hook(self, name: str, index, state: str, message, attempt: int, start, end) -> None:
        task = self.spec.tasks[name]
        key = "on_success" if state in OK_STATES else "on_failure" if state in FAILED_STATES else \
            "on_retry" if state == RETRYING else None
        if key is None or getattr(task, key) is None:
            return
        rec = self.records[name]
        names = rec.run_names
        run_name = names if index is None or not isinstance(names, list) else names[index]
        info = {"flow": self.spec.name, "run_id": self.run_id, "task": name, "run_name": run_name,
                "map_index": index, "state": state, "message": message, "attempt": attempt,
                "started": iso(start), "ended": iso(end)}
        self._call_state_hook(getattr(task, key), (name, key), info, f"{name}.{key}")

    def _flow_hook_args(self) -> None:
        """The `with` of the flow hooks, resolved now: their task references read results that
        are dropped (or that the executor keeps) once the run is over."""
        lookup = self._lookup_here if self._fetch is not None else self._lookup
        for key in ("on_success", "on_failure"):
            hook = getattr(self.spec, key, None)
            if hook is not None and hook.with_args:
                try:
                    self._hook_args[key] = {k: resolve_arg(v, lookup) for k, v in hook.with_args.items()}
                except Exception as exc:  # reported when the hook is called
                    self._hook_args[key] = exc

    def _flow_hooks(self) -> None:
        result = self.result
        key = "on_success" if result.state == SUCCESS else \
            "on_failure" if result.state in (FAILED, TIMED_OUT) else None
        hook = getattr(self.spec, key, None) if key else None
        if hook is None:
            return
        info = {"flow": self.spec.name, "run_id": self.run_id, "task": None, "run_name": None,
                "map_index": None, "state": result.state, "message": run_summary_message(result),
                "attempt": None, "started": iso(result.start), "ended": iso(result.end),
                "tasks": {n: {"state": r.state, "children": r.child_counts()} for n, r in self.records.items()}}
        self._call_state_hook(hook, (None, key), info, key, self._hook_args.get(key))

    def _call_state_hook(self, hook, callable_key: tuple, info: dict, label: str, kwargs=None) -> None:
        """Call a state hook with `info` and its `with` (`kwargs`, when resolved before); a hook
        that fails is logged with its traceback and changes nothing."""
        fn = self.callables.get(callable_key)
        if fn is None:
            return
        try:
            if isinstance(kwargs, Exception):
                raise kwargs
            if kwargs is None:
                kwargs = {k: resolve_arg(v, self._lookup) for k, v in hook.with_args.items()}
            fn(info, **kwargs)
        except Exception as exc:
            log.error("hook %s (%s) failed: %s: %s\n%s", label, hook.run, type(exc).__name__, exc,
                      user_traceback(exc))

    # -- observers ---------------------------------------------------------------------------
    def _notify_task(self, task: str, index, state: str, attempt: int, message) -> None:
        if state == RUNNING:
            self._started[task, index] = attempt
        for obs in self.observers:
            obs.task_state(task, index, state, attempt, message)

    def _set_flow_state(self, state: str) -> None:
        self.result.state = state
        for obs in self.observers:
            obs.flow_state(self.result)
