"""`flowspec runs restart` through the CLI: a new run linked to the old one that reuses the kept
results of what succeeded (Cached) and runs the rest, says which and why, reruns what reads a
changed --param or follows a --from task, and refuses when the spec or the store is gone."""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

STEPS = """\
import os
from pathlib import Path

CALLS = Path(__file__).with_name("calls.txt")


def note(what):
    with CALLS.open("a") as f:
        f.write(what + "\\n")


def nums(n):
    note("nums")
    return list(range(n))


def sq(x):
    note(f"sq {x}")
    if os.environ.get("FAIL_AT") == str(x):
        raise ValueError(f"boom at {x}")
    return x * x


def total(xs, k=1):
    note("total")
    if os.environ.get("FAIL_TOTAL"):
        raise ValueError("total fails")
    return sum(xs) * k
"""

FLOW = """\
version: 1
name: rs
parameters:
  n: {type: integer, default: 4}
  k: {type: integer, default: 1}
results: {type: local, directory: store}
tasks:
  nums: {run: steps:nums, with: {n: "${{ params.n }}"}}
  sq: {run: steps:sq, map: {x: "${{ tasks.nums }}"}}
  total: {run: steps:total, with: {xs: "${{ tasks.sq }}", k: "${{ params.k }}"}}
outputs:
  total: ${{ tasks.total }}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home")}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flow.yaml").write_text(FLOW)
    return tmp_path / "flow.yaml"


def calls(folder: Path) -> list[str]:
    path = folder / "calls.txt"
    lines = sorted(path.read_text().splitlines()) if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def last_run(cli, env) -> str:
    return json.loads(cli("runs", "list", "--format", "json", env=env).stdout)[0]["id"]


def show(cli, env, run_id: str) -> dict:
    shown = cli("runs", "show", run_id, "--format", "json", env=env)
    assert shown.rc == 0, shown.output
    return json.loads(shown.stdout)


def failed_run(cli, spec, env, **fail) -> str:
    result = cli("run", spec, env=env | fail)
    assert result.rc == 1, result.output
    calls(spec.parent)
    return last_run(cli, env)


def test_a_failure_at_the_end_reruns_only_the_last_task(cli, spec, env):
    old = failed_run(cli, spec, env, FAIL_TOTAL="1")
    result = cli("runs", "restart", old[:8], env=env)
    assert result.rc == 0, result.output
    assert calls(spec.parent) == ["total"]
    assert "restart of run" in result.output and "total: runs again: it ended Failed" in result.output
    new = last_run(cli, env)
    data = show(cli, env, new)
    assert data["restart_of"] == old and data["outputs"] == {"total": 14}
    states = {t["task"]: t["state"] for t in data["tasks"] if t["map_index"] is None}
    assert states == {"nums": "Cached", "sq": "Cached", "total": "Success"}
    assert data["restart"]["nums"]["action"] == "reused" and data["restart"]["total"]["action"] == "runs again"
    text = cli("runs", "show", new, env=env).stdout
    assert f"restart of run {old}:" in text and "reused from run" in text


def test_a_failed_mapped_child_reruns_alone_and_a_restart_of_a_restart_reuses_all(cli, spec, env):
    old = failed_run(cli, spec, env, FAIL_AT="2")
    result = cli("runs", "restart", old, env=env)
    assert result.rc == 0, result.output
    assert calls(spec.parent) == ["sq 2", "total"]
    assert "1 of 4 mapped runs did not succeed" in result.output
    again = cli("runs", "restart", last_run(cli, env), "--param", "k=3", env=env)
    assert again.rc == 0, again.output
    assert calls(spec.parent) == ["total"]  # only what reads k
    assert "total: runs again: parameter k changed" in again.output
    assert show(cli, env, last_run(cli, env))["outputs"] == {"total": 42}


def test_from_reruns_a_task_and_what_follows_and_a_changed_param_its_readers(cli, spec, env):
    assert cli("run", spec, env=env).rc == 0
    calls(spec.parent)
    run = last_run(cli, env)
    assert cli("runs", "restart", run, "--from", "sq", env=env).rc == 0
    assert calls(spec.parent) == ["sq 0", "sq 1", "sq 2", "sq 3", "total"]
    result = cli("runs", "restart", run, "--param", "n=2", env=env)
    assert result.rc == 0, result.output
    assert calls(spec.parent) == ["nums", "sq 0", "sq 1", "total"]
    bad = cli("runs", "restart", run, "--from", "nope", env=env)
    assert bad.rc == 2 and "--from nope: the flow rs has no task 'nope'" in bad.output


def test_a_missing_result_reruns_its_task_and_says_why(cli, spec, env):
    old = failed_run(cli, spec, env, FAIL_TOTAL="1")
    shutil.rmtree(spec.parent / "store" / "runs" / old)  # the run's kept results are gone
    result = cli("runs", "restart", old, env=env)
    assert result.rc == 0, result.output
    assert "nums: runs again: its result from run" in result.output and "is not in the result store" in result.output
    assert calls(spec.parent) == ["nums", "sq 0", "sq 1", "sq 2", "sq 3", "total"]


def test_a_restart_is_refused_when_the_spec_changed_or_the_store_is_gone(cli, spec, env):
    old = failed_run(cli, spec, env, FAIL_TOTAL="1")
    spec.write_text(FLOW.replace("default: 4", "default: 5"))
    changed = cli("runs", "restart", old, env=env)
    assert changed.rc == 1 and "its spec file" in changed.output and "changed since it ran" in changed.output
    spec.write_text(FLOW)
    import shutil

    shutil.rmtree(spec.parent / "store")
    gone = cli("runs", "restart", old, env=env)
    assert gone.rc == 1 and "its result store" in gone.output and "is gone" in gone.output
    assert "Traceback" not in changed.output + gone.output


def test_a_registered_flows_run_is_restarted_by_an_agent(cli, cli_start, spec, env, tmp_path):
    env = env | {"FLOWSPEC_BACKEND": "", "FAIL_TOTAL": ""}
    marker = tmp_path / "fail"
    (tmp_path / "steps.py").write_text(STEPS.replace('os.environ.get("FAIL_TOTAL")',
                                                     f'os.path.exists({str(marker)!r})'))
    spec.write_text(FLOW.replace("directory: store", f"directory: {tmp_path / 'store'}"))
    assert cli("register", spec, env=env).rc == 0
    agent = cli_start("agent", "start", "--name", "a1", "--poll-interval", "0.1", env=env)
    try:
        marker.write_text("")
        first = cli("run", "--name", "rs", "--watch", env=env, timeout=60)
        assert first.rc == 1, first.output
        old = last_run(cli, env)
        marker.unlink()
        calls(tmp_path)
        again = cli("runs", "restart", old, "--watch", env=env, timeout=60)
        assert again.rc == 0, again.output
        assert "restart of run" in again.output and "1 run again (by an agent)" in again.output
        assert calls(tmp_path) == ["total"]
        data = show(cli, env, last_run(cli, env))
        assert data["restart_of"] == old and data["agent"] == "a1" and data["outputs"] == {"total": 14}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
