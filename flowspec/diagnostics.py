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

    def sort_key(self) -> tuple:
        return (self.file, self.line, self.column, self.path, self.message)

    def text(self) -> str:
        head = f"{self.file}:{self.line}:{self.column}: error: {_one_line(self.path)}: {_one_line(self.message)}"
        return head if not self.hint else f"{head}\n  hint: {_one_line(self.hint)}"

    def github(self) -> str:
        """A GitHub Actions workflow command that annotates the line in a pull request."""
        def esc(s: str) -> str:
            return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        body = f"{self.path}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")
        # Property values also escape ':' and ',' (they end the properties and separate them).
        file = esc(self.file).replace(":", "%3A").replace(",", "%2C")
        return f"::error file={file},line={self.line},col={self.column},title=flowspec::{esc(body)}"


def _one_line(text: str) -> str:
    """Control characters from a user's keys or values are escaped: one diagnostic, one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def count_line(n: int, files: int = 1) -> str:
    if n == 0:
        return f"no errors in {files} file{'s' if files != 1 else ''}"
    return f"{n} error{'s' if n != 1 else ''} found"


def render(diags: list[Diagnostic], fmt: str, files: int = 1) -> str:
    """The whole report in `text`, `json` or `github` form (diagnostics sorted by position)."""
    diags = sorted(diags, key=Diagnostic.sort_key)
    if fmt == "json":
        return json.dumps([asdict(d) for d in diags], indent=2)
    if fmt == "github":
        return "\n".join([d.github() for d in diags] + [count_line(len(diags), files)])
    return "\n".join([d.text() for d in diags] + [count_line(len(diags), files)])
