"""A task's `loop`: its callable runs again while `until` is false (Prefect's LOOP signal).

The runner wraps a looping task's callable in a `LoopCall`; `run_unit` hands it the task run's
context, and each iteration runs as an ordinary call (with the attempt's timeout). The loop's
place (`context.loop.index`, `context.loop.previous`) lives on the task run's context, so that a
retry after a failed iteration carries on from that iteration rather than from the first.
"""
from __future__ import annotations

import os

from flowspec import references as refs

LOOPING = "Looping"


class LoopError(Exception):
    """The loop cannot go on: `until` could not be evaluated, or `max` iterations passed."""


class LoopState:
    """What a looping task reads as `context.loop`: `index` (0 first) and `previous` (the previous
    iteration's result, None first)."""

    __slots__ = ("index", "previous")

    def __init__(self, index: int = 0, previous=None) -> None:
        self.index, self.previous = index, previous

    def as_dict(self) -> dict:
        return {"index": self.index, "previous": self.previous}

    def __repr__(self) -> str:
        return f"LoopState(index={self.index}, previous={self.previous!r})"


class LoopCall:
    """A looping task's callable: `fn` with its `loop` (spec.LoopSpec)."""

    __slots__ = ("fn", "loop")

    def __init__(self, fn, loop) -> None:
        self.fn, self.loop = fn, loop

    def __call__(self, **kwargs):  # called as the task itself (an executor that ships `fn` alone)
        from flowspec import context as ctxmod

        ctx = ctxmod.current()
        if ctx is ctxmod._EMPTY:  # called outside a task run: a context of its own, not the shared empty one
            ctx = ctxmod.TaskContext("", "", ctx.params)
        return self.run(kwargs, ctx, None, None)

    def run(self, kwargs: dict, ctx, timeout: float | None, notify):
        from flowspec.runner import call_with_timeout

        fn, until, limit = self.fn, self.loop.until, self.loop.max
        state = ctx.loop if ctx.loop is not None else LoopState()
        ctx.loop = state
        while True:
            if state.index >= limit:
                raise LoopError(f"loop passed its max of {limit} iteration{'s' * (limit != 1)} and until"
                                f" ({shown(until)}) is still false; raise max or check the condition")
            value = fn(**kwargs) if timeout is None else call_with_timeout(fn, kwargs, timeout)
            done = self.until_true(value, state, ctx.params)
            if done:
                ctx.logger.info("loop iteration %d: until is true, the loop ends", state.index)
                return value
            ctx.logger.info("loop iteration %d: until is false, looping", state.index)
            if notify is not None:
                notify(ctx.task_name, ctx.map_index, LOOPING, ctx.attempt, f"iteration {state.index} done")
            state.index, state.previous = state.index + 1, value

    def until_true(self, value, state: LoopState, params) -> bool:
        until = self.loop.until
        if isinstance(until, bool):
            return until

        def lookup(ref: refs.Ref):
            if ref.kind == "result":
                return value
            if ref.kind == "context":
                return {"loop": state.as_dict()}.get(ref.name, refs.UNSET)
            if ref.kind == "params":
                return params[ref.name]
            if ref.name in os.environ:
                return os.environ[ref.name]
            if ref.fallback is not None:
                return ref.fallback
            raise refs.UnsetEnvError(f"environment variable {ref.name} is not set (referenced as {ref})")

        try:
            return bool(refs.resolve(until, lookup))
        except refs.ResolveError as exc:
            raise LoopError(f"loop.until {shown(until)} cannot be evaluated: {exc}") from None
        except Exception as exc:  # a result whose truth is ambiguous
            raise LoopError(f"loop.until {shown(until)}: {type(exc).__name__}: {exc}") from None


def shown(until) -> str:
    """The condition as written."""
    return str(until) if not isinstance(until, bool) else str(until).lower()
