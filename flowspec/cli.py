"""The `flowspec` command: argparse subcommands, and the one place that maps errors to exit codes.

Exit codes: 0 fine, 1 invalid spec or failed run, 2 usage error, 130 interrupted,
70 internal error (with a crash report). Command modules import heavy things inside their
`main`, so that building the parser stays cheap (`flowspec validate` starts fast).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from flowspec import __version__
from flowspec.errors import FlowspecError

# Order is the order of `flowspec --help`.
COMMANDS = ("validate", "run", "plan", "graph", "fmt", "init", "schema",
            "build", "register", "flows", "runs", "agent", "agents", "concurrency_limit")
EXIT_INTERNAL = 70


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowspec", description="Validate and run workflows described in flow.yaml.")
    parser.add_argument("--version", action="version", version=f"flowspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"flowspec.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FlowspecError as exc:
        print(f"flowspec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("flowspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # the reader went away (e.g. `| head`): nothing more to say
    except Exception:
        return crash_report()


def crash_report() -> int:
    """An internal error: a short note for the user, the full traceback in a file."""
    import os
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    fd, path = tempfile.mkstemp(prefix=f"flowspec-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"flowspec {__version__}\nargv: {sys.argv}\n\n{text}")
    last = text.strip().splitlines()[-1]
    print(f"flowspec {__version__}: internal error: {last}\n"
          f"  this is a bug in flowspec, not in your flow; the full report is in {path}\n"
          f"  please attach it when you report the problem", file=sys.stderr)
    return EXIT_INTERNAL
