"""`from flowspec import context`: what a running task sees, and how its log lines look."""
from __future__ import annotations

import io
import logging
import re
import threading
from types import MappingProxyType

import pytest

from flowspec import context, logs
from flowspec.context import TaskContext

CODE = '''
from flowspec import context

def look(item=None):
    if item == "retry" and context.attempt == 1:
        raise RuntimeError("again")
    context.logger.info("hello from %s", item)
    context.get("logger").warning("via get")
    return {"run_id": context.run_id, "flow": context.flow_name, "task": context.task_name,
            "index": context.map_index, "attempt": context.attempt, "params": dict(context.params),
            "parameters": dict(context.get("parameters")), "get_task": context.get("task_name"),
            "missing": context.get("nothing", "fallback")}

def write_param():
    context.params["n"] = 2
'''

SPEC = """
version: 1
name: ctx
parameters: {n: {type: integer, default: 1}}
tasks:
  single: {run: steps.py:look}
  mapped: {run: steps.py:look, map: {item: [a, retry]}, retries: 1}
"""


@pytest.fixture
def ran(flow, caplog):
    caplog.set_level(logging.INFO, logger="flowspec")
    return flow.run(SPEC, CODE, run_id="run-123"), caplog.records


def test_task_sees_run_task_index_attempt_and_params(ran):
    result, _ = ran
    common = {"run_id": "run-123", "flow": "ctx", "params": {"n": 1}, "parameters": {"n": 1}, "missing": "fallback"}
    assert result.tasks["single"].result == common | {"task": "single", "index": None, "attempt": 1,
                                                      "get_task": "single"}
    assert result.tasks["mapped"].result == [
        common | {"task": "mapped", "index": 0, "attempt": 1, "get_task": "mapped"},
        common | {"task": "mapped", "index": 1, "attempt": 2, "get_task": "mapped"}]


def test_logger_lines_carry_the_task_label(ran):
    _, records = ran
    task_lines = [(r.task, r.levelname, r.getMessage()) for r in records if r.name == "flowspec.task"]
    assert ("single", "INFO", "hello from None") in task_lines
    assert ("mapped[0]", "INFO", "hello from a") in task_lines
    assert ("mapped[1]", "WARNING", "via get") in task_lines
    assert any(label == "mapped[1]" and msg.startswith("attempt 1 failed: RuntimeError: again")
               for label, _, msg in task_lines)


def test_params_are_read_only(flow):
    result = flow.run("version: 1\nname: ro\nparameters: {n: {default: 1}}\ntasks: {t: {run: steps.py:write_param}}\n",
                      CODE)
    assert result.tasks["t"].state == "Failed"
    assert result.tasks["t"].message.startswith("TypeError:")


def test_outside_a_task_the_context_is_empty():
    assert (context.task_name, context.map_index, context.run_id, dict(context.params)) == (None, None, "", {})
    assert context.get("attempt") == 0 and context.get("unknown", 5) == 5
    with pytest.raises(AttributeError, match="flowspec.context has no attribute 'nope'"):
        context.nope  # noqa: B018


def test_each_thread_sees_its_own_context():
    seen = {}

    def work(name: str) -> None:
        token = context.set_current(TaskContext("r", "f", MappingProxyType({}), name, 0, 1))
        try:
            barrier.wait(timeout=5)  # both contexts are set before either is read
            seen[name] = context.task_name
        finally:
            context.reset(token)

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a", "b": "b"}


def test_log_lines_have_time_level_and_label():
    stream = io.StringIO()
    handler = logs.configure(stream=stream)
    root = logging.getLogger("flowspec")
    try:
        ctx = TaskContext("r", "f", MappingProxyType({}), "say_hello", 2, 1)
        ctx.logger.info("Hello, %s!", "Ford")
        TaskContext("r", "f", MappingProxyType({})).logger.error("flow-level")
    finally:
        root.removeHandler(handler)
        root.propagate = True
        root.setLevel(logging.NOTSET)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO    say_hello\[2\] \| Hello, Ford!", lines[0]), lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} ERROR   flow \| flow-level", lines[1]), lines
