"""The default cache key of a task run (`cache: true`): a digest of the callable's code, of the
code it imports from the spec's folder, and of its resolved arguments.

Code: the source text of the callable's module file and of every module beside the spec that it
imports, transitively. "Imports" is read from the module's namespace (modules and functions or
classes whose module file lies in the spec's folder), not by parsing the source: cheap, and it
sees `from helpers import clean` as well as `import helpers`. The digest of a module is computed
once per process and file state (size, mtime), so a task mapped over 10 000 elements reads its
files once.

Arguments: JSON with sorted keys when they are plain data, else their pickle (cloudpickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import types

_code_digests: dict = {}  # (module file, folder) -> (stat signature, digest)


def default_key(fn, args: dict, base_dir: str, code: str | None = None) -> str:
    """The sha256 (hex) of the code of `fn` (with what it imports from `base_dir`) and `args`.
    `code`: code_digest(fn, base_dir) when the caller has it (once per run, not per task run)."""
    h = hashlib.sha256()
    h.update((code or code_digest(fn, base_dir)).encode())
    h.update(b"\0")
    h.update(args_bytes(args))
    return h.hexdigest()


def args_bytes(args: dict) -> bytes:
    try:
        return b"j" + json.dumps(args, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    except (TypeError, ValueError):
        import cloudpickle

        return b"p" + cloudpickle.dumps(args)


def code_digest(fn, base_dir: str) -> str:
    """sha256 of the sources of fn's module and of the spec-folder modules it reaches."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if not path:  # a callable without a module file (a builtin, a lambda made at run time)
        return hashlib.sha256(repr(getattr(fn, "__qualname__", fn)).encode()).hexdigest()
    top = os.path.realpath(base_dir) + os.sep
    key = (path, top)
    files = _reached(module, top)
    signature = tuple(_stat(f) for f in files)
    cached = _code_digests.get(key)
    if cached and cached[0] == signature:
        return cached[1]
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        h.update(b"\0")
        try:
            with open(f, "rb") as src:
                h.update(src.read())
        except OSError:
            h.update(b"<unreadable>")
        h.update(b"\0")
    digest = h.hexdigest()
    _code_digests[key] = (signature, digest)
    return digest


def _stat(path: str) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return (-1, -1)


def _reached(module: types.ModuleType, top: str) -> list[str]:
    """Files of `module` and of the spec-folder modules reachable from its namespace, sorted."""
    seen: dict[str, types.ModuleType] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        path = getattr(mod, "__file__", None)
        if not path:
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen[real] = mod
        for value in list(vars(mod).values()):
            other = value if isinstance(value, types.ModuleType) else sys.modules.get(
                getattr(value, "__module__", None) or "") if callable(value) else None
            if other is None or other is mod:
                continue
            other_path = getattr(other, "__file__", None)
            if other_path and os.path.realpath(other_path).startswith(top):
                todo.append(other)
    first = os.path.realpath(module.__file__)
    return [first] + sorted(p for p in seen if p != first)
