"""What the backend commands share: the --backend and --format options, tables, times, run lookup."""
from __future__ import annotations

import json
import sys
import time
from typing import Any

BACKEND_HELP = ("the backend: sqlite:///PATH, a file path or postgresql://USER@HOST:PORT/DB"
                " (default: $FLOWSPEC_BACKEND, else flowspec.db in $FLOWSPEC_HOME or ~/.flowspec)")


def add_common(parser) -> None:
    """`--backend URL` and `--format text|json`, on every backend command."""
    parser.add_argument("--backend", metavar="URL", default=None, help=BACKEND_HELP)
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text for people (default), json for programs")


def subcommands(sub, name: str, help_text: str):
    """A command with actions of its own (`flowspec runs list`); returns the action subparsers."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    return actions


def read_file_option(path: str) -> str:
    """The text of the file a `--file F` option names; a UsageError naming the flag when it cannot
    be read."""
    from flowspec.errors import UsageError

    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"--file {path}: cannot be read: {exc.strerror}") from None


def open_from(args):
    from flowspec.backend import open_backend

    return open_backend(args.backend)


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, two spaces apart."""
    return "".join(table_lines(header, rows)).rstrip("\n")


def table_lines(header: tuple[str, ...], rows: list[tuple[str, ...]], indent: str = "", batch: int = 10_000):
    """The lines of `table`, each ending in a newline, joined `batch` rows at a time: a table of a
    million rows is written out without a second copy of it whole."""
    widths = [max(len(header[i]), max((len(row[i]) for row in rows), default=0)) for i in range(len(header))]
    line = indent + "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    yield line.format(*header).rstrip() + "\n"
    for start in range(0, len(rows), batch):
        yield "".join(line.format(*row).rstrip() + "\n" for row in rows[start:start + batch])


def when(stamp: float | None) -> str:
    """An epoch time as local `YYYY-MM-DD HH:MM:SS`, or `-`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def clock(stamp: float) -> str:
    """An epoch time as local `HH:MM:SS.mmm`, as log lines show it."""
    return time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"


def labels_text(labels) -> str:
    return ", ".join(labels) if labels else "-"


MIN_PREFIX = 4  # characters of a run id that `runs show` and the others accept as a prefix


def find_run(backend, ref: str):
    """A run by its id or a unique prefix of it (at least MIN_PREFIX characters)."""
    from flowspec.backend import NotFoundError

    from flowspec.errors import UsageError

    run = backend.get_run(ref)
    if run is not None:
        return run
    if len(ref) < MIN_PREFIX:
        raise UsageError(f"run id prefix '{ref}' is too short: give at least {MIN_PREFIX} characters of the id",
                         hint="list runs with: flowspec runs list")
    matches = backend.runs_by_prefix(ref.lower())
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"run id prefix '{ref}' is ambiguous: it matches several runs "
                         f"(among them {' and '.join(m.id for m in matches)})", hint="give more of the id")
    raise NotFoundError(f"no flow run has id '{ref}' in the backend {backend.url}",
                        hint="list runs with: flowspec runs list")


def warn(message: str) -> None:
    print(f"flowspec: warning: {message}", file=sys.stderr)


def mark_lost(backend, command: str, run_id: str | None = None) -> None:
    """Mark lost runs (or only `run_id`) Failed before reading them: whoever looks sees a run whose
    process is gone as Failed, with the reason, and not only agents. The same compare-and-set as
    an agent's, so two readers never both move a run. A reader that may not write (a read-only
    file or role) still reads."""
    import os
    import socket

    from flowspec.errors import BackendError

    try:
        backend.mark_lost_runs(f"`flowspec {command}` (pid {os.getpid()} on {socket.gethostname()})",
                               run_id=run_id)
    except BackendError:
        pass
