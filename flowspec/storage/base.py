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
    return digest.hexdigest()


def import_flow(spec) -> tuple[dict, dict[str, ModuleType]]:
    """Import the spec's callables (reporting problems at their positions) and its code modules."""
    from flowspec.environments.base import import_callables

    callables = import_callables(spec)
    return callables, code_modules(spec)


def serialize(spec) -> tuple[bytes, str]:
    """The payload bytes of a flow, and its fingerprint."""
    import cloudpickle

    callables, modules = import_flow(spec)
    by_value = {m.__name__ for m in modules.values()}
    for name in by_value:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    try:
        payload = {"format": PAYLOAD_FORMAT, "spec": spec, "callables": callables}
        from flowspec.serialize import dumps  # code keeps its file name and source, for tracebacks

        data = dumps(payload, protocol=pickle.DEFAULT_PROTOCOL)
    finally:
        for name in by_value:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])
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
