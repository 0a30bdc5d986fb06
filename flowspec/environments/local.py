"""The `local` environment: the flow runner runs in this process (an agent gives it a child process)."""
from __future__ import annotations

from flowspec.environments.base import Environment, run_in_process


class LocalEnvironment(Environment):
    """Runs the flow here, with the flow's executor. YAML keys: the common ones only
    (`labels`, `env`, `on_start`, `on_exit`)."""

    def execute(self, params: dict, observers=(), run_id: str | None = None, keep_results: bool = True):
        return run_in_process(self.spec, params, observers, run_id, keep_results=keep_results)
