"""Import the callables a spec names (`module:attr` or `file.py:attr`) and check their signatures."""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys

# hashlib and inspect are imported where they are used: `validate` lists the spec's folder
# through this module (worker_twin_problem) and must stay quick.


class CallableError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# The spec whose modules are imported now: its folder, whether flowspec put that folder on
# sys.path, and the modules that were loaded before. Module names are global to a process, so
# when one process imports the code of several specs (`validate --strict a/flow.yaml
# b/flow.yaml`, each folder with its own tasks.py), the modules one spec loaded from its folder
# are forgotten before the next spec's are imported.
_world: dict = {"dir": None, "added": False, "before": frozenset(), "twins": None}
_EXITS_HINT = ("a module is imported to find its functions: code that exits or waits for the user "
               "belongs under `if __name__ == \"__main__\":`")


class FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """Code beside a spec is compiled from its source at each import. A cached .pyc is trusted
    when its source has the same size and the same mtime in whole seconds: an edit within the
    second after an import that keeps the size (FACTOR = 2 -> 3, as a script may make between
    two registers) would run, and register, the old code under the new file's fingerprint."""

    def path_stats(self, path: str) -> dict:
        raise OSError("no bytecode cache for code beside a spec")  # get_code then reads the source


def _fresh_finder(path: str):
    """sys.path_hooks entry: the finder for a folder of the current spec's code (its folder and
    the packages in it, not an import root of its own below it such as a virtualenv)."""
    base = _world["dir"]
    inside = base is not None and (path == base or path.startswith(base + os.sep))
    if not inside or any(path == p or path.startswith(p + os.sep) for p in sys.path if p and p != base
                         and p.startswith(base + os.sep)):
        raise ImportError  # not ours: the next hook (the standard FileFinder) takes it
    machinery = importlib.machinery
    return machinery.FileFinder(path, (machinery.ExtensionFileLoader, machinery.EXTENSION_SUFFIXES),
                                (FreshSourceLoader, machinery.SOURCE_SUFFIXES),
                                (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES))


def add_import_path(base_dir: str) -> None:
    """Enter the spec's world: its folder first on the import path, as SPEC.md promises, its
    code read from source, and no module left over from another spec's folder."""
    if _world["dir"] != base_dir:
        if _world["dir"] is not None:
            _leave_world()
        _world.update(dir=base_dir, added=base_dir not in sys.path, before=frozenset(sys.modules), twins=None)
        if _fresh_finder not in sys.path_hooks:
            sys.path_hooks.insert(0, _fresh_finder)
        for path in [p for p in sys.path_importer_cache if p == base_dir or p.startswith(base_dir + os.sep)]:
            del sys.path_importer_cache[path]  # found before with the standard finder
        importlib.invalidate_caches()  # files written since the last import must be seen
        _import_standard_twins(base_dir)
    if not sys.path or sys.path[0] != base_dir:
        if base_dir in sys.path:
            sys.path.remove(base_dir)
        sys.path.insert(0, base_dir)


# Standard modules that act when imported (print, open a browser, start a GUI): never imported here.
_ACTS_ON_IMPORT = frozenset(("this", "antigravity", "__hello__", "__phello__", "idlelib", "turtle", "turtledemo",
                             "tkinter"))


def _import_standard_twins(base_dir: str) -> None:
    """A file beside the spec named like a standard module (random.py) would shadow it once the
    folder leads the import path, but only if nothing had imported the standard one yet: which
    one `import random` gives would depend on what flowspec happened to import first, and
    flowspec's own code would get the spec's file. The standard one is imported first, so it
    always wins, and a task module that wanted the other gets an error that says so."""
    for name in _stdlib_twins(base_dir):
        if name not in sys.modules and name not in _ACTS_ON_IMPORT:
            try:
                importlib.import_module(name)  # the spec's folder is not on the import path yet
            except Exception:  # e.g. a module of another platform: nothing to shadow then
                pass


def _leave_world() -> None:
    """Forget the modules the current spec loaded from its own folder, and that folder on sys.path."""
    from flowspec.serialize import _installed_roots, is_local_code

    folder = os.path.realpath(_world["dir"])
    # Import roots below the folder (a virtualenv's site-packages) and installed code (flowspec
    # itself, when a spec sits at the top of its source tree) are kept: only the spec's own code goes.
    others = [os.path.realpath(p) + os.sep for p in sys.path if p]
    others = [r for r in others if r.startswith(folder + os.sep) and r != folder + os.sep]
    roots = _installed_roots()
    for name in set(sys.modules) - _world["before"]:
        module = sys.modules.get(name)
        where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or ()), None)
        if not where:
            continue
        where = os.path.realpath(where)
        if (where.startswith(folder + os.sep) and not any(where.startswith(r) for r in others)
                and is_local_code(where, roots) and name.partition(".")[0] != "flowspec"):
            del sys.modules[name]
    if _world["added"] and _world["dir"] in sys.path:
        sys.path.remove(_world["dir"])


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
    top = name.partition(".")[0]
    if top in _stdlib_twins(base_dir):
        raise CallableError(f"'{_stdlib_twins(base_dir)[top]}' beside the spec has the name of the standard library "
                            f"module '{top}': `import {top}` may give either one",
                            f"rename it (e.g. {top}_tasks.py) and change 'run' to match")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise CallableError(f"cannot import module '{name}': no module named '{exc.name}'",
                                f"put {exc.name.replace('.', '/')}.py beside the spec, or install the package") from None
        raise CallableError(f"cannot import module '{name}': {_describe(exc)}", _twin_hint(exc, base_dir)) from None
    except Exception as exc:  # the user's module raised while importing: show where
        raise CallableError(f"importing '{name}' failed: {_describe(exc)}", _twin_hint(exc, base_dir)) from None
    except BaseException as exc:  # sys.exit() or KeyboardInterrupt at import time: an error at its `run`
        raise CallableError(f"importing '{name}' failed: {_describe(exc)}", _EXITS_HINT) from None


def _stdlib_twins(base_dir: str) -> dict[str, str]:
    """Files or packages beside the spec named like a standard-library module: name → file
    (listed once per spec: a spec may name many modules)."""
    if base_dir == _world["dir"] and _world.get("twins") is not None:
        return _world["twins"]
    try:
        entries = os.listdir(base_dir)
    except OSError:
        entries = []
    twins = {}
    for entry in entries:
        stem = entry[:-3] if entry.endswith(".py") else entry
        if stem in sys.stdlib_module_names and stem != "__pycache__" and (
                entry.endswith(".py") or os.path.isfile(os.path.join(base_dir, entry, "__init__.py"))):
            twins[stem] = entry if entry.endswith(".py") else f"{entry}/"
    if base_dir == _world["dir"]:
        _world["twins"] = twins
    return twins


def worker_twin_problem(base_dir: str) -> tuple[str, str] | None:
    """(message, hint) when a file beside the spec is named like a standard-library module and
    the flow's executor starts processes that import from the spec's folder: the workers of a
    temporary Dask cluster get the folder on their import path and import that file instead
    (`logging.py` stops them from starting at all). Only the folder is listed: nothing is imported."""
    twins = _stdlib_twins(base_dir)
    if not twins:
        return None
    shown = ", ".join(f"'{entry}'" for entry in sorted(twins.values()))
    names = ", ".join(f"'{name}'" for name in sorted(twins))
    plural = len(twins) > 1
    return (f"{shown} beside the spec {'have' if plural else 'has'} the name of the standard library "
            f"module{'s' if plural else ''} {names}: the Dask workers of a temporary cluster import from the "
            f"spec's folder and would get {'them' if plural else 'it'} instead of the standard one",
            f"rename {'them' if plural else 'it'} (e.g. {sorted(twins)[0]}_tasks.py), and the imports that use "
            f"{'them' if plural else 'it'}")


def _twin_hint(exc: BaseException, base_dir: str) -> str | None:
    """When the failure names a module that a file beside the spec shadows, say so."""
    text = str(exc)
    for name, entry in _stdlib_twins(base_dir).items():
        if f"'{name}'" in text:
            return (f"'{entry}' beside the spec has the name of the standard library module '{name}', and "
                    f"Python imported the standard one: rename it")
    return None


def _import_file(relpath: str, base_dir: str):
    path = os.path.normpath(os.path.join(base_dir, relpath))
    if not os.path.isfile(path):
        raise CallableError(f"file '{relpath}' not found (looked for {relpath} relative to the spec's folder)")
    add_import_path(base_dir)
    import hashlib

    name = "_flowspec_file_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path, loader=FreshSourceLoader(name, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CallableError(f"importing '{relpath}' failed: {_describe(exc)}", _twin_hint(exc, base_dir)) from None
    except BaseException as exc:  # sys.exit() or KeyboardInterrupt at import time
        del sys.modules[name]
        raise CallableError(f"importing '{relpath}' failed: {_describe(exc)}", _EXITS_HINT) from None
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
    return f"{type(exc).__name__}: {exc}{where}" if str(exc) else f"{type(exc).__name__}{where}"


def signature_problems(fn, given: set[str]) -> list[str]:
    """What is wrong with calling `fn(**{name: ... for name in given})`, or [] when it fits."""
    import inspect

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


def hook_problem(fn) -> str | None:
    """Why the runner cannot call this hook as it will (with the run summary when it has a
    parameter, else with nothing), or None when it can."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(None) if takes_argument(fn) else sig.bind()
    except TypeError:
        return f"a hook takes no parameter or one (the run summary), but its signature is {sig}"
    return None


def takes_argument(fn) -> bool:
    """Whether a hook wants the run summary: it has at least one parameter."""
    import inspect

    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return False
