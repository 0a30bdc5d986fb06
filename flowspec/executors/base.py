"""The executor interface: start, submit, wait, shutdown.

The runner hands an executor self-contained units of work (one task run with all its attempts)
and waits for them. Results are opaque to the runner: an executor may return handles that stay
where they were computed and pass them back in later submissions.
"""
from __future__ import annotations

from abc import ABC, abstractmethod


class Executor(ABC):
    """Base class of executors. Subclasses document their YAML keys in their docstring."""

    #: True when submit() runs the work before returning (the runner then needs no waiting).
    synchronous = False

    def __init__(self, **options) -> None:
        self.options = options

    def start(self) -> None:
        """Acquire resources (pools, clusters). Called once before the first submit."""

    @abstractmethod
    def submit(self, fn, *args):
        """Schedule fn(*args); return a future-like object with done() and result()."""

    def submit_many(self, fn, arg_tuples) -> list:
        """Schedule many calls at once (mapped children); executors override to batch."""
        return [self.submit(fn, *args) for args in arg_tuples]

    @abstractmethod
    def wait(self, futures) -> list:
        """Block until at least one of `futures` is done; return the done ones."""

    def shutdown(self, cancel: bool = False) -> None:
        """Release resources; with cancel=True, drop work that has not started."""

    def __enter__(self) -> "Executor":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(cancel=exc_type is not None)
