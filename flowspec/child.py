"""The process an agent starts for one flow run: `python -m flowspec.child [RUN_ID] [--agent-pid PID]`.

Without RUN_ID the child warms up (imports, backend connection) and then reads the run id
from stdin: an agent keeps one such process ready, so a claimed run starts without paying
for Python's start-up. End of input before an id means "not needed": it exits 0.

It finds the backend in `$FLOWSPEC_BACKEND` (set by the agent), moves the run from Submitted
to Running, loads the flow from storage, runs it with a Recorder (task states, log lines and a
heartbeat of its own run), then sets the final state and exits with the run's exit code
(0 Success, 1 Failed, 130 Cancelled).

Stopping: a heartbeat that finds the run Cancelling, or a SIGTERM from the agent, interrupts
the run as Ctrl-C would (tasks are cancelled, `on_exit` runs). When its agent dies (the parent
pid changes) the child records the run Failed and exits at once, so an agent killed with
`kill -9` leaves no flow run behind.

A backend that fails (a database restart, a locked file) is waited for, up to
`--outage-tolerance` seconds, with backoff: the run goes on and its recorder buffers.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from flowspec.backend.outage import DEFAULT_TOLERANCE_S, Outage
from flowspec.errors import FlowspecError
from flowspec.recorder import EXIT_CODES, HEARTBEAT_INTERVAL_S, Recorder, outcome_of, run_message

EXIT_INTERNAL = 70
BUSY_TIMEOUT_S = 2.0  # a SQLite lock held longer than this is an outage, retried with backoff


class ChildRun:
    """One flow run in this process, from Submitted to its final state."""

    def __init__(self, backend, run_id: str, agent_pid: int | None, heartbeat_s: float,
                 outage_s: float = DEFAULT_TOLERANCE_S) -> None:
        self.backend, self.run_id, self.agent_pid = backend, run_id, agent_pid
        self.reason: str | None = None  # why the run was interrupted, when it was
        self.recorder = Recorder(backend, run_id, heartbeat_s=heartbeat_s, on_cancel=self.cancel,
                                 guard=self.check_agent if agent_pid else None, outage_s=outage_s)
        # The main thread's backend calls, retried through an outage (the recorder has its own).
        self.call = Outage(backend.url, outage_s, self.recorder.outage.say).call

    def main(self) -> int:
        if not self.call(self.backend.set_run_state, self.run_id, "Running", expected_from={"Submitted"}):
            return self.not_started()
        signal.signal(signal.SIGTERM, self.on_sigterm)
        self.recorder.start()
        outputs = None
        try:
            result = self.execute()
            state, message, outputs = result.state, self.reason or run_message(result), result.outputs
        except (Exception, KeyboardInterrupt) as exc:
            state, message = outcome_of(exc)
            message = self.reason or message
            if not isinstance(exc, (FlowspecError, KeyboardInterrupt)):
                traceback.print_exc()
        code = EXIT_CODES.get(state, 1)
        self.recorder.finish(state, message, code, outputs)
        return code

    def execute(self):
        from flowspec.environments.base import run_in_process
        from flowspec.params import resolve_parameters
        from flowspec.storage import load_flow

        run = self.call(self.backend.get_run, self.run_id)
        flow = self.call(self.backend.get_flow_by_id, run.flow_id) if run.flow_id is not None else None
        if flow is None:
            raise FlowspecError(f"run {self.run_id} names no registered flow, so there is nothing to load")
        from flowspec.environments.platform import PLATFORM_TYPES, execute_registered

        if (flow.environment or {}).get("type") in PLATFORM_TYPES:  # its code is in its image: watch it there
            return execute_registered(self.backend, run, flow, self.recorder)
        spec, callables = load_flow(flow.storage)
        from flowspec.secrets import decrypt_params

        given = decrypt_params(run.parameters)  # secret parameters are stored encrypted
        params = resolve_parameters(spec.parameters, {}, None, list(given.items()))
        with self.restart_plan(spec):
            if spec.environment.type in ("local", "remote"):
                return run_in_process(spec, params, (self.recorder,), self.run_id, callables, keep_results=False)
            from flowspec.drivers import load_driver

            environment = load_driver("environment", spec.environment.type)(spec)
            return environment.execute(params, (self.recorder,), self.run_id, keep_results=False)

    def restart_plan(self, spec):
        """A restart's plan (`flowspec runs restart` of a registered flow's run), from its run's notes."""
        from flowspec import restart

        return restart.of_run(self.call(self.backend.run_link, self.run_id), spec.name)

    def not_started(self) -> int:
        """The run left Submitted before this process got to it: cancelled, or reaped."""
        run = self.call(self.backend.get_run, self.run_id)
        if run is not None and run.state == "Cancelling":
            self.backend.set_run_state(self.run_id, "Cancelled", "cancelled before it started",
                                       expected_from={"Cancelling"}, exit_code=130)
            return 130
        state = run.state if run is not None else "unknown"
        print(f"flowspec: run {self.run_id} is {state}, not Submitted: not starting it", file=sys.stderr)
        return 1

    def cancel(self) -> None:
        self.reason = "cancelled by the user"
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the runner cancels the flow run

    def on_sigterm(self, signum: int, frame: object) -> None:
        self.reason = self.reason or "stopped by its agent (SIGTERM)"
        raise KeyboardInterrupt

    def check_agent(self) -> None:
        if os.getppid() == self.agent_pid:
            return
        # Our agent is gone: nobody would reap us or stop us on cancel. End the run now.
        message = f"the agent that started this run (pid {self.agent_pid}) died during the run"
        self.recorder.finish("Failed", message, 1)
        from flowspec.environments.platform import abandon_all

        abandon_all()  # a container, pod or task this process watched goes with it
        os._exit(1)


def wait_for_run_id() -> str:
    """Import what a run needs, then wait for the agent to name the run (empty: not needed)."""
    import cloudpickle  # noqa: F401  (the stored flow is loaded with it)

    import flowspec.callables  # noqa: F401
    import flowspec.environments.local  # noqa: F401
    import flowspec.executors.local  # noqa: F401
    import flowspec.loader  # noqa: F401  (a stored spec keeps its Document, for positions)
    import flowspec.params  # noqa: F401
    import flowspec.runner  # noqa: F401
    import flowspec.storage.local  # noqa: F401

    if os.environ.get("FLOWSPEC_WARM_PLATFORM"):  # the agent runs flows from images: their needs too
        from flowspec.environments.platform import warm_up

        warm_up()
    return sys.stdin.readline().strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flowspec.child", description=__doc__.splitlines()[0])
    p.add_argument("run_id", metavar="RUN_ID", nargs="?", help="the run (default: read it from stdin)")
    p.add_argument("--agent-pid", type=int, default=None, help="exit when this parent process dies")
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL_S, metavar="SECONDS",
                   help=f"how often to heartbeat the run (default {HEARTBEAT_INTERVAL_S:g})")
    p.add_argument("--outage-tolerance", type=float, default=DEFAULT_TOLERANCE_S, metavar="SECONDS",
                   help=f"how long to wait for a failing backend (default {DEFAULT_TOLERANCE_S:g})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from flowspec import logs
    from flowspec.backend import open_backend, redact_url

    args = parse_args(argv)
    logs.configure()
    try:
        opening = Outage(redact_url(os.environ.get("FLOWSPEC_BACKEND", "(default)")), args.outage_tolerance,
                         lambda level, text: print(f"flowspec: {level}: {text}", file=sys.stderr, flush=True))
        with opening.call(open_backend, busy_timeout_s=BUSY_TIMEOUT_S) as backend:
            run_id = args.run_id or wait_for_run_id()
            if not run_id:
                return 0
            return ChildRun(backend, run_id, args.agent_pid, args.heartbeat, args.outage_tolerance).main()
    except FlowspecError as exc:  # the backend itself failed: nothing more can be recorded
        print(f"flowspec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
