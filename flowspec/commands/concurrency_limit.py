"""`flowspec concurrency-limit set LABEL N | list | delete LABEL [--backend URL] [--format text|json]`"""
from __future__ import annotations

from flowspec.commands._backend import add_common, emit_json, open_from, subcommands, table


def register(sub) -> None:
    actions = subcommands(sub, "concurrency-limit",
                          "cap the flow runs of a label that may be active at once, across all agents")
    p = actions.add_parser("set", help="set (or change) a label's limit")
    p.add_argument("label", metavar="LABEL")
    p.add_argument("limit", metavar="N", type=_count, help="at most N active runs with this label (0 pauses it)")
    add_common(p)
    p.set_defaults(func=main_set)
    p = actions.add_parser("list", help="every limit, with the slots in use and the runs holding them")
    add_common(p)
    p.set_defaults(func=main_list)
    p = actions.add_parser("delete", help="remove a label's limit (its runs are no longer capped)")
    p.add_argument("label", metavar="LABEL")
    add_common(p)
    p.set_defaults(func=main_delete)


def _count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def main_set(args) -> int:
    from flowspec.errors import UsageError

    if not args.label:
        raise UsageError("LABEL cannot be empty")
    with open_from(args) as backend:
        backend.set_limit(args.label, args.limit)
    _say(args, {"label": args.label, "limit": args.limit},
         f"label '{args.label}': at most {args.limit} active flow run{'s' if args.limit != 1 else ''}")
    return 0


def main_delete(args) -> int:
    from flowspec.errors import FlowspecError

    with open_from(args) as backend:
        deleted = backend.delete_limit(args.label)
    if not deleted:
        raise FlowspecError(f"label '{args.label}' has no concurrency limit",
                            hint="see the limits with: flowspec concurrency-limit list")
    _say(args, {"label": args.label, "deleted": True}, f"label '{args.label}': no limit any more")
    return 0


def main_list(args) -> int:
    with open_from(args) as backend:
        limits = backend.list_limits()
    if args.format == "json":
        emit_json([{"label": c.label, "limit": c.limit, "in_use": c.in_use, "holders": list(c.holders)}
                   for c in limits])
    elif not limits:
        print("no concurrency limits: every label runs unlimited")
    else:
        rows = [(c.label, str(c.limit), f"{c.in_use}/{c.limit}", ", ".join(c.holders) or "-") for c in limits]
        print(table(("LABEL", "LIMIT", "IN USE", "HELD BY"), rows))
    return 0


def _say(args, data: dict, text: str) -> None:
    if args.format == "json":
        emit_json(data)
    else:
        print(text)
