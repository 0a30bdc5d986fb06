"""What a running task (or hook) may read: `from flowspec import context`.

    context.logger      a logger whose lines carry the task label, e.g. say_hello[2]
    context.params      the flow run's parameters (read-only)
    context.run_id, context.flow_name, context.task_name, context.map_index, context.attempt
    context.run_name    the task run's name from the task's `run_name` (None without one)
    context.loop        in a looping task: .index (0 first) and .previous (the previous result)
    context.get("logger"), context.get("name", default)  — dict-style access, as in Prefect

Backed by a ContextVar so that tasks on threads of one pool each see their own values.
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from types import MappingProxyType

TASK_LOGGER = "flowspec.task"
_FIELDS = ("run_id", "flow_name", "params", "task_name", "map_index", "attempt", "run_name")


class TaskContext:
    """The values for one attempt of one task run (or, outside tasks, for the flow run)."""

    __slots__ = ("run_id", "flow_name", "params", "task_name", "map_index", "attempt", "_logger", "run_name",
                 "loop")

    def __init__(self, run_id: str, flow_name: str, params, task_name: str | None = None,
                 map_index: int | None = None, attempt: int = 0, run_name: str | None = None) -> None:
        self.run_id = run_id
        self.flow_name = flow_name
        self.params = params
        self.task_name = task_name
        self.map_index = map_index
        self.attempt = attempt
        self.run_name = run_name  # the task's `run_name` for this task run, when it has one
        self.loop = None  # a looping task's flowspec.loops.LoopState
        self._logger = None

    @property
    def label(self) -> str:
        if self.task_name is None:
            return "flow"
        if self.run_name is not None:
            return f"{self.task_name}[{self.run_name}]"
        return self.task_name if self.map_index is None else f"{self.task_name}[{self.map_index}]"

    @property
    def logger(self) -> logging.LoggerAdapter:
        # Made on first use: most tasks never log, and this keeps the per-task cost near zero.
        if self._logger is None:
            self._logger = logging.LoggerAdapter(logging.getLogger(TASK_LOGGER), {"task": self.label})
        return self._logger

    def for_task(self, task_name: str, map_index: int | None, attempt: int,
                 run_name: str | None = None) -> "TaskContext":
        return TaskContext(self.run_id, self.flow_name, self.params, task_name, map_index, attempt, run_name)

    def as_dict(self) -> dict:
        d = {f: getattr(self, f) for f in _FIELDS}
        d["logger"] = self.logger
        d["parameters"] = self.params
        return d


_current: ContextVar[TaskContext | None] = ContextVar("flowspec_context", default=None)
_EMPTY = TaskContext("", "", MappingProxyType({}))


def current() -> TaskContext:
    return _current.get() or _EMPTY


def set_current(ctx: TaskContext):
    return _current.set(ctx)


def reset(token) -> None:
    _current.reset(token)


def get(key: str, default=None):
    """Dict-style access: `context.get("logger")`."""
    ctx = current()
    if key in ("logger", "parameters") or key in _FIELDS:
        return ctx.as_dict()[key] if key in ("logger", "parameters") else getattr(ctx, key)
    return default


def __getattr__(name: str):
    if name == "logger" or name in _FIELDS:
        return getattr(current(), name)
    if name == "parameters":
        return current().params
    if name == "loop":  # a looping task's place: context.loop.index, context.loop.previous
        from flowspec.loops import LoopState

        return current().loop or LoopState()
    raise AttributeError(f"flowspec.context has no attribute '{name}'")
