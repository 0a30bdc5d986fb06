"""Credentials kept out of what is shown and logged: values of parameters whose names say they
hold one (`db_password`, `api_token`), the rule `flowspec validate` and `plan` apply to names.

A run's parameters are stored as given where its process needs them (a run of a registered flow:
the agent's child reads them); what people see (`runs show`, `runs list`, the run history, log
lines) shows MASK in place of each such value.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MASK = "****"


def is_secret(name: str, env_var: bool = True) -> bool:
    """Does a variable (or settings key) name say that its value is a credential?"""
    # The same rules `flowspec validate` uses to refuse literal credentials in a spec.
    from flowspec.compile import _SECRET_KEY, _SECRET_VAR

    return bool((_SECRET_VAR if env_var else _SECRET_KEY).search(name))


def mask_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters with the value of each one named like a credential replaced by MASK."""
    return {name: MASK if is_secret(name) else value for name, value in params.items()}


def secret_values(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The texts to mask in messages and log lines: each value (each string or number inside a
    list or mapping) of the parameters named like credentials, longest first, so that a value
    that holds another is masked whole."""
    found: set[str] = set()
    for name, value in params.items():
        if is_secret(name):
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
    """`text` with every occurrence of each of `values` replaced by MASK."""
    if text and values:
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
    return text
