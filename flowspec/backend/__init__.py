"""Where flows are registered and flow runs are tracked: SQLite by default, or PostgreSQL.

`open_backend()` picks the backend from a URL, `$FLOWSPEC_BACKEND`, or the default SQLite file
in the flowspec home.
"""
from __future__ import annotations

import os
from pathlib import Path

from flowspec.backend.base import (
    ACTIVE_STATES,
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUN_STATES,
    RUNNING,
    SCHEDULED,
    SUBMITTED,
    SUCCESS,
    WAITING_STATES,
    Agent,
    Backend,
    ConcurrencyLimit,
    Flow,
    FlowRun,
    LogLine,
    NotFoundError,
    StateEvent,
    TaskRunState,
    labels_match,
    redact_url,
)
from flowspec.errors import BackendError


def flowspec_home() -> Path:
    """`$FLOWSPEC_HOME`, or `~/.flowspec`; created private to the user if missing."""
    from flowspec.errors import UsageError

    given = os.environ.get("FLOWSPEC_HOME")
    home = Path(given or "~/.flowspec").expanduser()
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        what = f"FLOWSPEC_HOME={given}" if given else f"the flowspec home {home}"
        if isinstance(exc, FileExistsError) or home.is_file():
            why = "is a file, not a directory"
        elif isinstance(exc, NotADirectoryError):
            why = "a part of that path is a file, not a directory"
        else:
            why = f"cannot be created: {exc.strerror}"
        raise UsageError(f"{what}: {why}", hint="point FLOWSPEC_HOME at a directory that you may write"
                         " (it is created if missing), or unset it to use ~/.flowspec") from None
    return home


def backend_url(url: str | None = None) -> str:
    """The URL that `open_backend(url)` opens: `url`, else `$FLOWSPEC_BACKEND`, else the default file."""
    if url is None:
        url = os.environ.get("FLOWSPEC_BACKEND") or str(flowspec_home() / "flowspec.db")
    return url


def open_backend(url: str | None = None, *, busy_timeout_s: float | None = None) -> Backend:
    """Open (and create or migrate) the backend at `url`.

    `url` defaults to `$FLOWSPEC_BACKEND`, else `flowspec.db` in the flowspec home. Accepted:
    `sqlite:///absolute/path.db`, a plain file path, `postgresql://...` or `postgres://...`.
    `busy_timeout_s`: how long one SQLite call waits for a lock held by another process (agents
    wait less and retry themselves, see flowspec.backend.outage).
    """
    url = backend_url(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        from flowspec.backend.postgres import PostgresBackend

        return PostgresBackend(url)
    if scheme not in ("", "sqlite"):
        raise BackendError(
            f"unsupported backend URL {redact_url(url)}",
            hint="use sqlite:///PATH, a file path, or postgresql://USER@HOST:PORT/DATABASE",
        )
    path = url[len("sqlite://"):] if scheme else url
    if not path:
        raise BackendError(f"the backend URL {url} names no file", hint="use sqlite:///PATH")
    from flowspec.backend.sqlite import SQLiteBackend

    return SQLiteBackend(path) if busy_timeout_s is None else SQLiteBackend(path, busy_timeout_s)


__all__ = [
    "ACTIVE_STATES", "Agent", "Backend", "BackendError", "CANCELLED", "CANCELLING",
    "ConcurrencyLimit", "FAILED", "FINAL_STATES", "Flow", "FlowRun", "LogLine", "NotFoundError",
    "QUEUED", "RUNNING", "RUN_STATES", "SCHEDULED", "SUBMITTED", "SUCCESS", "StateEvent",
    "TaskRunState", "WAITING_STATES", "backend_url", "flowspec_home", "labels_match", "open_backend",
]
