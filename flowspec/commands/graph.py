"""`flowspec graph FILE [--format mermaid|dot|png|svg] [-o FILE]`"""
from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("graph", help="draw the task graph (Mermaid, Graphviz dot, PNG or SVG)",
                       description="Print or write the flow's task graph; mapped tasks are drawn as stacks. "
                                   "png and svg need Graphviz (the `dot` program). Exit 0 done, 1 invalid "
                                   "spec, 2 usage error or Graphviz missing.")
    p.add_argument("file", metavar="FILE", help="the flow spec")
    p.add_argument("--format", choices=("mermaid", "dot", "png", "svg"),
                   help="default: from the -o file's extension (.mmd .dot .gv .png .svg), else mermaid")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.errors import UsageError
    from flowspec.graph import render

    fmt = output_format(args.format, args.output)
    if fmt == "png" and not args.output and sys.stdout.isatty():
        raise UsageError("--format png is binary and standard output is a terminal", "write it to a file: -o graph.png")
    spec = load_spec(args.file)
    if spec is None:
        return 1
    data = render(spec, fmt)
    if args.output:
        try:
            with open(args.output, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise UsageError(f"--output {args.output}: cannot write it ({exc.strerror})") from None
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
    return 0


# Extensions of formats that graph does not write: a file named so would hold something else.
_OTHER_FORMATS = (".jpg", ".jpeg", ".gif", ".pdf", ".bmp", ".webp", ".tif", ".tiff", ".eps", ".ps")


def output_format(given: str | None, output: str | None) -> str:
    """--format, else the one the -o file's extension names, else mermaid; a mismatch is refused
    rather than writing, say, SVG text into a file called .png."""
    from flowspec.errors import UsageError
    from flowspec.graph import EXTENSIONS

    ext = os.path.splitext(output or "")[1].lower()
    implied = EXTENSIONS.get(ext)
    if given and implied and given != implied:
        raise UsageError(f"--format {given} does not match --output {output}, whose extension {ext} means {implied}",
                         f"drop --format to write {implied}, or name the file with an extension for "
                         f"{given} ({', '.join(e for e, f in EXTENSIONS.items() if f == given)})")
    if ext in _OTHER_FORMATS:
        raise UsageError(f"--output {output}: graph does not write {ext} files",
                         "write .svg or .png (through Graphviz), .dot or .mmd; e.g. -o graph.svg")
    return given or implied or "mermaid"


def load_spec(path: str, fmt: str = "text"):
    """Compile a spec for a command that only reads it; on errors print them and return None."""
    from flowspec.commands import unreadable
    from flowspec.compile import compile_file
    from flowspec.diagnostics import render
    from flowspec.errors import UsageError

    if why := unreadable(path):
        raise UsageError(f"{path}: {why}")
    spec, diags = compile_file(path)
    if not diags:
        return spec
    if fmt == "json":
        print(render(diags, "json"))
    print(render(diags, "text"), file=sys.stderr)
    return None
