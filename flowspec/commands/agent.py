"""`flowspec agent start [--label L]... [--env KEY=VALUE]... [--name N] [--max-runs N] [--poll-interval S]
[--heartbeat-timeout S] [--outage-tolerance S] [--backend URL]`"""
from __future__ import annotations

import argparse

from flowspec.backend.base import HEARTBEAT_TIMEOUT_S
from flowspec.backend.outage import DEFAULT_TOLERANCE_S

# The agent's defaults: a poll interval short enough for a run to start within a second of being
# created, a heartbeat timeout long enough that a busy machine never looks dead.
DEFAULT_POLL_INTERVAL_S = 0.5
DEFAULT_MAX_RUNS = 4
# One backend call waits this long for a SQLite lock; longer is an outage, retried with backoff.
BUSY_TIMEOUT_S = 2.0


def register(sub) -> None:
    parser = sub.add_parser("agent", help="run flow runs from the backend on this machine",
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
