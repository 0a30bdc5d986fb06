"""Import the callables a spec names (`module:attr` or `file.py:attr`) and check their signatures."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys


class CallableError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def add_import_path(base_dir: str) -> None:
    """The spec's folder goes first on the import path, as SPEC.md promises."""
    if not sys.path or sys.path[0] != base_dir:
        if base_dir in sys.path:
            sys.path.remove(base_dir)
        sys.path.insert(0, base_dir)


def load_callable(target: str, base_dir: str):
    """Return the object `target` names; raise CallableError saying why it cannot be had."""
    where, _, attr = target.rpartition(":")
    module = _import_file(where, base_dir) if where.endswith(".py") or "/" in where else _import_module(where, base_dir)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
            from flowspec.schema import did_you_mean

            raise CallableError(f"'{where}' has no attribute '{attr}'",
                                did_you_mean(attr, names) or (f"it defines: {', '.join(names)}" if names else None)) from None
    if not callable(obj):
        raise CallableError(f"'{target}' is not callable (it is a {type(obj).__name__})")
    return obj


def _import_module(name: str, base_dir: str):
    add_import_path(base_dir)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise CallableError(f"cannot import module '{name}': no module named '{exc.name}'",
                                f"put {exc.name.replace('.', '/')}.py beside the spec, or install the package") from None
        raise CallableError(f"cannot import module '{name}': {_describe(exc)}") from None
    except Exception as exc:  # the user's module raised while importing: show where
        raise CallableError(f"importing '{name}' failed: {_describe(exc)}") from None


def _import_file(relpath: str, base_dir: str):
    path = os.path.normpath(os.path.join(base_dir, relpath))
    if not os.path.isfile(path):
        raise CallableError(f"file '{relpath}' not found (looked for {relpath} relative to the spec's folder)")
    add_import_path(base_dir)
    name = "_flowspec_file_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CallableError(f"importing '{relpath}' failed: {_describe(exc)}") from None
    return module


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{exc.msg} ({os.path.basename(exc.filename or '?')}, line {exc.lineno})"
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    where = f" ({os.path.basename(last.tb_frame.f_code.co_filename)}, line {last.tb_lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def signature_problems(fn, given: set[str]) -> list[str]:
    """What is wrong with calling `fn(**{name: ... for name in given})`, or [] when it fits."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []  # builtins without a signature: nothing to check
    params = sig.parameters.values()
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    problems = []
    for name in sorted(given):
        if name not in named and not takes_kwargs:
            positional_only = any(p.name == name and p.kind is p.POSITIONAL_ONLY for p in params)
            why = "is positional-only" if positional_only else "is not a parameter of it"
            problems.append(f"argument '{name}' {why}")
    missing = [p.name for p in params
               if p.default is p.empty and p.name not in given
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        problems.append(f"missing required argument{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    return problems


def takes_argument(fn) -> bool:
    """Whether a hook wants the run summary: it has at least one parameter."""
    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return False
