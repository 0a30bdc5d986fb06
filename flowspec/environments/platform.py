"""Runs elsewhere: one flow run from an image, and the loop every platform environment shares.

A flow run in a container, a Kubernetes pod or a Fargate task is the same thing three times:
an image (from docker storage), a command that runs one flow run by id inside it, and an
environment. This module gives that one type, `FlowRunJob`, and `PlatformEnvironment`, whose
shared `execute()` starts it, streams its output, watches it, stops it on cancel and settles the
run when it ends without a final state. A platform driver only says how to start, watch, stream
logs, stop and clean up.

Contract for a driver (docker.py is the reference):

    class MyEnvironment(PlatformEnvironment):
        platform = "pod"                                  # a noun for messages: "the pod exited ..."
        def backend_url_inside(self, url) -> str          # the backend URL as seen from inside; raise
                                                          #   FlowspecError when it cannot be reached
        def start(self, job: FlowRunJob) -> handle        # create and start it; FlowspecError on refusal
        def wait(self, handle, timeout) -> Outcome | None # None while it runs, else how it ended
        def stream_logs(self, handle, write) -> None      # blocking (own thread): write(text) as output
                                                          #   comes; return when the output ends
        def stop(self, handle, grace_s) -> None           # SIGTERM (the run ends Cancelled), kill after grace_s
        def cleanup(self, handle, outcome) -> None        # remove what start() made (its own keep_* option)

    Errors are FlowspecError with a hint (the next step); never let an SDK exception out.

What runs and where:
- The watcher is the process that calls `execute()`: an agent's child process
  (`python -m flowspec.child`, through `execute_registered`) or `flowspec run FILE`. It has
  already created or claimed the run and moved it to **Running**: that is the one rule. Inside
  the image, `python -m flowspec.inside` runs only a run that is Running (a run found Cancelling
  ends Cancelled without starting; any other state is left alone) and never moves it to Running.
- Inside, the run records its task states, log lines and heartbeat in the backend and sets the
  final state itself (flowspec/inside.py). The watcher's own Recorder keeps heartbeating and
  records the watcher's log lines; its final `finish()` cannot overwrite a final state (it is a
  compare-and-set from the active states).
- When the job ends and the run has no final state, the watcher fails it (Cancelled when it was
  being cancelled) with the platform's reason: `Outcome.reason` (exit code, OOMKilled, ...) and
  the last output lines.
- Cancel: Ctrl-C or SIGTERM of the watcher, or `runs cancel` (the watcher's Recorder sees
  Cancelling and interrupts it as Ctrl-C would; the run inside sees it too) → `stop(grace)`;
  the run inside ends Cancelled, and execute() returns the Cancelled result.

Process-level helpers: `execute_registered` (the agent's child: compile the registered spec, no
flow code imported, and run the platform environment), `runs_elsewhere` (the agent: does this
run's flow run from an image? then its next waiting children call `warm_up`, which imports the
compiler and every module of PLATFORM_SDKS that is installed, calling its own `warm_up()` if it
has one), `abandon_all` (a child whose agent died stops and cleans up what it follows).

The job's environment, later wins (`job_env`): the watcher's environment (the agent's, minus
variables that only make sense on this machine: PATH, HOME, VIRTUAL_ENV, DOCKER_*, ...), the
agent's `--env` values (always passed), `environment.env` (resolved here, where the agent's
values are), then flowspec's own variables, which no user value overrides:
FLOWSPEC_RUN_ID, FLOWSPEC_BACKEND (as seen from inside) and FLOWSPEC_FLOW_LOCATION (JSON of the
storage location: image, payload path, checksums).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from flowspec.environments.base import Environment, apply_env, restore_env
from flowspec.errors import FlowspecError

log = logging.getLogger("flowspec.platform")

# Environment types whose flow runs run from an image (they need docker storage).
PLATFORM_TYPES = ("docker", "kubernetes-job", "dask-kubernetes", "fargate-task")
OWN_VARIABLES = ("FLOWSPEC_RUN_ID", "FLOWSPEC_BACKEND", "FLOWSPEC_FLOW_LOCATION")
AGENT_ENV_NAMES = "FLOWSPEC_AGENT_ENV"  # set by the agent: the names given with `agent start --env`
# The watcher's variables that describe this machine, not the job's: never passed on.
_LOCAL_ONLY = {"PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "SHELL", "USER", "LOGNAME", "HOSTNAME", "TERM",
               "TMPDIR", "TMP", "TEMP", "_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
               "PYTHONEXECUTABLE", "LD_LIBRARY_PATH", "LD_PRELOAD", "MAIL", "DISPLAY", "COLUMNS", "LINES",
               "KUBECONFIG", "FLOWSPEC_HOME", AGENT_ENV_NAMES}
_LOCAL_PREFIXES = ("DOCKER_", "XDG_", "SSH_", "PYTEST_", "FLOWSPEC_", "LC_", "GPG_", "DBUS_", "COV_CORE")
POLL_S = 0.25
STOP_GRACE_S = 10.0
TAIL_LINES = 20
FINAL = {"Success": 0, "Failed": 1, "Cancelled": 130}


@dataclass(frozen=True)
class FlowRunJob:
    """One flow run from an image: what every platform driver starts.

    `command` runs the flow run inside the image; `env` is the job's whole environment (see the
    module docstring for its precedence); `labels` go on the container, pod or task so that
    its flow run can be found from the platform.
    """

    run_id: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its exit code (None when it never ran) and the platform's reason."""

    exit_code: int | None
    reason: str  # "exited with code 3", "was killed: OOMKilled (out of memory; exit code 137)"


def image_command(location: Mapping[str, Any], run_id: str) -> tuple[str, ...]:
    """The command that runs one flow run inside an image built by docker storage."""
    return (location.get("python", "/opt/venv/bin/python"), "-m", "flowspec.inside", run_id)


def job_name(flow: str, run_id: str) -> str:
    """A name every platform accepts (DNS label: lower case, digits, '-', at most 63)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", flow.lower()).strip("-")[:40] or "flow"
    return f"flowspec-{slug}-{run_id.replace('-', '')[:12]}"


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The watcher's variables that a job gets: all but this machine's own, plus every `--env`."""
    given = {n for n in environ.get(AGENT_ENV_NAMES, "").split(",") if n}
    return {k: v for k, v in environ.items()
            if k in given or (k not in _LOCAL_ONLY and not k.startswith(_LOCAL_PREFIXES))}


def flow_env(spec) -> dict[str, str]:
    """`environment.env` resolved against this process's environment (positioned errors if unset)."""
    saved = apply_env(spec)
    try:
        # `saved` names what was set: a variable holding a secret is resolved inside, not here
        return {name: os.environ[name] for name in saved}
    finally:
        restore_env(saved)


def job_env(spec, own: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment: forwarded < environment.env < flowspec's own (see the module doc)."""
    environ = os.environ if environ is None else environ
    env = forwarded_env(environ)
    if spec.environment.type == "docker":  # no secret mechanism: the secrets' providers travel as variables
        env.update({k: v for k, v in environ.items() if k.startswith("FLOWSPEC_SECRET")})
    user = flow_env(spec)
    for name in sorted(set(user) & set(own)):
        log.warning("environment.env.%s is flowspec's own variable for the run: it is not overridden", name)
    env.setdefault("PYTHONUNBUFFERED", "1")  # output reaches the logs as it is written
    return {**env, **user, **own}


def make_job(spec, location: Mapping[str, Any], run_id: str, backend_url: str,
             environ: Mapping[str, str] | None = None) -> FlowRunJob:
    own = {"FLOWSPEC_RUN_ID": run_id, "FLOWSPEC_BACKEND": backend_url,
           "FLOWSPEC_FLOW_LOCATION": json.dumps(dict(location), sort_keys=True)}
    return FlowRunJob(run_id=run_id, image=location["image"], command=image_command(location, run_id),
                      env=MappingProxyType(job_env(spec, own, environ)), name=job_name(spec.name, run_id),
                      labels=MappingProxyType({"flowspec.run-id": run_id, "flowspec.flow": spec.name}))


class PlatformEnvironment(Environment):
    """Base class of environments that run each flow run from an image (see the module doc).

    `location` is the docker storage location of the flow (from the registered flow, or from
    the build that `flowspec run FILE` just made); when None it is read from the run's flow.
    """

    platform = "job"

    def __init__(self, spec, location: Mapping[str, Any] | None = None) -> None:
        super().__init__(spec)
        self.location = location
        self.backend_url: str | None = None  # the run's backend, when not $FLOWSPEC_BACKEND or the default
        self.run_backend = None  # the run's backend while execute() follows it

    # -- what each platform says -----------------------------------------------------------------
    @abstractmethod
    def backend_url_inside(self, url: str) -> str:
        """The backend URL the job uses; a FlowspecError when the backend is out of its reach."""

    @abstractmethod
    def start(self, job: FlowRunJob) -> Any:
        """Create and start the job; return a handle for the methods below."""

    @abstractmethod
    def wait(self, handle: Any, timeout: float) -> Outcome | None:
        """Wait up to `timeout` seconds: None while it runs, its Outcome once it ended."""

    @abstractmethod
    def stream_logs(self, handle: Any, write: Callable[[str], None]) -> None:
        """Call `write(text)` with the job's output as it comes; return when it ends."""

    @abstractmethod
    def stop(self, handle: Any, grace_s: float) -> None:
        """Ask the job to stop (SIGTERM: the run inside ends Cancelled); force it after grace_s."""

    @abstractmethod
    def cleanup(self, handle: Any, outcome: Outcome | None) -> None:
        """Remove what start() made, unless the environment keeps it."""

    # -- the shared loop ---------------------------------------------------------------------------
    def execute(self, params: dict, observers=(), run_id: str | None = None, keep_results: bool = True):
        """Run the flow run `run_id` on the platform and follow it to its end; return its RunResult.

        `observers` must hold the caller's Recorder (its backend is the run's); the others (a
        progress display) receive the task states that the run records inside the job.
        """
        from flowspec.backend import backend_url
        from flowspec.recorder import Recorder

        recorders = [o for o in observers if isinstance(o, Recorder)]
        if run_id is None or not recorders:
            raise FlowspecError(f"the {self.spec.environment.type} environment runs recorded flow runs only,"
                                " and this run has no backend to record it in",
                                hint="check that the backend ($FLOWSPEC_BACKEND) can be opened")
        backend = self.run_backend = recorders[0].backend
        location = self.location or registered_location(backend, run_id)
        url = self.backend_url_inside(self.backend_url or backend_url())
        job = make_job(self.spec, location, run_id, url)
        # As the runner does: observers hear that the run started (a Recorder that records a
        # run only once it starts creates it now: the job needs it) and, at the end, its result.
        for obs in observers:
            obs.flow_state(_started(self.spec, run_id, params))
        handle = self.start(job)
        outcome = None
        try:
            _WATCHED[id(handle)] = (self, handle)
            log.info("run %s: %s %s started from image %s", run_id, self.platform, job.name, job.image)
            outcome, cancelled, tail = self.follow(handle, backend, run_id, [o for o in observers if o not in recorders])
            result = self.settle(backend, run_id, params, outcome, cancelled, tail)
            for obs in observers:
                obs.flow_state(result)
            return result
        finally:
            _WATCHED.pop(id(handle), None)
            for _ in range(2):  # a second Ctrl-C must not leave the container behind
                try:
                    self.cleanup(handle, outcome)
                    break
                except FlowspecError as exc:
                    log.warning("run %s: %s", run_id, exc)
                    break
                except KeyboardInterrupt:
                    continue

    def follow(self, handle: Any, backend, run_id: str, observers: list) -> tuple[Outcome, bool, deque]:
        """Stream output and task states until the job ends; Ctrl-C/SIGTERM stop it (twice: at once)."""
        tail: deque = deque(maxlen=TAIL_LINES)
        pump = threading.Thread(target=self._pump, args=(handle, tail), daemon=True, name="platform-logs")
        pump.start()
        states = _TaskStates(backend, run_id, observers)
        cancelled = False
        while True:
            try:
                outcome = self.wait(handle, POLL_S)
                states.forward()
                if outcome is not None:
                    break
            except KeyboardInterrupt:
                log.info("run %s: stopping the %s", run_id, self.platform)
                self.stop(handle, 0.0 if cancelled else STOP_GRACE_S)
                cancelled = True
        pump.join(5.0)
        states.forward()
        return outcome, cancelled, tail

    def _pump(self, handle: Any, tail: deque) -> None:
        partial = [""]

        def write(text: str) -> None:
            sys.stderr.write(text)
            sys.stderr.flush()
            lines = (partial[0] + text).split("\n")
            partial[0] = lines.pop()
            tail.extend(line for line in lines)

        try:
            self.stream_logs(handle, write)
        except FlowspecError as exc:
            log.warning("the %s's output cannot be read: %s", self.platform, exc)
        if partial[0]:
            tail.append(partial[0])

    def settle(self, backend, run_id: str, params: dict, outcome: Outcome, cancelled: bool, tail: deque):
        """The run's result from the backend; first fail it when the job left it without a final state."""
        run = backend.get_run(run_id)
        if run is not None and run.state not in FINAL:
            final = "Cancelled" if cancelled or run.state == "Cancelling" else "Failed"
            message = f"the {self.platform} {outcome.reason} without reporting a final state"
            lines = "\n".join(tail).rstrip()
            message += f"; its last output:\n{lines}" if lines else ""
            # A job that exited 0 without a final state still failed its run: never record 0 for it.
            code = outcome.exit_code if outcome.exit_code not in (None, 0) else FINAL[final]
            backend.set_run_state(run_id, final, message, expected_from={run.state}, exit_code=code)
            log.warning("run %s: %s: %s", run_id, final, message)
        return result_from_backend(self.spec, backend, run_id, params)


class _TaskStates:
    """Hands the task states that the job records in the backend to local observers (progress)."""

    def __init__(self, backend, run_id: str, observers: list) -> None:
        self.backend, self.run_id, self.observers, self.seen = backend, run_id, observers, 0

    def forward(self) -> None:
        if not self.observers:
            return
        states = self.backend.task_states(self.run_id, history=True)
        for s in states[self.seen:]:
            for obs in self.observers:
                obs.task_state(s.task, s.map_index, s.state, s.attempt, s.message)
        self.seen = len(states)


_WATCHED: dict[int, tuple[PlatformEnvironment, Any]] = {}  # jobs this process follows now


def abandon_all() -> None:
    """Stop and remove every job this process follows, at once: the process is about to exit
    without following them to their end (its agent died)."""
    for env, handle in list(_WATCHED.values()):
        try:
            env.stop(handle, 0.0)
            env.cleanup(handle, None)
        except Exception as exc:  # best effort on the way out: say so, go on with the others
            print(f"flowspec: warning: a {env.platform} of this run may be left running: {exc}", file=sys.stderr)


def _started(spec, run_id: str, params: dict):
    from flowspec.runner import RunResult, TaskRecord

    result = RunResult(spec.name, run_id, params, {name: TaskRecord(name) for name in spec.tasks})
    result.state, result.start = "Running", time.time()
    return result


def runs_elsewhere(backend, run) -> bool:
    """Whether a claimed run's flow runs from an image (its environment is a platform type)."""
    try:
        flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
    except FlowspecError:  # only a warm-up depends on it: not worth failing anything over
        return False
    return flow is not None and (flow.environment or {}).get("type") in PLATFORM_TYPES


def registered_location(backend, run_id: str) -> dict:
    run = backend.get_run(run_id)
    flow = backend.get_flow_by_id(run.flow_id) if run is not None and run.flow_id is not None else None
    if flow is None:
        raise FlowspecError(f"run {run_id} names no registered flow: there is no image to run it from")
    return dict(flow.storage)


def result_from_backend(spec, backend, run_id: str, params: dict):
    """A runner.RunResult built from what the run recorded (states, times, messages)."""
    from flowspec.runner import RunResult, TaskRecord, aggregate

    tasks = {name: TaskRecord(name) for name in spec.tasks}
    children: dict[str, dict[int, str]] = {}
    tries: dict[str, dict[int, int]] = {}  # a mapped task's attempts: its children's, summed
    for s in backend.task_states(run_id, history=True):
        rec = tasks.get(s.task)
        if rec is None:
            continue
        if s.map_index is not None:
            children.setdefault(s.task, {})[s.map_index] = s.state
            mine = tries.setdefault(s.task, {})
            mine[s.map_index] = max(mine.get(s.map_index, 0), s.attempt)
            rec.start = rec.start if rec.start is not None else s.time
            rec.end = s.time
            continue
        rec.state, rec.message, rec.attempts = s.state, s.message, max(rec.attempts, s.attempt)
        if s.state == "Running" and rec.start is None:
            rec.start = s.time
        rec.end = s.time
    for name, states in children.items():
        rec = tasks[name]
        rec.children = [states[i] for i in sorted(states)]
        rec.attempts = sum(tries[name].values())
        if rec.state in ("Pending", "Running"):
            rec.state = aggregate(rec.children)
    run = backend.get_run(run_id)
    if run is None:
        raise FlowspecError(f"run {run_id} is no longer in the backend", hint="see: flowspec runs list")
    result = RunResult(spec.name, run_id, params, tasks)
    result.state, result.message = run.state, run.message
    result.outputs = backend.run_outputs(run_id)  # recorded inside, where the flow ran
    history = backend.run_history(run_id)
    result.start = history[0].time if history else run.created
    result.end = history[-1].time if history else run.updated
    return result


def execute_registered(backend, run, flow, recorder):
    """Run a registered flow's run on its platform (the agent's child process calls this).

    The spec is compiled from the registered text, without importing the flow's code: the code
    and its dependencies live in the image, not necessarily here.
    """
    from flowspec.compile import compile_document
    from flowspec.drivers import load_driver
    from flowspec.errors import SpecError
    from flowspec.loader import load_text
    from flowspec.params import resolve_parameters

    doc = load_text(flow.spec_text, f"{flow.name} (registered version {flow.version})")
    spec, diags = compile_document(doc, files=(flow.environment or {}).get("_files"))  # templates kept at register
    if diags:
        raise SpecError(diags)
    params = resolve_parameters(spec.parameters, {}, None, list(run.parameters.items()))
    environment = load_driver("environment", spec.environment.type)(spec, location=dict(flow.storage))
    return environment.execute(params, (recorder,), run.id, keep_results=False)


# SDKs of platform drivers that a waiting agent child imports ahead of a run, when installed.
PLATFORM_SDKS = ("docker", "kubernetes", "flowspec.environments.kubernetes_job", "flowspec.k8s.checks")
_WARM_SPEC = "version: 1\nname: warm\ntasks:\n  t:\n    run: m:f\n"


def warm_up() -> None:
    """Import ahead of a run what following a platform run needs: the compiler (the registered
    spec is compiled from its text) and the platform SDKs that are installed. The agent's child
    calls this while it waits for its run, so a claimed run does not pay for it."""
    import importlib
    import importlib.util

    from flowspec.compile import compile_document
    from flowspec.loader import load_text

    compile_document(load_text(_WARM_SPEC, "<warm-up>"))
    for name in PLATFORM_SDKS:
        if importlib.util.find_spec(name) is not None:
            getattr(importlib.import_module(name), "warm_up", lambda: None)()  # a module's own warm-up, if any


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes (for drivers whose SDK has no wait)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True
