"""A run's task table, read from the counts the backend keeps as task states are written: the
UI's JSON twin of a run and `flowspec runs show --format json` count each mapped task's
children as a GROUP BY over their latest states does, after retries, failures, a lost run, a
cancelled run and a restart; a deleted run's counts go with it."""
from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

from tests.acceptance.conftest import run_cli, start_cli
from tests.ui.conftest import start_ui
from tests.ui.test_ui import fetch, server

STEPS = """\
import time
from pathlib import Path


def make(n):
    return list(range(n))


def square(x):
    tried = Path(__file__).with_name(f"tried-{x}")
    first = not tried.exists()
    tried.touch()
    if x == 5 or (x % 3 == 0 and first):
        raise ValueError(f"boom at {x}")
    return x * x


def total(values):
    return sum(values)


def slow(x):
    if x >= 2:
        time.sleep(60)
    return x
"""
COUNTED = """\
version: 1
name: counted
results: {type: local, directory: store}
tasks:
  make: {run: steps:make, with: {n: 12}}
  square: {run: steps:square, map: {x: "${{ tasks.make }}"}, retries: 1}
  total: {run: steps:total, with: {values: "${{ tasks.square }}"}}
"""
STUCK = """\
version: 1
name: stuck
tasks:
  first: {run: steps:make, with: {n: 4}}
  transform: {run: steps:slow, map: {x: "${{ tasks.first }}"}}
  load: {run: steps:total, with: {values: "${{ tasks.transform }}"}}
"""


def grouped(db: Path, run_id: str) -> dict:
    """Per mapped task, its children by latest state: a GROUP BY over the task states."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT t.task, t.state, COUNT(*) FROM task_states t JOIN (SELECT MAX(id) AS id FROM"
                            " task_states WHERE run_id = ? AND map_index IS NOT NULL GROUP BY task, map_index) l"
                            " ON t.id = l.id GROUP BY t.task, t.state", (run_id,)).fetchall()
    conn.close()
    out: dict = {}
    for task, state, n in rows:
        out.setdefault(task, {})[state] = n
    return out


def agree(ui, env: dict, db: Path, run_id: str, live: bool = False) -> dict:
    """`runs show --format json` of the run, once it equals the UI's JSON twin and its children
    counts equal the GROUP BY. `live`: the run's process beats while the two are read, so its
    heartbeat is compared as a time, not a value."""
    done = run_cli("runs", "show", run_id, "--format", "json", env=env)
    assert done.rc == 0, done.output
    shown = json.loads(done.stdout)
    assert {t["task"]: t["children"] for t in shown["tasks"] if t.get("children")} == grouped(db, run_id)
    status, body, _ = fetch(f"{ui.url}/runs/{run_id}.json")
    twin = json.loads(body)
    if live:
        beats = (twin.pop("heartbeat"), shown.pop("heartbeat"))
        assert all(isinstance(beat, float) for beat in beats), beats
    assert status == 200 and twin == shown
    return shown


def wait_for(what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout}s in vain")


def running_child(env: dict, flow: str) -> str | None:
    """The id of the run of `flow` once one of its children is recorded Running."""
    runs = json.loads(run_cli("runs", "list", "--format", "json", env=env).stdout)
    for run in (r for r in runs if r["flow"] == flow and r["state"] == "Running"):
        shown = json.loads(run_cli("runs", "show", run["id"], "--children", "--format", "json", env=env).stdout)
        if any(t["task"] == "transform" and t["state"] == "Running" for t in shown["tasks"]):
            return run["id"]
    return None


@server
def test_task_tables_count_children_as_a_group_by_does(tmp_path: Path) -> None:
    home, db = tmp_path / "home", tmp_path / "home" / "flowspec.db"
    home.mkdir()
    env = {"FLOWSPEC_HOME": str(home), "FLOWSPEC_BACKEND": ""}
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "counted.yaml").write_text(COUNTED)
    (tmp_path / "stuck.yaml").write_text(STUCK)
    assert run_cli("runs", "list", env=env).rc == 0  # the backend, before the UI opens it
    ui = start_ui(str(db), home)
    try:
        # retries (3, 6, 9 fail once), a child that fails twice (5)
        assert run_cli("run", tmp_path / "counted.yaml", env=env, timeout=60).rc == 1
        failed = json.loads(run_cli("runs", "list", "--format", "json", env=env).stdout)[0]["id"]
        shown = agree(ui, env, db, failed)
        square = next(t for t in shown["tasks"] if t["task"] == "square")
        assert square["children"] == {"Failed": 1, "Success": 11} and square["attempt"] == 17
        # a restart reuses what succeeded and runs the rest
        assert run_cli("runs", "restart", failed, env=env, timeout=60).rc == 1
        restart = json.loads(run_cli("runs", "list", "--format", "json", env=env).stdout)[0]["id"]
        assert agree(ui, env, db, restart)["restart_of"] == failed
        # a run whose process is killed is lost: its running children end Failed
        proc = start_cli("run", tmp_path / "stuck.yaml", "--heartbeat-timeout", "1", env=env)
        lost = wait_for(lambda: running_child(env, "stuck"))
        agree(ui, env, db, lost, live=True)  # a live run, counted as it goes
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        time.sleep(1.2)
        assert run_cli("runs", "show", lost, env=env).rc == 0  # marks it lost
        transform = next(t for t in agree(ui, env, db, lost)["tasks"] if t["task"] == "transform")
        assert transform["children"]["Failed"] >= 1 and set(transform["children"]) == {"Failed", "Success"}
        # a cancelled run's children end Cancelled
        proc = start_cli("run", tmp_path / "stuck.yaml", env=env)
        cancelled = wait_for(lambda: running_child(env, "stuck"))
        assert run_cli("runs", "cancel", cancelled, env=env).rc == 0
        proc.communicate(timeout=30)
        tasks = {t["task"]: t for t in agree(ui, env, db, cancelled)["tasks"]}
        assert tasks["transform"]["children"]["Cancelled"] >= 1
        assert set(tasks["transform"]["children"]) == {"Cancelled", "Success"}
        assert tasks["load"]["state"] == "Cancelled"
        # a deleted run's counts go with it
        assert run_cli("runs", "delete", failed, cancelled, env=env).rc == 0
        with sqlite3.connect(db) as conn:
            left = conn.execute("SELECT DISTINCT run_id FROM task_counts UNION SELECT run_id FROM task_count_marks")
            assert sorted(r[0] for r in left) == sorted([restart, lost])
        conn.close()
        assert fetch(f"{ui.url}/runs/{failed}.json")[0] == 404
    finally:
        ui.stop()
