"""`flowspec fmt FILE... [--check] [--diff]`"""
from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("fmt", help="rewrite flow specs in the canonical layout, comments kept",
                       description="Rewrite flow specs in one canonical layout: the key order of the spec "
                                   "reference, two spaces per level, every comment kept, so that diffs stay "
                                   "small. Exit 0 done, 1 a file would change (--check) or is not valid YAML, "
                                   "2 usage error or unreadable file.")
    p.add_argument("files", nargs="+", metavar="FILE", help="flow spec files")
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
        text = _read(path)
        if text is None:
            failed, code = failed + 1, 2
            continue
        try:
            new = format_text(text, path)
        except FormatError as exc:
            print(render(exc.diagnostics, "text"), file=sys.stderr)
            failed, code = failed + 1, max(code, 1)
            continue
        if new == text:
            unchanged += 1
            continue
        changed.append(path)
        if args.diff:
            sys.stdout.writelines(_diff(path, text, new))
        if write:
            _write(path, new)
        print(f"{'reformatted' if write else 'would reformat'} {path}", file=sys.stderr)
    print(_summary(len(changed), unchanged, failed, write), file=sys.stderr)
    return code or (1 if changed and args.check else 0)


def _read(path: str) -> str | None:
    """The file's text with its own line endings (a CRLF file counts as changed), or None."""
    from flowspec.loader import MAX_BYTES

    try:
        if os.path.getsize(path) > MAX_BYTES:
            print(f"flowspec: error: {path}: larger than {MAX_BYTES} bytes; not a flow spec", file=sys.stderr)
            return None
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except OSError as exc:
        print(f"flowspec: error: {path}: cannot read it ({exc.strerror})", file=sys.stderr)
    except UnicodeDecodeError as exc:
        print(f"flowspec: error: {path}: not UTF-8 text ({exc.reason})", file=sys.stderr)
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

    return difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                f"{path} (before)", f"{path} (formatted)")


def _summary(changed: int, unchanged: int, failed: int, written: bool) -> str:
    def files(n: int) -> str:
        return f"{n} file{'s' if n != 1 else ''}"
    verb = "reformatted" if written else "would be reformatted"
    tail = f", {files(failed)} could not be formatted" if failed else ""
    return f"{files(changed)} {verb}, {files(unchanged)} left unchanged{tail}"
