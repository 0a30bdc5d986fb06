"""Secrets by name: `resolve(NAME)` → its value, from the first provider that has it.

Providers, in SPEC.md's order: the environment variable `FLOWSPEC_SECRET_<NAME>`. (The backend's
encrypted store and the platforms' own secrets come after it; until they exist, a secret that is
not in the environment is an error that says where it was looked for.)
"""
from __future__ import annotations

import os
import re

from flowspec.errors import FlowspecError

ENV_PREFIX = "FLOWSPEC_SECRET_"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretError(FlowspecError):
    """A secret that no provider has, or a name that cannot be one."""


def env_name(name: str) -> str:
    """The environment variable that holds the secret `name`."""
    return ENV_PREFIX + name


def resolve(name: str, environ=None) -> str:
    """The value of the secret `name`; a SecretError naming where it was looked for."""
    environ = os.environ if environ is None else environ
    if not _NAME.match(name):
        raise SecretError(f"'{name}' is not a secret name",
                          hint="a secret name is letters, digits and '_', not starting with a digit")
    value = environ.get(env_name(name))
    if value is None:
        raise SecretError(f"the secret '{name}' is not set: it was looked for in the environment variable"
                          f" {env_name(name)}",
                          hint=f"set {env_name(name)} in the environment of the process that needs it"
                               " (the agent that runs the flow, or the shell that registers it)")
    return value
