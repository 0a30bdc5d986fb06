"""`flowspec flows list [--project P] [--backend URL] [--format text|json]`"""
from __future__ import annotations

from flowspec.commands._backend import add_common, emit_json, labels_text, open_from, subcommands, table, when


def register(sub) -> None:
    actions = subcommands(sub, "flows", "list the flows registered in the backend")
    p = actions.add_parser("list", help="the latest version of each registered flow")
    p.add_argument("--project", help="only this project's flows")
    add_common(p)
    p.set_defaults(func=main)


def main(args) -> int:
    with open_from(args) as backend:
        flows = backend.list_flows(args.project)
    if args.format == "json":
        emit_json([{"id": f.id, "project": f.project, "name": f.name, "version": f.version,
                    "labels": list(f.labels), "storage": f.storage, "registered": f.created} for f in flows])
        return 0
    if not flows:
        print("no flows registered" + (f" in project '{args.project}'" if args.project else ""))
        return 0
    rows = [(f.project, f.name, str(f.version), labels_text(f.labels), f.storage.get("type", "?"), when(f.created))
            for f in flows]
    print(table(("PROJECT", "NAME", "VERSION", "LABELS", "STORAGE", "REGISTERED"), rows))
    return 0
