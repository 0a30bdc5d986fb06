"""`flowspec plan FILE... [--param NAME=VALUE]... [--params-file FILE] [--backend URL] [--format text|json]`"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("plan", help="show what a run would do, without running anything",
                       description="Work out what `flowspec run` would do, without running or importing "
                                   "any task code: resolved parameters, tasks in execution order with "
                                   "their upstreams and mapping, executor, storage and environment with "
                                   "their effective settings (secrets masked), and, when a backend is "
                                   "reachable, the agents that could pick the flow up and the concurrency "
                                   "limits on its labels. Several specs: one plan each (--format json: "
                                   "a list of them). Exit 0, 1 invalid spec, 2 usage error.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="the flow spec (or several); a folder stands for its flow.yaml")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value (repeatable), as for `flowspec run`")
    p.add_argument("--params-file", metavar="FILE", help="a YAML mapping of parameter values")
    p.add_argument("--backend", metavar="URL",
                   help="backend to ask about agents and limits (default: $FLOWSPEC_BACKEND, else the "
                        "SQLite file in the flowspec home, when it exists)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.plan import render_text

    if len(args.files) == 1:  # one spec: the plan itself, as ever
        code, plan = _plan(args.files[0], args, args.format)
        if plan is not None:
            print(json.dumps(plan, indent=2, default=str) if args.format == "json" else render_text(plan))
        return code
    codes, plans = [], []
    from flowspec.errors import FlowspecError

    for path in args.files:  # several: every plan, and every spec's errors (on stderr)
        try:
            code, plan = _plan(path, args, "text")
        except FlowspecError as exc:  # an unreadable file: said, and the other specs still planned
            from flowspec.cli import error_text

            print(error_text(exc), file=sys.stderr)
            code, plan = exc.exit_code, None
        codes.append(code)
        if plan is not None:
            plans.append(plan)
    if args.format == "json":
        print(json.dumps(plans, indent=2, default=str))
    else:
        print("\n\n".join(render_text(plan) for plan in plans))
    return max(codes)


def _plan(path: str, args, fmt: str) -> tuple[int, dict | None]:
    """(exit code, the plan or None) of one spec; problems are reported in `fmt`."""
    from flowspec.commands.graph import load_spec
    from flowspec.commands.run import report_invalid, spec_file
    from flowspec.diagnostics import render
    from flowspec.errors import SpecError
    from flowspec.params import ParamsError
    from flowspec.plan import build_plan

    spec = load_spec(spec_file(path), fmt)
    if spec is None:
        return 1, None
    try:
        params, sources = parameters(spec, args)
    except ParamsError as exc:
        return report_invalid(exc.diagnostics, fmt, exc.problems), None
    except SpecError as exc:  # a variable the executor or a default reads is not set: as an invalid spec
        if fmt == "json":
            print(render(exc.diagnostics, "json"))
        print(render(exc.diagnostics, "text"), file=sys.stderr)
        return 1, None
    return 0, build_plan(spec, params, sources, args.backend)


def parameters(spec, args) -> tuple[dict, dict]:
    """Resolved values, as `flowspec run` would take them, and where each came from."""
    from flowspec.commands.run import parameters as resolve
    from flowspec.params import parse_flag

    values = resolve(spec, args, secrets=False)  # a secret is resolved only where the flow runs
    sources = dict.fromkeys(values, "default")
    if args.params_file:
        from flowspec.params import load_params_file

        sources.update(dict.fromkeys(load_params_file(args.params_file)[0], "params file"))
    sources.update({parse_flag(text, spec.parameters)[0]: "--param" for text in args.param})
    return values, sources
