"""Credentials kept out of what is shown and logged: values of parameters whose names say they
hold one (`db_password`, `api_token`), the rule `flowspec validate` and `plan` apply to names,
values of `secret: true` parameters, and every secret resolved in this process
(`${{ secrets.NAME }}`, registered with `add_runtime_values`).

A run's parameters are stored as given where its process needs them (a run of a registered flow:
the agent's child reads them); what people see (`runs show`, `runs list`, the run history, log
lines) shows MASK in place of each such value.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
# Secret texts resolved in this process, longest first; masked by mask_text whatever its caller
# passes, and in every log record that a handler with MaskFilter writes.
_runtime: tuple[str, ...] = ()
_runtime_lock = threading.Lock()


def add_runtime_values(groups: Iterable[Iterable[str] | str]) -> None:
    """Mask these texts (a secret's value, a secret parameter's values) from now on in this process,
    each as written and as JSON, repr() and URL encoding write it."""
    global _runtime
    new = {form for group in groups for text in ([group] if isinstance(group, str) else group)
           for form in encodings(text)}
    new.discard("")
    new.discard(MASK)
    with _runtime_lock:
        if not new <= set(_runtime):
            _runtime = tuple(sorted(set(_runtime) | new, key=len, reverse=True))


def encodings(text: str) -> set[str]:
    """`text` and the forms it takes inside a JSON document (`--format json`, `json.dumps` in a
    task), a repr() (a list or dict printed by a task, a traceback's locals) and a URL (a
    password in a connection string): the same value, so masked too."""
    from urllib.parse import quote

    forms = {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1], repr(text)[1:-1],
             quote(text, safe="")}
    return {form for form in forms if form}


def runtime_values() -> tuple[str, ...]:
    return _runtime


def texts_of(value: Any) -> list[str]:
    """The texts inside a value (each string or number of a list or mapping), to mask."""
    return list(_texts(value))


class MaskFilter(logging.Filter):
    """A handler filter: the record's message (and traceback) with the runtime secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        runtime = _runtime
        if runtime:
            # Inlined (no getMessage, no scrub call for a line without arguments): this runs
            # for every log line of a run that resolved a secret.
            text = record.msg if not record.args and type(record.msg) is str else record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
                record.exc_info, record.exc_text = None, None
            for value in runtime:
                if value in text:
                    text = text.replace(value, MASK)
            record.msg, record.args = text, None
        return True


def is_secret(name: str, env_var: bool = True) -> bool:
    """Does a variable (or settings key) name say that its value is a credential?"""
    # The same rules `flowspec validate` uses to refuse literal credentials in a spec.
    from flowspec.compile import _SECRET_KEY, _SECRET_VAR

    return bool((_SECRET_VAR if env_var else _SECRET_KEY).search(name))


def mask_params(params: Mapping[str, Any], names: Iterable[str] = ()) -> dict[str, Any]:
    """The parameters with the value of each one named like a credential (or in `names`, the
    `secret: true` ones) replaced by MASK."""
    names = set(names)
    return {name: MASK if name in names or is_secret(name) else value for name, value in params.items()}


def secret_values(params: Mapping[str, Any], names: Iterable[str] = ()) -> tuple[str, ...]:
    """The texts to mask in messages and log lines: each value (each string or number inside a
    list or mapping) of the parameters named like credentials, longest first, so that a value
    that holds another is masked whole."""
    found: set[str] = set()
    names = set(names)
    for name, value in params.items():
        if name in names or is_secret(name):
            found.update(form for text in _texts(value) for form in encodings(text))
    found.discard("")
    found.discard(MASK)
    return tuple(sorted(found, key=len, reverse=True))


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield str(value)


def mask_argv(argv: list[str]) -> list[str]:
    """A command line for a crash report: every `--param NAME=VALUE` value reads MASK (the crash
    may come before the spec says which parameters are secret), and the runtime values too."""
    out, after_param = [], False
    for arg in argv:
        if after_param and "=" in arg:
            arg = arg.split("=", 1)[0] + "=" + MASK
        elif arg.startswith("--param="):
            arg = "--param=" + arg[len("--param="):].split("=", 1)[0] + "=" + MASK
        after_param = arg == "--param"
        out.append(mask_text(arg, ()))
    return out


def mask_value(value: Any, values: tuple[str, ...] = ()) -> Any:
    """A JSON-like value (a flow run's outputs) with `values` and the runtime values masked in
    each string (keys included)."""
    if isinstance(value, str):
        return mask_text(value, values)
    if isinstance(value, Mapping):
        return {mask_text(k, values) if isinstance(k, str) else k: mask_value(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v, values) for v in value]
    return value


def mask_text(text: str | None, values: tuple[str, ...]) -> str | None:
    """`text` with every occurrence of each of `values` (and of the runtime values) replaced by MASK."""
    if not text:
        return text
    if _runtime:
        values = (*values, *_runtime) if values else _runtime
    return scrub(text, values)


def scrub_batch(texts: list[str], values: tuple[str, ...]) -> bool:
    """Whether any of `texts` may hold one of `values`: one substring test per value over the
    batch joined, so that a batch without a secret (the common case) costs no test per line."""
    if not values or not texts:
        return False
    joined = "\n".join(texts)
    return any(value in joined for value in values)


def scrub(text: str, values: tuple[str, ...]) -> str:
    """`text` with each of `values` (as given: the runtime values are the caller's to add)
    replaced by MASK; a line that holds none is returned as it is, after one substring test per
    value (per log line, this is what masking costs)."""
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text
