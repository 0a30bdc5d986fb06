"""Riding out a backend that blinks: a database restart, a network drop, a file locked by another
process.

An agent and its flow run processes keep working while the backend fails, for up to a window
(`flowspec agent start --outage-tolerance`): calls are retried with backoff, one warning says
that the backend failed and one line says when it is back. Past the window the failure is
raised, with how long it lasted.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from flowspec.errors import BackendError, FlowspecError

T = TypeVar("T")
FIRST_DELAY_S, MAX_DELAY_S = 0.2, 1.0  # back within a second of the backend; a try a second costs nothing
DEFAULT_TOLERANCE_S = 120.0


class Outage:
    """The current stretch of failures of one backend, as seen by one process.

    `say(level, text)` reports: "warning" once when the backend starts failing, "info" once when
    it answers again. `failed()` returns how long to wait before the next try, or raises a
    BackendError once the backend has failed for longer than `tolerance_s`.
    """

    def __init__(self, url: str, tolerance_s: float, say: Callable[[str, str], None]) -> None:
        self.url, self.tolerance_s, self.say = url, tolerance_s, say
        self.since: float | None = None
        self._delay = FIRST_DELAY_S

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, exc: FlowspecError) -> float:
        now = time.monotonic()
        if self.since is None:
            self.since, self._delay = now, FIRST_DELAY_S
            self.say("warning", f"the backend failed, retrying for up to {self.tolerance_s:g}s"
                                f" (runs go on meanwhile): {exc.message}")
        elif now - self.since > self.tolerance_s:
            raise BackendError(f"the backend at {self.url} has failed for {now - self.since:.0f}s, longer than"
                               f" the outage tolerance of {self.tolerance_s:g}s: {exc.message}",
                               hint="check that the backend is up and reachable, then start again") from exc
        delay, self._delay = self._delay, min(self._delay * 2, MAX_DELAY_S)
        return delay

    def ok(self) -> None:
        if self.since is not None:
            self.say("info", f"the backend is back after {time.monotonic() - self.since:.1f}s")
            self.since = None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried while the backend fails, within the tolerance."""
        while True:
            try:
                value = fn(*args, **kwargs)
            except BackendError as exc:
                time.sleep(self.failed(exc))
                continue
            self.ok()
            return value
