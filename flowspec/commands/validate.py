"""`flowspec validate FILE... [--strict] [--format text|json|github]`"""
from __future__ import annotations

import contextlib
import sys

from flowspec.commands import STDIN
from flowspec.commands import unreadable as cannot_read


def register(sub) -> None:
    p = sub.add_parser("validate", help="check flow specs; report every error with its line and column",
                       description="Check flow specs against the schema and the semantic rules; "
                                   "exit 0 valid, 1 invalid, 2 usage error or unreadable file. A variable "
                                   "that ${{ env.NAME }} reads without a fallback in the executor or a "
                                   "parameter default, and that is not set here, is a warning (run, "
                                   "register, build and plan refuse it). "
                                   "FILE '-' reads a spec from standard input, reported as <stdin> (with "
                                   "--strict, its modules are imported from the current folder).")
    p.add_argument("files", nargs="+", metavar="FILE", help="flow spec files ('-': standard input)")
    p.add_argument("--strict", action="store_true",
                   help="also import every callable and check that its arguments fit its signature")
    p.add_argument("--format", choices=("text", "json", "github"), default="text",
                   help="text (default), json (a list of objects) or github (Actions annotations)")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.diagnostics import Diagnostic, render

    diags, unreadable = [], []
    for path in args.files:
        found, why = _check(path, args.strict)
        diags.extend(found)
        if why:
            unreadable.append(f"flowspec: error: {path}: {why}")
            if args.format != "text":  # machine readers get the file too: a JSON object, an annotation
                diags.append(Diagnostic(path, 1, 1, "(root)", why, "give the path of a readable flow spec"))
    checked = len(args.files) - len(unreadable)
    if checked or args.format != "text":
        print(render(diags, args.format, files=checked))
    for line in unreadable:
        print(line, file=sys.stderr)
    return 2 if unreadable else (1 if any(d.severity == "error" for d in diags) else 0)


def _check(path: str, strict: bool) -> tuple[list, str | None]:
    """(diagnostics, why the file cannot be read or None) of one spec."""
    from flowspec.compile import compile_document, compile_file, not_run_yet, unset_env
    from flowspec.loader import LoadError, load_text

    if path != STDIN and (why := cannot_read(path)):
        return [], why
    # Task modules that print on import must not spoil a JSON or annotation report on stdout.
    with contextlib.redirect_stdout(sys.stderr) if strict else contextlib.nullcontext():
        try:
            if path != STDIN:
                spec, diags = compile_file(path, strict=strict)
            else:
                spec, diags = compile_document(load_text(read_stdin(), "<stdin>"), strict=strict)
            # Variables are the running machine's: unset here, they are said, not held against the spec.
            if spec is None:
                return diags, None
            return diags + unset_env(spec, severity="warning") + not_run_yet(spec, severity="warning"), None
        except LoadError as exc:
            return exc.diagnostics, None
        except OSError as exc:
            return [], f"cannot read it ({exc.strerror})"


def read_stdin() -> str:
    """A spec from standard input: the size limit, UTF-8 and line ends as for a file."""
    from flowspec.diagnostics import Diagnostic
    from flowspec.loader import MAX_BYTES, LoadError, decode

    raw = sys.stdin.buffer.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise LoadError([Diagnostic("<stdin>", 1, 1, "(root)", f"standard input holds more than {MAX_BYTES} bytes",
                                    "split large data out of the spec and pass it as a parameter file")])
    return decode(raw, "<stdin>").replace("\r\n", "\n").replace("\r", "\n")
