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


def double(x):
    note("double")
    if os.environ.get("FAIL_DOUBLE"):
        raise ValueError("double fails")
    return 2 * x


def last(x):
    note("last")
    if os.environ.get("FAIL_END"):
        raise ValueError("the last task fails")
    return x + 1
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


EXECUTORS = {"local": "", "local-dask": "executor: {type: local-dask, workers: 2}\n"}


@pytest.fixture(params=sorted(EXECUTORS))
def on_executor(request, tmp_path: Path) -> Path:
    """The flow on each executor that runs here, with a task after `total` (a failure in the middle)."""
    (tmp_path / "steps.py").write_text(STEPS)
    more = ("  twice: {run: steps:double, with: {x: \"${{ tasks.total }}\"}}\n"
            "  end: {run: steps:last, with: {x: \"${{ tasks.twice }}\"}}\noutputs:\n  end: ${{ tasks.end }}\n")
    (tmp_path / "flow.yaml").write_text(FLOW.replace("outputs:\n  total: ${{ tasks.total }}\n", more)
                                        + EXECUTORS[request.param])
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


def restarted(cli, env, old: str, *args: str, rc: int = 0) -> dict:
    result = cli("runs", "restart", old, *args, env=env)
    assert result.rc == rc, result.output
    return show(cli, env, last_run(cli, env))


def test_restarts_on_each_executor_after_failures_at_the_end_in_the_middle_and_in_a_mapped_child(
        cli, on_executor, env):
    spec, folder = on_executor, on_executor.parent
    assert cli("run", spec, env=env).rc == 0  # a clean run, for --from and --param below
    calls(folder)
    clean = last_run(cli, env)
    # at the end: only the last task runs again
    data = restarted(cli, env, failed_run(cli, spec, env, FAIL_END="1"))
    assert calls(folder) == ["last"] and data["outputs"] == {"end": 29}
    assert {data["restart"][t]["action"] for t in ("nums", "sq", "total", "twice")} == {"reused"}
    # in the middle: the failed task and what follows it
    data = restarted(cli, env, failed_run(cli, spec, env, FAIL_DOUBLE="1"))
    assert calls(folder) == ["double", "last"] and data["outputs"] == {"end": 29}
    assert data["restart"]["twice"]["why"].startswith("it ended Failed")
    assert data["restart"]["end"]["why"] == "upstream task twice runs again"
    # in a mapped child: that child alone, and what follows it
    data = restarted(cli, env, failed_run(cli, spec, env, FAIL_AT="1"))
    assert calls(folder) == ["double", "last", "sq 1", "total"] and data["outputs"] == {"end": 29}
    # --from a middle task, and a changed parameter: what follows it, what reads it
    data = restarted(cli, env, clean, "--from", "total")
    assert calls(folder) == ["double", "last", "total"] and data["restart"]["sq"]["action"] == "reused"
    data = restarted(cli, env, clean, "--param", "k=2")
    assert calls(folder) == ["double", "last", "total"] and data["outputs"] == {"end": 57}
    assert data["restart"]["total"]["why"] == "parameter k changed"


SECRET_STEPS = """\
import os
from pathlib import Path


def login(token, password):
    with Path(__file__).with_name("seen.txt").open("a") as f:
        f.write(f"login {token} {password}\\n")
    return "session"


def use(session, token, password):
    with Path(__file__).with_name("seen.txt").open("a") as f:
        f.write(f"use {token} {password}\\n")
    if os.environ.get("FAIL_USE"):
        raise ValueError("use fails")
    return session
"""

SECRET_FLOW = """\
version: 1
name: sec
parameters:
  token: {type: string, secret: true, default: "${{ secrets.API }}"}
  password: {type: string, secret: true}
results: {type: local, directory: store}
tasks:
  login: {run: steps:login, with: {token: "${{ params.token }}", password: "${{ params.password }}"}}
  use:
    run: steps:use
    with: {session: "${{ tasks.login }}", token: "${{ params.token }}", password: "${{ params.password }}"}
"""


def seen(folder: Path) -> list[str]:
    path = folder / "seen.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def test_a_restart_never_takes_the_mask_for_a_secret_parameters_value(cli, tmp_path, env):
    (tmp_path / "steps.py").write_text(SECRET_STEPS)
    spec = tmp_path / "flow.yaml"
    spec.write_text(SECRET_FLOW)
    env = env | {"FLOWSPEC_SECRET_API": "tok-1"}
    first = cli("run", spec, "--param", "password=hunter2", env=env | {"FAIL_USE": "1"})
    assert first.rc == 1, first.output
    assert seen(tmp_path) == ["login tok-1 hunter2", "use tok-1 hunter2"]
    old = last_run(cli, env)
    assert show(cli, env, old)["parameters"] == {"token": "***", "password": "***"}
    # given on the command line: the value was never kept, so it must be given again
    refused = cli("runs", "restart", old, env=env)
    assert refused.rc == 2 and "secret parameter 'password'" in refused.stderr
    assert "--param password=VALUE" in refused.stderr and "Traceback" not in refused.output
    assert seen(tmp_path) == []
    # given again: taken as the same value (what reads it is reused); the secret default is resolved again
    again = cli("runs", "restart", old, "--param", "password=hunter2", env=env)
    assert again.rc == 0, again.output
    assert seen(tmp_path) == ["use tok-1 hunter2"]
    assert show(cli, env, last_run(cli, env))["restart"]["login"]["action"] == "reused"
    assert "hunter2" not in again.output and "tok-1" not in again.output
    # --from the first task: every reader gets the real values, never ***
    again = cli("runs", "restart", old, "--param", "password=hunter2", "--from", "login", env=env)
    assert again.rc == 0, again.output
    assert seen(tmp_path) == ["login tok-1 hunter2", "use tok-1 hunter2"]


def test_a_restart_is_refused_when_its_spec_file_or_registered_version_is_gone(cli, spec, env, tmp_path):
    old = failed_run(cli, spec, env, FAIL_TOTAL="1")
    spec.rename(tmp_path / "moved.yaml")
    gone = cli("runs", "restart", old, env=env)
    assert gone.rc == 1 and f"its spec file {spec} is gone" in gone.stderr and "flowspec run FILE" in gone.stderr
    (tmp_path / "moved.yaml").rename(spec)
    env = env | {"FLOWSPEC_BACKEND": ""}
    assert cli("register", spec, env=env).rc == 0
    made = cli("run", "--name", "rs", env=env)
    assert made.rc == 0, made.output
    run = made.stdout.split()[0]
    assert cli("runs", "cancel", run, env=env).rc == 0
    # the storage of the version it ran is gone (a local storage file deleted)
    stored = json.loads(cli("flows", "list", "--format", "json", env=env).stdout)[0]["storage"]
    Path(stored["path"]).unlink()
    broken = cli("runs", "restart", run, env=env)
    assert broken.rc == 1 and "the storage of rs version 1 cannot be loaded" in broken.stderr
    assert "register the flow again" in broken.stderr
    # the version it ran is deleted (with its runs): the run is gone with it
    assert cli("flows", "delete", "rs", "--version", "1", env=env).rc == 0
    deleted = cli("runs", "restart", run, env=env)
    assert deleted.rc == 1 and f"no flow run has id '{run}'" in deleted.stderr
    assert "Traceback" not in gone.output + broken.output + deleted.output


def test_a_registered_runs_secret_parameter_reaches_its_restart_encrypted(cli, cli_start, tmp_path, env):
    from cryptography.fernet import Fernet

    (tmp_path / "steps.py").write_text(SECRET_STEPS.replace('os.environ.get("FAIL_USE")',
                                                            f'os.path.exists({str(tmp_path / "fail")!r})'))
    spec = tmp_path / "flow.yaml"
    spec.write_text(SECRET_FLOW.replace("directory: store", f"directory: {tmp_path / 'store'}"))
    env = env | {"FLOWSPEC_BACKEND": "", "FLOWSPEC_SECRETS_KEY": Fernet.generate_key().decode(),
                 "FLOWSPEC_SECRET_API": "tok-1"}
    assert cli("register", spec, env=env).rc == 0
    agent = cli_start("agent", "start", "--name", "a1", "--poll-interval", "0.1", env=env)
    try:
        (tmp_path / "fail").write_text("")
        first = cli("run", "--name", "sec", "--param", "password=hunter2", "--watch", env=env, timeout=60)
        assert first.rc == 1, first.output
        assert seen(tmp_path) == ["login tok-1 hunter2", "use tok-1 hunter2"]
        (tmp_path / "fail").unlink()
        old = last_run(cli, env)
        again = cli("runs", "restart", old, "--watch", env=env, timeout=60)
        assert again.rc == 0, again.output
        assert seen(tmp_path) == ["use tok-1 hunter2"]  # the kept encrypted value, the default resolved again
        given = cli("runs", "restart", old, "--param", "password=hunter2", "--from", "login", "--watch", env=env,
                    timeout=60)
        assert given.rc == 0, given.output
        assert seen(tmp_path) == ["login tok-1 hunter2", "use tok-1 hunter2"]
        # a secret default given a value on the command line is kept encrypted too
        other = cli("run", "--name", "sec", "--param", "password=hunter2", "--param", "token=tok-2", "--watch",
                    env=env, timeout=60)
        assert other.rc == 0, other.output
        assert seen(tmp_path) == ["login tok-2 hunter2", "use tok-2 hunter2"]
        from flowspec.backend import open_backend

        with open_backend(str(tmp_path / "home" / "flowspec.db")) as backend:
            stored = [r.parameters for r in backend.list_runs()]
        text = json.dumps(stored)
        assert len(stored) == 4 and not any(value in text for value in ("hunter2", "tok-1", "tok-2"))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)


SUB_CHILD = """\
version: 1
name: sub
parameters:
  x: {type: integer}
tasks:
  sq: {run: steps:sq, with: {x: "${{ params.x }}"}}
outputs:
  sq: ${{ tasks.sq }}
"""

SUB_PARENT = """\
version: 1
name: top
results: {type: local, directory: store}
EXECUTOR
tasks:
  nums: {run: steps:nums, with: {n: 2}}
  per_x: {flow: child.yaml, map: {x: "${{ tasks.nums }}"}}
  end: {run: steps:last, with: {x: 1}, after: [per_x]}
"""


def top_run(cli, env) -> str:
    return json.loads(cli("runs", "list", "--format", "json", "--flow", "top", env=env).stdout)[0]["id"]


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_the_child_runs_of_a_restarts_subflow_task_are_new_runs_not_restarts(cli, tmp_path, env, executor):
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "child.yaml").write_text(SUB_CHILD)
    (tmp_path / "flow.yaml").write_text(SUB_PARENT.replace("EXECUTOR\n", EXECUTORS[executor]))
    assert cli("run", tmp_path / "flow.yaml", env=env | {"FAIL_END": "1"}).rc == 1
    old = top_run(cli, env)
    result = cli("runs", "restart", old, env=env)
    assert result.rc == 0, result.output
    assert "per_x: runs again: a subflow task runs again" in result.output
    new = top_run(cli, env)
    data = show(cli, env, new)
    assert data["restart_of"] == old
    assert sorted(c["task"] for c in data["children"]) == ["per_x[0]", "per_x[1]"]
    for child in data["children"]:
        shown = show(cli, env, child["run"])
        assert (shown["parent_run"], shown["restart_of"], shown["restart"]) == (new, None, None), shown
        assert shown["state"] == "Success" and [t["state"] for t in shown["tasks"]] == ["Success"]
        assert "restart of run" not in cli("runs", "show", child["run"], env=env).stdout
