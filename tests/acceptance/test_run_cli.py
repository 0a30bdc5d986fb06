"""`flowspec run` as a user runs it: the examples, SPEC.md's semantics in JSON, parameters,
logs, the summary table and exit codes (Ctrl-C included, sent to a real child process)."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import time

import pytest



def _logged(stderr: str, label: str, message: str) -> bool:
    """Whether stderr has the line `HH:MM:SS.mmm LEVEL   label | message` (label, message: regexes)."""
    line = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (INFO |WARNING|ERROR ) +" + label + r" \| " + message + "$")
    return any(line.match(ln) for ln in stderr.splitlines())


def _task(state, attempts, children=None, message=None) -> dict:
    return {"state": state, "attempts": attempts, "children": children or {}, "message": message}


EXAMPLES = {
    "hello-flow": ("Success", {
        "say_hello": _task("Success", 3, {"Success": 3}),
        "report": _task("Success", 1)}),
    "etl-callbacks": ("Success", {
        "extract": _task("Success", 1),
        "transform": _task("Success", 5, {"Success": 5}),
        "load": _task("Success", 1)}),
    "retries-and-triggers": ("Failed", {
        "flaky": _task("Success", 3),
        "slow": _task("TimedOut", 1, message="attempt 1 exceeded the timeout of 0.5s"),
        "cleanup": _task("Success", 1),
        "alert": _task("Success", 1),
        "never": _task("TriggerFailed", 0, message="upstream did not succeed: slow (TimedOut)")}),
}


def _shape(report: dict) -> tuple[str, dict]:
    """The JSON report without what changes from run to run (ids, durations)."""
    tasks = {name: {k: v for k, v in t.items() if k != "duration_s"} for name, t in report["tasks"].items()}
    return report["state"], tasks


def _run_json(cli, path, *args, cwd, timeout: float = 30):
    result = cli("run", path, "--format", "json", *args, cwd=cwd, timeout=timeout)
    return result, json.loads(result.stdout)


def _example_ids(repo) -> list[str]:
    return sorted(p.parent.name for p in (repo / "examples").glob("*/flow.yaml"))


def pytest_generate_tests(metafunc):
    if "example" in metafunc.fixturenames:
        from pathlib import Path

        metafunc.parametrize("example", _example_ids(Path(__file__).resolve().parents[2]))


def test_every_example_runs_with_the_expected_result(cli, repo, tmp_path, example):
    """Known examples are asserted exactly; an example added later must at least succeed."""
    result, report = _run_json(cli, repo / "examples" / example / "flow.yaml", cwd=tmp_path)
    expected_state, expected_tasks = EXAMPLES.get(example, ("Success", None))
    assert result.rc == (0 if expected_state == "Success" else 1), result.stderr
    state, tasks = _shape(report)
    assert report["flow"] == example and state == expected_state
    if expected_tasks is None:
        assert all(t["state"] == "Success" for t in tasks.values()), tasks
    else:
        assert tasks == expected_tasks
    assert "Traceback" not in result.stderr


def test_hello_flow_logs_each_child_with_its_index(cli, repo, tmp_path):
    result = cli("run", repo / "examples/hello-flow/flow.yaml", cwd=tmp_path)
    assert result.rc == 0
    for i, name in enumerate(["Arthur", "Ford", "Marvin"]):
        assert _logged(result.stderr, rf"say_hello\[{i}\]", f"Hello, {name}!"), result.stderr
    assert _logged(result.stderr, "report", "greeted 3 people")


def test_summary_table_in_text_mode(cli, repo, tmp_path):
    result = cli("run", repo / "examples/hello-flow/flow.yaml", cwd=tmp_path)
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert rows[0] == ["TASK", "STATE", "CHILDREN", "ATTEMPTS", "DURATION"]
    assert rows[1][:4] == ["say_hello", "Success", "3/3", "3"] and rows[2][:4] == ["report", "Success", "-", "1"]
    assert re.match(r"^Flow run 'hello-flow' \([0-9a-f]{8}\): Success in \d+\.\d\ds$",
                    result.stdout.strip().splitlines()[-1])


def test_etl_example_hooks_and_output_file(cli, repo, tmp_path):
    target = tmp_path / "out" / "totals.txt"
    target.parent.mkdir()
    result, report = _run_json(cli, repo / "examples/etl-callbacks/flow.yaml", "--param", f"target={target}",
                               cwd=tmp_path)
    assert result.rc == 0
    assert target.read_text() == f"{report['run_id']} 55\n"
    assert re.search(r"INFO +flow \| starting etl-callbacks for \S+", result.stderr)
    assert f"flow | run {report['run_id'][:8]} ended Success: 3 of 3 tasks succeeded" in result.stderr


# -- SPEC.md's task semantics in one flow run ----------------------------------------------------
STEPS = '''
import json, os, time
from flowspec import context

def _mark(name):
    with open("order.txt", "a") as fh:
        fh.write(name + "\\n")

def nums():
    return [1, 2, 3]

def double(x):
    if x == 2:
        raise ValueError("two is not allowed")
    return 2 * x

def plus_one(x):
    return x + 1

def pair(a, b):
    return f"{a}{b}"

def expect(got, want):
    assert got == want, (got, want)
    _mark(context.task_name)

def mark():
    _mark(context.task_name)

def flaky():
    if context.attempt < 3:
        raise ConnectionError(f"attempt {context.attempt}")
    return context.attempt

def sleepy():
    time.sleep(5)

def env(v, fb):
    assert v == os.environ["FS_ACCEPT_GREETING"] == "hi" and fb == "dflt", (v, fb)

def show_context(item):
    context.logger.info("run=%s flow=%s task=%s index=%s attempt=%s p=%s",
                        context.run_id, context.flow_name, context.task_name, context.map_index,
                        context.attempt, context.params["empty"])
    context.get("logger").warning("via get: %s", item)
    print("printed by a task")
    if item == "b" and context.attempt == 1:
        raise RuntimeError("first attempt of b fails")

def started():
    _mark("on_start")

def finished(run):
    try:
        run["state"] = "changed"
        writable = True
    except TypeError:
        writable = False
    with open("summary.json", "w") as fh:
        json.dump({"state": run["state"], "writable": writable, "parameters": dict(run["parameters"]),
                   "tasks": {n: t["state"] for n, t in run["tasks"].items()}}, fh)
'''

SEMANTICS = """
version: 1
name: semantics
parameters:
  empty: {type: array, default: []}
tasks:
  nums: {run: steps:nums}
  double: {run: steps:double, map: {x: "${{ tasks.nums }}"}}
  plus_one: {run: steps:plus_one, map: {x: "${{ tasks.double }}"}}
  sum_all:
    run: steps:expect
    with: {got: "${{ tasks.plus_one }}", want: [3, null, 7]}
    trigger: all_finished
  zip_ok: {run: steps:pair, map: {a: [1, 2], b: [x, y]}}
  zip_bad: {run: steps:pair, map: {a: [1, 2], b: "${{ tasks.nums }}"}}
  empty: {run: steps:pair, map: {a: "${{ params.empty }}"}, with: {b: 0}}
  after_empty: {run: steps:expect, with: {got: "${{ tasks.empty }}", want: []}}
  ordered: {run: steps:mark, after: [zip_ok]}
  flaky: {run: steps:flaky, retries: 2, retry_delay: 50ms}
  sleepy: {run: steps:sleepy, timeout: 200ms, retries: 1}
  finally: {run: steps:mark, after: [sleepy], trigger: all_finished}
  alert: {run: steps:mark, after: [sleepy], trigger: any_failed}
  quiet: {run: steps:mark, after: [flaky], trigger: any_failed}
  after_quiet: {run: steps:mark, after: [quiet]}
  blocked: {run: steps:mark, after: [sleepy]}
  env: {run: steps:env, with: {v: "${{ env.FS_ACCEPT_GREETING }}", fb: "${{ env.FS_UNSET_X || 'dflt' }}"}}
  ctx: {run: steps:show_context, map: {item: [a, b]}, retries: 1}
environment:
  env: {FS_ACCEPT_GREETING: hi}
  on_start: steps:started
  on_exit: steps:finished
"""

SEMANTICS_EXPECTED = {
    "nums": _task("Success", 1),
    "double": _task("Failed", 3, {"Success": 2, "Failed": 1}, "[1] ValueError: two is not allowed"),
    "plus_one": _task("TriggerFailed", 2, {"Success": 2, "TriggerFailed": 1},
                      "[1] upstream did not succeed: double[1] (Failed)"),
    "sum_all": _task("Success", 1),
    "zip_ok": _task("Success", 2, {"Success": 2}),
    "zip_bad": _task("Failed", 0, message="mapped arguments have different lengths (a=2, b=3); "
                                          "they are zipped and must match"),
    "empty": _task("Success", 0),
    "after_empty": _task("Success", 1),
    "ordered": _task("Success", 1),
    "flaky": _task("Success", 3),
    "sleepy": _task("TimedOut", 2, message="attempt 2 exceeded the timeout of 0.2s"),
    "finally": _task("Success", 1),
    "alert": _task("Success", 1),
    "quiet": _task("Skipped", 0, message="no upstream task failed (trigger any_failed)"),
    "after_quiet": _task("Skipped", 0, message="upstream skipped: quiet"),
    "blocked": _task("TriggerFailed", 0, message="upstream did not succeed: sleepy (TimedOut)"),
    "env": _task("Success", 1),
    "ctx": _task("Success", 3, {"Success": 2}),
}


@pytest.fixture(scope="module")
def semantics(cli, tmp_path_factory):
    """One run of the semantics flow: (CliResult, JSON report, folder it ran in)."""
    folder = tmp_path_factory.mktemp("semantics")
    (folder / "steps.py").write_text(STEPS, encoding="utf-8")
    (folder / "flow.yaml").write_text(SEMANTICS, encoding="utf-8")
    result, report = _run_json(cli, "flow.yaml", cwd=folder)
    return result, report, folder


def test_semantics_states_attempts_children_and_messages(semantics):
    result, report, _ = semantics
    assert result.rc == 1, result.stderr
    state, tasks = _shape(report)
    assert state == "Failed"
    assert tasks == SEMANTICS_EXPECTED


def test_semantics_after_orders_tasks_and_hooks_see_the_run(semantics):
    _, report, folder = semantics
    order = (folder / "order.txt").read_text().split()
    assert order[0] == "on_start" and order.index("ordered") > 0
    assert "blocked" not in order and "quiet" not in order
    summary = json.loads((folder / "summary.json").read_text())
    assert summary == {"state": "Failed", "writable": False, "parameters": {"empty": []},
                       "tasks": {n: t["state"] for n, t in report["tasks"].items()}}


def test_semantics_context_and_logs_on_stderr(semantics):
    result, report, _ = semantics
    for index, attempt in ((0, 1), (1, 1), (1, 2)):
        msg = f"run={report['run_id']} flow=semantics task=ctx index={index} attempt={attempt} p=\\[\\]"
        assert _logged(result.stderr, rf"ctx\[{index}\]", msg), msg
    assert _logged(result.stderr, r"ctx\[1\]", "via get: b")
    assert "printed by a task" in result.stderr and "printed by a task" not in result.stdout


# -- parameters ----------------------------------------------------------------------------------
PARAMS_FLOW = """
version: 1
name: params
parameters:
  s: {type: string}
  n: {type: integer, default: 1}
  l: {type: array, default: []}
  o: {type: object, default: {}}
  b: {type: boolean, default: false}
  anything: {default: null}
tasks:
  dump:
    run: dump.py:dump
    with: {s: "${{ params.s }}", n: "${{ params.n }}", l: "${{ params.l }}", o: "${{ params.o }}",
           b: "${{ params.b }}", anything: "${{ params.anything }}", text: "s=${{ params.s }} b=${{ params.b }}"}
"""
DUMP = "import json\n\ndef dump(**kw):\n    open('values.json', 'w').write(json.dumps(kw))\n"


@pytest.fixture
def params_flow(tmp_path):
    (tmp_path / "flow.yaml").write_text(PARAMS_FLOW, encoding="utf-8")
    (tmp_path / "dump.py").write_text(DUMP, encoding="utf-8")
    return tmp_path


def _values(folder) -> dict:
    return json.loads((folder / "values.json").read_text())


def test_param_flags_are_raw_for_strings_and_yaml_otherwise(cli, params_flow):
    result = cli("run", "flow.yaml", "--param", "s=007", "--param", "n=42", "--param", "l=[1, two]",
                 "--param", "o={k: v}", "--param", "b=yes", "--param", "anything=3.5", cwd=params_flow)
    assert result.rc == 0, result.stderr
    assert _values(params_flow) == {"s": "007", "n": 42, "l": [1, "two"], "o": {"k": "v"}, "b": True,
                                    "anything": 3.5, "text": "s=007 b=true"}


def test_params_file_with_flags_taking_precedence(cli, params_flow):
    (params_flow / "p.yaml").write_text("s: from file\nn: 5\nl: [x]\n", encoding="utf-8")
    result = cli("run", "flow.yaml", "--params-file", "p.yaml", "--param", "n=6", cwd=params_flow)
    assert result.rc == 0, result.stderr
    values = _values(params_flow)
    assert (values["s"], values["n"], values["l"], values["o"]) == ("from file", 6, ["x"], {})


def test_parameter_problems_are_all_reported_and_nothing_runs(cli, params_flow):
    result = cli("run", "flow.yaml", "--param", "n=many", "--param", "colour=red", cwd=params_flow)
    assert result.rc == 2 and not (params_flow / "values.json").exists()
    assert result.stderr.splitlines() == [
        "flowspec: error: --param n: expected integer, got string \"many\"",
        "flowspec: error: --param colour: unknown parameter 'colour' (known parameters: s, n, l, o, b, anything)",
        "flowspec: error: missing required parameter 's' (give it with --param s=VALUE or in --params-file)"]


def test_params_file_problems_have_positions(cli, params_flow):
    (params_flow / "p.yaml").write_text("s: ok\nn: [1]\nbb: true\n", encoding="utf-8")
    result, items = _run_json(cli, "flow.yaml", "--params-file", "p.yaml", cwd=params_flow)
    assert result.rc == 2 and not (params_flow / "values.json").exists()
    assert [(i["file"], i["line"], i["column"], i["message"], i["hint"]) for i in items] == [
        ("p.yaml", 2, 4, "parameter 'n': expected integer, got array [1]", None),
        ("p.yaml", 3, 1, "unknown parameter 'bb'", "did you mean 'b'?")]


def test_bad_param_flag_syntax_is_a_usage_error(cli, params_flow):
    for flag in ("s", "l=[1, 2"):
        result = cli("run", "flow.yaml", "--param", flag, cwd=params_flow)
        assert result.rc == 2 and result.stderr.startswith("flowspec: error: --param"), result.stderr


# -- exit codes ----------------------------------------------------------------------------------
def test_invalid_spec_exits_2_and_runs_nothing(cli, tmp_path):
    (tmp_path / "flow.yaml").write_text("version: 1\nname: x\ntasks:\n  a: {run: 'm:f', retries: -1}\n")
    result = cli("run", "flow.yaml", cwd=tmp_path)
    assert result.rc == 2
    assert result.stderr.splitlines() == ["flow.yaml:4:28: error: tasks.a.retries: -1 is less than the minimum of 0",
                                          "1 error found; nothing was run"]
    missing = cli("run", "nope.yaml", cwd=tmp_path)
    assert (missing.rc, missing.stderr) == (2, "flowspec: error: nope.yaml: no such file\n")
    folder = cli("run", ".", cwd=tmp_path)  # a folder stands for its flow.yaml
    assert (folder.rc, folder.stderr) == (2, result.stderr)


def test_unset_env_reference_stops_the_run_before_any_task(cli, tmp_path):
    (tmp_path / "steps.py").write_text("def f(v):\n    open('ran', 'w').close()\n")
    (tmp_path / "flow.yaml").write_text("version: 1\nname: x\ntasks:\n  a:\n    run: steps:f\n"
                                        "    with: {v: '${{ env.FS_SURELY_UNSET }}'}\n")
    result = cli("run", "flow.yaml", cwd=tmp_path)
    assert result.rc == 2 and not (tmp_path / "ran").exists()
    assert result.stderr.startswith("flow.yaml:6:15: error: tasks.a.with.v: environment variable FS_SURELY_UNSET "
                                    "is not set")


def test_every_type_of_the_schema_has_a_driver_that_loads():
    """The schema accepts no type that this release cannot run: each table entry names a class
    that imports (the drivers import their SDKs only when they run)."""
    from flowspec.drivers import TABLES, load_driver

    for table, drivers in TABLES.items():
        for kind, target in drivers.items():
            assert target is not None, (table, kind)
            assert isinstance(load_driver(table, kind), type), (table, kind)


INTERRUPTED = """
version: 1
name: interrupted
tasks:
  first: {run: steps:quick}
  sleeper: {run: steps:sleeper, after: [first]}
  later: {run: steps:quick, after: [sleeper]}
environment:
  on_exit: steps:on_exit
"""
INTERRUPTED_STEPS = '''
import time
from flowspec import context

def quick():
    pass

def sleeper():
    context.logger.info("going to sleep")
    time.sleep(30)

def on_exit(run):
    open("on_exit.txt", "w").write(run["state"])
'''


def _read_until(stream, needle: str, timeout: float) -> str:
    """Read the pipe's raw bytes (no buffering that select cannot see) until `needle` shows up."""
    deadline, seen = time.monotonic() + timeout, b""
    while (left := deadline - time.monotonic()) > 0 and select.select([stream], [], [], left)[0]:
        chunk = os.read(stream.fileno(), 65536)
        assert chunk, f"the command ended early: {seen.decode()}"
        seen += chunk
        if needle.encode() in seen:
            return seen.decode()
    raise AssertionError(f"no line with {needle!r} within {timeout}s: {seen.decode()}")


def test_ctrl_c_cancels_runs_on_exit_prints_summary_and_exits_130(cli_start, tmp_path):
    (tmp_path / "flow.yaml").write_text(INTERRUPTED, encoding="utf-8")
    (tmp_path / "steps.py").write_text(INTERRUPTED_STEPS, encoding="utf-8")
    proc = cli_start("run", "flow.yaml", cwd=tmp_path)
    try:
        _read_until(proc.stderr, "sleeper | going to sleep", timeout=15)  # logs arrive while the run goes on
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:  # only when the test already failed: leave no process behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert (tmp_path / "on_exit.txt").read_text() == "Cancelled"
    rows = {line.split()[0]: line.split()[1] for line in stdout.strip().splitlines()[1:-2] if line.strip()}
    assert rows == {"first": "Success", "sleeper": "Cancelled", "later": "Cancelled"}
    assert "Cancelled in" in stdout.strip().splitlines()[-1] and "interrupted by the user" in stdout
    assert "Traceback" not in stderr
