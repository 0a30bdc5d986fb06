"""The environment interface (setup, execute) and the in-process run both local kinds share."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod

from flowspec import references as refs
from flowspec.errors import FlowspecError, SpecError


class Environment(ABC):
    """Base class of environments: `setup()` prepares the platform, `execute()` runs a flow run."""

    def __init__(self, spec) -> None:
        self.spec = spec

    def setup(self) -> None:
        """Create what the platform needs before runs (e.g. a task definition). Default: nothing."""

    @abstractmethod
    def execute(self, params: dict, observers=(), run_id: str | None = None, keep_results: bool = True):
        """Run one flow run with these parameter values; return its runner.RunResult (with the
        tasks' results unless `keep_results` is False: callers that report states only say so)."""


def run_in_process(spec, params: dict, observers=(), run_id: str | None = None, callables: dict | None = None,
                   keep_results: bool = True, keep_env: bool = False):
    """Apply `environment.env`, import the callables (unless given, e.g. loaded from storage),
    run on the spec's executor, restore env (unless `keep_env`: subflow children running at
    once, whose caller restores it). See FlowRunner for `keep_results`."""
    from flowspec.drivers import load_driver
    from flowspec.runner import FlowRunner

    from flowspec.run_refs import resolve_services

    services = resolve_services(spec, params)  # before any task, and before anything is recorded
    saved = apply_env(spec, services)
    try:
        check_env_refs(spec)
        callables = import_callables(spec) if callables is None else callables
        options = refs.resolve(refs.compile_value(dict(spec.executor.options)), refs.env_lookup(os.environ))
        executor = load_driver("executor", spec.executor.type)(**options)
        if getattr(executor, "ships_code", False):  # tasks run in other processes: send the spec's modules by value
            from flowspec.serialize import register_by_value

            register_by_value(spec.base_dir)
        from flowspec.run_refs import run_start_notes

        observers = (*observers, *run_start_notes(services))
        runner = FlowRunner(spec, params, executor, callables, observers, run_id, keep_results)
        runner.services = services
        return runner.run()
    except FlowspecError as exc:
        if getattr(exc, "spec_path", None) is None or spec.document is None:  # an executor that cannot start
            raise  # names its spec key, when there is a document to point into
        raise SpecError([spec.document.diag(exc.spec_path, exc.message, exc.hint)]) from None
    finally:
        if not keep_env:
            restore_env(saved)


def apply_env(spec, services: dict | None = None) -> dict:
    """Set the flow's variables; return what they replaced so that restore_env can undo it.
    `services`: the values of its kv and secrets references (flowspec.run_refs); without them
    (a platform's watcher, which runs no flow), a variable holding a secret is left out: it is
    resolved where the flow runs, in the container, pod or task."""
    from flowspec.run_refs import SERVICE_KINDS, lookup_with

    lookup = lookup_with(services or {}, refs.env_lookup(os.environ))
    values = {}
    diags = []
    for name, value in spec.environment.env.items():
        if services is None and any(ref.kind in SERVICE_KINDS for _, ref in refs.iter_refs({name: value})):
            continue
        try:
            values[name] = refs.resolve(value, lookup)
        except refs.UnsetEnvError as exc:
            diags.append(spec.document.diag(("environment", "env", name), str(exc),
                                            f"export it before the run, or write ${{{{ env.NAME || 'default' }}}}"))
    if diags:
        raise SpecError(diags)
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    return saved


def restore_env(saved: dict) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def check_env_refs(spec) -> None:
    """Every `${{ env.NAME }}` without a fallback must be set before any task runs."""
    if not getattr(spec, "uses_env", True):  # the compiler saw none: nothing to look for in every task's arguments
        return
    diags = []
    for task in spec.tasks.values():
        for section, values in (("with", task.with_args), ("map", task.map_args)):
            for path, ref in refs.iter_refs(dict(values)):
                if ref.kind == "env" and ref.fallback is None and ref.name not in os.environ:
                    diags.append(spec.document.diag(("tasks", task.name, section) + path,
                                                    f"environment variable {ref.name} is not set (referenced as {ref})",
                                                    f"set it, add it to environment.env, or write "
                                                    f"${{{{ env.{ref.name} || 'default' }}}}"))
    if diags:
        raise SpecError(diags)


def import_callables(spec) -> dict:
    """Import task callables and hooks (after env is applied: modules may read it on import)."""
    from flowspec.callables import add_import_path
    from flowspec.compile import import_all

    add_import_path(spec.base_dir)
    callables, diags = import_all(spec)
    if diags:
        raise SpecError(diags)
    return callables
