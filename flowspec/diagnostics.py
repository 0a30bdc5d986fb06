"""Diagnostics: one positioned problem in a file, and the reporters that print them."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where it is (file, 1-based line and column, data path) and what to do."""

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str | None = None
    severity: str = "error"  # or "warning": reported, but the spec is valid (validate exits 0)

    def sort_key(self) -> tuple:
        return (self.file, self.line, self.column, self.path, self.message)

    def text(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}: {self.severity}"
        head = f"{where}: {_one_line(self.path)}: {_one_line(self.message)}"
        return head if not self.hint else f"{head}\n  hint: {_one_line(self.hint)}"

    def github(self) -> str:
        """A GitHub Actions workflow command that annotates the line in a pull request."""
        def esc(s: str) -> str:
            return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        body = f"{self.path}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")
        # Property values also escape ':' and ',' (they end the properties and separate them).
        file = esc(self.file).replace(":", "%3A").replace(",", "%2C")
        return f"::{self.severity} file={file},line={self.line},col={self.column},title=flowspec::{esc(body)}"

    def as_json(self) -> dict:
        """The JSON object of `--format json`: an error's six keys; a warning says it is one."""
        out = asdict(self)
        if self.severity == "error":
            del out["severity"]
        return out


def _one_line(text: str) -> str:
    """Control characters from a user's keys or values are escaped: one diagnostic, one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def count_line(n: int, files: int = 1, warnings: int = 0) -> str:
    also = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    if n == 0:
        return f"no errors in {files} file{'s' if files != 1 else ''}{also}"
    return f"{n} error{'s' if n != 1 else ''} found{also}"


def render(diags: list[Diagnostic], fmt: str, files: int = 1) -> str:
    """The whole report in `text`, `json` or `github` form (diagnostics sorted by position)."""
    diags = sorted(diags, key=Diagnostic.sort_key)
    if fmt == "json":
        return json.dumps([d.as_json() for d in diags], indent=2)
    warnings = sum(d.severity == "warning" for d in diags)
    counted = count_line(len(diags) - warnings, files, warnings)
    if fmt == "github":
        return "\n".join([d.github() for d in diags] + [counted])
    return "\n".join([d.text() for d in diags] + [counted])
