"""Subflows at run time: `flow: FILE` (a child flow run in this run's process) and `flow: {name}`
(a registered flow's run, created for the agents).

The runner calls a subflow task's `SubflowCall` on its own thread (the main one), not on its
executor, whatever the parent's executor is: the child has an executor of its own (its spec's),
and a stop signal or the parent's timeout, which arrive as KeyboardInterrupt on the main thread,
reach the child's runner first, which cancels the child's tasks; the parent is then cancelled
too. A mapped subflow on an executor with several workers (`local-dask`) runs its children on
that many threads of this process instead (`run_concurrently`); a stop then reaches the main
thread, which passes it on to each running child's thread. The child is recorded as a flow run
of its own, linked to its parent run and task (`run_links`), in the backend the parent records
in. Its `outputs` are the task's result; a child that did not succeed fails the task with the
child run's id, state and message.
"""
from __future__ import annotations

from contextvars import ContextVar

# (parent run id, parent task label) of the child run being made on this thread: what its
# backend row is linked to (a ContextVar: children made at once on several threads each see theirs)
_PARENT: ContextVar[tuple | None] = ContextVar("flowspec_subflow_parent", default=None)
_LIVE: dict = {}  # thread ident -> id of the child run that thread runs now (for a stop that outlasts the grace)
STOP_GRACE_S = 5.0  # after a stop, how long the main thread waits for the children's threads to end


class SubflowFailed(Exception):
    """The child flow run did not succeed."""


def current_parent() -> tuple | None:
    return _PARENT.get()


class SubflowCall:
    """The callable of a `flow: FILE` task: its keyword arguments are the child's parameters."""

    __slots__ = ("spec", "callables", "shared_env")

    def __init__(self, child_spec, callables: dict | None = None) -> None:
        self.spec = child_spec
        self.callables = callables  # from a stored flow's payload; None: imported from the child's folder
        # Children on several threads at once set the same `environment.env`, and none restores
        # it (one restoring would take it from the others): `run_concurrently` restores it at the end.
        self.shared_env = False

    def __call__(self, **kwargs):
        import threading

        from flowspec import context as ctxmod
        from flowspec import runner
        from flowspec.compile import resolve_env
        from flowspec.environments.base import run_in_process
        from flowspec.errors import SpecError
        from flowspec.params import ParamsError, resolve_parameters
        from flowspec.recorder import current_url, record_local_run, run_message
        from flowspec.restart import no_plan

        ctx = ctxmod.current()
        label = ctx.task_name if ctx.map_index is None else f"{ctx.task_name}[{ctx.map_index}]"
        try:
            params = resolve_parameters(self.spec.parameters, {}, None, list(kwargs.items()))
        except ParamsError as exc:
            shown = "; ".join([d.message for d in exc.diagnostics] + list(exc.problems))
            raise SubflowFailed(f"the parameters of child flow {self.spec.name} ({self.spec.path}): {shown}") from None
        spec = resolve_env(self.spec, storage=False)

        def execute(observers, run_id):
            if run_id is not None:
                _LIVE[threading.get_ident()] = run_id
            try:
                result = run_in_process(spec, params, observers, run_id, self.callables, keep_results=False,
                                        keep_env=self.shared_env)
            except SpecError as exc:  # its code cannot be imported: where, and what to do
                raise SubflowFailed(self.unloadable(exc)) from None
            result.message = run_message(result)
            return result

        token = _PARENT.set((ctx.run_id, label))
        try:
            with no_plan():  # a child of a restart is a new run (its subflow task runs again), no restart
                result = record_local_run(spec, params, execute, current_url())
        finally:
            _PARENT.reset(token)
            _LIVE.pop(threading.get_ident(), None)
        if result.state == runner.CANCELLED and runner.stop_requested():
            raise KeyboardInterrupt  # the stop was the parent's too: it cancels the parent run
        if result.state != runner.SUCCESS:
            raise SubflowFailed(f"child flow run {result.run_id} ({spec.name}) ended {result.state}"
                                + (f": {result.message}" if result.message else ""))
        return dict(result.outputs or {})

    def unloadable(self, exc) -> str:
        """Why the child's code could not be imported, each problem at its place in the child spec."""
        problems = "; ".join(d.text().splitlines()[0] for d in exc.diagnostics[:3])
        more = f" (and {len(exc.diagnostics) - 3} more)" if len(exc.diagnostics) > 3 else ""
        return (f"the code of child flow {self.spec.name} cannot be imported: {problems}{more}; fix the child spec or"
                " its code (`flowspec validate --strict PARENT` checks it); a registered flow whose storage an older"
                " flowspec built, without its children's code, needs `flowspec register` again")


FINAL = ("Success", "Failed", "Cancelled", "TimedOut")
POLL_S = 0.2


class RegisteredCall:
    """The callable of a `flow: {name, project, version}` task: a flow run created for the agents
    (with the task's `labels` instead of the flow's own, when it has some), linked to this run and task; with `wait`
    the task follows it to its end (its outputs are the result), else its id is the result."""

    __slots__ = ("sub",)

    def __init__(self, sub) -> None:
        self.sub = sub

    def __call__(self, **kwargs):
        import time

        from flowspec import context as ctxmod
        from flowspec.backend import open_backend
        from flowspec.recorder import current_url

        ctx = ctxmod.current()
        label = ctx.task_name if ctx.map_index is None else f"{ctx.task_name}[{ctx.map_index}]"
        sub = self.sub
        with open_backend(current_url()) as backend:
            flow = backend.get_flow(sub.name, sub.project, sub.version)
            if flow is None:
                version = f" version {sub.version}" if sub.version is not None else ""
                raise SubflowFailed(f"no flow '{sub.name}'{version} is registered in project '{sub.project}'"
                                    f" of {backend.url}; register it with `flowspec register FILE`")
            params = registered_parameters(flow, kwargs)
            run = backend.create_flow_run(flow.id, params, sub.labels or (), own_labels=True)
            backend.set_run_link(run.id, None, None, parent_run=ctx.run_id, parent_task=label)
            ctx.logger.info("child flow run %s of %s/%s version %d created for the agents", run.id, sub.project,
                            sub.name, flow.version)
            if not sub.wait:
                return run.id
            report_ancestor_block(backend, run.id, ctx.logger)
            try:
                while (state := backend.get_run(run.id).state) not in FINAL:
                    time.sleep(POLL_S)
            except KeyboardInterrupt:  # the parent is cancelled or timed out: so is its child
                backend.cancel_run(run.id)
                raise
            child = backend.get_run(run.id)
            if state != "Success":
                raise SubflowFailed(f"child flow run {run.id} ({sub.name}) ended {state}"
                                    + (f": {child.message}" if child.message else ""))
            return dict(backend.run_outputs(run.id) or {})


def report_ancestor_block(backend, run_id: str, logger) -> None:
    """A child that can start only in a slot its own ancestors hold (this run among them) would
    wait for ever in silence: it is moved to Queued with that reason (as `runs show` gives it) and
    this run's log says it. The task goes on waiting: raising the limit lets the child start, and
    cancelling the parent, or its `timeout`, ends the wait."""
    from flowspec.backend import QUEUED, WAITING_STATES

    blocks = backend.ancestor_blocks(run_id)
    if not blocks:
        return
    reason = "; ".join(map(str, blocks))
    run = backend.get_run(run_id)
    if run is not None and run.state in WAITING_STATES:
        backend.set_run_state(run_id, QUEUED, reason, expected_from={run.state})
    logger.warning("child flow run %s cannot start while this run waits for it (a deadlock): %s; this task waits"
                   " until it can (or the run is cancelled or times out)", run_id, reason)


def registered_parameters(flow, values: dict) -> dict:
    """`values` checked against the registered version's parameters (as `run --name` does)."""
    from flowspec.loader import load_text
    from flowspec.params import ParamsError, resolve_parameters
    from flowspec.spec import ParameterSpec

    declared = (load_text(flow.spec_text, f"{flow.name} (registered version {flow.version})").data
                or {}).get("parameters") or {}
    specs = {name: ParameterSpec(name=name, type=p.get("type"), default=p.get("default"),
                                 required="default" not in p, enum=tuple(p["enum"]) if "enum" in p else None)
             for name, p in declared.items()}
    try:
        return resolve_parameters(specs, {}, None, list(values.items()), env_defaults=False)
    except ParamsError as exc:
        shown = "; ".join([d.message for d in exc.diagnostics] + list(exc.problems))
        raise SubflowFailed(f"the parameters of {flow.name} version {flow.version}: {shown}") from None


def run_concurrently(fn, units: list, threads: int, record) -> None:
    """Run the mapped children `units` ((index, run_unit arguments), from the runner) on up to
    `threads` threads of this process; `record(index, outcome)` is called on this thread as
    each ends.

    A stop (Ctrl-C, SIGTERM, the parent's `timeout`) lands here, on the main thread: no child
    starts any more, each running one is interrupted on its thread as the main thread would be
    (its runner cancels it, recorded Cancelled), and the stop goes on to the parent once they
    have ended, or after STOP_GRACE_S for a task that cannot be interrupted (Python cannot stop a
    thread inside a blocking call): its run is then recorded Cancelled from here."""
    import contextvars
    import os
    import queue
    import threading
    from collections import deque

    from flowspec.runner import run_unit

    todo, ended = deque(units), queue.SimpleQueue()
    saved = {name: os.environ.get(name) for name in fn.spec.environment.env} if isinstance(fn, SubflowCall) else {}
    if isinstance(fn, SubflowCall):
        fn.shared_env = True

    def work() -> None:
        while True:
            try:
                i, args = todo.popleft()
            except IndexError:
                return
            try:
                ended.put((i, run_unit(*args), None))
            except BaseException as exc:  # a stop that reached this child: the main thread has it too
                ended.put((i, None, exc))
                return

    pool = [threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                             name=f"flowspec-subflow-{n}") for n in range(min(threads, len(units)))]
    for thread in pool:
        thread.start()
    try:
        for _ in range(len(units)):
            while True:
                try:
                    i, outcome, error = ended.get(timeout=0.5)  # a timed wait: a signal gets in
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in pool) and ended.empty():
                        raise RuntimeError("the threads running the child flow runs ended early") from None
            if error is not None:
                raise error
            record(i, outcome)
    except BaseException:
        todo.clear()
        _stop(pool)
        raise
    finally:
        if isinstance(fn, SubflowCall):
            fn.shared_env = False
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _stop(pool: list) -> None:
    """Interrupt each running child's thread as a Ctrl-C does the main thread, and wait for them
    (at most STOP_GRACE_S); the runs of those still running then are recorded Cancelled here."""
    import time

    from flowspec import runner

    runner._interrupted = True  # their runners take the KeyboardInterrupt for the real stop it is
    for thread in pool:
        if thread.is_alive() and thread.ident is not None:
            runner.interrupt_thread(thread.ident)
    deadline = time.monotonic() + STOP_GRACE_S
    for thread in pool:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [_LIVE[t.ident] for t in pool if t.is_alive() and t.ident in _LIVE]
    if stuck:
        from flowspec.backend import ACTIVE_STATES, CANCELLED, NotFoundError, open_backend
        from flowspec.recorder import current_url

        with open_backend(current_url()) as backend:
            for run_id in stuck:
                try:
                    backend.set_run_state(run_id, CANCELLED, "cancelled with its parent run (its task was still"
                                          " running and cannot be interrupted)", expected_from=set(ACTIVE_STATES))
                except NotFoundError:
                    pass  # stopped before its run was recorded: nothing to cancel
