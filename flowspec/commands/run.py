"""`flowspec run FILE [--param NAME=VALUE]... [--params-file FILE] [--format text|json]`"""
from __future__ import annotations

import contextlib
import json
import sys

EXIT_CODES = {"Success": 0, "Failed": 1, "Cancelled": 130}


def register(sub) -> None:
    p = sub.add_parser("run", help="validate a flow spec and run it in this process",
                       description="Validate a flow spec, then run it. Exit 0 Success, 1 Failed, "
                                   "2 invalid spec or usage, 130 interrupted.")
    p.add_argument("file", metavar="FILE", help="the flow spec")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value (repeatable); parsed as YAML unless the parameter is a string")
    p.add_argument("--params-file", metavar="FILE", help="a YAML mapping of parameter values")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: logs and a summary table (default); json: one JSON object on stdout")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.errors import SpecError, UsageError
    from flowspec.params import ParamsError

    try:
        spec = prepare(args.file)
        params = parameters(spec, args)
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format)
    except ParamsError as exc:
        return report_invalid(exc.diagnostics, args.format, exc.problems)
    except UsageError as exc:
        return report_invalid([], args.format, [str(exc)])
    try:
        result = execute(spec, params, args.format)
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format)
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(summary_table(result))
    return EXIT_CODES.get(result.state, 1)


def prepare(path: str):
    """Compile the spec and check that this release has its environment and executor."""
    import os

    from flowspec.compile import compile_file
    from flowspec.drivers import TABLES, available
    from flowspec.errors import SpecError, UsageError

    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    spec, diags = compile_file(path)
    if diags:
        raise SpecError(diags)
    missing = []
    for table, kind in (("environment", spec.environment.type), ("executor", spec.executor.type)):
        if TABLES[table].get(kind) is None:
            missing.append(spec.document.diag(
                (table, "type"), f"the {table} type '{kind}' is not available in this release of flowspec",
                f"available {table} types: {', '.join(available(table))}"))
    if missing:
        raise SpecError(missing)
    return spec


def parameters(spec, args) -> dict:
    from flowspec.params import load_params_file, parse_flag, resolve_parameters

    file_values, file_doc = load_params_file(args.params_file) if args.params_file else ({}, None)
    flags = [parse_flag(text, spec.parameters) for text in args.param]
    return resolve_parameters(spec.parameters, file_values, file_doc, flags)


def execute(spec, params: dict, fmt: str):
    from flowspec import logs
    from flowspec.drivers import load_driver

    logs.configure()
    environment = load_driver("environment", spec.environment.type)(spec)
    # In json mode stdout carries exactly one JSON document: tasks' print() goes to stderr.
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if fmt == "json" else contextlib.nullcontext()
    with quiet_stdout:
        return environment.execute(params)


def report_invalid(diags: list, fmt: str, problems: list[str] = ()) -> int:
    """An invalid spec or usage problem: nothing ran; exit 2."""
    from dataclasses import asdict

    from flowspec.diagnostics import Diagnostic, count_line

    diags = sorted(diags, key=Diagnostic.sort_key)
    if fmt == "json":
        items = [asdict(d) for d in diags] + [
            {"file": None, "line": None, "column": None, "path": None, "message": p, "hint": None} for p in problems]
        print(json.dumps(items, indent=2))
    for d in diags:
        print(d.text(), file=sys.stderr)
    for p in problems:
        print(f"flowspec: error: {p}", file=sys.stderr)
    if diags:
        print(count_line(len(diags)) + "; nothing was run", file=sys.stderr)
    return 2


def summary_table(result) -> str:
    """Task, state, children done/total, attempts, duration; then the flow's state."""
    rows = [("TASK", "STATE", "CHILDREN", "ATTEMPTS", "DURATION")]
    for name, rec in result.tasks.items():
        if rec.children is None:
            children = "-"
        else:
            counts = rec.child_counts()
            done = sum(n for s, n in counts.items() if s not in ("Pending", "Running", "Retrying"))
            children = f"{done}/{len(rec.children)}"
            others = [f"{n} {s}" for s, n in sorted(counts.items()) if s != "Success"]
            if others:
                children += f" ({', '.join(others)})"
        rows.append((name, rec.state, children, str(rec.attempts), f"{rec.duration:.2f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    tail = f"Flow run '{result.flow}' ({result.run_id[:8]}): {result.state} in {result.duration:.2f}s"
    if result.message:
        tail += f" — {result.message}"
    return "\n".join([""] + lines + ["", tail])
