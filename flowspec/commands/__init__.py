"""CLI subcommands: each module has register(subparsers) and main(args) -> exit code."""
from __future__ import annotations

import os

STDIN = "-"  # a FILE argument that means standard input (validate, fmt)


def unreadable(path: str) -> str | None:
    """Why a spec file cannot be read (no such file; a folder or no permission), or None."""
    if not os.path.exists(path):
        return "no such file"
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        return "not a readable file"
    return None
