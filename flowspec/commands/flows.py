"""`flowspec flows list [--project P]`, `flowspec flows delete NAME [--project P] [--version V]`; each
with `--backend URL` and `--format text|json`."""
from __future__ import annotations

from flowspec.commands._backend import add_common, emit_json, labels_text, open_from, subcommands, table, when


def register(sub) -> None:
    actions = subcommands(sub, "flows", "list and delete the flows registered in the backend")
    p = actions.add_parser("list", help="the latest version of each registered flow")
    p.add_argument("--project", help="only this project's flows")
    add_common(p)
    p.set_defaults(func=main)
    p = actions.add_parser("delete", help="delete a flow's versions (or one) and their runs",
                           description="Delete a registered flow: every version (or only --version V) with all"
                                       " their runs, in one transaction. Refused while one of those runs has not"
                                       " ended (cancel it first). The runs' kept results (`persist`) are removed"
                                       " from the result stores; the flow's storage (a file, an image) is left"
                                       " as it is. Exit 0 deleted, 1 unknown or refused, 2 usage.")
    p.add_argument("name", metavar="NAME", help="the flow's name")
    p.add_argument("--project", help="the flow's project (needed when several projects have a flow of that name)")
    p.add_argument("--version", type=_version, metavar="V", help="only this version")
    add_common(p)
    p.set_defaults(func=main_delete)


def _version(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a version number, 1 or more, got {text!r}")
    return int(text)


def main_delete(args) -> int:
    from flowspec.commands._backend import mark_lost

    from flowspec.commands.results import free_kept, freed_text

    with open_from(args) as backend:
        mark_lost(backend, "flows delete")  # a run whose process is gone has ended: it may go
        gone = backend.delete_flow(args.name, args.project, args.version)
        freed = free_kept(backend, gone.runs)  # the runs' kept results in the result stores go with them
    if args.format == "json":
        emit_json({"deleted": {"project": gone.project, "flow": gone.name, "versions": list(gone.versions),
                               "runs": list(gone.runs)}, "freed": freed})
        return 0
    versions = ", ".join(map(str, gone.versions))
    runs = f" and {len(gone.runs)} run{'s' if len(gone.runs) != 1 else ''}" if gone.runs else ""
    print(f"flow '{gone.name}' (project {gone.project}): deleted version{'s' if len(gone.versions) > 1 else ''}"
          f" {versions}{runs}")
    if freed["objects"]:
        print(freed_text(freed))
    return 0


def main(args) -> int:
    with open_from(args) as backend:
        flows = backend.list_flows(args.project)
        upcoming = next_runs(backend)
    if args.format == "json":
        emit_json([{"id": f.id, "project": f.project, "name": f.name, "version": f.version,
                    "labels": list(f.labels), "storage": f.storage, "registered": f.created,
                    "next_run": upcoming.get((f.project, f.name))} for f in flows])
        return 0
    if not flows:
        print("no flows registered" + (f" in project '{args.project}'" if args.project else ""))
        return 0
    rows = [(f.project, f.name, str(f.version), labels_text(f.labels), f.storage.get("type", "?"), when(f.created),
             _next_text(upcoming.get((f.project, f.name)))) for f in flows]
    print(table(("PROJECT", "NAME", "VERSION", "LABELS", "STORAGE", "REGISTERED", "NEXT RUN"), rows))
    return 0


def next_runs(backend) -> dict:
    """(project, name) → the time of each scheduled flow's next run (its earliest Scheduled run,
    else its clocks' next time), or "paused"."""
    planned = backend.next_scheduled()
    upcoming: dict = {}
    for row in backend.schedules():
        key = (row.project, row.flow_name)
        if row.paused is not None:
            upcoming[key] = "paused"
        elif upcoming.get(key) != "paused":
            candidates = [t for t in (planned.get(key), row.next_time, upcoming.get(key)) if t is not None]
            upcoming[key] = min(candidates) if candidates and min(candidates) != float("inf") else None
    return upcoming


def _next_text(value) -> str:
    return value if isinstance(value, str) else when(value)
