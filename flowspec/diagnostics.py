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
        head = f"{self.file}:{self.line}:{self.column}: error: {self.path}: {self.message}"
        return head if not self.hint else f"{head}\n  hint: {self.hint}"

    def github(self) -> str:
        """A GitHub Actions workflow command that annotates the line in a pull request."""
        def esc(s: str) -> str:
            return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        body = f"{self.path}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")
        props = f"file={esc(self.file)},line={self.line},col={self.column},title=flowspec"
        return f"::error {props.replace('::', '%3A%3A')}::{esc(body)}"


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
