"""The KV store from task code: `from flowspec import kv`; `kv.get(key, default=None)`,
`kv.set(key, value)`, `kv.delete(key)`.

Values are JSON (a dict, list, string, number, bool or None). They are kept in the backend that
the run records to: `$FLOWSPEC_BACKEND`, which agents, their children and containers, pods and
Fargate tasks set, and which `flowspec run --backend URL` sets for its own process and its
workers; else the default SQLite file in the flowspec home. One backend connection is opened per
process and shared by its threads. Each `set` is one statement: the last writer of a key wins.
"""
from __future__ import annotations

import os
import threading
from typing import Any

_lock = threading.Lock()
_open: dict[tuple[int, str], Any] = {}


def _backend():
    from flowspec.backend import backend_url, open_backend

    url = backend_url()
    slot = (os.getpid(), url)  # a forked worker opens its own connection
    with _lock:
        backend = _open.get(slot)
        if backend is None:
            backend = _open[slot] = open_backend(url)
        return backend


def get(key: str, default: Any = None) -> Any:
    """The value stored under `key`, or `default` when there is none."""
    return _backend().kv_get(key, default)


def set(key: str, value: Any) -> None:  # noqa: A001 - the name the KV API promises
    """Store `value` (JSON-serializable) under `key`, replacing what was there."""
    _backend().kv_set(key, value)


def delete(key: str) -> bool:
    """Remove `key`; False if it was not there."""
    return _backend().kv_delete(key)
