"""`flowspec plan FILE [--param NAME=VALUE]... [--params-file FILE] [--backend URL] [--format text|json]`"""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("plan", help="show what a run would do, without running anything",
                       description="Work out what `flowspec run` would do, without running or importing "
                                   "any task code: resolved parameters, tasks in execution order with "
                                   "their upstreams and mapping, executor, storage and environment with "
                                   "their effective settings (secrets masked), and, when a backend is "
                                   "reachable, the agents that could pick the flow up and the concurrency "
                                   "limits on its labels. Exit 0, 1 invalid spec, 2 usage error.")
    p.add_argument("file", metavar="FILE", help="the flow spec")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value (repeatable), as for `flowspec run`")
    p.add_argument("--params-file", metavar="FILE", help="a YAML mapping of parameter values")
    p.add_argument("--backend", metavar="URL",
                   help="backend to ask about agents and limits (default: $FLOWSPEC_BACKEND, else the "
                        "SQLite file in the flowspec home, when it exists)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.commands.graph import load_spec
    from flowspec.commands.run import report_invalid
    from flowspec.params import ParamsError
    from flowspec.plan import build_plan, render_text

    spec = load_spec(args.file, args.format)
    if spec is None:
        return 1
    try:
        params, sources = parameters(spec, args)
    except ParamsError as exc:
        return report_invalid(exc.diagnostics, args.format, exc.problems)
    plan = build_plan(spec, params, sources, args.backend)
    print(json.dumps(plan, indent=2, default=str) if args.format == "json" else render_text(plan))
    return 0


def parameters(spec, args) -> tuple[dict, dict]:
    """Resolved values, as `flowspec run` would take them, and where each came from."""
    from flowspec.commands.run import parameters as resolve
    from flowspec.params import parse_flag

    values = resolve(spec, args)
    sources = dict.fromkeys(values, "default")
    if args.params_file:
        from flowspec.params import load_params_file

        sources.update(dict.fromkeys(load_params_file(args.params_file)[0], "params file"))
    sources.update({parse_flag(text, spec.parameters)[0]: "--param" for text in args.param})
    return values, sources
