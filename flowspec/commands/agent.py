"""`flowspec agent start [--label L]... [--env KEY=VALUE]... [--name N] [--max-runs N] [--poll-interval S]
[--heartbeat-timeout S] [--outage-tolerance S] [--backend URL]`, and `flowspec agent stop NAME [--backend URL]
[--format text|json]`."""
from __future__ import annotations

import argparse

from flowspec.backend.base import HEARTBEAT_TIMEOUT_S
from flowspec.backend.outage import DEFAULT_TOLERANCE_S
from flowspec.commands._backend import add_common

# The agent's defaults: a poll interval short enough for a run to start within a second of being
# created, a heartbeat timeout long enough that a busy machine never looks dead.
DEFAULT_POLL_INTERVAL_S = 0.5
DEFAULT_MAX_RUNS = 4
# One backend call waits this long for a SQLite lock; longer is an outage, retried with backoff.
BUSY_TIMEOUT_S = 2.0


def register(sub) -> None:
    parser = sub.add_parser("agent", help="run flow runs from the backend on this machine, or stop an agent",
                            description="Agents claim the flow runs their labels allow and run each in "
                                        "a child process.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("start", help="start an agent in the foreground (Ctrl-C stops it)",
                           description="Start an agent: it takes a flow run only when the run's labels "
                                       "are a subset of its labels (a run without labels: only agents "
                                       "without labels), within the concurrency limits. Ctrl-C or "
                                       "SIGTERM stops it; its running flow runs end Cancelled.")
    p.add_argument("--label", action="append", default=[], metavar="LABEL", help="an agent label (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", type=_env_pair,
                   help="a variable for every flow run it starts (repeatable); the flow's environment.env wins")
    p.add_argument("--name", help="the agent's name in the backend (default: HOST-PID)")
    p.add_argument("--max-runs", type=_positive(int), default=DEFAULT_MAX_RUNS, metavar="N",
                   help=f"at most N flow runs at once (default {DEFAULT_MAX_RUNS})")
    p.add_argument("--poll-interval", type=_positive(float), default=DEFAULT_POLL_INTERVAL_S, metavar="S",
                   help=f"seconds between polls of the backend (default {DEFAULT_POLL_INTERVAL_S:g})")
    p.add_argument("--heartbeat-timeout", type=_positive(float), default=HEARTBEAT_TIMEOUT_S,
                   metavar="S", help="a run of this agent whose heartbeat is older than this is marked Failed by "
                                     f"whoever reads it, any agent or command (default {HEARTBEAT_TIMEOUT_S:g})")
    p.add_argument("--outage-tolerance", type=_positive(float), default=DEFAULT_TOLERANCE_S, metavar="S",
                   help="keep serving, and keep runs going, while the backend fails (a database restart, a "
                        f"locked file) for up to S seconds, then stop with an error (default {DEFAULT_TOLERANCE_S:g})")
    p.add_argument("--backend", metavar="URL", default=None, help="the backend (default: $FLOWSPEC_BACKEND, "
                   "else flowspec.db in $FLOWSPEC_HOME or ~/.flowspec)")
    p.set_defaults(func=main)
    p = actions.add_parser("stop", help="ask a running agent to stop, as SIGTERM does (its runs end Cancelled)",
                           description="Ask an agent, wherever it runs, to stop: it sees the request at its next"
                                       " poll, cancels its running flow runs and is recorded stopped, as on"
                                       " SIGTERM. Exit 0 asked, 1 unknown or already stopped, 2 usage.")
    p.add_argument("name", metavar="NAME", help="the agent's name (see: flowspec agents list)")
    add_common(p)
    p.set_defaults(func=main_stop)


def main_stop(args) -> int:
    import time

    from flowspec.backend import NotFoundError
    from flowspec.commands._backend import emit_json, open_from, warn, when
    from flowspec.errors import FlowspecError

    with open_from(args) as backend:
        before = backend.request_agent_stop(args.name)
        known = [a.name for a in backend.list_agents()] if before is None else []
    if before is None:
        raise NotFoundError(f"no agent named '{args.name}' has been seen by the backend {backend.url}",
                            hint=f"agents seen: {', '.join(known)}" if known else "no agent has been seen")
    if before.stopped is not None:
        raise FlowspecError(f"agent {args.name} already stopped at {when(before.stopped)}: nothing to stop")
    gone = not before.alive()
    if args.format == "json":
        emit_json({"agent": args.name, "status": "stopping", "last_seen": before.last_seen,
                   "already_asked": before.stop_requested is not None})
    elif before.stop_requested is not None:
        print(f"agent {args.name}: already asked to stop at {when(before.stop_requested)}; it stops at its next poll")
    else:
        print(f"agent {args.name}: asked to stop; at its next poll it cancels its flow runs and stops")
    if gone:
        warn(f"agent {args.name} was last seen {time.time() - before.last_seen:.0f}s ago: it may be gone already"
             " (it stops as soon as it polls again)")
    return 0


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def main(args) -> int:
    import os
    import socket

    from flowspec import logs
    from flowspec.agent import AgentConfig, serve
    from flowspec.backend import backend_url, flowspec_home, open_backend
    from flowspec.errors import UsageError

    if any(not label for label in args.label):
        raise UsageError("--label: a label cannot be empty")
    logs.configure()
    url = backend_url(args.backend)
    config = AgentConfig(
        name=args.name or f"{socket.gethostname()}-{os.getpid()}", backend_url=url,
        labels=tuple(sorted(set(args.label))), env=dict(args.env), max_runs=args.max_runs,
        poll_interval=args.poll_interval, heartbeat_timeout=args.heartbeat_timeout,
        outage_tolerance=args.outage_tolerance)
    with open_backend(url, busy_timeout_s=BUSY_TIMEOUT_S) as backend:
        serve(backend, config, flowspec_home() / "runs")
    return 0
