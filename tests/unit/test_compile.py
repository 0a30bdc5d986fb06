"""The compiler: semantic checks (all at once, positioned) and the frozen FlowSpec it builds."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest

from flowspec.compile import parse_duration
from flowspec.references import Ref

HEAD = "version: 1\nname: x\n"


def _problems(flow, body: str, strict: bool = False) -> list[tuple]:
    spec, diags = flow.compile(HEAD + body, strict=strict)
    assert spec is None or not diags
    return [(d.line, d.column, d.path, d.message, d.hint) for d in diags]


def _messages(flow, body: str) -> list[str]:
    return [p[3] for p in _problems(flow, body)]


# -- the FlowSpec --------------------------------------------------------------------------------
FULL = """\
version: 1
name: full
parameters:
  people: {type: array, default: [a, b], description: who}
  level: {enum: [1, 2]}
tasks:
  report: {run: "steps:report", with: {items: "${{ tasks.greet }}"}, after: [setup], trigger: all_finished}
  greet:
    run: steps.py:greet
    map: {name: "${{ params.people }}"}
    retries: 2
    retry_delay: 500ms
    timeout: 2m
  setup: {run: "steps:setup", retry_delay: 3, timeout: 1h}
  shout: {run: "steps:shout", map: {g: "${{ tasks.greet }}"}}
executor: {type: local}
storage: {type: local, directory: flows}
environment:
  labels: [dev]
  env: {N: 3, FLAG: true, TEXT: "${{ env.HOME || 'h' }}"}
  on_exit: "steps:done"
"""


def test_builds_a_frozen_spec(flow):
    spec = flow.spec(FULL)
    assert (spec.name, spec.version, spec.project, spec.path) == ("full", 1, "default", str(flow.path / "flow.yaml"))
    assert spec.base_dir == str(flow.path)
    assert spec.checksum == hashlib.sha256(FULL.encode()).hexdigest()
    people, level = spec.parameters["people"], spec.parameters["level"]
    assert (people.type, people.default, people.required, people.description) == ("array", ["a", "b"], False, "who")
    assert (level.type, level.required, level.enum) == (None, True, (1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    with pytest.raises(TypeError):
        spec.tasks["new"] = None
    for task in spec.tasks.values():  # built without their __init__: every field set, still frozen
        assert set(vars(task)) == {f.name for f in dataclasses.fields(task)}
        assert task == dataclasses.replace(task)
        with pytest.raises(dataclasses.FrozenInstanceError):
            task.retries = 9


def test_tasks_in_topological_order_with_their_upstreams(flow):
    spec = flow.spec(FULL)
    assert list(spec.tasks) == ["greet", "setup", "report", "shout"]  # ready together: as declared
    report, greet, shout = spec.tasks["report"], spec.tasks["greet"], spec.tasks["shout"]
    assert (report.upstream, report.data_upstream, report.after, report.trigger) == (
        ("greet", "setup"), ("greet",), ("setup",), "all_finished")
    assert dict(report.with_args) == {"items": Ref("tasks", "greet")}
    assert (greet.mapped, greet.retries, greet.retry_delay, greet.timeout) == (True, 2, 0.5, 120.0)
    assert (spec.tasks["setup"].retry_delay, spec.tasks["setup"].timeout, report.timeout) == (3.0, 3600.0, None)
    assert shout.per_child == ("greet",) and report.per_child == ()


def test_platform_sections(flow):
    spec = flow.spec(FULL)
    assert (spec.executor.type, dict(spec.executor.options)) == ("local", {})
    assert (spec.storage.type, dict(spec.storage.options)) == ("local", {"directory": "flows"})
    env = spec.environment
    assert (env.type, env.labels, env.on_start, env.on_exit) == ("local", ("dev",), None, "steps:done")
    assert dict(env.env) == {"N": "3", "FLAG": "true", "TEXT": Ref("env", "HOME", "h")}


@pytest.mark.parametrize(("value", "seconds"), [(5, 5.0), (0.5, 0.5), ("500ms", 0.5), ("1.5s", 1.5), ("2m", 120.0),
                                                ("1h", 3600.0)])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


# -- whole-document problems ---------------------------------------------------------------------
def test_empty_and_non_mapping_documents(flow):
    assert _problems(flow, "")[0][3] == "missing required key 'tasks'"
    spec, diags = flow.compile("# nothing\n")
    assert [d.message for d in diags] == ["the spec is empty"]
    spec, diags = flow.compile("- version: 1\n")
    assert [d.message for d in diags] == ["expected object, got a list"]


def test_schema_and_semantic_errors_come_together_sorted(flow):
    assert _problems(flow, "tasks:\n  a: {run: 'm:f', retries: x, with: {v: '${{ params.nope }}'}}\n") == [
        (4, 28, "tasks.a.retries", "expected integer, got string 'x'", None),
        (4, 42, "tasks.a.with.v", "unknown parameter 'nope' in ${{ params.nope }}", "the flow declares no parameters")]


# -- references ----------------------------------------------------------------------------------
def test_unknown_names_get_did_you_mean_or_the_known_list(flow):
    assert _problems(flow, """\
parameters: {people: {default: []}}
tasks:
  greet: {run: "m:f", with: {a: "${{ params.peple }}", b: "${{ tasks.gret }}", c: "x ${{ params.zz }}"}}
""") == [
        (5, 34, "tasks.greet.with.a", "unknown parameter 'peple' in ${{ params.peple }}", "did you mean 'people'?"),
        (5, 60, "tasks.greet.with.b", "unknown task 'gret' in ${{ tasks.gret }}", "did you mean 'greet'?"),
        (5, 86, "tasks.greet.with.c", "unknown parameter 'zz' in ${{ params.zz }}", "known parameters: people")]


def test_each_bad_reference_in_a_value_is_reported(flow):
    problems = _problems(flow, "tasks:\n  a:\n    run: m:f\n    with:\n      v: ['${{ a + b }}', {k: 'x ${{ tasks.a.b c }}'}]\n")
    assert [(line, col, path) for line, col, path, *_ in problems] == [  # each at its offending token
        (7, 18, "tasks.a.with.v[0]"), (7, 48, "tasks.a.with.v[1].k")]


def test_references_in_platform_sections_must_be_env(flow):
    assert _messages(flow, "tasks: {a: {run: 'm:f'}}\nexecutor: {type: dask, address: '${{ params.addr }}'}\n") == [
        "${{ params.addr }}: only env references are allowed in 'executor'"]
    assert _messages(flow, "tasks: {a: {run: 'm:f'}}\nexecutor: {type: dask, address: '${{ env.ADDR }}'}\n") == []


# -- the graph -----------------------------------------------------------------------------------
def test_a_cycle_is_named_in_full(flow):
    assert _problems(flow, """\
tasks:
  a: {run: "m:f", with: {x: "${{ tasks.c }}"}}
  b: {run: "m:f", with: {x: "${{ tasks.a }}"}}
  c: {run: "m:f", after: [b]}
  d: {run: "m:f", with: {x: "${{ tasks.d }}"}}
""") == [
        (4, 3, "tasks.a", "dependency cycle: a -> c -> b -> a",
         "a task cannot depend on its own results; remove one of these references"),
        (7, 3, "tasks.d", "task 'd' references its own result", None)]


def test_after_names_must_be_known_and_not_itself(flow):
    assert _problems(flow, "tasks:\n  build: {run: 'm:f'}\n  test: {run: 'm:f', after: [biuld, test]}\n") == [
        (5, 30, "tasks.test.after[0]", "unknown task 'biuld' in after", "did you mean 'build'?"),
        (5, 37, "tasks.test.after[1]", "task 'test' cannot wait for itself", None)]


def test_non_string_after_entries_are_schema_errors_only(flow):
    assert _messages(flow, "tasks:\n  a: {run: 'm:f', after: [[b]]}\n  b: {run: 'm:f'}\n") == [
        "expected string, got a list"]


# -- map -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "message"), [
    ("[1, 2]", None),
    ("'${{ params.items }}'", None),
    ("'${{ params.anything }}'", None),
    ("'${{ tasks.b }}'", None),
    ("3", "a map value must be a list or a reference to one, got an integer"),
    ("{k: v}", "a map value must be a list or a reference to one, got a mapping"),
    ("'x ${{ params.items }}'", "a map value must be a list or a reference to one, got a string with references inside"),
    ("'${{ params.word }}'", "cannot map over ${{ params.word }}: parameter 'word' is of type string"),
    ("'${{ env.LIST }}'", "cannot map over ${{ env.LIST }}: environment variables are strings, not lists"),
])
def test_map_values(flow, value, message):
    body = (f"parameters: {{items: {{type: array, default: []}}, word: {{type: string, default: w}},"
            f" anything: {{default: 1}}}}\ntasks:\n  a: {{run: 'm:f', map: {{x: {value}}}}}\n  b: {{run: 'm:f'}}\n")
    assert _messages(flow, body) == ([message] if message else [])


def test_an_argument_in_both_with_and_map(flow):
    assert _problems(flow, "tasks:\n  a: {run: 'm:f', with: {x: 1}, map: {x: [1]}}\n") == [
        (4, 39, "tasks.a.map.x", "argument 'x' is given in both 'with' and 'map'", None)]


# -- durations and parameters --------------------------------------------------------------------
@pytest.mark.parametrize(("value", "message"), [
    ("0", "timeout must be greater than zero"),
    ("0s", "timeout must be greater than zero"),
    (str(30 * 24 * 3600), None),  # exactly 30 days is allowed
    ("745h", "timeout must be a finite duration of at most 30 days"),
    ("1" + "0" * 400, "timeout must be a finite duration of at most 30 days"),
    (".inf", "timeout must be a finite duration of at most 30 days"),
])
def test_timeouts(flow, value, message):
    assert _messages(flow, f"tasks: {{a: {{run: 'm:f', timeout: {value}}}}}\n") == ([message] if message else [])


def test_retry_delay_may_be_zero_but_not_huge(flow):
    assert _messages(flow, "tasks: {a: {run: 'm:f', retry_delay: 0}}\n") == []
    assert _messages(flow, "tasks: {a: {run: 'm:f', retry_delay: 9999h}}\n") == [
        "retry_delay must be a finite duration of at most 30 days"]


def test_parameter_defaults_are_checked_against_type_and_enum(flow):
    assert _problems(flow, """\
parameters:
  n: {type: integer, default: "5"}
  s: {type: string, default: no}
  e: {type: string, enum: [a, 1], default: c}
  free: {default: {any: [thing]}}
tasks: {a: {run: "m:f"}}
""") == [
        (4, 31, "parameters.n.default", "default of parameter 'n': expected integer, got string \"5\"", None),
        (5, 30, "parameters.s.default", "default of parameter 's': expected string, got boolean false",
         "quote it if it is meant as a string"),
        (6, 31, "parameters.e.enum[1]", "enum value: expected string, got integer 1", None),
        (6, 44, "parameters.e.default", "default of parameter 'e': string \"c\" is not one of: \"a\" | 1", None)]


# -- platform fit and credentials ----------------------------------------------------------------
@pytest.mark.parametrize("environment", ["kubernetes-job", "dask-kubernetes", "fargate-task"])
def test_image_environments_need_docker_storage(flow, environment):
    body = f"tasks: {{a: {{run: 'm:f'}}}}\nenvironment: {{type: {environment}}}\n"
    assert _problems(flow, body) == [(4, 21, "environment.type",
                                      f"environment '{environment}' runs the flow from an image and needs docker "
                                      "storage, but storage is 'local'",
                                      "add 'storage: {type: docker, image_name: ...}'")]
    assert _problems(flow, body + "storage: {type: docker, image_name: img}\n") == []


def test_image_names_tags_and_registries_the_engine_would_refuse_are_positioned_errors(flow):
    body = "tasks: {a: {run: 'm:f'}}\nstorage:\n  type: docker\n  %s\n"
    for good in ("image_name: team/etl-flow", "image_name: 127.0.0.1:5055/etl", "image_tag: v1.2_rc-3",
                 "registry_url: registry.example.com:5000/team", "registry_url: http://127.0.0.1:5055"):
        assert _problems(flow, body % good) == [], good
    for bad, column in (("image_name: My_Flow", 15), ("image_tag: 'v 1'", 14), ("image_tag: .hidden", 14),
                        ("registry_url: 127.0.0.1:5055/Team", 17)):
        [(line, col, path, message, _)] = _problems(flow, body % bad)
        assert (line, col, path) == (6, column, f"storage.{bad.split(':')[0]}"), (bad, message)


def test_literal_credentials_are_refused(flow):
    problems = _problems(flow, """\
tasks:
  a: {run: "m:f", with: {key: AKIAIOSFODNN7EXAMPLE}}
storage: {type: docker, env_vars: {API_TOKEN: abc, SAFE: "${{ env.X }}"}}
environment:
  type: fargate-task
  env: {DB_PASSWORD: "${{ env.DB_PASSWORD }}", USER: me, DB_PASSWORD_FILE: ""}
  run_task: {overrides: {token: xyz, password: "${{ env.P }}"}}
""")
    assert [(line, col, path, message) for line, col, path, message, _ in problems] == [
        (4, 31, "tasks.a.with.key", "this looks like an AWS access key id written into the spec"),
        (5, 47, "storage.env_vars.API_TOKEN", "'API_TOKEN' looks like a credential written as a literal value"),
        (9, 33, "environment.run_task.overrides.token", "'token' looks like a credential written as a literal value")]
    assert problems[1][4].startswith("credentials never go in a spec: write ${{ env.API_TOKEN }}")


# -- --strict ------------------------------------------------------------------------------------
def test_strict_imports_callables_and_checks_names_against_signatures(flow):
    flow.write("code.py", "def greet(name, punctuation='!'):\n    return name\n\ndef hook(run):\n    pass\n")
    body = """\
tasks:
  ok: {run: "code.py:greet", map: {name: [a]}}
  wrong: {run: "code.py:greet", with: {nmae: x}}
  gone: {run: "code.py:greeet"}
environment: {on_start: "code.py:hook", on_exit: "code.py:nope"}
"""
    assert _problems(flow, body) == []
    assert [(line, col, message) for line, col, _, message, _ in _problems(flow, body, strict=True)] == [
        (5, 16, "code.py:greet: argument 'nmae' is not a parameter of it"),
        (5, 16, "code.py:greet: missing required argument: name"),
        (6, 15, "'code.py' has no attribute 'greeet'"),
        (7, 50, "'code.py' has no attribute 'nope'")]


# -- scale: every walk of the graph is iterative and linear ----------------------------------------
def _chain(length: int, cycle: bool = False) -> str:
    """`length` tasks, each taking the previous one's result, written last task first."""
    lines = ["tasks:"]
    for i in reversed(range(length)):
        prev = length - 1 if i == 0 and cycle else i - 1
        arg = f'"${{{{ tasks.t{prev} }}}}"' if prev >= 0 else "0"
        lines.append(f"  t{i}: {{run: 'm:f', with: {{x: {arg}}}}}")
    return "\n".join(lines) + "\n"


def test_a_long_chain_declared_last_first_is_ordered_without_recursion(flow):
    spec, diags = flow.compile(HEAD + _chain(10_000))
    assert diags == []
    assert list(spec.tasks) == [f"t{i}" for i in range(10_000)]


def test_a_long_cycle_is_named_without_recursion(flow):
    problems = _problems(flow, _chain(10_000, cycle=True))
    assert len(problems) == 1
    line, column, path, message, hint = problems[0]
    names = " -> ".join(f"t{i}" for i in [*range(9_999, -1, -1), 9_999])  # from the first declared
    assert (line, column, path, message) == (4, 3, "tasks.t9999", f"dependency cycle: {names}")


def test_one_cycle_is_named_per_group_of_tasks_that_wait_for_each_other(flow):
    # Every task of a 200-task ring also waits for the first: many cycles, one group, one message.
    lines = ["tasks:"] + [f"  t{i}: {{run: 'm:f', with: {{x: '${{{{ tasks.t{(i + 1) % 200} }}}}'}}, after: [t0]}}"
                          for i in range(1, 200)] + ["  t0: {run: 'm:f', with: {x: '${{ tasks.t1 }}'}}"]
    messages = _messages(flow, "\n".join(lines) + "\n")
    assert messages == ["dependency cycle: t1 -> t0 -> t1"]


def test_ordering_keeps_rounds_in_declaration_order(flow):
    spec = flow.spec(HEAD + """\
tasks:
  late: {run: "m:f", after: [b]}
  b: {run: "m:f", after: [a]}
  c: {run: "m:f"}
  a: {run: "m:f"}
  d: {run: "m:f", after: [c, a]}
""")
    assert list(spec.tasks) == ["c", "a", "b", "d", "late"]


def test_compiling_twice_the_tasks_takes_about_twice_the_time(flow):
    """Ordering used to grow with the cube of a chain's length. The ratio of two sizes measured
    here, side by side, is a generous bound on linear growth."""
    import gc
    import time

    from flowspec.compile import compile_document
    from flowspec.loader import load_text

    def seconds(n: int) -> float:
        doc = load_text(HEAD + _chain(n), "flow.yaml")
        best = float("inf")
        for _ in range(3):
            gc.collect()
            gc.disable()  # a collection's cost grows with the whole test session's heap, not the flow
            try:
                t = time.perf_counter()
                spec, diags = compile_document(doc)
                best = min(best, time.perf_counter() - t)
            finally:
                gc.enable()
            assert spec is not None, diags
        return best

    seconds(500)
    small, large = seconds(1_500), seconds(6_000)
    assert large < 4 * 2.0 * small, (small, large)


def test_literal_map_lists_of_different_lengths_are_refused_where_they_differ(flow):
    assert _problems(flow, """\
tasks:
  pair:
    run: "m:f"
    map:
      a: [1, 2, 3]
      b: [x, y]
      c: [4, 5, 6]
      d: "${{ params.more }}"
parameters: {more: {type: array}}
""") == [(8, 10, "tasks.pair.map.b",
          "map argument 'b' has 2 items but 'a' has 3; mapped arguments are zipped and must have the same length",
          "give every list in 'map' the same number of items")]


def test_thousands_of_unknown_references_are_reported_in_linear_time(flow):
    # Each did-you-mean compares a name with every task: only the first names get one, and a
    # hint never lists thousands of task names.
    body = "tasks:\n" + "".join(f"  t{i}: {{run: 'm:f', with: {{x: '${{{{ tasks.t{i}x }}}}'}}}}\n" for i in range(2_000))
    problems = _problems(flow, body)
    assert len(problems) == 2_000
    hints = [p[4] for p in problems]
    assert hints[0] == "did you mean 't0'?"
    assert hints[-1] == "the flow declares 2000 tasks; see them with: flowspec plan FILE"
