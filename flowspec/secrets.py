"""Secrets by name: `resolve(NAME)` → its value, from the first provider that has it.

Providers, in SPEC.md's order:
1. the environment variable `FLOWSPEC_SECRET_<NAME>` of the process where the flow runs;
2. the backend's secret store (`flowspec secrets set NAME`), Fernet-encrypted with the key in
   `$FLOWSPEC_SECRETS_KEY`: the backend holds ciphertext only, and a value is decrypted where
   the flow runs;
3. a platform's own secrets (`environment.secrets`), which the platform injects into the
   run's environment as provider 1's variable.

`cryptography` (the `secrets` extra) is imported only when the store is used.
"""
from __future__ import annotations

import os
import re

from flowspec.errors import FlowspecError, UsageError

ENV_PREFIX = "FLOWSPEC_SECRET_"
KEY_VAR = "FLOWSPEC_SECRETS_KEY"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAKE_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


class SecretError(FlowspecError):
    """A secret that no provider has, or a name that cannot be one."""


def env_name(name: str) -> str:
    """The environment variable that holds the secret `name`."""
    return ENV_PREFIX + name


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise SecretError(f"'{name}' is not a secret name",
                          hint="a secret name is letters, digits and '_', not starting with a digit")
    return name


def resolve(name: str, environ=None, backend=None) -> str:
    """The value of the secret `name`; a SecretError naming where it was looked for.

    `backend`: the open backend whose store to read, or a callable that opens it when the store
    is read, returning None when it cannot (default: the one at $FLOWSPEC_BACKEND)."""
    environ = os.environ if environ is None else environ
    check_name(name)
    value = environ.get(env_name(name))
    if value is not None:
        return value
    looked = [f"the environment variable {env_name(name)}"]
    value, where = _from_store(name, environ, backend)
    if value is not None:
        return value
    looked.append(where)
    raise SecretError(f"the secret '{name}' is not set: it was looked for in {' and in '.join(looked)}",
                      hint=f"set {env_name(name)} where the flow runs, or store it with:"
                           f" flowspec secrets set {name} < FILE")


def _from_store(name: str, environ, backend) -> tuple[str | None, str]:
    from flowspec.backend import backend_url, open_backend, redact_url

    if callable(backend):
        backend = backend()
    url = backend.url if backend is not None else backend_url(environ.get("FLOWSPEC_BACKEND") or None)
    where = f"the backend's secret store ({redact_url(url)})"
    try:
        if backend is None:
            with open_backend(url) as opened:
                token = opened.secret_token(name)
        else:
            token = backend.secret_token(name)
    except FlowspecError as exc:
        return None, f"{where}, which could not be read: {exc.message}"
    if token is None:
        return None, where
    return decrypt(token, name, environ), where


def fernet(environ=None):
    """The Fernet cipher of $FLOWSPEC_SECRETS_KEY; a UsageError saying how to make a key."""
    environ = os.environ if environ is None else environ
    key = environ.get(KEY_VAR)
    if not key:
        raise UsageError(f"{KEY_VAR} is not set: the secret store encrypts with it and refuses to work without it",
                         hint=f"make a key with: {MAKE_KEY}  and export {KEY_VAR}=KEY wherever flows"
                              " read secrets (agents, their pods and tasks)")
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise UsageError("the secret store needs the `cryptography` package",
                         hint="pip install 'flowspec[secrets]'") from None
    try:
        return Fernet(key.encode())
    except (ValueError, TypeError):
        raise UsageError(f"{KEY_VAR} is not a Fernet key (32 url-safe base64-encoded bytes)",
                         hint=f"make one with: {MAKE_KEY}") from None


def encrypt(value: str, environ=None) -> str:
    return fernet(environ).encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(token: str, name: str, environ=None) -> str:
    from cryptography.fernet import InvalidToken

    try:
        return fernet(environ).decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise SecretError(f"the secret '{name}' in the backend's store cannot be decrypted with {KEY_VAR}",
                          hint=f"use the key it was stored with, or store it again: flowspec secrets set {name}") from None


# A `secret: true` parameter of a run made for an agent is stored as {ENCRYPTED: token}: the
# backend never holds it in clear, and the agent's child decrypts it where the flow runs.
ENCRYPTED = "$flowspec_encrypted"


def encrypt_params(params: dict, names) -> dict:
    """`params` with the value of each of `names` encrypted (a UsageError without the key)."""
    import json

    names = [n for n in names if n in params]
    if not names:
        return params
    cipher = fernet()
    return {k: {ENCRYPTED: cipher.encrypt(json.dumps(v).encode()).decode("ascii")} if k in names else v
            for k, v in params.items()}


def is_encrypted(value) -> bool:
    return isinstance(value, dict) and set(value) == {ENCRYPTED}


def decrypt_params(params: dict) -> dict:
    """`params` with each encrypted value decrypted (needs $FLOWSPEC_SECRETS_KEY where it runs)."""
    import json

    if not any(is_encrypted(v) for v in params.values()):
        return params
    cipher = fernet()
    from cryptography.fernet import InvalidToken

    out = {}
    for k, v in params.items():
        if is_encrypted(v):
            try:
                v = json.loads(cipher.decrypt(v[ENCRYPTED].encode("ascii")))
            except InvalidToken:
                raise SecretError(f"the secret parameter '{k}' cannot be decrypted with {KEY_VAR}",
                                  hint=f"give the agent the {KEY_VAR} that `flowspec run --name` had") from None
        out[k] = v
    return out
