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
    p.add_argument("file", metavar="FILE", nargs="?", help="the flow spec (or use --name)")
    p.add_argument("--name", metavar="NAME", help="create a run of this registered flow for an agent, print its id")
    p.add_argument("--project", metavar="P", help="with --name: the flow's project")
    p.add_argument("--label", action="append", default=[], metavar="LABEL",
                   help="with --name: a label added to the flow's labels (repeatable)")
    p.add_argument("--watch", action="store_true", help="with --name: stream states and logs, exit with the run's code")
    p.add_argument("--backend", metavar="URL", help="with --name: the backend (default: $FLOWSPEC_BACKEND)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value (repeatable); parsed as YAML unless the parameter is a string")
    p.add_argument("--params-file", metavar="FILE", help="a YAML mapping of parameter values")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: logs and a summary table (default); json: one JSON object on stdout")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                      help="only warnings and errors, no progress display, one result line")
    loud.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                      help="debug log lines and every task state change")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.errors import SpecError, UsageError
    from flowspec.params import ParamsError

    if args.name is not None:
        from flowspec.commands.runs import run_registered

        return run_registered(args)
    if args.file is None or args.label or args.watch or args.project or args.backend:
        raise UsageError("give FILE to run a spec here, or --name NAME (with --project, --label, --watch,"
                         " --backend) to run a registered flow through an agent")
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
        result = execute(spec, params, args.format, args.verbosity)
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format)
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:  # quiet: the last line of the table only, "Flow run 'x' (id): Success in 1.20s"
        print(summary_table(result) if args.verbosity >= 0 else summary_table(result).splitlines()[-1])
    return EXIT_CODES.get(result.state, 1)


def prepare(path: str, tables: tuple[str, ...] = ("environment", "executor")):
    """Compile the spec and check that this release has its drivers of these `tables`."""
    from flowspec.commands import unreadable
    from flowspec.compile import compile_file
    from flowspec.drivers import TABLES, available
    from flowspec.errors import SpecError, UsageError

    if why := unreadable(path):
        raise UsageError(f"{path}: {why}")
    spec, diags = compile_file(path)
    if diags:
        raise SpecError(diags)
    missing = []
    for table in tables:
        kind = getattr(spec, table).type
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


def execute(spec, params: dict, fmt: str, verbosity: int = 0):
    import logging

    from flowspec import logs, progress
    from flowspec.drivers import load_driver
    from flowspec.recorder import record_local_run

    logs.configure({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[verbosity])
    environment = load_driver("environment", spec.environment.type)(spec)
    with contextlib.ExitStack() as stack:
        if fmt == "json":  # stdout carries exactly one JSON document: tasks' print() goes to stderr,
            # line-buffered, so that a print() from a pool thread is not cut by other threads' log lines
            printed = stack.enter_context(logs.whole_lines(2))
            stack.enter_context(contextlib.redirect_stdout(printed))
        shown = stack.enter_context(progress.reporter(verbosity))
        # The report shows states, not values: results may stay where they were computed.
        return record_local_run(spec, params, lambda observers, run_id: environment.execute(
            params, tuple(observers) + shown, run_id, keep_results=False))


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
