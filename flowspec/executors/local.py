"""The `local` executor: task runs one after another, in this process."""
from __future__ import annotations

from flowspec.executors.base import Executor


class Done:
    """An already-finished future: far cheaper than concurrent.futures.Future per task run."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


class LocalExecutor(Executor):
    """Runs each task run when it is submitted, in the calling thread. YAML keys: `type` only."""

    synchronous = True

    def submit(self, fn, *args) -> Done:
        return Done(fn(*args))

    def wait(self, futures) -> list:
        return list(futures)
