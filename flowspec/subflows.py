"""Compile-time work on `flow: FILE` subflows: the child spec compiled once per top-level compile
(however many tasks or parents name it), and cycles between spec files found and named.

The compile of one spec may compile its children, which may compile theirs: `compiling` keeps,
for the compile in progress, the chain of files being compiled (a child already on the chain is a
cycle) and the children already compiled (each file once: a tree of 1 000 tasks naming the same
child compiles it once, so the work stays linear in the number of distinct files).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_state: dict = {"chain": None, "done": None}
# The key, in a flow's callables, of the callables of a `flow: FILE` child (with the child's path
# after it): a stored flow carries its children's code, so that whoever runs it needs none of the
# registering machine's files. No task is named so (a task name is an identifier).
SUBFLOW_KEY = "<subflow>"


@contextlib.contextmanager
def compiling(path: str) -> Iterator[None]:
    """Mark `path` (absolute) as being compiled; the outermost call starts a fresh cache."""
    top = _state["chain"] is None
    if top:
        _state["chain"], _state["done"] = [], {}
    _state["chain"].append(path)
    try:
        yield
    finally:
        _state["chain"].pop()
        if top:
            _state["chain"] = _state["done"] = None


def cycle_to(path: str) -> list[str] | None:
    """The chain of files from `path` back to itself, when compiling it now would close a cycle."""
    chain = _state["chain"] or []
    if path not in chain:
        return None
    return chain[chain.index(path):] + [path]


def compile_child(path: str):
    """(spec, diagnostics) of the child spec at `path` (absolute), compiled at most once per
    top-level compile."""
    from flowspec.compile import compile_file

    done = _state["done"]
    if done is not None and path in done:
        return done[path]
    result = compile_file(path)
    if done is not None:
        done[path] = result
    return result


def child_path(parent_file: str, written: str) -> str:
    """The absolute path of `written` (relative to the parent spec's folder); a folder stands for
    the flow.yaml in it."""
    path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(parent_file)), written))
    return os.path.join(path, "flow.yaml") if os.path.isdir(path) else path


def shown(path: str) -> str:
    """`path` for messages: relative to the folder of the spec the command was given (the first
    of the chain being compiled), as the user sees the files."""
    chain = _state["chain"]
    base = os.path.dirname(chain[0]) if chain else os.getcwd()
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive
        return path


def file_children(spec) -> list:
    """The spec files of `spec`'s `flow: FILE` subflows, nested ones too, each once (compiled
    FlowSpecs, depth first)."""
    out, seen, todo = [], set(), [spec]
    while todo:
        for task in todo.pop().tasks.values():
            sub = task.subflow
            if sub is None or sub.registered or sub.spec is None or sub.path in seen:
                continue
            seen.add(sub.path)
            out.append(sub.spec)
            todo.append(sub.spec)
    return out
