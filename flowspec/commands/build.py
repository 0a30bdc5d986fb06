"""`flowspec build FILE [--format text|json]`: build a flow's storage without registering it."""
from __future__ import annotations

from flowspec.commands._backend import emit_json


def register(sub) -> None:
    p = sub.add_parser("build", help="build a flow's storage (what `register` does first), record nothing",
                       description="Validate a flow spec, import its code and build its storage, e.g. to "
                                   "check in CI that a flow builds, or to build once and `register "
                                   "--no-build` later. Exit 0 built, 1 invalid spec or failed build, "
                                   "2 usage error.")
    p.add_argument("file", metavar="FILE", help="the flow spec")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for programs: the storage location")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.commands.register import describe, report_invalid
    from flowspec.commands.run import prepare
    from flowspec.errors import SpecError
    from flowspec.storage import storage_for

    try:
        spec = prepare(args.file, ("environment", "executor", "storage"))
        location = storage_for(spec.storage.type).build(spec)
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format, "nothing was built")
    if args.format == "json":
        emit_json(location)
    else:
        done = "Resolved (nothing to build)" if location["type"] == "git" else "Built"  # git: the ref's commit
        print(f"{done} flow '{spec.name}': {describe(location)} (fingerprint {location['fingerprint'][:12]})")
    return 0
