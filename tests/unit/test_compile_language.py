"""The compiler on the task and flow keys of the expression language: `if`, `run_name`, `loop`,
`cleanup`, hooks, `outputs`, the flow `timeout`, merges (`||`) and env references everywhere."""
from __future__ import annotations

from types import MappingProxyType

import pytest

from flowspec.compile import resolve_env, unset_env
from flowspec.references import Expr, Ref, Template, UnsetEnvError
from flowspec.spec import HookSpec, LoopSpec

HEAD = "version: 1\nname: x\n"


def _problems(flow, body: str, strict: bool = False) -> list[tuple]:
    spec, diags = flow.compile(HEAD + body, strict=strict)
    assert spec is None or not diags
    return [(d.line, d.column, d.path, d.message) for d in diags]


# -- valid keys compile into spec fields -----------------------------------------------------------
VALID = """\
version: 1
name: language
timeout: 2m
outputs:
  total: ${{ tasks.join.total }}
  either: ${{ tasks.small || tasks.big }}
on_success: hooks:done
on_failure: {run: hooks:alert, with: {url: "${{ env.URL || 'http://127.0.0.1:9' }}", rows: "${{ tasks.join }}"}}
parameters:
  full: {type: boolean, default: false}
tasks:
  a: {run: "m:a"}
  small: {run: "m:s", if: "${{ not params.full }}"}
  big: {run: "m:b", if: "${{ params.full and tasks.a.ok }}"}
  join:
    run: m:join
    with: {rows: "${{ tasks.small || tasks.big }}", region: eu}
    run_name: "join-${{ args.region }}"
    trigger: none_failed
    loop: {until: "${{ result.done or context.loop.index >= 3 }}"}
    cleanup: m:close
    on_success: m:ok
    on_retry: {run: m:retrying, with: {full: "${{ params.full }}"}}
  each:
    run: m:each
    map: {item: [1, 2]}
    run_name: "${{ args.item }}"
    loop: {until: true, max: 5}
    if: false
"""


def test_valid_keys_compile_into_the_task_fields(flow):
    spec = flow.spec(VALID)
    small, big, join, each, a = (spec.tasks[n] for n in ("small", "big", "join", "each", "a"))
    assert isinstance(small.condition, Expr) and str(small.condition) == "${{ not params.full }}"
    assert small.condition_upstream == () and small.upstream == ()
    assert big.condition_upstream == ("a",) and big.upstream == ("a",) and big.data_upstream == ("a",)
    assert join.run_name == Template(("join-", Ref("args", "region", None, 5)))
    assert join.loop == LoopSpec(join.loop.until, 1000) and isinstance(join.loop.until, Expr)
    assert join.cleanup == "m:close"
    assert join.on_success == HookSpec("m:ok")
    assert join.on_retry == HookSpec("m:retrying", MappingProxyType({"full": Ref("params", "full")}))
    assert join.on_failure is None
    assert join.merge == (("small", "big"),) and join.upstream == ("small", "big")
    assert join.trigger == "none_failed"
    assert each.run_name == Ref("args", "item") and each.loop == LoopSpec(True, 5) and each.condition is False
    assert (a.condition, a.run_name, a.loop, a.cleanup, a.on_success, a.merge) == (None, None, None, None, None, ())


def test_valid_flow_keys_compile_into_the_flow_fields(flow):
    spec = flow.spec(VALID)
    assert spec.timeout == 120.0
    assert spec.outputs["total"] == Ref("tasks", "join", accessors=("total",))
    assert str(spec.outputs["either"]) == "${{ tasks.small || tasks.big }}"
    assert spec.on_success == HookSpec("hooks:done")
    assert spec.on_failure.run == "hooks:alert"
    assert spec.on_failure.with_args["rows"] == Ref("tasks", "join")
    assert spec.on_failure.with_args["url"] == Ref("env", "URL", "http://127.0.0.1:9")


def test_a_spec_without_the_new_keys_gets_their_defaults(flow):
    spec = flow.spec(HEAD + "tasks: {a: {run: 'm:a'}}\n")
    assert (spec.timeout, dict(spec.outputs), spec.on_success, spec.on_failure) == (None, {}, None, None)


@pytest.mark.parametrize("trigger", ["all_failed", "any_successful", "none_failed"])
def test_the_new_triggers(flow, trigger):
    assert flow.spec(HEAD + f"tasks: {{a: {{run: 'm:a'}}, b: {{run: 'm:b', after: [a], trigger: {trigger}}}}}\n"
                     ).tasks["b"].trigger == trigger


# -- positioned errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("task, at, path, message", [
    ("if: 3", "3", "tasks.a.if", "expected string or boolean, got integer 3"),
    ("if: params.full", "params.full", "tasks.a.if", "if must be a ${{ expression }}, got the plain text 'params.full'"),
    ("if: 'x ${{ params.full }}'", "'x", "tasks.a.if", "if must be exactly one ${{ expression }} with nothing around it"),
    ("if: '${{ tasks.ghost }}'", "${{", "tasks.a.if", "unknown task 'ghost' in ${{ tasks.ghost }}"),
    ("if: '${{ params.full == }}'", "}}'", "tasks.a.if", "invalid expression '${{ params.full == }}': the expression"
                                    " ends where a value is expected"),
    ("if: '${{ result }}'", "result", "tasks.a.if", "${{ result }} is allowed only in loop.until (the result of the"
                            " iteration)"),
    ("run_name: 3", "3", "tasks.a.run_name", "expected string, got integer 3"),
    ("run_name: 'r-${{ args.nme }}', with: {name: 1}", "${{ args", "tasks.a.run_name",
     "unknown argument 'nme' in ${{ args.nme }}: run_name may name only this task's arguments (from 'with' and 'map')"),
    ("run_name: '${{ params.full }}'", "params", "tasks.a.run_name", "${{ params.full }}: run_name may reference only args."),
    ("with: {n: '${{ args.n }}'}", "args", "tasks.a.with.n",
     "${{ args.n }} is allowed only in run_name (the task run's own arguments)"),
    ("with: {n: '${{ result }}'}", "result", "tasks.a.with.n",
     "${{ result }} is allowed only in loop.until (the result of the iteration)"),
    ("loop: {until: 1}", "1}", "tasks.a.loop.until", "expected string or boolean, got integer 1"),
    ("loop: {max: 3}", "loop", "tasks.a.loop", "missing required key 'until'"),
    ("loop: {until: true, max: 0}", "0}", "tasks.a.loop.max", "0 is less than the minimum of 1"),
    ("loop: {until: '${{ tasks.b }}'}", "tasks.b", "tasks.a.loop.until",
     "${{ tasks.b }}: loop.until may reference only result, context., params. or env."),
    ("loop: {until: '${{ context.loop.idx }}'}", ".idx", "tasks.a.loop.until",
     "${{ context.loop.idx }}: the context here is context.loop.index or context.loop.previous"),
    ("cleanup: close", "close", "tasks.a.cleanup", "'close': expected 'module:function' or 'path/to/file.py:function'"),
    ("on_failure: notify", "notify", "tasks.a.on_failure",
     "'notify': expected 'module:function' or 'path/to/file.py:function', or {run: module:function, with: {...}}"),
    ("on_retry: {run: m.notify}", "m.notify", "tasks.a.on_retry.run",
     "'m.notify': expected 'module:function' or 'path/to/file.py:function'"),
    ("on_success: {run: 'm:f', args: {}}", "args", "tasks.a.on_success.args", "unknown key 'args'"),
    ("on_success: {run: 'm:f', with: {t: '${{ tasks.b }}'}}", "tasks.b", "tasks.a.on_success.with.t",
     "${{ tasks.b }}: the 'with' of on_success may reference only params., env., kv. or secrets."),
    ("trigger: always_run", "always_run", "tasks.a.trigger",
     "string 'always_run' is not one of: all_successful | all_finished | any_failed | all_failed | any_successful"
     " | none_failed"),
])
def test_malformed_task_keys_are_positioned_errors(flow, task, at, path, message):
    line = f"tasks: {{a: {{run: 'm:a', {task}}}, b: {{run: 'm:b'}}}}"
    body = f"parameters: {{full: {{type: boolean, default: false}}}}\n{line}\n"
    assert _problems(flow, body) == [(4, line.index(at, line.index("a: {")) + 1, path, message)]


@pytest.mark.parametrize("name, hint", [
    ("always_run", "Prefect's always_run is flowspec's all_finished"),
    ("manual_only", "no equivalent"),
    ("some_successful", "write any_successful"),
    ("some_failed", "write any_failed"),
    ("not_all_skipped", "no exact equivalent: none_failed"),
])
def test_prefect_trigger_names_get_a_hint(flow, name, hint):
    spec, diags = flow.compile(HEAD + f"tasks: {{a: {{run: 'm:a', trigger: {name}}}}}\n")
    assert [d.hint.startswith(hint) for d in diags] == [True]


@pytest.mark.parametrize("top, at, path, message", [
    ("outputs: {total: '${{ tasks.ghost }}'}", "${{", "outputs.total", "unknown task 'ghost' in ${{ tasks.ghost }}"),
    ("outputs: {total: '${{ params.nope }}'}", "${{", "outputs.total",
     "unknown parameter 'nope' in ${{ params.nope }}"),
    ("outputs: {1bad: 2}", "1bad", "outputs",
     "'1bad': a name must start with a letter or '_' and contain only letters, digits, '_' and '-'"),
    ("outputs: [a]", "[a]", "outputs", "expected object, got a list"),
    ("timeout: 0", "0", "timeout", "timeout must be greater than zero"),
    ("timeout: soon", "soon", "timeout",
     "'soon': expected a duration such as 500ms, 5s, 2m or 1h (or a number of seconds)"),
    ("on_failure: hooks", "hooks", "on_failure",
     "'hooks': expected 'module:function' or 'path/to/file.py:function', or {run: module:function, with: {...}}"),
    ("on_success: {with: {}}", "on_success", "on_success", "missing required key 'run'"),
    ("on_success: {run: 'h:f', with: {n: '${{ tasks.ghost }}'}}", "${{", "on_success.with.n",
     "unknown task 'ghost' in ${{ tasks.ghost }}"),
])
def test_malformed_flow_keys_are_positioned_errors(flow, top, at, path, message):
    assert _problems(flow, f"{top}\ntasks: {{a: {{run: 'm:a'}}}}\n") == [(3, top.index(at) + 1, path, message)]


def test_unknown_key_hints_no_longer_say_not_in_this_release_for_the_new_keys():
    from flowspec.schema import feature_hint

    for path, key in [((), "outputs"), ((), "timeout"), ((), "on_success"), (("tasks", "a"), "if"),
                      (("tasks", "a"), "loop"), (("tasks", "a"), "run_name"), (("tasks", "a"), "cleanup"),
                      (("tasks", "a"), "on_retry")]:
        assert feature_hint(path, key) is None
    assert feature_hint((), "schedule") is None  # a real key now
    for key in ("cache", "target", "persist", "flow"):  # real task keys now
        assert feature_hint(("tasks", "a"), key) is None
    assert "cache: {expires: DURATION}" in feature_hint(("tasks", "a"), "cache_for")
    assert "run_name" in feature_hint(("tasks", "a"), "task_run_name")


# -- --strict: callables of cleanups and hooks -------------------------------------------------------
CODE = """\
def a():
    return 1
def close(): pass
def close1(resource): pass
def hook0(): pass
def hook1(info): pass
def hook_url(info, url): pass
"""


def test_strict_checks_cleanups_and_hooks_take_one_argument(flow):
    flow.write("m.py", CODE)
    body = ("on_success: m:hook0\n"
            "on_failure: {run: m:hook_url, with: {url: u}}\n"
            "tasks:\n"
            "  a: {run: 'm:a', cleanup: m:close, on_retry: m:hook1}\n"
            "  b: {run: 'm:a', cleanup: m:close1, on_failure: m:hook_url, on_success: m:missing}\n")
    found = [(line, col, path, message.split(",")[0]) for line, col, path, message in _problems(flow, body, True)]
    assert found == [
        (3, 13, "on_success", "m:hook0: it must take one positional argument"),
        (6, 28, "tasks.a.cleanup", "m:close: it must take one positional argument"),
        (7, 50, "tasks.b.on_failure", "m:hook_url: it must take one positional argument"),
        (7, 74, "tasks.b.on_success", "'m' has no attribute 'missing'"),
    ]


def test_strict_accepts_cleanups_and_hooks_of_the_right_shape(flow):
    flow.write("m.py", CODE)
    body = ("on_failure: {run: m:hook_url, with: {url: u}}\n"
            "tasks:\n  a: {run: 'm:a', cleanup: m:close1, on_retry: m:hook1, on_failure: {run: m:hook_url,"
            " with: {url: v}}}\n")
    assert _problems(flow, body, strict=True) == []


# -- env references everywhere -----------------------------------------------------------------------
ENV_SPEC = """\
version: 1
name: ${{ env.FLOW_NAME }}
project: "${{ env.TEAM || 'data' }}"
description: made for ${{ env.WHO || 'nobody' }}
parameters:
  day: {default: today, description: "day in ${{ env.TZ_NAME || 'UTC' }}"}
tasks:
  a: {run: "m:a", description: "runs as ${{ env.WHO || 'nobody' }}"}
storage: {type: local, directory: "${{ env.STORE }}"}
environment:
  labels: ["${{ env.LABEL || 'dev' }}", fixed]
"""


def test_env_references_outside_tasks_are_resolved_for_a_command(flow):
    spec = flow.spec(ENV_SPEC)
    assert spec.name == "${{ env.FLOW_NAME }}"  # compiled as written: resolved for a command
    done = resolve_env(spec, {"FLOW_NAME": "nightly", "STORE": "/tmp/s", "LABEL": "prod"})
    assert (done.name, done.project, done.description) == ("nightly", "data", "made for nobody")
    assert done.environment.labels == ("prod", "fixed")
    assert done.storage.options["directory"] == "/tmp/s"
    assert done.parameters["day"].description == "day in UTC"
    assert done.tasks["a"].description == "runs as nobody"
    assert resolve_env(done, {}) is done or resolve_env(spec, {"FLOW_NAME": "n"}, storage=False).storage == spec.storage
    with pytest.raises(UnsetEnvError):
        resolve_env(spec, {})


def test_unset_env_names_each_place_at_its_column(flow):
    spec = flow.spec(ENV_SPEC)
    found = [(d.line, d.column, d.path, d.severity) for d in unset_env(spec, {}, severity="warning")]
    assert found == [(2, 7, "name", "warning"), (9, 36, "storage.directory", "warning")]
    assert [d.path for d in unset_env(spec, {}, storage=False)] == ["name"]
    assert unset_env(spec, {"FLOW_NAME": "x", "STORE": "y"}) == []


@pytest.mark.parametrize("top, at, path, message", [
    ("name: '${{ params.day }}'", "${{", "name", "${{ params.day }}: only env references are allowed in 'name'"),
    ("description: '${{ tasks.a }}'", "${{", "description",
     "${{ tasks.a }}: only env references are allowed in 'description'"),
    ("environment: {labels: ['${{ params.day }}']}", "${{", "environment.labels[0]",
     "${{ params.day }}: only env references are allowed in 'environment'"),
    ("name: '${{ env.X'", "${{", "name", "unterminated reference: '${{' without a closing '}}'"),
])
def test_other_references_outside_tasks_are_errors(flow, top, at, path, message):
    head = "version: 1\n" if top.startswith("name") else "version: 1\nname: x\n"
    spec, diags = flow.compile(f"{head}{top}\nparameters: {{day: {{default: x}}}}\ntasks: {{a: {{run: 'm:a'}}}}\n")
    line = head.count("\n") + 1
    assert [(d.line, d.column, d.path, d.message) for d in diags] == [(line, top.index(at) + 1, path, message)]


@pytest.mark.parametrize("value, groups", [
    ("${{ tasks.a || tasks.b }}", (("a", "b"),)),
    ("${{ tasks.a.rows || tasks.b.rows || tasks.c }}", (("a", "b", "c"),)),
    ("${{ tasks.a || 'none' }}", ()),
    ("${{ tasks.a || tasks.a }}", ()),
    ("rows: ${{ tasks.a || tasks.b }}", (("a", "b"),)),
    ("${{ (tasks.a || tasks.b) == 1 and (tasks.b || tasks.c) }}", (("a", "b"), ("b", "c"))),
])
def test_merge_groups_are_the_tasks_that_or_joins(flow, value, groups):
    spec = flow.spec(HEAD + "tasks:\n  a: {run: 'm:a'}\n  b: {run: 'm:b'}\n  c: {run: 'm:c'}\n"
                     f"  d: {{run: 'm:d', with: {{x: \"{value}\"}}}}\n")
    assert spec.tasks["d"].merge == groups


def test_a_condition_merge_counts_too_and_its_tasks_are_upstreams(flow):
    spec = flow.spec(HEAD + "tasks:\n  a: {run: 'm:a'}\n  b: {run: 'm:b'}\n"
                     "  d: {run: 'm:d', if: \"${{ tasks.a || tasks.b }}\"}\n")
    d = spec.tasks["d"]
    assert (d.merge, d.upstream, d.data_upstream, d.condition_upstream) == ((("a", "b"),), ("a", "b"), ("a", "b"),
                                                                             ("a", "b"))
