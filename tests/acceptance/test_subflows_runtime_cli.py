"""`flow: FILE` at run time, through the CLI: a child flow run per element of `map`, in this
run's process, recorded with its parent run and task; the task's result is the child's outputs,
its state follows the child's; nested three deep; cancelling the parent cancels the child."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

STEPS = """\
import os
import time


def load(region, day):
    if region == os.environ.get("FAIL_REGION"):
        raise ValueError(f"no data for {region}")
    if region == os.environ.get("SLOW_REGION"):
        time.sleep(30)
    return f"{region}:{day}"


def collect(parts):
    return [p["value"] for p in parts]
"""

CHILD = """\
version: 1
name: child
parameters:
  region: {type: string}
  day: {type: string, default: "d0"}
executor: {type: local-dask, scheduler: threads, workers: 2}
tasks:
  a: {run: steps:load, with: {region: "${{ params.region }}", day: "${{ params.day }}"}}
outputs:
  value: ${{ tasks.a }}
"""

PARENT = """\
version: 1
name: parent
parameters:
  regions: {type: array, default: [eu, us]}
tasks:
  per_region:
    flow: child.yaml
    map: {region: "${{ params.regions }}"}
    with: {day: "d1"}
  all: {run: steps:collect, with: {parts: "${{ tasks.per_region }}"}}
outputs:
  all: ${{ tasks.all }}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home")}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "child.yaml").write_text(CHILD)
    (tmp_path / "flow.yaml").write_text(PARENT)
    return tmp_path / "flow.yaml"


def runs(cli, env, *extra) -> list[dict]:
    listed = cli("runs", "list", "--format", "json", *extra, env=env)
    assert listed.rc == 0, listed.output
    return json.loads(listed.stdout)


def show(cli, env, run_id: str) -> dict:
    shown = cli("runs", "show", run_id, "--format", "json", env=env)
    assert shown.rc == 0, shown.output
    return json.loads(shown.stdout)


def test_a_mapped_subflow_gives_the_childrens_outputs_and_links_both_ways(cli, spec, env):
    result = cli("run", spec, env=env)
    assert result.rc == 0, result.output
    parent = next(r for r in runs(cli, env) if r["flow"] == "parent")
    data = show(cli, env, parent["id"])
    assert data["outputs"] == {"all": ["eu:d1", "us:d1"]}
    assert [c["task"] for c in data["children"]] == ["per_region[0]", "per_region[1]"]
    children = runs(cli, env, "--parent", parent["id"][:8])
    assert {c["flow"] for c in children} == {"child"} and len(children) == 2
    child = show(cli, env, data["children"][1]["run"])
    assert (child["parent_run"], child["parent_task"]) == (parent["id"], "per_region[1]")
    assert child["parameters"] == {"region": "us", "day": "d1"} and child["outputs"] == {"value": "us:d1"}
    text = cli("runs", "show", parent["id"], env=env).stdout
    assert "child flow runs:" in text and "per_region[1]" in text
    assert f"parent: run {parent['id']}, task per_region[0]" in cli("runs", "show", data["children"][0]["run"],
                                                                     env=env).stdout


def test_a_failing_child_fails_its_task_with_the_child_run_id(cli, spec, env):
    result = cli("run", spec, env=env | {"FAIL_REGION": "us"})
    assert result.rc == 1, result.output
    failed = next(r for r in runs(cli, env) if r["flow"] == "child" and r["state"] == "Failed")
    assert f"child flow run {failed['id']} (child) ended Failed" in result.output
    parent = show(cli, env, next(r["id"] for r in runs(cli, env) if r["flow"] == "parent"))
    states = {t["task"]: t["state"] for t in parent["tasks"] if t["map_index"] is None}
    assert parent["state"] == "Failed" and states["all"] == "TriggerFailed"


def test_subflows_nest_three_deep(cli, spec, env, tmp_path):
    (tmp_path / "middle.yaml").write_text(
        "version: 1\nname: middle\nparameters:\n  regions: {type: array}\ntasks:\n"
        "  inner: {flow: child.yaml, map: {region: \"${{ params.regions }}\"}}\n"
        "outputs:\n  inner: ${{ tasks.inner }}\n")
    (tmp_path / "top.yaml").write_text(
        "version: 1\nname: top\ntasks:\n  mid: {flow: middle.yaml, with: {regions: [a, b]}}\n"
        "outputs:\n  mid: ${{ tasks.mid }}\n")
    result = cli("run", tmp_path / "top.yaml", env=env)
    assert result.rc == 0, result.output
    top = next(r for r in runs(cli, env) if r["flow"] == "top")
    assert show(cli, env, top["id"])["outputs"] == {
        "mid": {"inner": [{"value": "a:d0"}, {"value": "b:d0"}]}}
    middle = runs(cli, env, "--parent", top["id"])
    assert [r["flow"] for r in middle] == ["middle"]
    assert len(runs(cli, env, "--parent", middle[0]["id"])) == 2


def test_cancelling_the_parent_cancels_the_child(cli, cli_start, spec, env):
    proc = cli_start("run", spec, env=env | {"SLOW_REGION": "eu"})
    deadline = time.time() + 20
    while time.time() < deadline and not any(r["flow"] == "child" for r in runs(cli, env)):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    by_flow = {r["flow"]: r["state"] for r in runs(cli, env)}
    assert by_flow == {"parent": "Cancelled", "child": "Cancelled"}, by_flow


def test_a_parent_that_times_out_cancels_its_child(cli, spec, env):
    spec.write_text(PARENT.replace("name: parent\n", "name: parent\ntimeout: 2\n"))
    result = cli("run", spec, env=env | {"SLOW_REGION": "eu"})
    assert result.rc == 1, result.output
    by_flow = {r["flow"]: r["state"] for r in runs(cli, env)}
    assert by_flow == {"parent": "TimedOut", "child": "Cancelled"}, by_flow


REG_PARENT = """\
version: 1
name: regparent
tasks:
  nightly:
    flow: {name: child, project: default}
    with: {region: REGION}
    labels: [prod]
  fire:
    flow: {name: child}
    with: {region: "later"}
    labels: [prod]
    wait: false
outputs:
  nightly: ${{ tasks.nightly }}
  fire: ${{ tasks.fire }}
"""


@pytest.fixture
def agent(cli, cli_start, spec, env):
    """The child registered (labels: dev) and an agent with the label prod."""
    env = env | {"FLOWSPEC_BACKEND": "", "FAIL_REGION": "bad", "SLOW_REGION": "slow"}  # as the agent's runs see them
    assert cli("register", spec.parent / "child.yaml", "--label", "dev", env=env).rc == 0
    proc = cli_start("agent", "start", "--name", "a1", "--label", "prod", "--poll-interval", "0.1", env=env)
    yield env
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def test_a_registered_child_runs_through_an_agent_with_the_tasks_labels(cli, spec, agent):
    (spec.parent / "reg.yaml").write_text(REG_PARENT.replace("REGION", "zz"))
    result = cli("run", spec.parent / "reg.yaml", env=agent, timeout=60)
    assert result.rc == 0, result.output
    parent = next(r for r in runs(cli, agent) if r["flow"] == "regparent")
    data = show(cli, agent, parent["id"])
    assert data["outputs"]["nightly"] == {"value": "zz:d0"}
    children = {c["task"]: c for c in data["children"]}
    assert data["outputs"]["fire"] == children["fire"]["run"]  # wait: false: the child run's id
    child = show(cli, agent, children["nightly"]["run"])
    assert child["labels"] == ["prod"] and child["agent"] == "a1" and child["parent_task"] == "nightly"


def test_a_failing_registered_child_fails_its_task(cli, spec, agent):
    (spec.parent / "reg.yaml").write_text(REG_PARENT.replace("REGION", "bad"))
    result = cli("run", spec.parent / "reg.yaml", env=agent, timeout=60)
    assert result.rc == 1, result.output
    assert "child flow run" in result.output and "(child) ended Failed" in result.output


def test_a_registered_child_of_an_unknown_flow_or_with_a_wrong_parameter_fails_its_task(cli, spec, agent):
    (spec.parent / "reg.yaml").write_text(REG_PARENT.replace("REGION", "zz").replace("name: child, project",
                                                                                     "name: nope, project"))
    result = cli("run", spec.parent / "reg.yaml", env=agent, timeout=60)
    assert result.rc == 1 and "no flow 'nope' is registered in project 'default'" in result.output
    (spec.parent / "reg.yaml").write_text(REG_PARENT.replace("REGION", "zz").replace("region: zz", "regoin: zz"))
    result = cli("run", spec.parent / "reg.yaml", env=agent, timeout=60)
    assert result.rc == 1 and "the parameters of child version 1" in result.output


def test_cancelling_the_parent_cancels_a_registered_child(cli, cli_start, spec, agent):
    (spec.parent / "reg.yaml").write_text(REG_PARENT.replace("REGION", "slow"))
    proc = cli_start("run", spec.parent / "reg.yaml", env=agent)
    deadline = time.time() + 20
    while time.time() < deadline and not any(r["flow"] == "child" and r["state"] == "Running"
                                             for r in runs(cli, agent)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    deadline = time.time() + 20
    while time.time() < deadline:
        by_flow = {r["flow"]: r["state"] for r in runs(cli, agent)}
        if by_flow.get("child") == "Cancelled":
            break
        time.sleep(0.2)
    assert by_flow == {"regparent": "Cancelled", "child": "Cancelled"}, by_flow


def _killed_parent_states(cli, cli_start, env, spec_file: Path, wait_for: str) -> dict:
    """Start `spec_file` with a 1 s heartbeat timeout, SIGKILL it once a `wait_for` child run
    exists, and give back each run's (state, message) once a reader has marked the parent lost."""
    proc = cli_start("run", spec_file, "--heartbeat-timeout", "1", env=env)
    deadline = time.time() + 20
    while time.time() < deadline and not any(r["flow"] == wait_for for r in runs(cli, env)):
        time.sleep(0.2)
    proc.kill()
    out, err = proc.communicate(timeout=30)
    time.sleep(1.5)
    assert runs(cli, env), out + err  # a reader marks the parent lost
    return {r["flow"]: (r["state"], r["message"]) for r in runs(cli, env)}


def test_the_registered_child_of_a_parent_that_died_is_failed_as_lost(cli, cli_start, spec, env):
    env = env | {"FLOWSPEC_BACKEND": ""}
    assert cli("register", spec.parent / "child.yaml", "--label", "nowhere", env=env).rc == 0  # no agent takes it
    (spec.parent / "reg.yaml").write_text(REG_PARENT.replace("REGION", "zz").replace("    labels: [prod]\n", "", 1))
    states = _killed_parent_states(cli, cli_start, env, spec.parent / "reg.yaml", "child")
    parent_id = next(r["id"] for r in runs(cli, env) if r["flow"] == "regparent")
    assert {flow: state for flow, (state, _) in states.items()} == {"regparent": "Failed", "child": "Failed"}, states
    assert states["child"][1].startswith(f"lost: its parent run {parent_id} is lost and nothing waits for this run")


def test_a_file_child_of_a_parent_that_died_is_failed_as_lost_with_it(cli, cli_start, spec, env):
    env = env | {"SLOW_REGION": "eu"}
    states = _killed_parent_states(cli, cli_start, env, spec, "child")
    parent_id = next(r["id"] for r in runs(cli, env) if r["flow"] == "parent")
    assert {flow: state for flow, (state, _) in states.items()} == {"parent": "Failed", "child": "Failed"}, states
    assert states["child"][1].startswith(f"lost with its parent run {parent_id}: no heartbeat for 1s")


DEADLOCK_PARENT = """\
version: 1
name: dparent
environment: {type: local, labels: [prod]}
tasks:
  nightly:
    flow: {name: child}
    with: {region: zz}
    labels: [prod]
outputs:
  nightly: ${{ tasks.nightly }}
"""


def _wait_for(cli, env, test, what: str, timeout: float = 30) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        listed = runs(cli, env)
        if test(listed):
            return listed
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:g}s: {listed}")


def test_a_registered_child_that_only_its_parents_slot_could_start_is_reported(cli, cli_start, spec, env):
    env = env | {"FLOWSPEC_BACKEND": ""}
    (spec.parent / "dparent.yaml").write_text(DEADLOCK_PARENT)
    for path in ("child.yaml", "dparent.yaml"):
        assert cli("register", spec.parent / path, env=env).rc == 0
    assert cli("concurrency-limit", "set", "prod", "1", env=env).rc == 0
    plan = cli("plan", spec.parent / "dparent.yaml", "--format", "json", env=env)
    assert plan.rc == 0, plan.output
    assert any("task 'nightly': its child run needs a slot of label 'prod'" in w
               for w in json.loads(plan.stdout)["warnings"]), plan.stdout
    proc = cli_start("agent", "start", "--name", "a1", "--label", "prod", "--poll-interval", "0.1", env=env)
    try:
        assert cli("run", "--name", "dparent", env=env).rc == 0
        listed = _wait_for(cli, env, lambda rs: any(r["flow"] == "child" and r["state"] == "Queued" for r in rs),
                           "the child run Queued")
        child = next(r["id"] for r in listed if r["flow"] == "child")
        parent = next(r["id"] for r in listed if r["flow"] == "dparent")
        reason = show(cli, env, child)["waiting_reason"]
        assert "label 'prod' is at its limit of 1 (held by runs " + parent in reason, reason
        assert "all of them this run's own ancestors" in reason and "concurrency-limit set prod 2" in reason
        assert "all of them this run's own ancestors" in cli("runs", "show", child, env=env).stdout
        logs = cli("runs", "logs", parent, env=env).output
        assert f"child flow run {child} cannot start while this run waits for it (a deadlock)" in logs, logs
        time.sleep(1)  # the agent keeps polling: the child stays Queued, with the same reason
        assert {r["flow"]: r["state"] for r in runs(cli, env)} == {"dparent": "Running", "child": "Queued"}
        assert cli("concurrency-limit", "set", "prod", "2", env=env).rc == 0  # the way out the reason gives
        both = {"dparent": "Success", "child": "Success"}
        _wait_for(cli, env, lambda rs: {r["flow"]: r["state"] for r in rs} == both,
                  "both runs succeeded once the limit was raised", timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


CONCURRENT_CHILD = """\
version: 1
name: child
parameters:
  region: {type: string}
environment: {type: local, env: {GREETING: "hello"}}
tasks:
  a: {run: steps:pause, with: {region: "${{ params.region }}"}}
outputs:
  value: ${{ tasks.a }}
"""

CONCURRENT_PARENT = """\
version: 1
name: parent
executor: {type: local-dask, scheduler: SCHEDULER, workers: 4}
tasks:
  per_region:
    flow: child.yaml
    map: {region: [r0, r1, r2, r3]}
outputs:
  all: ${{ tasks.per_region }}
"""

PAUSE = """\
import os
import time


def pause(region):
    print(f"working on {region}")
    time.sleep(float(os.environ.get("PAUSE_S", "1")))
    return f"{region}:{os.environ.get('GREETING')}"
"""


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_mapped_file_children_run_at_once_on_a_local_dask_parent(cli, tmp_path, env, scheduler):
    (tmp_path / "steps.py").write_text(PAUSE)
    (tmp_path / "child.yaml").write_text(CONCURRENT_CHILD)
    (tmp_path / "flow.yaml").write_text(CONCURRENT_PARENT.replace("SCHEDULER", scheduler))
    result = cli("run", tmp_path / "flow.yaml", env=env)
    assert result.rc == 0, result.output
    listed = runs(cli, env)
    parent = next(r for r in listed if r["flow"] == "parent")
    assert show(cli, env, parent["id"])["outputs"] == {"all": [{"value": f"r{i}:hello"} for i in range(4)]}
    children = [r for r in listed if r["flow"] == "child"]
    assert len(children) == 4
    # each child sleeps 1 s: run one after another, the last would start after the first ended
    assert max(c["created"] for c in children) < min(c["updated"] for c in children), children
    for child in children:  # each child's log holds its own lines, not its siblings'
        logs = cli("runs", "logs", child["id"], env=env).output
        mine = child["parameters"]["region"]
        assert f"working on {mine}" in logs and sum(f"working on r{i}" in logs for i in range(4)) == 1, logs
    assert "GREETING" not in cli("run", tmp_path / "flow.yaml", env=env | {"PAUSE_S": "0"}).output


def test_cancelling_a_parent_cancels_its_children_running_at_once(cli, cli_start, tmp_path, env):
    (tmp_path / "steps.py").write_text(PAUSE)
    (tmp_path / "child.yaml").write_text(CONCURRENT_CHILD.replace("type: local, env", "type: local, env").replace(
        "tasks:\n", "executor: {type: local-dask, workers: 2}\ntasks:\n"))
    (tmp_path / "flow.yaml").write_text(CONCURRENT_PARENT.replace("SCHEDULER", "threads"))
    proc = cli_start("run", tmp_path / "flow.yaml", env=env | {"PAUSE_S": "30"})
    _wait_for(cli, env, lambda rs: sum(r["flow"] == "child" and r["state"] == "Running" for r in rs) == 4,
              "four children running")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    states = sorted((r["flow"], r["state"]) for r in runs(cli, env))
    assert states == [("child", "Cancelled")] * 4 + [("parent", "Cancelled")], states


def _folder_with_children(root: Path) -> Path:
    """A parent spec with a child in a sub-folder and one beside the parent's folder, each with its
    own `steps` module (the same module name as the parent's)."""
    top, shared = root / "src" / "top", root / "src" / "shared"
    (top / "regions").mkdir(parents=True)
    shared.mkdir()
    (top / "steps.py").write_text("def collect(parts):\n    return [p['value'] for p in parts]\n")
    (top / "regions" / "steps.py").write_text("import helper\n\n\ndef load(region):\n    return helper.tag(region)\n")
    (top / "regions" / "helper.py").write_text("def tag(region):\n    return 'loaded ' + region\n")
    (shared / "steps.py").write_text("def stamp(text):\n    return text + '!'\n")
    (top / "regions" / "flow.yaml").write_text(
        "version: 1\nname: region\nparameters:\n  region: {type: string}\ntasks:\n"
        "  a: {run: steps:load, with: {region: \"${{ params.region }}\"}}\n"
        "  b: {flow: ../../shared/stamp.yaml, with: {text: \"${{ tasks.a }}\"}}\n"
        "outputs:\n  value: ${{ tasks.b.text }}\n")
    (shared / "stamp.yaml").write_text("version: 1\nname: stamp\nparameters:\n  text: {type: string}\ntasks:\n"
                                       "  s: {run: steps:stamp, with: {text: \"${{ params.text }}\"}}\n"
                                       "outputs:\n  text: ${{ tasks.s }}\n")
    (top / "flow.yaml").write_text(
        "version: 1\nname: top\nexecutor: {type: local-dask, workers: 2}\ntasks:\n"
        "  per_region: {flow: regions, map: {region: [eu, us]}}\n"
        "  all: {run: steps:collect, with: {parts: \"${{ tasks.per_region }}\"}}\noutputs:\n  all: ${{ tasks.all }}\n")
    return top / "flow.yaml"


def test_a_registered_flow_runs_its_file_children_without_the_registering_machines_files(cli, cli_start, tmp_path,
                                                                                          env):
    env = env | {"FLOWSPEC_BACKEND": ""}
    spec_file = _folder_with_children(tmp_path)
    registered = cli("register", spec_file, "--format", "json", env=env)
    assert registered.rc == 0, registered.output
    (tmp_path / "src").rename(tmp_path / "gone")  # the files are not where they were registered from
    elsewhere = tmp_path / "agent-cwd"
    elsewhere.mkdir()
    proc = cli_start("agent", "start", "--name", "a1", "--poll-interval", "0.1", cwd=elsewhere, env=env)
    try:
        done = cli("run", "--name", "top", "--watch", cwd=elsewhere, env=env, timeout=60)
        assert done.rc == 0, done.output
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    top = next(r for r in runs(cli, env) if r["flow"] == "top")
    assert show(cli, env, top["id"])["outputs"] == {"all": ["loaded eu!", "loaded us!"]}
    assert sorted(r["flow"] for r in runs(cli, env)) == ["region", "region", "stamp", "stamp", "top"]


def test_a_change_in_a_child_spec_or_its_code_is_a_new_version(cli, tmp_path, env):
    spec_file = _folder_with_children(tmp_path)

    def version() -> int:
        done = cli("register", spec_file, "--format", "json", env=env)
        assert done.rc == 0, done.output
        return json.loads(done.stdout)["version"]

    assert version() == 1 and version() == 1
    shared = tmp_path / "src" / "shared"
    (shared / "steps.py").write_text("def stamp(text):\n    return text + '?'\n")
    assert version() == 2
    (shared / "stamp.yaml").write_text((shared / "stamp.yaml").read_text().replace("name: stamp", "name: stamp2"))
    assert version() == 3


def test_a_child_whose_code_does_not_import_fails_its_task_saying_where(cli, spec, env, tmp_path):
    (tmp_path / "child.yaml").write_text(CHILD.replace("steps:load", "steps:nope"))
    result = cli("run", spec, env=env)
    assert result.rc == 1, result.output
    assert (f"the code of child flow child cannot be imported: {tmp_path / 'child.yaml'}:8:12: error: tasks.a.run:"
            " 'steps' has no attribute 'nope'") in result.output, result.output
    assert "SpecError" not in result.output


NAP = """\
import os
import time


def nap(region):
    time.sleep(20 if region in os.environ.get("SLOW", "").split(",") else 0)
    return region
"""

TIMED_CHILD = """\
version: 1
name: child
parameters:
  region: {type: string}
timeout: 1
EXECUTOR
tasks:
  a: {run: steps:nap, with: {region: "${{ params.region }}"}}
outputs:
  value: ${{ tasks.a }}
"""


def _timed_children(cli, spec_file: Path, env: dict) -> tuple[dict, dict, str]:
    """Run `spec_file` with the children r1 and r3 slow: what `runs list --parent` and `runs show`
    say of each child (by region), the parent's per_region task, and the run's output."""
    result = cli("run", spec_file, env=env | {"SLOW": "r1,r3"})
    assert result.rc == 1, result.output
    parent = runs(cli, env, "--flow", "parent")[0]
    assert parent["updated"] - parent["created"] < 15, parent  # not the 20 s the slow tasks sleep
    children = {}
    for child in runs(cli, env, "--parent", parent["id"]):
        data = show(cli, env, child["id"])
        children[child["parameters"]["region"]] = (
            child["state"], child["message"], data["state"], data["message"], data["exit_code"],
            [(t["task"], t["state"], t["message"]) for t in data["tasks"]])
    task = next(t for t in show(cli, env, parent["id"])["tasks"] if t["task"] == "per_region")
    return children, {k: task[k] for k in ("state", "children")}, result.output


@pytest.mark.parametrize("child_executor", ["", "executor: {type: local-dask, workers: 2}\n"],
                         ids=["local-child", "local-dask-child"])
def test_a_child_on_a_thread_times_out_as_one_on_the_runners_thread(cli, tmp_path, env, child_executor):
    (tmp_path / "steps.py").write_text(NAP)
    (tmp_path / "child.yaml").write_text(TIMED_CHILD.replace("EXECUTOR\n", child_executor))
    concurrent = CONCURRENT_PARENT.replace("SCHEDULER", "threads")
    (tmp_path / "threads.yaml").write_text(concurrent)
    (tmp_path / "one-by-one.yaml").write_text(concurrent.replace("executor: {type: local-dask, scheduler: threads,"
                                                                 " workers: 4}\n", ""))
    on_threads = _timed_children(cli, tmp_path / "threads.yaml", env)
    one_by_one = _timed_children(cli, tmp_path / "one-by-one.yaml", {"FLOWSPEC_HOME": str(tmp_path / "home2")})
    children, task, output = on_threads
    timed_out = ("TimedOut", "the flow run exceeded its timeout of 1s", "TimedOut",
                 "the flow run exceeded its timeout of 1s", 1, [("a", "Cancelled", "the flow run timed out")])
    assert children["r1"] == children["r3"] == timed_out, children
    assert children["r0"][0] == children["r2"][0] == "Success", children
    assert task == {"state": "Failed", "children": {"Failed": 2, "Success": 2}}, task
    assert "ended TimedOut: the flow run exceeded its timeout of 1s" in output
    assert "not enforced" not in output
    assert on_threads[:2] == one_by_one[:2]
