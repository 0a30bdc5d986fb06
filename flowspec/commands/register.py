"""`flowspec register FILE [--project P] [--label L]... [--no-build] [--backend URL] [--format text|json]`"""
from __future__ import annotations

import hashlib
import json
import sys

from flowspec.commands._backend import add_common, emit_json, labels_text, open_from


def register(sub) -> None:
    p = sub.add_parser("register", help="build a flow's storage and record the flow in the backend",
                       description="Validate a flow spec, import its code, build its storage and record "
                                   "it in the backend. An unchanged spec and code (and, for docker storage, "
                                   "the same image inputs: flowspec's version, the dependencies, the base image) keep "
                                   "their version; a changed one gets the next. Exit 0 registered, 1 invalid "
                                   "spec or backend error, 2 usage error.")
    p.add_argument("file", metavar="FILE", help="the flow spec")
    p.add_argument("--project", help="the project (default: the spec's `project`, else 'default')")
    p.add_argument("--label", action="append", default=[], metavar="LABEL",
                   help="a label added to the spec's environment.labels (repeatable)")
    p.add_argument("--no-build", action="store_true",
                   help="do not build storage: use the build made earlier for this exact spec and code")
    add_common(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.commands.run import prepare
    from flowspec.errors import SpecError, UsageError
    from flowspec.storage import storage_for

    if any(not label for label in args.label):
        raise UsageError("--label: a label cannot be empty")
    try:
        spec = prepare(args.file, ("environment", "executor", "storage"))
        storage = storage_for(spec.storage.type)
        location = storage.locate(spec) if args.no_build else storage.build(spec)
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format)
    environment = (spec.document.data or {}).get("environment") or {}
    checksum = location["fingerprint"]  # the spec and its code
    more = {}  # what else makes a new version
    if location.get("digest"):  # an image's inputs: flowspec's own version, the dependencies, the base image
        more["image"] = location["digest"]
    if files := spec.environment.options.get("_files"):  # templates the watcher needs, far from the spec's folder
        environment = {**environment, "_files": {key: {"written": t.written, "text": t.text} for key, t in files.items()}}
        more["_files"] = environment["_files"]
    if more:
        checksum = hashlib.sha256(json.dumps([checksum, more], sort_keys=True).encode()).hexdigest()
    with open_from(args) as backend:
        flow, created = backend.register_flow(
            args.project or spec.project, spec.name, [*spec.environment.labels, *args.label],
            location, checksum, spec.source, environment)
        # A new version's clocks (none, too) replace the older versions' and their unstarted runs.
        from flowspec.schedules import now

        replaced = backend.record_clocks(flow.id, spec.schedule, spec.catchup, now()) if created else 0
    if args.format == "json":
        emit_json({"id": flow.id, "project": flow.project, "name": flow.name, "version": flow.version,
                   "created": created, "labels": list(flow.labels), "storage": flow.storage,
                   "schedule": [c.to_json() for c in spec.schedule], "replaced_scheduled_runs": replaced})
    elif created:
        print(f"Registered flow '{flow.name}' in project '{flow.project}' as version {flow.version}"
              f" (labels: {labels_text(flow.labels)}; storage: {describe(flow.storage)})")
        if spec.schedule:
            print(f"  schedule: {'; '.join(c.describe() for c in spec.schedule)}"
                  f" (catchup: {'yes' if spec.catchup else 'no'}); `flowspec scheduler` creates its runs")
        if replaced:
            print(f"  {replaced} scheduled run{'s' if replaced != 1 else ''} of older versions that had not started"
                  " were removed: this version's clocks plan them again")
    else:
        print(f"Flow '{flow.name}' in project '{flow.project}' is unchanged: keeping version {flow.version}")
    return 0


def describe(location: dict) -> str:
    return " ".join(str(v) for v in (location.get("type"), location.get("path")) if v)


def report_invalid(diags: list, fmt: str, outcome: str = "nothing was registered") -> int:
    from flowspec.diagnostics import Diagnostic, count_line, render

    if fmt == "json":
        print(render(diags, "json"))
    for d in sorted(diags, key=Diagnostic.sort_key):
        print(d.text(), file=sys.stderr)
    print(f"{count_line(len(diags))}; {outcome}", file=sys.stderr)
    return 1
