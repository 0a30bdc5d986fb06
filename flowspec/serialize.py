"""Shipping task code and log lines to other processes (pool processes, Dask workers).

Task code usually lives in files beside the spec, which a remote Dask worker does not have.
cloudpickle can serialize a module's functions and classes *by value* (their code travels with
them) once the module is registered with `cloudpickle.register_pickle_by_value`; modules that
are installed (site-packages, the standard library, flowspec itself) stay by reference and
must be installed where the task runs.

Log records cross process boundaries as plain dicts (msgpack- and pickle-friendly) and are
handed, on arrival, to the logger of the same name here, so that they reach the flow run's
log stream (`flowspec.logs`) and its recorder as if the task had run in this process.
"""
from __future__ import annotations

import logging
import os
import sys
import sysconfig

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_INSTALLED = ("site-packages", "dist-packages")
_RECORD_FIELDS = ("name", "levelno", "levelname", "created", "msecs", "task")


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.add(_PACKAGE_DIR)
    return tuple(roots)


def is_local_code(path: str | None, roots: tuple[str, ...] | None = None) -> bool:
    """Whether a module file is the user's own code (not the standard library, not installed)."""
    if not path:
        return False
    real = os.path.realpath(path)
    if any(part in _INSTALLED for part in real.split(os.sep)):
        return False
    return not any(real == root or real.startswith(root + os.sep) for root in roots or _installed_roots())


def register_by_value(directory: str) -> list[str]:
    """Register every imported module whose file lies under `directory` (the spec's folder)
    for pickling by value; return their names. Call it after the task modules are imported."""
    import cloudpickle

    tops = (os.path.abspath(directory) + os.sep, os.path.realpath(directory) + os.sep)
    roots = _installed_roots()
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name == "__main__" or not path or not path.startswith(tops):  # cheap test first
            continue
        if is_local_code(path, roots) and name not in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.register_pickle_by_value(module)
            names.append(name)
    return names


_shipped: set = set()  # modules that ship() has looked at


def ship(fn) -> None:
    """Make sure `fn` pickles by value when its module is local code (with that module's
    neighbours): a fallback for callers that did not register the spec's folder first."""
    name = getattr(fn, "__module__", None) or ""
    if name in _shipped:
        return
    _shipped.add(name)
    path = getattr(sys.modules.get(name), "__file__", None)
    if is_local_code(path):
        register_by_value(os.path.dirname(path))


def dumps(obj, protocol: int | None = None) -> bytes:
    """cloudpickle's bytes of `obj`, where the code of the spec's own functions keeps its file
    name and brings its source along (see `_Sources`)."""
    import io

    with io.BytesIO() as buffer:
        _pickler_class()(buffer, protocol=protocol).dump(obj)
        return buffer.getvalue()


_PICKLER = None


def _pickler_class():
    """A cloudpickle Pickler whose code objects keep their file name: cloudpickle writes
    `<dynamic-code>` instead (its payloads are then the same wherever they are made), and a task
    that fails in a pool process, on a Dask worker or in an agent's run would show a traceback
    without its file and lines. Made on first use: cloudpickle is not imported before."""
    global _PICKLER
    if _PICKLER is None:
        import types
        from collections import ChainMap

        import cloudpickle

        sources = _Sources(cloudpickle.Pickler.dispatch_table[types.CodeType])
        table = ChainMap({types.CodeType: sources.reduce}, cloudpickle.Pickler.dispatch_table)
        _PICKLER = type("FlowspecPickler", (cloudpickle.Pickler,), {"dispatch_table": table})
    return _PICKLER


class _Sources:
    """Reduces a code object as cloudpickle does, with its real file name, and with that file's
    source (the spec's own code) registered in `linecache` where it is unpickled: the traceback
    shows the lines that ran, even where the file is not, or has changed since (an agent's run
    of a registered flow). A file's text is read once per process, and pickled once per payload."""

    def __init__(self, reduce_code) -> None:
        self.reduce_code = reduce_code
        self.texts: dict = {}  # file name -> (mtime_ns, size, lines) or None when not shipped

    def reduce(self, code):
        make, args = self.reduce_code(code)
        filename = code.co_filename
        args = tuple(filename if type(a) is str and a == "<dynamic-code>" else a for a in args)
        lines = self.lines(filename)
        return (make, args) if lines is None else (_code_with_source, (make, args, filename, lines))

    def lines(self, filename: str):
        try:
            st = os.stat(filename)
        except (OSError, ValueError):
            return None
        known = self.texts.get(filename)
        if known is not None and known[:2] == (st.st_mtime_ns, st.st_size):
            return known[2]
        lines = None
        if is_local_code(filename):
            import linecache

            linecache.checkcache(filename)
            lines = linecache.getlines(filename) or None
        self.texts[filename] = (st.st_mtime_ns, st.st_size, lines)
        return lines


def _code_with_source(make, args: tuple, filename: str, lines: list):
    """Unpickling: the code object, its file's source registered with linecache first."""
    import linecache

    entry = linecache.cache.get(filename)
    if entry is None or len(entry) < 3 or entry[2] != lines:
        # mtime None: linecache.checkcache keeps the entry (as for a module from a zip file)
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return make(*args)


def loads(data: bytes):
    import pickle

    return pickle.loads(data)


class ByValue:
    """Wraps an object so that any pickler (Dask's first tries the standard one, which would
    reference a spec-local module by name) serializes it with cloudpickle."""

    __slots__ = ("obj",)

    def __init__(self, obj) -> None:
        self.obj = obj

    def __reduce__(self):
        return loads, (dumps(self.obj),)


# -- log records --------------------------------------------------------------------------------
def record_to_dict(record: logging.LogRecord) -> dict:
    """A log record as plain data: the message formatted, with its traceback (if any) appended."""
    data = {key: getattr(record, key, None) for key in _RECORD_FIELDS}
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    data["msg"] = text
    return data


def emit_forwarded(data: dict) -> None:
    """Handle a record that came from another process as if it had been logged here."""
    logger = logging.getLogger(data["name"])
    if logger.isEnabledFor(data["levelno"]):
        logger.handle(logging.makeLogRecord(data))


class ForwardingHandler(logging.Handler):
    """Sends each record, as plain data, through `send(dict)` (a pipe, a Dask event)."""

    def __init__(self, send) -> None:
        super().__init__(logging.DEBUG)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(record_to_dict(record))
        except Exception:  # a log line must never fail the task that wrote it
            self.handleError(record)
