"""The flow runner's semantics, through FlowRunner and the LocalExecutor, with real task code."""
from __future__ import annotations

import os
import time

import pytest

from flowspec.environments.base import run_in_process
from flowspec.runner import aggregate, frozen, trigger_decision

CODE = '''
import os, sys, time
from flowspec import context

CALLS = []

def const(value):
    CALLS.append(context.task_name)
    return value

def add(a, b=0):
    return a + b

def fail(**kwargs):
    raise ValueError("nope")

def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad {x}")
    return x

def flaky(times):
    if context.attempt <= times:
        raise ConnectionError(f"attempt {context.attempt}")
    return context.attempt

def sleep(seconds):
    time.sleep(seconds)
    return "woke"

def catch_all(seconds):
    try:
        time.sleep(seconds)
    except Exception:
        return "swallowed"

def exit_task():
    sys.exit(3)

def interrupt():
    # A real Ctrl-C: a task's own `raise KeyboardInterrupt` only fails that task
    import os, signal, time
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)

def seen(**kwargs):
    return kwargs

def getenv(name):
    return os.environ.get(name)
'''


def _states(result) -> dict:
    return {name: rec.state for name, rec in result.tasks.items()}


class Recorder:
    """An observer that keeps every notification."""

    def __init__(self) -> None:
        self.tasks: list[tuple] = []
        self.flows: list[str] = []

    def task_state(self, task, index, state, attempt, message) -> None:
        self.tasks.append((task, index, state, attempt))

    def flow_state(self, result) -> None:
        self.flows.append(result.state)


# -- data flow -----------------------------------------------------------------------------------
def test_results_flow_through_references_and_keep_their_type(flow):
    result = flow.run("""
        version: 1
        name: data
        parameters: {n: {type: integer, default: 2}}
        tasks:
          a: {run: steps.py:const, with: {value: [1, 2]}}
          b: {run: steps.py:seen, with: {lst: "${{ tasks.a }}", n: "${{ params.n }}", s: "n=${{ params.n }} a=${{ tasks.a }}",
              nested: {deep: ["${{ params.n }}"]}}}
    """, CODE)
    assert result.state == "Success"
    assert result.tasks["b"].result == {"lst": [1, 2], "n": 2, "s": "n=2 a=[1, 2]", "nested": {"deep": [2]}}


def test_tasks_run_in_dependency_order_and_after_waits(flow):
    flow.write("steps.py", CODE)
    spec = flow.spec("""
        version: 1
        name: order
        tasks:
          last: {run: steps.py:const, with: {value: 3}, after: [middle]}
          middle: {run: steps.py:const, with: {value: "${{ tasks.first }}"}}
          first: {run: steps.py:const, with: {value: 1}}
    """)
    assert list(spec.tasks) == ["first", "middle", "last"]
    result = flow.run(flow.path.joinpath("flow.yaml").read_text())
    assert [r.result for r in result.tasks.values()] == [1, 1, 3]


# -- mapping -------------------------------------------------------------------------------------
MAP_SPEC = """
version: 1
name: mapping
parameters: {items: {type: array, default: [1, 2, 3]}, empty: {type: array, default: []}}
tasks:
  zipped: {run: steps.py:add, map: {a: "${{ params.items }}", b: [10, 20, 30]}}
  unequal: {run: steps.py:add, map: {a: "${{ params.items }}", b: [1]}}
  empty: {run: steps.py:add, map: {a: "${{ params.empty }}"}}
  after_empty: {run: steps.py:seen, with: {got: "${{ tasks.empty }}"}}
  one_bad: {run: steps.py:fail_on, map: {x: "${{ params.items }}"}, with: {bad: 2}}
  child_to_child: {run: steps.py:add, map: {a: "${{ tasks.one_bad }}"}, with: {b: 100}}
  gather: {run: steps.py:seen, with: {got: "${{ tasks.one_bad }}"}, trigger: all_finished}
"""


@pytest.fixture
def mapped(flow):
    return flow.run(MAP_SPEC, CODE)


def test_map_zips_arguments(mapped):
    rec = mapped.tasks["zipped"]
    assert (rec.state, rec.result, rec.children, rec.attempts) == ("Success", [11, 22, 33], ["Success"] * 3, 3)


def test_map_with_unequal_lengths_fails_the_task(mapped):
    rec = mapped.tasks["unequal"]
    assert (rec.state, rec.attempts) == ("Failed", 0)
    assert rec.message == "mapped arguments have different lengths (a=3, b=1); they are zipped and must match"


def test_map_over_empty_list_gives_no_children_and_an_empty_result(mapped):
    rec = mapped.tasks["empty"]
    assert (rec.state, rec.children, rec.result) == ("Success", [], [])
    assert mapped.tasks["after_empty"].result == {"got": []}


def test_failed_child_only_trigger_fails_the_same_child_downstream(mapped):
    upstream, downstream = mapped.tasks["one_bad"], mapped.tasks["child_to_child"]
    assert upstream.children == ["Success", "Failed", "Success"] and upstream.state == "Failed"
    assert upstream.message == "[1] ValueError: bad 2"
    assert downstream.children == ["Success", "TriggerFailed", "Success"]
    assert downstream.result == [101, None, 103] and downstream.state == "TriggerFailed"
    assert mapped.tasks["gather"].result == {"got": [1, None, 3]}
    assert mapped.state == "Failed"


def test_map_over_a_value_that_is_not_a_list_fails_the_task(flow):
    result = flow.run("""
        version: 1
        name: notalist
        tasks:
          one: {run: steps.py:const, with: {value: 5}}
          each: {run: steps.py:add, map: {a: "${{ tasks.one }}"}}
    """, CODE)
    assert result.tasks["each"].state == "Failed"
    assert result.tasks["each"].message == "map argument 'a' resolved to int, not a list"


# -- retries and timeouts ------------------------------------------------------------------------
def test_retries_until_success_with_delay_and_retrying_state(flow):
    recorder = Recorder()
    start = time.monotonic()
    result = flow.run("""
        version: 1
        name: retry
        tasks:
          t: {run: steps.py:flaky, with: {times: 2}, retries: 3, retry_delay: 50ms}
    """, CODE, observers=[recorder])
    assert time.monotonic() - start >= 0.1  # two delays of 50 ms
    rec = result.tasks["t"]
    assert (rec.state, rec.attempts, rec.result) == ("Success", 3, 3)
    assert recorder.tasks == [("t", None, "Running", 1), ("t", None, "Retrying", 1), ("t", None, "Running", 2),
                              ("t", None, "Retrying", 2), ("t", None, "Running", 3), ("t", None, "Success", 3)]
    assert recorder.flows == ["Running", "Success"]


def test_retries_exhausted_fails_with_the_last_error(flow):
    result = flow.run("""
        version: 1
        name: retry
        tasks:
          t: {run: steps.py:flaky, with: {times: 5}, retries: 1}
    """, CODE)
    rec = result.tasks["t"]
    assert (rec.state, rec.attempts, rec.message) == ("Failed", 2, "ConnectionError: attempt 2")


def test_timeout_stops_the_attempt_and_is_retried(flow):
    start = time.monotonic()
    result = flow.run("""
        version: 1
        name: timeouts
        tasks:
          slow: {run: steps.py:sleep, with: {seconds: 5}, timeout: 100ms, retries: 1}
          stubborn: {run: steps.py:catch_all, with: {seconds: 5}, timeout: 100ms}
          fast: {run: steps.py:sleep, with: {seconds: 0}, timeout: 5s}
    """, CODE)
    assert time.monotonic() - start < 2
    assert (result.tasks["slow"].state, result.tasks["slow"].attempts) == ("TimedOut", 2)
    assert result.tasks["slow"].message == "attempt 2 exceeded the timeout of 0.1s"
    assert result.tasks["stubborn"].state == "TimedOut"  # `except Exception` cannot swallow the timeout
    assert result.tasks["fast"].result == "woke"
    assert result.state == "Failed"


def test_sys_exit_in_a_task_fails_that_task_only(flow):
    result = flow.run("""
        version: 1
        name: exits
        tasks:
          quits: {run: steps.py:exit_task}
          other: {run: steps.py:const, with: {value: 1}}
    """, CODE)
    assert _states(result) == {"quits": "Failed", "other": "Success"}
    assert result.tasks["quits"].message == "SystemExit: 3"


# -- triggers and states -------------------------------------------------------------------------
TRIGGERS = """
version: 1
name: triggers
tasks:
  ok: {run: steps.py:const, with: {value: 1}}
  bad: {run: steps.py:fail}
  needs_bad: {run: steps.py:const, with: {value: 2}, after: [bad]}
  needs_both: {run: steps.py:const, with: {value: 2}, after: [ok, needs_bad]}
  cleanup: {run: steps.py:const, with: {value: 3}, after: [ok, bad], trigger: all_finished}
  alert: {run: steps.py:const, with: {value: 4}, after: [ok, bad], trigger: any_failed}
  no_alert: {run: steps.py:const, with: {value: 5}, after: [ok], trigger: any_failed}
  after_skip: {run: steps.py:const, with: {value: 6}, after: [no_alert]}
  finally_after_skip: {run: steps.py:const, with: {value: 7}, after: [no_alert], trigger: all_finished}
"""


def test_triggers(flow):
    result = flow.run(TRIGGERS, CODE)
    assert _states(result) == {
        "ok": "Success", "bad": "Failed", "needs_bad": "TriggerFailed", "needs_both": "TriggerFailed",
        "cleanup": "Success", "alert": "Success", "no_alert": "Skipped", "after_skip": "Skipped",
        "finally_after_skip": "Success"}
    assert result.tasks["needs_both"].message == "upstream did not succeed: needs_bad (TriggerFailed)"
    assert result.tasks["no_alert"].message == "no upstream task failed (trigger any_failed)"
    assert result.state == "Failed"


def test_a_flow_with_only_skips_succeeds(flow):
    result = flow.run("""
        version: 1
        name: skips
        tasks:
          ok: {run: steps.py:const, with: {value: 1}}
          alert: {run: steps.py:const, with: {value: 2}, after: [ok], trigger: any_failed}
    """, CODE)
    assert (result.state, result.tasks["alert"].state) == ("Success", "Skipped")


@pytest.mark.parametrize(("states", "expected"), [
    ([], "Success"), (["Success", "Skipped"], "Success"), (["Skipped", "Skipped"], "Skipped"),
    (["Success", "TimedOut"], "Failed"), (["TriggerFailed", "Success"], "TriggerFailed"),
    (["Failed", "TriggerFailed"], "Failed"), (["Cancelled", "Failed"], "Cancelled"),
])
def test_aggregate_state_of_mapped_children(states, expected):
    assert aggregate(states) == expected


@pytest.mark.parametrize(("trigger", "upstream", "expected"), [
    ("all_successful", [("a", "Success")], None),
    ("all_successful", [("a", "Cancelled")], "TriggerFailed"),
    ("all_successful", [("a", "Skipped"), ("b", "Success")], "Skipped"),
    ("all_finished", [("a", "Failed"), ("b", "Cancelled")], None),
    ("any_failed", [("a", "TimedOut")], None),
    ("any_failed", [("a", "Cancelled")], "Skipped"),
])
def test_trigger_decision(trigger, upstream, expected):
    assert trigger_decision(trigger, upstream)[0] == expected


# -- hooks ---------------------------------------------------------------------------------------
HOOKS = CODE + '''
EVENTS = []

def start():
    EVENTS.append(("start", context.flow_name))

def finish(run):
    EVENTS.append(("exit", run["state"], dict(run["parameters"]), run["tasks"]["t"]["state"]))
    try:
        run["state"] = "Success"
    except TypeError:
        EVENTS.append("read-only")

def broken_start():
    raise RuntimeError("cluster unreachable")
'''


def _hook_events(flow):
    from flowspec.callables import load_callable

    return load_callable("steps.py:start", str(flow.path)).__globals__["EVENTS"]


@pytest.mark.parametrize("task, state", [("const", "Success"), ("fail", "Failed")])
def test_on_start_without_argument_and_on_exit_with_a_read_only_summary(flow, task, state):
    result = flow.run(f"""
        version: 1
        name: hooks
        parameters: {{p: {{default: 1}}}}
        tasks:
          t: {{run: "steps.py:{task}", with: {{value: 1}}}}
        environment: {{on_start: "steps.py:start", on_exit: "steps.py:finish"}}
    """, HOOKS.replace("def fail(**kwargs)", "def fail(value)"))
    assert result.state == state
    assert _hook_events(flow) == [("start", "hooks"), ("exit", state, {"p": 1}, state), "read-only"]


def test_failing_on_start_fails_the_run_and_on_exit_still_runs(flow):
    result = flow.run("""
        version: 1
        name: hooks
        tasks:
          t: {run: "steps.py:const", with: {value: 1}}
        environment: {on_start: "steps.py:broken_start", on_exit: "steps.py:finish"}
    """, HOOKS)
    assert result.state == "Failed"
    assert result.message == ("on_start hook steps.py:broken_start failed: RuntimeError: cluster unreachable;"
                              " no task ran")
    # No task is left Pending as if it might still run: each says why it did not.
    assert [(r.state, r.message, r.attempts) for r in result.tasks.values()] == [
        ("Cancelled", "not run: the on_start hook failed", 0)]
    assert _hook_events(flow)[0][:2] == ("exit", "Failed")


def test_ctrl_c_cancels_pending_tasks_and_on_exit_runs(flow):
    recorder = Recorder()
    result = flow.run("""
        version: 1
        name: interrupted
        tasks:
          first: {run: "steps.py:const", with: {value: 1}}
          stop: {run: "steps.py:interrupt", after: [first]}
          later: {run: "steps.py:const", with: {value: 2}, after: [stop]}
        environment: {on_exit: "steps.py:finish"}
    """, HOOKS.replace('run["tasks"]["t"]', 'run["tasks"]["later"]'), observers=[recorder])
    assert (result.state, result.message) == ("Cancelled", "interrupted by the user")
    assert _states(result) == {"first": "Success", "stop": "Cancelled", "later": "Cancelled"}
    assert _hook_events(flow)[0][:2] == ("exit", "Cancelled")
    assert recorder.flows == ["Running", "Cancelled"]
    # `stop` ran (its attempt 1 was cut short): it is Cancelled after attempt 1, `later` never ran.
    assert [(r.name, r.attempts) for r in result.tasks.values()] == [("first", 1), ("stop", 1), ("later", 0)]
    assert [t for t in recorder.tasks if t[2] == "Cancelled"] == [("stop", None, "Cancelled", 1),
                                                                  ("later", None, "Cancelled", 0)]


def test_frozen_summary_is_deeply_read_only():
    summary = frozen({"a": [1, {"b": 2}]})
    with pytest.raises(TypeError):
        summary["a"][1]["b"] = 3
    assert summary["a"] == (1, summary["a"][1])


# -- environment.env, in the process that runs the flow ------------------------------------------
def test_environment_env_is_applied_for_the_run_and_restored(flow, monkeypatch):
    monkeypatch.setenv("FS_TEST_KEPT", "before")
    monkeypatch.delenv("FS_TEST_NEW", raising=False)
    flow.write("steps.py", CODE)
    spec = flow.spec("""
        version: 1
        name: env
        tasks:
          kept: {run: steps.py:getenv, with: {name: FS_TEST_KEPT}}
          new: {run: steps.py:getenv, with: {name: FS_TEST_NEW}}
          ref: {run: steps.py:seen, with: {v: "${{ env.FS_TEST_NEW }}", fb: "${{ env.FS_TEST_NONE || 'x' }}"}}
        environment: {env: {FS_TEST_KEPT: during, FS_TEST_NEW: "${{ env.FS_TEST_KEPT }}-new"}}
    """)
    result = run_in_process(spec, {})
    assert [r.result for r in result.tasks.values()] == ["during", "before-new", {"v": "before-new", "fb": "x"}]
    assert os.environ["FS_TEST_KEPT"] == "before" and "FS_TEST_NEW" not in os.environ
