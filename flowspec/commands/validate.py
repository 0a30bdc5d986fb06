"""`flowspec validate FILE... [--strict] [--format text|json|github]`"""
from __future__ import annotations

import sys

from flowspec.commands import unreadable as cannot_read


def register(sub) -> None:
    p = sub.add_parser("validate", help="check flow specs; report every error with its line and column",
                       description="Check flow specs against the schema and the semantic rules; "
                                   "exit 0 valid, 1 invalid, 2 usage error or unreadable file.")
    p.add_argument("files", nargs="+", metavar="FILE", help="flow spec files")
    p.add_argument("--strict", action="store_true",
                   help="also import every callable and check that its arguments fit its signature")
    p.add_argument("--format", choices=("text", "json", "github"), default="text",
                   help="text (default), json (a list of objects) or github (Actions annotations)")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.compile import compile_file
    from flowspec.diagnostics import render

    diags, unreadable = [], []
    for path in args.files:
        if why := cannot_read(path):
            unreadable.append(f"flowspec: error: {path}: {why}")
            continue
        try:
            diags.extend(compile_file(path, strict=args.strict)[1])
        except OSError as exc:
            unreadable.append(f"flowspec: error: {path}: cannot read it ({exc.strerror})")
    checked = len(args.files) - len(unreadable)
    if checked or args.format == "json":  # a JSON reader always gets a document, [] at least
        print(render(diags, args.format, files=checked))
    for line in unreadable:
        print(line, file=sys.stderr)
    return 2 if unreadable else (1 if diags else 0)
