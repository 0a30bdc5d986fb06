"""The storage interface, and the payload every storage type keeps: the compiled flow, pickled.

A payload holds the `FlowSpec` and its callables (tasks and hooks). Code from files beside the
spec is pickled by value, so a flow loads where those files are not; installed packages are
pickled by reference and must be installed wherever the flow runs. The fingerprint of a flow
is the sha256 of its spec text and of those code files: it is what `flowspec register`
compares to decide whether a flow changed.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any

from flowspec.errors import FlowspecError

PAYLOAD_FORMAT = 1


class Storage(ABC):
    """Base class of storage drivers.

    `build(spec)` puts the compiled flow somewhere and returns its location (a JSON-able dict
    with `type`, kept by the backend); `locate(spec)` finds a copy built earlier (for
    `register --no-build`); `load(location)` returns `(FlowSpec, callables)`.
    """

    @abstractmethod
    def build(self, spec) -> dict[str, Any]:
        """Store the flow; return where it is."""

    @abstractmethod
    def locate(self, spec) -> dict[str, Any]:
        """Where a copy of this exact flow was built before; a FlowspecError if there is none."""

    @abstractmethod
    def load(self, location: dict[str, Any]) -> tuple[Any, dict]:
        """The FlowSpec and its callables from a location that `build` returned."""


def code_modules(spec) -> dict[str, ModuleType]:
    """Imported modules whose file lies beside the spec (its folder or below): relative path → module.

    Folders that are import roots of their own below the spec's folder (a virtualenv's
    site-packages, a `src/` on sys.path) hold installed code, not the flow's, and are left out.
    """
    base = os.path.realpath(spec.base_dir)
    roots = [os.path.realpath(p) for p in sys.path if p]
    others = [r for r in roots if r != base and r.startswith(base + os.sep)]
    found: dict[str, ModuleType] = {}
    folders: dict[str, str] = {}  # a module's folder → its real path: hundreds of modules share a few dozen
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.isabs(path) or name.split(".")[0] == "flowspec":
            continue  # no file, or a pseudo one such as `<stdin>`, has no code to carry
        folder, file = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        path = os.path.realpath(path) if os.path.islink(path) else os.path.join(folders[folder], file)
        # `file.py:attr` targets are imported under a private name from anywhere, `../` included.
        beside = path.startswith(base + os.sep) and not any(path.startswith(r + os.sep) for r in others)
        if beside or name.startswith("_flowspec_file_"):
            found[os.path.relpath(path, base)] = module
    return found


def fingerprint(spec, modules: dict[str, ModuleType]) -> str:
    """sha256 over the spec text and the code files: equal fingerprints, equal flows."""
    digest = hashlib.sha256(f"flowspec-payload-{PAYLOAD_FORMAT}\n".encode())
    digest.update(spec.source.encode())
    for relpath in sorted(modules):
        digest.update(f"\n--- {relpath}\n".encode())
        with open(modules[relpath].__file__, "rb") as fh:
            digest.update(fh.read())
    from flowspec.subflows import file_children

    for child in file_children(spec):  # a changed child spec is a changed flow
        digest.update(f"\n--- spec {os.path.relpath(child.path, spec.base_dir)}\n{child.source}".encode())
    return digest.hexdigest()


def import_flow(spec) -> tuple[dict, dict[str, ModuleType]]:
    """Import the spec's callables (reporting problems at their positions) and its code modules,
    its `flow: FILE` children's too (see `_import_children`)."""
    from flowspec.environments.base import import_callables

    callables = import_callables(spec)
    modules = code_modules(spec)
    _import_children(spec, callables, modules, spec.base_dir)
    return callables, modules


def _import_children(spec, callables: dict, modules: dict, base: str) -> None:
    """The callables of each `flow: FILE` child, under (SUBFLOW_KEY, its path) in its parent's
    callables and with its own children's: a stored flow runs its children from the payload, not
    from files that may be gone (an agent on another machine, a container). Their code modules
    join `modules` (named from the top spec's folder): pickled by value and fingerprinted."""
    from flowspec.environments.base import import_callables
    from flowspec.subflows import SUBFLOW_KEY

    for task in spec.tasks.values():
        sub = task.subflow
        if sub is None or sub.registered or sub.spec is None or (SUBFLOW_KEY, sub.path) in callables:
            continue
        child = callables[(SUBFLOW_KEY, sub.path)] = import_callables(sub.spec)
        for rel, module in code_modules(sub.spec).items():
            modules.setdefault(os.path.relpath(os.path.join(sub.spec.base_dir, rel), base), module)
        _import_children(sub.spec, child, modules, base)


def serialize(spec) -> tuple[bytes, str]:
    """The payload bytes of a flow, and its fingerprint."""
    import cloudpickle

    callables, modules = import_flow(spec)
    by_value: dict[str, ModuleType] = {}
    for module in modules.values():
        by_value.setdefault(module.__name__, module)
    # A module of a spec whose folder was left for a child's (flowspec.callables) is no longer in
    # sys.modules: it is put back while pickling, for cloudpickle to take it by value.
    borrowed = [name for name in by_value if name not in sys.modules]
    for name in borrowed:
        sys.modules[name] = by_value[name]
    for name in by_value:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    try:
        payload = {"format": PAYLOAD_FORMAT, "spec": spec, "callables": callables}
        from flowspec.serialize import dumps  # code keeps its file name and source, for tracebacks

        data = dumps(payload, protocol=pickle.DEFAULT_PROTOCOL)
    finally:
        for name in by_value:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])
        for name in borrowed:
            if sys.modules.get(name) is by_value[name]:
                del sys.modules[name]
    return data, fingerprint(spec, modules)


def deserialize(data: bytes, where: str) -> tuple[Any, dict]:
    """(FlowSpec, callables) from payload bytes already checked against their checksum."""
    try:
        payload = pickle.loads(data)
    except Exception as exc:  # a module or class the flow needs is missing here
        raise FlowspecError(
            f"{where}: the stored flow cannot be loaded here: {type(exc).__name__}: {exc}",
            hint="install the packages the flow imports where it runs, or register it again"
            " with this version of flowspec",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != PAYLOAD_FORMAT:
        raise FlowspecError(
            f"{where}: not a flow payload of format {PAYLOAD_FORMAT}",
            hint="register the flow again (flowspec register FILE) with this version of flowspec",
        )
    return payload["spec"], payload["callables"]
