"""The `flowspec` command: argparse subcommands, and the one place that maps errors to exit codes.

Exit codes: 0 fine, 1 invalid spec or failed run, 2 usage error, 130 interrupted,
70 internal error (with a crash report). Bare `flowspec` prints the help and exits 0, as
`docker`, `kubectl` and `pip` do. Command modules import heavy things inside their `main`, so
that building the parser stays cheap (`flowspec validate` starts fast).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import re
import sys

from flowspec import __version__
from flowspec.errors import FlowspecError

# Order is the order of `flowspec --help`.
COMMANDS = ("validate", "run", "plan", "graph", "fmt", "init", "schema",
            "build", "register", "flows", "runs", "agent", "agents", "concurrency_limit", "ui",
            "kv", "secrets", "scheduler", "schedules", "results")
EXIT_INTERNAL = 70

ENVIRONMENT = """\
environment:
  FLOWSPEC_HOME     flowspec's own folder: the default SQLite backend (flowspec.db) and local
                    storage live there (default: ~/.flowspec)
  FLOWSPEC_BACKEND  the backend for commands that use one, when --backend is not given:
                    sqlite:///PATH, a file path, or postgresql://USER@HOST:PORT/DB
  FLOWSPEC_SECRETS_KEY  the Fernet key of the backend's secret store (`flowspec secrets`)
  FLOWSPEC_SECRET_NAME  the value of ${{ secrets.NAME }}, before the store is asked"""

# Examples at the foot of each help page, by command path.
EXAMPLES = {
    "": ["flowspec init my-flow                         # a starter flow, its tasks and a test",
         "flowspec validate --strict my-flow/flow.yaml  # check it, importing the task code",
         "flowspec run my-flow/flow.yaml --param people='[Ann, Bob]'",
         "flowspec COMMAND --help                       # each command's flags and examples"],
    "validate": ["flowspec validate flow.yaml",
                 "flowspec validate --strict flows/*/flow.yaml   # also import the task code",
                 "flowspec validate --format github flow.yaml    # annotations on a pull request",
                 "cat flow.yaml | flowspec validate -            # a spec from standard input"],
    "run": ["flowspec run flow.yaml",
            "flowspec run flow.yaml --param people='[Ann, Bob]' --param count=3",
            "flowspec run flow.yaml --params-file prod.yaml --format json",
            "flowspec run --name hello-flow --project tutorial --label dev --watch"],
    "plan": ["flowspec plan flow.yaml",
             "flowspec plan flow.yaml --param people='[Ann, Bob]' --format json"],
    "graph": ["flowspec graph flow.yaml                  # Mermaid on standard output",
              "flowspec graph flow.yaml -o graph.svg     # the format from the extension",
              "flowspec graph flow.yaml --format dot | dot -Tpdf -o graph.pdf"],
    "fmt": ["flowspec fmt flow.yaml",
            "flowspec fmt --check examples/*/flow.yaml   # CI: exit 1 when a file would change",
            "flowspec fmt --diff flow.yaml",
            "flowspec fmt - < flow.yaml > formatted.yaml"],
    "init": ["flowspec init                 # in the current folder",
             "flowspec init my-flow --name greetings"],
    "schema": ["flowspec schema -o flow.schema.json"],
    "build": ["flowspec build flow.yaml"],
    "register": ["flowspec register flow.yaml --label dev",
                 "FLOWSPEC_BACKEND=postgresql://flowspec@127.0.0.1:5432/flowspec flowspec register flow.yaml"],
    "flows": ["flowspec flows list", "flowspec flows list --project tutorial --format json"],
    "flows list": ["flowspec flows list --project tutorial"],
    "runs": ["flowspec runs list --state failed --limit 10", "flowspec runs show 3f2a",
             "flowspec runs logs 3f2a --follow", "flowspec runs cancel 3f2a"],
    "runs list": ["flowspec runs list", "flowspec runs list --flow hello-flow --state Failed --limit 10"],
    "runs show": ["flowspec runs show 3f2a          # a unique prefix of the id (4 characters or more)",
                  "flowspec runs show 3f2a --format json"],
    "runs logs": ["flowspec runs logs 3f2a --follow"],
    "runs cancel": ["flowspec runs cancel 3f2a"],
    "runs delete": ["flowspec runs delete 3f2a 9c1e --format json"],
    "flows delete": ["flowspec flows delete hello-flow --project tutorial --version 1"],
    "results": ["flowspec results prune --keep-results 14d"],
    "results prune": ["flowspec results prune                       # kept results older than 30 days",
                      "flowspec results prune --keep-results 7d --format json"],
    "agent stop": ["flowspec agent stop build-7-4242"],
    "agent": ["flowspec agent start --label dev"],
    "agent start": ["flowspec agent start --label dev --max-runs 2",
                    "flowspec agent start --backend postgresql://flowspec@127.0.0.1:5432/flowspec"],
    "agents": ["flowspec agents list"],
    "agents list": ["flowspec agents list --format json"],
    "concurrency-limit": ["flowspec concurrency-limit set dev 2", "flowspec concurrency-limit list",
                          "flowspec concurrency-limit delete dev"],
    "concurrency-limit set": ["flowspec concurrency-limit set dev 2"],
    "concurrency-limit list": ["flowspec concurrency-limit list --format json"],
    "concurrency-limit delete": ["flowspec concurrency-limit delete dev"],
    "ui": ["flowspec ui                      # http://127.0.0.1:8787/, read-only",
           "flowspec ui --allow-actions --port 9000", "flowspec ui --host 0.0.0.0 --token LONG-RANDOM-SECRET"],
}


class _Formatter(argparse.HelpFormatter):
    """Descriptions are wrapped as usual; text with line breaks (the epilogs) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """argparse, with a "did you mean" for a mistyped command, action or choice."""

    def error(self, message: str):
        from flowspec.schema import did_you_mean

        if re.fullmatch(r"the following arguments are required: (COMMAND|ACTION)", message):
            self.print_help()  # `flowspec runs`: the group's help lists its actions
            sys.exit(0)
        m = re.match(r"argument (.+?): invalid choice: '(.*)' \(choose from (.*)\)$", message)
        hint = (self._in_a_group(m.group(2)) or did_you_mean(m.group(2), re.findall(r"'([^']*)'", m.group(3)))
                if m else None)
        if message.startswith("unrecognized arguments: "):
            flags = [w.partition("=")[0] for w in message.split(": ", 1)[1].split() if w.startswith("--")]
            hint = next(filter(None, (did_you_mean(f, self._option_string_actions) for f in flags)), None)
        if _wants_json(_ARGV):  # a program that asked for JSON gets the usage error as JSON too
            _print_json_error(message, hint, 2)
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}" + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
        sys.exit(2)


    def _in_a_group(self, word: str) -> str | None:
        """`flowspec logs`: an action of a command group, named with its group (`runs logs`)."""
        found = [f"'{group} {word}'" for group, parser in _subcommands(self).items() if word in _subcommands(parser)]
        if not found:
            return None
        return f"did you mean {found[0]}?" if len(found) == 1 else f"did you mean one of {', '.join(found)}?"


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    """A parser's subcommands (or actions), by name; none for a command without them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


_ARGV: list[str] = []  # the arguments being parsed, for the error of any parser


def _wants_json(argv: list[str]) -> bool:
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in zip(argv, argv[1:]))


def _print_json_error(message: str, hint: str | None, exit_code: int) -> None:
    import json

    print(json.dumps({"error": message, "hint": hint, "exit_code": exit_code}, indent=2))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `argv` that names one command first, of that one
    only: the modules of the others are not imported (a third of the start of `flowspec build`)."""
    parser = _Parser(prog="flowspec", description="Validate and run workflows described in flow.yaml.")
    parser.add_argument("--version", action="version", version=f"flowspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = argv[0].replace("-", "_") if argv and not argv[0].startswith("-") else None
    only = named if named in COMMANDS and argv[0] == named.replace("_", "-") else None
    wanted = (only,) if only else () if argv and argv[0] == "--version" else COMMANDS
    for name in wanted:  # all of them for the top help or a mistyped command
        importlib.import_module(f"flowspec.commands.{name}").register(sub)
    _add_epilogs(parser, "")
    return parser


def _add_epilogs(parser: argparse.ArgumentParser, path: str) -> None:
    """Examples and the environment variables at the foot of every help page."""
    parser.formatter_class = _Formatter
    lines = EXAMPLES.get(path)
    examples = "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" if lines else ""
    parser.epilog = examples + ENVIRONMENT
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _add_epilogs(child, f"{path} {name}".strip())


def main(argv: list[str] | None = None) -> int:
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    parser = build_parser(_ARGV)
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, which knows the flags to suggest
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:  # bare `flowspec`: the help is the answer
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except FlowspecError as exc:
        if getattr(args, "format", None) == "json":  # a program reading stdout gets the error too
            _print_json_error(exc.message, exc.hint, exc.exit_code)
        print(error_text(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("flowspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # the reader went away (e.g. `| head`): nothing more to say
    except Exception:
        return crash_report()


def error_text(exc: FlowspecError) -> str:
    """An error for stderr: `flowspec: error: MESSAGE`, or, for one that carries positioned
    diagnostics (a params file, a spec), each at its file:line:col (each says `error:` once)."""
    from flowspec.masking import mask_text  # a secret resolved in this process reads MASK

    diags = getattr(exc, "diagnostics", None)
    if not diags:
        return mask_text(f"flowspec: error: {exc}", ())
    return mask_text("\n".join([d.text() for d in diags] + [f"flowspec: error: {p}" for p in getattr(exc, "problems", ())]),
                     ())


def entry() -> int:
    """The `flowspec` program: main(), then an exit that skips the collector's last pass."""
    code = main()
    # The interpreter's exit walks every object once more to collect cycles (25-30 ms once the
    # engine SDK is loaded), memory the OS takes back at once. Frozen objects are left out of
    # that pass; files, atexit hooks and finalizers still run as usual. Only here, never in
    # main(): a process that calls main() and goes on must keep its collector.
    gc.freeze()
    return code


def _chosen(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the command (and action) that the arguments chose."""
    for dest in ("command", "action"):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, dest, None)
        if not subs or name not in subs[0].choices:
            break
        parser = subs[0].choices[name]
    return parser


def crash_report() -> int:
    """An internal error: a short note for the user, the full traceback in a file."""
    import os
    import tempfile
    import time
    import traceback

    from flowspec.masking import mask_argv, mask_text

    text = mask_text(traceback.format_exc(), ())  # a resolved secret never reaches the report
    fd, path = tempfile.mkstemp(prefix=f"flowspec-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"flowspec {__version__}\nargv: {mask_argv(sys.argv)}\n\n{text}")
    last = text.strip().splitlines()[-1]
    print(f"flowspec {__version__}: internal error: {last}\n"
          f"  this is a bug in flowspec, not in your flow; the full report is in {path}\n"
          f"  please attach it when you report the problem", file=sys.stderr)
    return EXIT_INTERNAL
