"""Storage decides WHERE the compiled flow lives between `register` and a flow run: see base.Storage."""
from __future__ import annotations

from typing import Any


def storage_for(kind: str):
    """An instance of the storage driver for `kind` (a UsageError if this release lacks it)."""
    from flowspec.drivers import load_driver

    return load_driver("storage", kind)()


def load_flow(location: dict[str, Any]) -> tuple[Any, dict]:
    """(FlowSpec, callables) from a location that a storage driver's `build` returned."""
    return storage_for(location.get("type", "local")).load(location)
