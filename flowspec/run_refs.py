"""`${{ kv.KEY }}` and `${{ secrets.NAME }}`: resolved once, where the flow runs, when the run
starts, before any task.

Each KV value read is logged (and so kept in the run's history, `flowspec runs logs`); each
secret value, and each value of a `secret: true` parameter, is registered with flowspec.masking
so that it reads MASK in every log line, message, error and output of this process. A secret
that no provider has fails the run before any task, naming the secret and where it was looked for.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from flowspec import references as refs
from flowspec.errors import SpecError

SERVICE_KINDS = ("kv", "secrets")
log = logging.getLogger("flowspec.run")


def service_refs(spec) -> Iterator[tuple[tuple, refs.Ref]]:
    """(spec path, reference) of each kv and secrets reference of the spec's tasks (arguments,
    conditions, hooks), flow hooks, outputs and env."""
    for task in spec.tasks.values():
        sections = [("with", dict(task.with_args)), ("map", dict(task.map_args))]
        if getattr(task, "condition", None) is not None:
            sections.append(("if", task.condition))
        sections += [((key, "with"), dict(hook.with_args)) for key in ("on_success", "on_failure", "on_retry")
                     if (hook := getattr(task, key, None)) is not None]
        for section, values in sections:
            for path, ref in _refs(values):
                if ref.kind in SERVICE_KINDS:
                    yield ("tasks", task.name) + (section if isinstance(section, tuple) else (section,)) + path, ref
    flow_parts = [((key, "with"), dict(hook.with_args)) for key in ("on_success", "on_failure")
                  if (hook := getattr(spec, key, None)) is not None]
    flow_parts.append((("outputs",), dict(getattr(spec, "outputs", None) or {})))
    for where, values in flow_parts:
        for path, ref in _refs(values):
            if ref.kind in SERVICE_KINDS:
                yield where + path, ref
    for name, value in spec.environment.env.items():
        for path, ref in refs.iter_refs({name: value}):
            if ref.kind in SERVICE_KINDS:
                yield ("environment", "env") + path, ref


def _refs(value) -> Iterator[tuple[tuple, refs.Ref]]:
    if isinstance(value, refs.Ref):
        yield (), value
    elif isinstance(value, (refs.Template, refs.Expr, list, dict)):
        yield from refs.iter_refs(value)


def resolve_services(spec, params: dict) -> dict:
    """{(kind, name): value} for every kv and secrets reference of `spec`; a SpecError (at each
    reference's place in the spec) for a KV key or a secret that cannot be had."""
    from flowspec import masking

    # secret parameters, and parameters named like credentials (as `plan` and `runs show` mask
    # them): their values read MASK on the terminal too, not only in the backend
    masking.add_runtime_values(masking.texts_of(params.get(p.name)) for p in spec.parameters.values()
                               if getattr(p, "secret", False) or masking.is_secret(p.name))
    _mask_output()
    wanted: dict = {}
    for path, ref in service_refs(spec):
        wanted.setdefault((ref.kind, ref.name), path)
    if not wanted:
        return {}
    values, diags = {}, []
    backend = _Lazy()  # opened only when read: secrets from the environment need no backend
    try:
        for (kind, name), path in wanted.items():
            try:
                values[(kind, name)] = _secret(name, backend) if kind == "secrets" else _kv(name, backend())
            except LookupError as exc:
                diags.append(_diag(spec, path, str(exc.args[0]), exc.args[1] if len(exc.args) > 1 else None))
    finally:
        backend.close()
    if diags:
        raise SpecError(diags)
    _mask_output()
    return values


def _mask_output() -> None:
    """Once a secret is resolved, what this process prints outside tasks (hooks) is masked too."""
    from flowspec import masking, task_output

    if masking.runtime_values():
        task_output.mask_streams()


class _Lazy:
    """The backend, opened at the first call (None when it cannot be: env-provided secrets still
    resolve; the KV and the store say why they cannot)."""

    def __init__(self) -> None:
        self.opened, self.backend = False, None

    def __call__(self):
        if not self.opened:
            from flowspec.backend import open_backend
            from flowspec.errors import FlowspecError

            self.opened = True
            try:
                self.backend = open_backend()
            except FlowspecError:
                pass
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def _kv(key: str, backend):
    if backend is None:
        raise LookupError(f"${{{{ kv.{key} }}}}: the backend cannot be opened to read the KV store",
                          "check FLOWSPEC_BACKEND (or --backend) where the flow runs")
    value = backend.kv_get(key, default=_Missing)
    if value is _Missing:
        raise LookupError(f"${{{{ kv.{key} }}}}: the KV store has no key '{key}'",
                          f"set it first: flowspec kv set {key} VALUE")
    return value


def _secret(name: str, backend) -> str:
    from flowspec import masking, secrets

    try:
        value = secrets.resolve(name, backend=backend)
    except secrets.SecretError as exc:
        raise LookupError(f"${{{{ secrets.{name} }}}}: {exc.message}", exc.hint) from None
    masking.add_runtime_values([value])
    return value


class _Missing:
    pass


def run_start_notes(services: dict) -> tuple:
    """The observers a run with these kv and secrets values needs: a RunStartNote when it read
    a KV key, else none (an observer is called twice per task run: a run that only resolved
    secrets pays nothing for it)."""
    return (RunStartNote(services),) if any(kind == "kv" for kind, _ in services) else ()


class RunStartNote:
    """A runner observer that logs the KV values a run read, once the run has started (and so is
    recorded): they stay in its history (`flowspec runs logs`)."""

    def __init__(self, services: dict) -> None:
        self.read = {name: value for (kind, name), value in services.items() if kind == "kv"}

    def task_state(self, *args) -> None:
        pass

    def flow_state(self, result) -> None:
        if result.state == "Running" and self.read:
            read, self.read = self.read, {}
            for key, value in read.items():
                log.info("kv.%s = %s (read at run start)", key, json.dumps(value, ensure_ascii=False))


def _diag(spec, path: tuple, message: str, hint: str | None):
    from flowspec.diagnostics import Diagnostic

    if spec.document is not None:
        return spec.document.diag(path, message, hint)
    return Diagnostic(spec.path, 1, 1, "/".join(map(str, path)), message, hint)


def lookup_with(services: dict, base):
    """A lookup that answers kv and secrets references from `services`, the others with `base`."""
    def lookup(ref: refs.Ref):
        if ref.kind in SERVICE_KINDS:
            return services[(ref.kind, ref.name)]
        return base(ref)
    return lookup
