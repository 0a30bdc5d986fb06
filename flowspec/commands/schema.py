"""`flowspec schema [-o FILE]`"""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of flow.yaml (for editors and other tools)",
                       description="Print the JSON Schema (draft 2020-12) that flowspec validates flow.yaml "
                                   "against: the file shipped in the package. Point an editor's YAML "
                                   "language server at it (see docs/editors.md).")
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead of standard output")
    p.set_defaults(func=main)


def main(args) -> int:
    text = schema_text()
    if args.output:
        from flowspec.errors import UsageError

        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise UsageError(f"--output {args.output}: cannot write it ({exc.strerror})") from None
    else:
        sys.stdout.write(text)
    return 0


def schema_text() -> str:
    """The shipped schema file, byte for byte."""
    from flowspec.schema import SCHEMA_PATH

    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return fh.read()
