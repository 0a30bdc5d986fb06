"""Credentials kept out of what is shown and logged: values of parameters whose names say they
hold one (`db_password`, `api_token`), the rule `flowspec validate` and `plan` apply to names,
values of `secret: true` parameters, and every secret resolved in this process
(`${{ secrets.NAME }}`, registered with `add_runtime_values`).

A run's parameters are stored as given where its process needs them (a run of a registered flow:
the agent's child reads them); what people see (`runs show`, `runs list`, the run history, log
lines) shows MASK in place of each such value.
"""
from __future__ import annotations

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
    """Mask these texts (a secret's value, a secret parameter's values) from now on in this process."""
    global _runtime
    new = {text for group in groups for text in ([group] if isinstance(group, str) else group)}
    new.discard("")
    new.discard(MASK)
    with _runtime_lock:
        if not new <= set(_runtime):
            _runtime = tuple(sorted(set(_runtime) | new, key=len, reverse=True))


def runtime_values() -> tuple[str, ...]:
    return _runtime


def texts_of(value: Any) -> list[str]:
    """The texts inside a value (each string or number of a list or mapping), to mask."""
    return list(_texts(value))


class MaskFilter(logging.Filter):
    """A handler filter: the record's message (and traceback) with the runtime secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _runtime:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
                record.exc_info, record.exc_text = None, None
            record.msg, record.args = mask_text(text, ()), None
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
            found.update(_texts(value))
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


def mask_text(text: str | None, values: tuple[str, ...]) -> str | None:
    """`text` with every occurrence of each of `values` (and of the runtime values) replaced by MASK."""
    if _runtime:
        values = tuple(values) + _runtime
    if text and values:
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
    return text
