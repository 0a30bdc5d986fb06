"""Each spec in its own world: `validate --strict` over several specs imports each spec's modules
apart, and a module that exits, interrupts or shadows the standard library on import gets an
error at its `run`."""
from __future__ import annotations

import json
import textwrap

import pytest


def _write(folder, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))


def _spec(*targets: str, hooks: str = "") -> str:
    tasks = "".join(f"  t{i}:\n    run: {target}\n" for i, target in enumerate(targets))
    return f"version: 1\nname: w\ntasks:\n{tasks}{hooks}"


def _flows_made_by_init(cli, tmp_path, names):
    for name in names:
        assert cli("init", tmp_path / name).rc == 0
        # each folder's tasks.py gets functions of its own, as a user would write them
        tasks = tmp_path / name / "tasks.py"
        tasks.write_text(tasks.read_text().replace("def greet(", f"def greet_{name}(")
                                          .replace("def summarize(", f"def summarize_{name}("))
        spec = tmp_path / name / "flow.yaml"
        spec.write_text(spec.read_text().replace("tasks:greet ", f"tasks:greet_{name} ")
                                        .replace("tasks:summarize", f"tasks:summarize_{name}"))
    return [str(tmp_path / name / "flow.yaml") for name in names]


def test_init_made_flows_validate_together_in_any_order(cli, tmp_path):
    specs = _flows_made_by_init(cli, tmp_path, ["a", "b", "c"])
    for order in (specs, specs[::-1], [specs[1], specs[0], specs[1], specs[2]]):
        result = cli("validate", "--strict", *order)
        assert (result.rc, result.stdout.strip()) == (0, f"no errors in {len(order)} files"), result.output


def test_modules_that_a_task_module_imports_stay_apart_too(cli, tmp_path):
    for name in ("one", "two"):
        _write(tmp_path / name, {
            "flow.yaml": _spec(f"steps:{name}"),
            "steps.py": f"from helpers import VALUE\n\ndef {name}():\n    return VALUE\n",
            "helpers.py": f"VALUE = '{name}'\n",
        })
    # 'two' has no function 'one': a reused module would hide that, or report the wrong one
    _write(tmp_path / "bad", {"flow.yaml": _spec("steps:one"), "steps.py": "def two():\n    pass\n"})
    result = cli("validate", "--strict", "--format", "json",
                 tmp_path / "one/flow.yaml", tmp_path / "two/flow.yaml", tmp_path / "bad/flow.yaml")
    assert result.rc == 1, result.output
    [d] = json.loads(result.stdout)
    assert (d["file"], d["line"], d["column"], d["message"]) == (
        str(tmp_path / "bad/flow.yaml"), 5, 10, "'steps' has no attribute 'one'")


@pytest.mark.parametrize("raising, shown", [
    ("import sys\nsys.exit(3)\n", "SystemExit: 3 (tasks.py, line 2)"),
    ("raise SystemExit\n", "SystemExit (tasks.py, line 1)"),
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt (tasks.py, line 1)"),
])
def test_a_module_that_exits_on_import_gets_an_error_at_its_run(cli, tmp_path, raising, shown):
    _write(tmp_path / "x", {"flow.yaml": _spec("fine:f", "tasks:f"), "tasks.py": raising,
                            "fine.py": "def f():\n    pass\n"})
    _write(tmp_path / "y", {"flow.yaml": _spec("tasks:g"), "tasks.py": "def g():\n    pass\n"})
    spec = tmp_path / "x/flow.yaml"
    result = cli("validate", "--strict", spec, tmp_path / "y/flow.yaml")
    assert result.rc == 1, result.output
    assert result.stdout.splitlines()[0] == f"{spec}:7:10: error: tasks.t1.run: importing 'tasks' failed: {shown}"
    assert result.stdout.splitlines()[-1] == "1 error found"  # and the next spec was still checked
    run = cli("run", spec)
    assert run.rc == 2 and f"{spec}:7:10: error: tasks.t1.run: importing 'tasks' failed: {shown}" in run.stderr


def test_a_run_target_named_like_the_standard_library_is_named_as_such(cli, tmp_path):
    _write(tmp_path, {"flow.yaml": _spec("json:pick"), "json.py": "def pick():\n    return 1\n"})
    result = cli("validate", "--strict", tmp_path / "flow.yaml")
    assert result.rc == 1
    assert (f"5:10: error: tasks.t0.run: 'json.py' beside the spec has the name of the standard library module "
            f"'json'") in result.stdout
    assert "hint: rename it (e.g. json_tasks.py) and change 'run' to match" in result.stdout


def test_a_helper_named_like_the_standard_library_is_named_in_the_hint(cli, tmp_path):
    _write(tmp_path, {"flow.yaml": _spec("tasks:f"), "random.py": "def pick():\n    return 4\n",
                      "tasks.py": "from random import pick\n\ndef f():\n    return pick()\n"})
    result = cli("validate", "--strict", tmp_path / "flow.yaml")
    assert result.rc == 1
    assert "error: tasks.t0.run: importing 'tasks' failed: ImportError: cannot import name 'pick'" in result.stdout
    assert ("hint: 'random.py' beside the spec has the name of the standard library module 'random', "
            "and Python imported the standard one: rename it") in result.stdout


def test_strict_checks_the_hooks_signatures(cli, tmp_path):
    hooks = "environment:\n  on_start: hooks:{}\n  on_exit: hooks:{}\n"
    _write(tmp_path, {"hooks.py": """\
        def none():
            pass
        def one(run):
            pass
        def optional(run=None, extra=1):
            pass
        def two(run, extra):
            pass
        def keyword_only(*, run):
            pass
        """, "tasks.py": "def f():\n    pass\n"})
    for good in (("none", "one"), ("optional", "one")):
        (tmp_path / "flow.yaml").write_text(_spec("tasks:f", hooks=hooks.format(*good)))
        assert cli("validate", "--strict", tmp_path / "flow.yaml").rc == 0
    (tmp_path / "flow.yaml").write_text(_spec("tasks:f", hooks=hooks.format("two", "keyword_only")))
    result = cli("validate", "--strict", "--format", "json", tmp_path / "flow.yaml")
    assert result.rc == 1
    assert [(d["path"], d["line"], d["message"]) for d in json.loads(result.stdout)] == [
        ("environment.on_start", 7, "hooks:two: a hook takes no parameter or one (the run summary), "
                                    "but its signature is (run, extra)"),
        ("environment.on_exit", 8, "hooks:keyword_only: a hook takes no parameter or one (the run summary), "
                                   "but its signature is (*, run)"),
    ]
    assert cli("validate", tmp_path / "flow.yaml").rc == 0  # without --strict nothing is imported


def test_print_at_import_does_not_spoil_the_json(cli, tmp_path):
    _write(tmp_path, {"flow.yaml": _spec("tasks:f"), "tasks.py": "print('loading')\n\ndef f():\n    pass\n"})
    result = cli("validate", "--strict", "--format", "json", tmp_path / "flow.yaml")
    assert (result.rc, json.loads(result.stdout)) == (0, [])
    assert "loading" in result.stderr


def test_plan_takes_several_specs_and_imports_none_of_their_code(cli, tmp_path):
    specs = _flows_made_by_init(cli, tmp_path, ["a", "b"])
    (tmp_path / "a/tasks.py").write_text("raise SystemExit(9)\n")  # never imported by plan
    result = cli("plan", *specs, "--format", "json", "--backend", tmp_path / "none.db")
    assert result.rc == 0, result.output
    plans = json.loads(result.stdout)
    assert [(p["flow"], p["file"]) for p in plans] == [("a", specs[0]), ("b", specs[1])]
    assert [t["run"] for t in plans[1]["tasks"]] == ["tasks:greet_b", "tasks:summarize_b"]
    one = cli("plan", specs[0], "--format", "json", "--backend", tmp_path / "none.db")
    assert json.loads(one.stdout)["flow"] == "a"  # one spec: the plan object itself, as before
    text = cli("plan", specs[0], tmp_path / "missing.yaml", "--backend", tmp_path / "none.db")
    assert text.rc == 2 and "Plan for flow 'a'" in text.stdout
    assert f"flowspec: error: {tmp_path / 'missing.yaml'}: no such file" in text.stderr
