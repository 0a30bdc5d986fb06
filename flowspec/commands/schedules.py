"""`flowspec schedules list | pause FLOW | resume FLOW [--project P] [--backend URL] [--format text|json]`"""
from __future__ import annotations

from flowspec.commands._backend import add_common, emit_json, open_from, subcommands, table, when


def register(sub) -> None:
    actions = subcommands(sub, "schedules", "the clocks of registered flows; pause and resume them")
    p = actions.add_parser("list", help="every clock of each flow's latest version, with its next run")
    add_common(p)
    p.set_defaults(func=main_list)
    for action, text in (("pause", "stop a flow's clocks and remove their runs that have not started"),
                         ("resume", "start a paused flow's clocks again (missed times follow its catchup)")):
        p = actions.add_parser(action, help=text)
        p.add_argument("flow", metavar="FLOW")
        p.add_argument("--project", metavar="P", default=None, help="the flow's project, when several have one by this name")
        add_common(p)
        p.set_defaults(func=main_pause if action == "pause" else main_resume)


def _what(definition: dict) -> str:
    from flowspec.schedules import Clock

    return Clock.from_json(definition).describe()


def main_list(args) -> int:
    with open_from(args) as backend:
        rows = backend.schedules()
    if args.format == "json":
        emit_json([{"project": r.project, "flow": r.flow_name, "version": r.version, "clock": r.position,
                    **r.definition, "catchup": r.catchup, "paused": r.paused is not None,
                    "next_run": r.next_run, "next_planned": r.next_time} for r in rows])
    elif not rows:
        print("no schedules: register a flow whose spec has `schedule:`")
    else:
        print(table(("FLOW", "VERSION", "CLOCK", "CATCHUP", "STATE", "NEXT RUN"),
                    [(f"{r.project}/{r.flow_name}", str(r.version), _what(r.definition), "yes" if r.catchup else "no",
                      "paused" if r.paused is not None else "active", when(r.next_run)) for r in rows]))
    return 0


def main_pause(args) -> int:
    with open_from(args) as backend:
        project, removed = backend.pause_schedule(args.flow, args.project)
    if args.format == "json":
        emit_json({"project": project, "flow": args.flow, "paused": True, "removed_runs": removed})
    else:
        print(f"flow '{project}/{args.flow}': schedule paused; {removed} scheduled run{'s' if removed != 1 else ''}"
              " that had not started removed")
    return 0


def main_resume(args) -> int:
    with open_from(args) as backend:
        project, was = backend.resume_schedule(args.flow, args.project)
    if args.format == "json":
        emit_json({"project": project, "flow": args.flow, "paused": False, "was_paused": was})
    else:
        print(f"flow '{project}/{args.flow}': schedule {'resumed' if was else 'was not paused'}")
    return 0
