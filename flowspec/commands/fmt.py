"""`flowspec fmt FILE... [--check] [--diff]`"""
from __future__ import annotations

import os
import sys

from flowspec.commands import STDIN


def register(sub) -> None:
    p = sub.add_parser("fmt", help="rewrite flow specs in the canonical layout, comments kept",
                       description="Rewrite flow specs in one canonical layout: the key order of the spec "
                                   "reference, two spaces per level, every comment kept, so that diffs stay "
                                   "small. Exit 0 done, 1 a file would change (--check) or is not valid YAML, "
                                   "2 usage error or unreadable file. FILE '-' reads standard input and "
                                   "writes the formatted text to standard output. A file with CRLF line "
                                   "ends keeps them.")
    p.add_argument("files", nargs="+", metavar="FILE", help="flow spec files ('-': standard input)")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 when a file would be reformatted (for CI and hooks)")
    p.add_argument("--diff", action="store_true", help="change nothing; print the changes as a unified diff")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.diagnostics import render
    from flowspec.fmt import FormatError, format_text

    write = not (args.check or args.diff)
    changed, unchanged, failed, code = [], 0, 0, 0
    for path in args.files:
        name = "<stdin>" if path == STDIN else path
        text = _read_stdin() if path == STDIN else _read(path)
        if text is None:
            failed, code = failed + 1, 2
            continue
        try:
            new = format_text(text, name)
        except FormatError as exc:
            print(render(exc.diagnostics, "text"), file=sys.stderr)
            failed, code = failed + 1, max(code, 1)
            continue
        if write and path == STDIN:  # a filter: the formatted text, changed or not, on stdout
            sys.stdout.buffer.write(new.encode("utf-8"))
            sys.stdout.flush()
        if new == text:
            unchanged += 1
            continue
        changed.append(path)
        if args.diff:
            sys.stdout.writelines(_diff(name, text, new))
        if write and path != STDIN:
            _write(path, new)
        if path != STDIN or not write:
            print(f"{'reformatted' if write else 'would reformat'} {name}", file=sys.stderr)
    if args.files != [STDIN] or not write:
        print(_summary(len(changed), unchanged, failed, write), file=sys.stderr)
    return code or (1 if changed and args.check else 0)


def _read_stdin() -> str | None:
    """Standard input as text, with its own line ends, or None (said why)."""
    from flowspec.diagnostics import render
    from flowspec.loader import MAX_BYTES, LoadError, decode

    raw = sys.stdin.buffer.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        print(f"flowspec: error: <stdin>: more than {MAX_BYTES} bytes; not a flow spec", file=sys.stderr)
        return None
    try:
        return decode(raw, "<stdin>")
    except LoadError as exc:
        print(render(exc.diagnostics, "text"), file=sys.stderr)
        return None


def _read(path: str) -> str | None:
    """The file's text with its own line endings (compared with the formatted text in the same
    line endings), or None (said why)."""
    from flowspec.loader import MAX_BYTES

    try:
        if os.path.getsize(path) > MAX_BYTES:
            print(f"flowspec: error: {path}: larger than {MAX_BYTES} bytes; not a flow spec", file=sys.stderr)
            return None
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except OSError as exc:
        print(f"flowspec: error: {path}: cannot read it ({exc.strerror})", file=sys.stderr)
    except UnicodeDecodeError:
        from flowspec.diagnostics import render
        from flowspec.loader import LoadError, decode

        try:
            with open(path, "rb") as fh:
                decode(fh.read(), path)
        except LoadError as exc:  # the byte at fault, at its line and column
            print(render(exc.diagnostics, "text"), file=sys.stderr)
    return None


def _write(path: str, text: str) -> None:
    """Replace the file atomically, keeping its permissions."""
    import shutil
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".flowspec-fmt-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _diff(path: str, old: str, new: str):
    import difflib

    for line in difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                     f"{path} (before)", f"{path} (formatted)"):
        # as diff(1) marks it: a last line without a newline is not run into the next one
        yield line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"


def _summary(changed: int, unchanged: int, failed: int, written: bool) -> str:
    def files(n: int) -> str:
        return f"{n} file{'s' if n != 1 else ''}"
    verb = "reformatted" if written else "would be reformatted"
    tail = f", {files(failed)} could not be formatted" if failed else ""
    return f"{files(changed)} {verb}, {files(unchanged)} left unchanged{tail}"
