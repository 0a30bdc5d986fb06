"""`flowspec run FILE [--param NAME=VALUE]... [--params-file FILE] [--format text|json]`"""
from __future__ import annotations

import contextlib
import json
import signal
import sys

from flowspec.commands._params import parameters  # noqa: F401  (also imported from here)

EXIT_CODES = {"Success": 0, "Failed": 1, "TimedOut": 1, "Cancelled": 130}
# Ended as Ctrl-C ends a run (tasks cancelled, on_exit called, the summary printed), exit 128 + N.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def register(sub) -> None:
    p = sub.add_parser("run", help="validate a flow spec and run it in this process",
                       description="Validate a flow spec, then run it. Exit 0 Success, 1 Failed, "
                                   "2 invalid spec or usage, 130 interrupted (Ctrl-C); SIGTERM and SIGHUP "
                                   "stop it as Ctrl-C does, exit 143 and 129.")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="the flow spec, or a folder that holds it as flow.yaml (or use --name)")
    p.add_argument("--name", metavar="NAME", help="create a run of this registered flow for an agent, print its id")
    p.add_argument("--project", metavar="P", help="with --name: the flow's project")
    p.add_argument("--label", action="append", default=[], metavar="LABEL",
                   help="with --name: a label added to the flow's labels (repeatable)")
    p.add_argument("--watch", action="store_true", help="with --name: stream states and logs, exit with the run's code")
    p.add_argument("--backend", metavar="URL", help="the backend that records the run, or that holds the flow"
                   " given with --name (default: $FLOWSPEC_BACKEND, else flowspec.db in $FLOWSPEC_HOME)")
    p.add_argument("--heartbeat-timeout", type=float, default=None, metavar="S",
                   help="with FILE: after S seconds without a heartbeat (the process was killed) readers"
                        " of the backend mark the run Failed (default 30)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value (repeatable); parsed as YAML unless the parameter is a string")
    p.add_argument("--params-file", metavar="FILE", help="a YAML mapping of parameter values")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: logs and a summary table (default); json: one JSON object on stdout")
    p.add_argument("--children", action="store_true",
                   help="with --format json: list each mapped task's children (map_index, run_name, state)"
                        " rather than counting them by state")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                      help="only warnings and errors, no progress display, one result line")
    loud.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                      help="debug log lines and every task state change")
    p.set_defaults(func=main)


def main(args) -> int:
    import os

    from flowspec.backend import backend_url
    from flowspec.errors import SpecError, UsageError
    from flowspec.params import ParamsError
    from flowspec.compile import resolve_env

    if args.name is not None:
        from flowspec.commands.runs import run_registered

        if args.heartbeat_timeout is not None:
            raise UsageError("--heartbeat-timeout applies to FILE runs; an agent's run has the agent's"
                             " (flowspec agent start --heartbeat-timeout)")

        return run_registered(args)
    if args.file is None:
        raise UsageError("give FILE to run a spec here, or --name NAME (with --project, --label, --watch,"
                         " --backend) to run a registered flow through an agent")
    for flag, given in (("--project", args.project), ("--label", args.label), ("--watch", args.watch)):
        if given:
            raise UsageError(f"{flag} needs --name: it applies to runs of registered flows, not to FILE",
                             hint=f"drop {flag} to run {args.file} here, or register it and use --name")
    if args.heartbeat_timeout is not None and not args.heartbeat_timeout > 0:
        raise UsageError(f"--heartbeat-timeout: expected a number of seconds > 0, got {args.heartbeat_timeout:g}")
    try:
        spec = prepare(args.file, env=False)  # the variables once the parameters given are known
        params = parameters(spec, args)
        spec = resolve_env(spec, storage=False)  # name, descriptions, labels: checked by parameters()
        backend_url(args.backend)  # a FLOWSPEC_HOME that is not a directory stops the run before it starts
        if args.backend:  # the run's backend is the one its tasks' `flowspec.kv` uses, workers included
            os.environ["FLOWSPEC_BACKEND"] = args.backend
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format)
    except ParamsError as exc:
        return report_invalid(exc.diagnostics, args.format, exc.problems)
    # Any other UsageError (no such FILE, a malformed --param) goes to the CLI, which prints it
    # (as the documented {"error", "hint", "exit_code"} object with --format json) and exits 2.
    stopped: list[int] = []
    try:
        with stop_signals(stopped):
            result = execute(spec, params, args.format, args.verbosity, args.backend, args.heartbeat_timeout,
                             stopped)
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format)
    except KeyboardInterrupt:
        if not stopped:
            raise  # Ctrl-C before the run started: the CLI says so, exit 130
        print(f"flowspec: interrupted by {signal.Signals(stopped[0]).name}", file=sys.stderr)
        return 128 + stopped[0]
    try:
        from flowspec.masking import mask_text  # resolved secrets (e.g. in a task's error) read MASK

        if args.format == "json":
            print(mask_text(json.dumps(result.to_json(children=args.children), indent=2, default=str), ()))
        else:  # quiet: the last line of the table only, "Flow run 'x' (id): Success in 1.20s"
            print(mask_text(summary_table(result) if args.verbosity >= 0 else summary_table(result).splitlines()[-1],
                            ()))
    except OSError:
        if not stopped:
            raise
        # SIGHUP: the terminal is gone, and writing to it fails; the run is recorded all the same.
    if result.state == "Cancelled" and stopped:
        return 128 + stopped[0]
    return EXIT_CODES.get(result.state, 1)


@contextlib.contextmanager
def stop_signals(stopped: list[int]):
    """While the block runs, SIGTERM and SIGHUP interrupt it as Ctrl-C does (KeyboardInterrupt in
    the main thread), once: the first one's number is appended to `stopped`, later ones are
    ignored so that cancelling, on_exit and the summary are not cut short."""
    def on_signal(signum: int, frame: object) -> None:
        if not stopped:
            stopped.append(signum)
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def prepare(path: str, tables: tuple[str, ...] = ("environment", "executor"), env: bool = True):
    """Compile the spec and check that this release has its drivers of these `tables`, and (with
    `env`) that the variables its executor and parameter defaults read are set."""
    from flowspec.commands import unreadable
    from flowspec.compile import compile_file, not_run_yet, resolve_env, unset_env
    from flowspec.drivers import TABLES, available
    from flowspec.errors import SpecError, UsageError

    path = spec_file(path)
    if why := unreadable(path):
        raise UsageError(f"{path}: {why}")
    spec, diags = compile_file(path)
    if diags:
        raise SpecError(diags)
    missing = not_run_yet(spec)  # keys validated but not run by this release: never run without them
    for table in tables:
        kind = getattr(spec, table).type
        if TABLES[table].get(kind) is None:
            missing.append(spec.document.diag(
                (table, "type"), f"the {table} type '{kind}' is not available in this release of flowspec",
                f"available {table} types: {', '.join(available(table))}"))
    if env:
        missing += unset_env(spec, storage="storage" in tables)
    if missing:
        raise SpecError(missing)
    # `${{ env.NAME }}` in the name, project, descriptions, labels (and storage settings) are read now.
    return resolve_env(spec, storage="storage" in tables) if env else spec


def spec_file(path: str) -> str:
    """The spec a FILE argument names: a folder stands for the flow.yaml in it."""
    import os
    import shlex

    from flowspec.errors import UsageError

    if not os.path.isdir(path):
        return path
    spec = os.path.normpath(os.path.join(path, "flow.yaml"))
    if os.path.isfile(spec):
        return spec
    others = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml")))[:5]
    raise UsageError(f"{path} is a folder without a flow.yaml",
                     f"give the spec's path: {', '.join(os.path.join(path, n) for n in others)}" if others
                     else f"give the path of a flow spec, or create one there with: flowspec init {shlex.quote(path)}")


def execute(spec, params: dict, fmt: str, verbosity: int = 0, url: str | None = None,
            heartbeat_timeout: float | None = None, stopped: list[int] = ()):
    import logging

    from flowspec import logs, progress
    from flowspec.drivers import load_driver
    from flowspec.recorder import record_local_run, run_message

    def run(observers, run_id):
        # The report shows states, not values: results may stay where they were computed.
        result = environment.execute(params, tuple(observers) + shown, run_id, keep_results=False)
        if result.state == "Cancelled" and stopped:
            result.message = f"interrupted by {signal.Signals(stopped[0]).name}"
        result.message = run_message(result)  # a Failed run says which tasks failed, as agent runs do
        return result

    # -q and -v choose what is shown; the run records INFO lines whatever is shown (and DEBUG with -v)
    shown_level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[verbosity]
    logs.configure(min(shown_level, logging.INFO)).setLevel(shown_level)
    environment = load_driver("environment", spec.environment.type)(spec)
    if hasattr(environment, "prepare"):  # it runs from an image: the backend in its reach, the image built
        environment.prepare(url)
    with contextlib.ExitStack() as stack:
        if fmt == "json":  # stdout carries exactly one JSON document: tasks' print() goes to stderr,
            # line-buffered, so that a print() from a pool thread is not cut by other threads' log lines
            printed = stack.enter_context(logs.whole_lines(2))
            stack.enter_context(contextlib.redirect_stdout(printed))
        shown = stack.enter_context(progress.reporter(verbosity))
        return record_local_run(spec, params, run, url, heartbeat_timeout,
                                lambda: 128 + stopped[0] if stopped else 130)


def report_invalid(diags: list, fmt: str, problems: list[str] = ()) -> int:
    """An invalid spec or usage problem: nothing ran; exit 2."""
    from flowspec.diagnostics import Diagnostic, count_line

    diags = sorted(diags, key=Diagnostic.sort_key)
    if fmt == "json":
        items = [d.as_json() for d in diags] + [
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
    # One format for every row (a row of a 10 000-task flow costs a call, not 5 ljust and a join)
    widths = [max(map(len, column)) for column in zip(*rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    lines = [line.format(*row).rstrip() for row in rows]
    tail = f"Flow run '{result.flow}' ({result.run_id[:8]}): {result.state} in {result.duration:.2f}s"
    if result.message:
        tail += f" — {result.message}"
    return "\n".join([""] + lines + ["", tail])
