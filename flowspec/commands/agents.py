"""`flowspec agents list [--backend URL] [--format text|json]`"""
from __future__ import annotations

import time

from flowspec.commands._backend import add_common, emit_json, labels_text, open_from, subcommands, table, when


def register(sub) -> None:
    actions = subcommands(sub, "agents", "list the agents the backend has seen")
    p = actions.add_parser("list", help="every agent with its labels and when it was last seen")
    add_common(p)
    p.set_defaults(func=main)


def main(args) -> int:
    with open_from(args) as backend:
        agents = backend.list_agents()
    now = time.time()
    if args.format == "json":
        emit_json([{"name": a.name, "labels": list(a.labels), "started": a.started, "last_seen": a.last_seen,
                    "stopped": a.stopped, "stop_requested": a.stop_requested, "alive": a.alive(now),
                    "status": a.status} for a in agents])
        return 0
    if not agents:
        print("no agent has been seen; start one with: flowspec agent start")
        return 0
    rows = [(a.name, labels_text(a.labels), a.status, when(a.started), when(a.last_seen))
            for a in agents]
    print(table(("NAME", "LABELS", "STATUS", "STARTED", "LAST SEEN"), rows))
    return 0
