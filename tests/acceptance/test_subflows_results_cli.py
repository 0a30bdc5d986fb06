"""Subflows, the result store, caching and targets at validate time through the CLI: positioned
errors for each malformed case, the child's parameters checked against `with`/`map`, cycles of
spec files named, `plan` and `graph` showing them, and `run`/`register` refusing what this
release validates but does not run yet."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

TASKS = "def f(x=1):\n    return x\n"
CHILD = """\
version: 1
name: child
parameters:
  region: {type: string}
  day: {type: string, default: "2026-01-01"}
tasks:
  a: {run: steps:f, with: {x: "${{ params.region }}"}}
outputs:
  value: ${{ tasks.a }}
"""
PARENT = """\
version: 1
name: parent
parameters:
  regions: {type: array, default: [eu, us]}
  day: {type: string, default: "2026-02-02"}
results:
  type: local
  directory: kept
tasks:
  per_region:
    flow: child.yaml
    map: {region: "${{ params.regions }}"}
    with: {day: "${{ params.day }}"}
  nightly:
    flow: {name: warehouse-load, project: data, version: 3}
    labels: [prod]
    wait: false
  load:
    run: steps:f
    with: {x: "${{ tasks.per_region }}"}
    cache: {key: "load-${{ params.day }}", expires: 1h}
  report:
    run: steps:f
    map: {x: [1, 2]}
    target: "reports/${{ params.day }}/${{ args.x }}.pkl"
    persist: true
  quick: {run: steps:f, cache: true}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(TASKS)
    (tmp_path / "child.yaml").write_text(CHILD)
    (tmp_path / "flow.yaml").write_text(PARENT)
    return tmp_path


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home")}


def _errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if ": error: " in line]


def test_a_valid_spec_with_every_key_validates_and_plans(cli, folder, env):
    result = cli("validate", "--strict", folder / "flow.yaml", env=env)
    assert result.rc == 0, result.output
    plan = cli("plan", folder / "flow.yaml", "--format", "json", env=env)
    assert plan.rc == 0, plan.output
    data = json.loads(plan.stdout)
    tasks = {t["name"]: t for t in data["tasks"]}
    assert tasks["per_region"]["subflow"] == {"file": str(folder / "child.yaml"), "flow": "child", "project": "default",
                                              "tasks": 1}
    assert tasks["nightly"]["subflow"] == {"flow": "warehouse-load", "project": "data", "version": 3,
                                           "labels": ["prod"], "wait": False}
    assert tasks["load"]["cache"] == {"key": "load-${{ params.day }}", "expires_s": 3600.0}
    assert tasks["quick"]["cache"] == {"key": None, "expires_s": None}
    assert tasks["report"]["target"] == "reports/${{ params.day }}/${{ args.x }}.pkl"
    assert tasks["report"]["persist"] is True
    assert data["results"] == {"type": "local", "location": str(folder / "kept"), "given": True}
    text = cli("plan", folder / "flow.yaml", env=env).stdout
    assert "per_region  (subflow child from" in text
    assert "nightly  (subflow data/warehouse-load version 3, registered)" in text
    assert "does not wait (result: the child run's id)" in text
    assert "child flow runs of 1 task, in this run's process" in text
    assert f"results: local, {folder / 'kept'}" in text
    graph = cli("graph", folder / "flow.yaml", env=env).stdout
    assert "subflow: child" in graph and "class t0,t1 subflow" in graph


def test_every_key_runs_so_nothing_is_refused_or_warned_about(cli, folder, env):
    # results, cache, target, persist and flow (file and registered) all run in this release:
    # tests/acceptance/test_results_runtime_cli.py, test_restart_cli.py, test_subflows_runtime_cli.py
    result = cli("validate", folder / "flow.yaml", env=env)
    assert result.rc == 0, result.output
    assert "does not run it yet" not in result.output


def test_child_parameters_are_checked_at_their_line_and_column(cli, folder, env):
    text = PARENT.replace("with: {day: ", "with: {dya: ").replace('map: {region: "${{ params.regions }}"}',
                                                                  'with2: 1').replace("    with2: 1\n", "")
    (folder / "flow.yaml").write_text(text)
    result = cli("validate", folder / "flow.yaml", env=env)
    assert result.rc == 1
    errors = _errors(result)
    assert f"{folder / 'flow.yaml'}:12:12: error: tasks.per_region.with.dya: the subflow child.yaml has no" \
           " parameter 'dya'" in errors
    assert f"{folder / 'flow.yaml'}:11:11: error: tasks.per_region.flow: the subflow child.yaml needs the" \
           " parameter region, which the task does not give" in errors
    assert "did you mean 'day'?" in result.output


def test_a_cycle_of_spec_files_is_named(cli, tmp_path, env):
    (tmp_path / "a.yaml").write_text("version: 1\nname: a\ntasks:\n  b:\n    flow: sub/b.yaml\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("version: 1\nname: b\ntasks:\n  a:\n    flow: ../a.yaml\n")
    result = cli("validate", tmp_path / "a.yaml", env=env)
    assert result.rc == 1
    assert _errors(result) == [f"{tmp_path / 'a.yaml'}:5:11: error: tasks.b.flow: subflows form a cycle:"
                               " a.yaml -> sub/b.yaml -> a.yaml"]
    (tmp_path / "self.yaml").write_text("version: 1\nname: s\ntasks:\n  me:\n    flow: self.yaml\n")
    result = cli("validate", tmp_path / "self.yaml", env=env)
    assert _errors(result) == [f"{tmp_path / 'self.yaml'}:5:11: error: tasks.me.flow: subflows form a cycle:"
                               " self.yaml -> self.yaml"]


def test_a_child_named_by_many_tasks_is_compiled_once_and_its_errors_reported(cli, tmp_path, env):
    (tmp_path / "steps.py").write_text(TASKS)
    (tmp_path / "child.yaml").write_text("version: 1\nname: c\ntasks:\n  a: {run: steps:f, retries: -1}\n")
    tasks = "".join(f"  t{i}:\n    flow: child.yaml\n" for i in range(200))
    (tmp_path / "flow.yaml").write_text("version: 1\nname: p\ntasks:\n" + tasks)
    result = cli("validate", tmp_path / "flow.yaml", env=env)
    assert result.rc == 1
    errors = _errors(result)
    assert len(errors) == 200
    assert errors[0] == f"{tmp_path / 'flow.yaml'}:5:11: error: tasks.t0.flow: the subflow child.yaml does not" \
                        " validate (1 error)"
    assert f"first: {tmp_path / 'child.yaml'}:4:30: -1 is less than the minimum of 0" in result.output


MALFORMED = [
    ("  x: {with: {a: 1}}\n", "5:3", "tasks.x: task 'x' needs `run` (a callable, module:function) or `flow`"),
    ("  x: {run: steps:f, flow: child.yaml, with: {region: eu}}\n", "5:21",
     "tasks.x.flow: task 'x' has both `run` and `flow`"),
    ("  x: {flow: missing.yaml}\n", "5:13", "tasks.x.flow: no spec file missing.yaml"),
    ("  x: {flow: \"${{ params.p }}.yaml\"}\n", "5:13", "tasks.x.flow: flow: a spec file's path is written out"),
    ("  x: {flow: child.yaml, with: {region: eu}, labels: [a]}\n", "5:45",
     "tasks.x.labels: 'labels' applies only to a registered subflow"),
    ("  x: {run: steps:f, wait: false}\n", "5:21", "tasks.x.wait: 'wait' applies only to a registered subflow"),
    ("  x: {flow: child.yaml, with: {region: 5}}\n", "5:40",
     "tasks.x.with.region: parameter 'region' of the subflow child.yaml: expected string, got integer 5"),
    ("  x: {flow: child.yaml, map: {region: [eu, 3]}}\n", "5:44",
     "tasks.x.map.region[1]: parameter 'region' of the subflow child.yaml: expected string, got integer 3"),
    ("  x: {flow: {project: p}}\n", "5:7", "tasks.x.flow: missing required key 'name'"),
    ("  x: {flow: {name: n, version: 0}}\n", "5:32", "tasks.x.flow.version:"),
    ("  x: {flow: {name: n, tag: v}}\n", "5:23", "tasks.x.flow.tag: unknown key 'tag'"),
    ("  x: {flow: child.yaml, with: {region: eu}, loop: {until: true}}\n", "5:45",
     "tasks.x.loop: 'loop' cannot be used on a subflow task"),
    ("  x: {flow: child.yaml, with: {region: eu}, cache: true}\n", "5:45",
     "tasks.x.cache: 'cache' is not available on a subflow task"),
    ("  x: {run: steps:f, cache: {keys: a}}\n", "5:29", "tasks.x.cache.keys: unknown key 'keys'"),
    ("  x: {run: steps:f, cache: {expires: 0}}\n", "5:38", "tasks.x.cache.expires: expires must be a finite"
     " duration above zero"),
    ("  x: {run: steps:f, cache: {expires: soon}}\n", "5:38", "tasks.x.cache.expires:"),
    ("  x: {run: steps:f, cache: 'yes'}\n", "5:28", "tasks.x.cache: expected boolean or object"),
    ("  x: {run: steps:f, cache: {key: \"${{ tasks.y }}\"}}\n  y: {run: steps:f}\n", "5:39",
     "tasks.x.cache.key: ${{ tasks.y }}: cache.key may reference only params., args. or env."),
    ("  x: {run: steps:f, with: {x: 1}, cache: {key: \"${{ args.z }}\"}}\n", "5:49",
     "tasks.x.cache.key: unknown argument 'z' in ${{ args.z }}"),
    ("  x: {run: steps:f, cache: {key: \"${{ params.nope }}\"}}\n", "5:35", "tasks.x.cache.key: unknown parameter"),
    ("  x: {run: steps:f, target: /abs/x.pkl}\n", "5:29", "tasks.x.target: target '/abs/x.pkl': a target is a"
     " relative path"),
    ("  x: {run: steps:f, target: \"../${{ params.p }}.pkl\"}\n", "5:29", "tasks.x.target: target"
     " '../${{ params.p }}.pkl': a target may not hold empty, '.' or '..' parts"),
    ("  x: {run: steps:f, target: \"r/${{ result }}\"}\n", "5:36", "tasks.x.target: ${{ result }}: target may"
     " reference only params., args. or env."),
    ("  x: {run: steps:f, persist: 'no'}\n", "5:30", "tasks.x.persist: expected boolean"),
    ("  x: {run: steps:f, persist: false, cache: true}\n", "5:21", "tasks.x.persist: persist: false keeps no"
     " result"),
]


@pytest.mark.parametrize("tasks,where,message", MALFORMED, ids=[m[2].split(":")[0] + f"-{i}"
                                                                   for i, m in enumerate(MALFORMED)])
def test_malformed_keys_are_positioned_errors(cli, folder, env, tasks, where, message):
    (folder / "bad.yaml").write_text("version: 1\nname: bad\nparameters: {p: {type: string, default: a}}\n"
                                     "tasks:\n" + tasks)
    result = cli("validate", folder / "bad.yaml", env=env)
    assert result.rc == 1, result.output
    assert "Traceback" not in result.output
    assert any(e.startswith(f"{folder / 'bad.yaml'}:{where}: error: {message}") for e in _errors(result)), \
        result.output


@pytest.mark.parametrize("results,where,message", [
    ("results: {type: s3}\n", "2:1", "results: missing required key 'bucket'"),
    ("results: {type: gcs}\n", "2:17", "results.type: string 'gcs' is not one of: local | s3"),
    ("results: {type: local, bucket: b}\n", "2:24", "results.bucket: unknown key 'bucket'"),
    ("results: {type: s3, bucket: b, directory: d}\n", "2:32", "results.directory: unknown key 'directory'"),
    ("results: {type: s3, bucket: My_Bucket}\n", "2:29", "results.bucket: 'My_Bucket' is not an S3 bucket name"),
    ("results: {type: s3, bucket: abc, endpoint_url: 127.0.0.1:9000}\n", "2:48",
     "results.endpoint_url: endpoint_url must be an http:// or https:// URL"),
    ("results: {type: s3, bucket: abc, endpoint_url: 'http://u:pw@127.0.0.1:9000'}\n", "2:48",
     "results.endpoint_url:"),
    ("results: {type: s3, bucket: abc, prefix: /x}\n", "2:42", "results.prefix: '/x' is not a key prefix"),
    ("results: {type: local, directory: ' '}\n", "2:35", "results.directory: directory is blank"),
    ("results: {type: s3, bucket: \"${{ tasks.x }}\"}\n", "2:30",
     "results.bucket: ${{ tasks.x }}: only env references are allowed in 'results'"),
])
def test_malformed_results(cli, folder, env, results, where, message):
    (folder / "bad.yaml").write_text("version: 1\n" + results + "name: bad\ntasks:\n  x: {run: steps:f}\n")
    result = cli("validate", folder / "bad.yaml", env=env)
    assert result.rc == 1
    assert any(e.startswith(f"{folder / 'bad.yaml'}:{where}: error: {message}") for e in _errors(result)), \
        result.output


def test_old_names_point_at_the_new_keys(cli, folder, env):
    (folder / "bad.yaml").write_text("version: 1\nname: bad\ntasks:\n  x: {run: steps:f, cache_for: 1h,"
                                     " checkpoint: true}\n")
    result = cli("validate", folder / "bad.yaml", env=env)
    assert "write `cache: {expires: DURATION}`" in result.output
    assert "write `persist: true|false`" in result.output
    assert "not in this release yet" not in result.output


def test_strict_imports_the_callables_of_child_spec_files_at_their_own_lines(cli, tmp_path, env):
    # each child in a folder of its own, with a module of the same name as the parent's
    (tmp_path / "steps.py").write_text(TASKS)
    (tmp_path / "flow.yaml").write_text("version: 1\nname: p\ntasks:\n  a: {run: steps:f}\n"
                                        "  r1: {flow: one/child.yaml}\n  r2: {flow: one/child.yaml}\n"
                                        "  r3: {flow: two}\n")
    for sub, body in (("one", "def g(y):\n    return y\n"), ("two", "def h():\n    return 1\n"), ("three", "")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "steps.py").write_text(body)
    (tmp_path / "one" / "child.yaml").write_text(
        "version: 1\nname: one\ntasks:\n  a: {run: steps:g, with: {y: 1}}\n  b: {run: steps:nope}\n"
        "  c: {run: steps:g, with: {z: 1}}\n")
    (tmp_path / "two" / "flow.yaml").write_text("version: 1\nname: two\ntasks:\n  a: {run: steps:h}\n"
                                                "  deeper: {flow: ../three/flow.yaml}\n")
    (tmp_path / "three" / "flow.yaml").write_text("version: 1\nname: three\ntasks:\n  x: {run: gone:f}\n")
    assert cli("validate", tmp_path / "flow.yaml", env=env).rc == 0  # without --strict no code is imported
    result = cli("validate", "--strict", tmp_path / "flow.yaml", env=env)
    assert result.rc == 1, result.output
    assert "Traceback" not in result.output
    errors = _errors(result)
    one, three = tmp_path / "one" / "child.yaml", tmp_path / "three" / "flow.yaml"
    assert errors == [  # the child named twice is imported and reported once
        f"{one}:5:12: error: tasks.b.run: 'steps' has no attribute 'nope'",
        f"{one}:6:12: error: tasks.c.run: steps:g: argument 'z' is not a parameter of it",
        f"{one}:6:12: error: tasks.c.run: steps:g: missing required argument: y",
        f"{three}:4:12: error: tasks.x.run: cannot import module 'gone': no module named 'gone'"], result.output
    (tmp_path / "one" / "child.yaml").write_text("version: 1\nname: one\ntasks:\n  a: {run: steps:g, with: {y: 1}}\n")
    (tmp_path / "three" / "flow.yaml").write_text("version: 1\nname: three\ntasks:\n  x: {run: steps:f}\n")
    (tmp_path / "three" / "steps.py").write_text("def f():\n    return 3\n")
    result = cli("validate", "--strict", tmp_path / "flow.yaml", env=env)
    assert result.rc == 0, result.output
