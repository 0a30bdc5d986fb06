"""Helpers for the core's unit tests: specs and task code written to tmp_path, compiled and run
for real (FlowRunner on the LocalExecutor), with sys.path restored afterwards."""
from __future__ import annotations

import sys
import textwrap

import pytest


class FlowDir:
    """A folder holding one flow.yaml and its code; compiles and runs it."""

    def __init__(self, path) -> None:
        self.path = path

    def write(self, name: str, text: str):
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text), encoding="utf-8")
        return target

    def compile(self, spec: str, strict: bool = False):
        """(FlowSpec or None, diagnostics) of `spec` written as flow.yaml."""
        from flowspec.compile import compile_file

        return compile_file(str(self.write("flow.yaml", spec)), strict=strict)

    def spec(self, spec: str):
        compiled, diags = self.compile(spec)
        assert not diags, "\n".join(d.text() for d in diags)
        return compiled

    def run(self, spec: str, code: str = "", params: dict | None = None, observers=(), run_id: str | None = None):
        """Compile, import the callables and run with the local executor; returns the RunResult."""
        from flowspec.environments.base import import_callables
        from flowspec.executors.local import LocalExecutor
        from flowspec.runner import FlowRunner

        if code:
            self.write("steps.py", code)
        compiled = self.spec(spec)
        values = {name: p.default for name, p in compiled.parameters.items()} | (params or {})
        runner = FlowRunner(compiled, values, LocalExecutor(), import_callables(compiled), observers, run_id)
        return runner.run()


@pytest.fixture
def flow(tmp_path, monkeypatch) -> FlowDir:
    # Specs put their folder first on sys.path; each test gets the original back.
    monkeypatch.setattr(sys, "path", list(sys.path))
    return FlowDir(tmp_path)
