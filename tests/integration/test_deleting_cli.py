"""`flowspec runs delete`, `flowspec flows delete` and `flowspec agent stop`, through the CLI, on a
SQLite file and on a real PostgreSQL server; and how a run that ends early ends its task runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowspec.backend import open_backend

pytestmark = pytest.mark.integration

SPEC = """\
version: 1
name: greet
project: {project}
description: {description}
tasks:
  hello: {{run: "steps:hello"}}
"""
STEPS = """\
import time
from flowspec import context

def hello() -> None:
    context.logger.info("hello")

def nap(seconds: float) -> None:
    time.sleep(seconds)
"""
NAPPER = "version: 1\nname: napper\ntasks:\n  nap: {run: 'steps:nap', with: {seconds: 60}}\n"


class Place:
    """A flow folder and a backend; `cli(...)` runs `python -m flowspec` against that backend."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.env = {**os.environ, "FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": url}
        self.env.pop("PYTHONWARNINGS", None)
        self.spec = root / "greet" / "flow.yaml"
        self.spec.parent.mkdir()
        (self.spec.parent / "steps.py").write_text(STEPS)
        self.write()

    def write(self, project: str = "demo", description: str = "one") -> None:
        self.spec.write_text(SPEC.format(project=project, description=description))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def json(self, *args: str):
        done = self.cli(*args, "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def local_run(self) -> str:
        return self.json("run", self.spec)["run_id"]

    def rows(self, table: str, run_ids: list[str]) -> int:
        with open_backend(self.url) as backend, backend._transaction(write=False) as tx:
            marks = ", ".join("?" for _ in run_ids)
            return tx.one(f"SELECT COUNT(*) FROM {table} WHERE run_id IN ({marks})", *run_ids)[0]


@pytest.fixture
def place(tmp_path: Path, backend_url: str) -> Place:
    return Place(tmp_path, backend_url)


def test_runs_delete_removes_finished_runs_with_their_records_and_refuses_active_ones(place: Place) -> None:
    assert place.cli("register", place.spec).returncode == 0
    waiting = place.cli("run", "--name", "greet").stdout.strip()  # Scheduled: no agent
    first, second = place.local_run(), place.local_run()
    assert all(place.rows(table, [first, second]) for table in ("logs", "task_states", "run_states", "run_tasks"))

    refused = place.cli("runs", "delete", waiting)
    assert refused.returncode == 1, refused.stderr
    assert f"cannot delete a run that has not ended: {waiting} (Scheduled)" in refused.stderr
    assert f"hint: cancel it first (flowspec runs cancel {waiting})" in refused.stderr
    both = place.cli("runs", "delete", first, waiting, "--format", "json")  # all or nothing
    assert both.returncode == 1 and "nothing was deleted" in json.loads(both.stdout)["error"]
    assert place.json("runs", "show", first)["state"] == "Success"

    unknown = place.cli("runs", "delete", first, "feedbeef")
    assert unknown.returncode == 1 and "no flow run has id 'feedbeef'" in unknown.stderr, unknown.stderr
    assert place.cli("runs", "delete", "ab").returncode == 2  # too short a prefix: a usage error
    assert place.cli("runs", "delete").returncode == 2

    deleted = place.json("runs", "delete", first[:8], second, first)
    assert deleted == {"deleted": {"runs": [first, second]},
                       "freed": {"results": 0, "objects": 0, "bytes": 0, "errors": []}}  # no kept results
    assert place.cli("runs", "show", first).returncode == 1
    assert [r["id"] for r in place.json("runs", "list")] == [waiting]
    assert not any(place.rows(table, [first, second]) for table in ("logs", "task_states", "run_states", "run_tasks"))

    assert place.cli("runs", "cancel", waiting).returncode == 0
    done = place.cli("runs", "delete", waiting)
    assert (done.returncode, done.stdout) == (0, f"run {waiting}: deleted\n"), done.stderr
    assert place.json("runs", "list") == []


def test_flows_delete_removes_versions_and_their_runs_and_refuses_while_one_is_active(place: Place) -> None:
    assert place.cli("register", place.spec).returncode == 0
    place.write(description="two")
    assert place.cli("register", place.spec).returncode == 0
    waiting = place.cli("run", "--name", "greet").stdout.strip()  # of version 2
    local = place.local_run()  # a local run of a spec named greet: not a run of the registered flow

    refused = place.cli("flows", "delete", "greet")
    assert refused.returncode == 1
    assert f"cannot delete flow 'greet': it has runs that have not ended: {waiting} (Scheduled)" in refused.stderr
    assert [(f["name"], f["version"]) for f in place.json("flows", "list")] == [("greet", 2)]

    one = place.json("flows", "delete", "greet", "--version", "1")
    assert one == {"deleted": {"project": "demo", "flow": "greet", "versions": [1], "runs": []},
                   "freed": {"results": 0, "objects": 0, "bytes": 0, "errors": []}}
    assert [(f["name"], f["version"]) for f in place.json("flows", "list")] == [("greet", 2)]
    gone = place.cli("flows", "delete", "greet", "--version", "1")
    assert gone.returncode == 1 and "no flow named 'greet' with version 1 is registered" in gone.stderr

    assert place.cli("runs", "cancel", waiting).returncode == 0
    done = place.cli("flows", "delete", "greet", "--project", "demo")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "flow 'greet' (project demo): deleted version 2 and 1 run\n"
    assert place.json("flows", "list") == []
    assert [r["id"] for r in place.json("runs", "list")] == [local]
    assert place.cli("runs", "show", waiting).returncode == 1


def test_flows_delete_names_the_project_when_two_have_the_flow_and_checks_its_flags(place: Place) -> None:
    for project in ("demo", "other"):
        place.write(project=project)
        assert place.cli("register", place.spec).returncode == 0
    both = place.cli("flows", "delete", "greet")
    assert both.returncode == 2 and "exists in several projects: demo, other" in both.stderr
    assert "--project" in both.stderr
    assert place.cli("flows", "delete", "greet", "--version", "x").returncode == 2
    assert place.cli("flows", "delete").returncode == 2
    assert place.json("flows", "delete", "greet", "--project", "other")["deleted"]["versions"] == [1]
    assert [f["project"] for f in place.json("flows", "list")] == ["demo"]


def _agent(place: Place, name: str) -> subprocess.Popen:
    log = open(place.root / f"agent-{name}.log", "ab")
    with log:
        return subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--name", name,
                                 "--poll-interval", "0.1"], env=place.env, stdout=log, stderr=subprocess.STDOUT)


def _wait(what, timeout: float = 30.0, about=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up after {timeout:g}s; {about()}")


def test_agent_stop_stops_a_running_agent_which_cancels_its_runs(place: Place) -> None:
    napper = place.root / "greet" / "napper.yaml"
    napper.write_text(NAPPER)
    assert place.cli("register", napper).returncode == 0
    agent = _agent(place, "a1")
    try:
        run_id = place.cli("run", "--name", "napper").stdout.strip()
        log = place.root / "agent-a1.log"
        _wait(lambda: place.json("runs", "show", run_id)["state"] == "Running", about=log.read_text)

        asked = place.json("agent", "stop", "a1")
        assert (asked["agent"], asked["status"], asked["already_asked"]) == ("a1", "stopping", False)
        assert agent.wait(30) == 0, log.read_text()
        shown = place.json("runs", "show", run_id)
        assert shown["state"] == "Cancelled", shown
        [listed] = place.json("agents", "list")
        assert (listed["name"], listed["status"]) == ("a1", "stopped")
        assert "asked to stop (flowspec agent stop)" in log.read_text()

        again = place.cli("agent", "stop", "a1")
        assert again.returncode == 1 and "agent a1 already stopped" in again.stderr
        unknown = place.cli("agent", "stop", "nobody")
        assert unknown.returncode == 1 and "no agent named 'nobody' has been seen" in unknown.stderr
        assert "agents seen: a1" in unknown.stderr
        assert place.cli("agent", "stop").returncode == 2

        agent = _agent(place, "a1")  # a new agent of that name is not stopped by the old request
        _wait(lambda: place.json("agents", "list")[0]["status"] == "alive")
        time.sleep(1.0)
        assert agent.poll() is None and place.json("agents", "list")[0]["status"] == "alive"
        said = place.cli("agent", "stop", "a1")
        assert (said.returncode, said.stdout) == (
            0, "agent a1: asked to stop; at its next poll it cancels its flow runs and stops\n")
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_a_run_that_ends_early_ends_its_task_runs_and_lists_every_task(backend) -> None:
    """Cancelled: the unfinished task runs Cancelled; lost: Failed, saying so; tasks never
    started are listed Cancelled, "not run". Success leaves the rows as they are."""
    def started(state: str = "Running") -> str:
        run = backend.create_flow_run(None, {}, (), "Running", flow_name="f", heartbeat_timeout=0.2)
        backend.add_run_tasks(run.id, ["extract", "transform", "load"])
        backend.add_task_states(run.id, [("extract", None, "Success", 1, time.time(), None),
                                         ("transform", 0, "Success", 1, time.time(), None),
                                         ("transform", 1, state, 1, time.time(), None),
                                         ("transform", 2, "Pending", 0, time.time(), None)])
        return run.id

    def latest(run_id: str) -> dict:
        return {(s.task, s.map_index): (s.state, s.message) for s in backend.latest_task_states(run_id)}

    cancelled = started()
    assert backend.set_run_state(cancelled, "Cancelled", "interrupted by the user")
    assert latest(cancelled) == {
        ("extract", None): ("Success", None), ("transform", 0): ("Success", None),
        ("transform", 1): ("Cancelled", "not finished: the flow run ended Cancelled (interrupted by the user)"),
        ("transform", 2): ("Cancelled", "not finished: the flow run ended Cancelled (interrupted by the user)"),
        ("load", None): ("Cancelled", "not run: the flow run ended Cancelled (interrupted by the user)")}
    assert [t for t, _, _ in backend.task_summary(cancelled)] == ["extract", "transform", "load"]

    lost = started()
    time.sleep(0.3)
    [(_, message)] = backend.mark_lost_runs("a test", grace_s=0)
    states = latest(lost)
    assert states[("transform", 1)] == ("Failed", f"not finished: the flow run ended Failed (lost: {message})")
    assert states[("load", None)] == ("Cancelled", f"not run: the flow run ended Failed (lost: {message})")
    assert states[("extract", None)] == ("Success", None)

    fine = started("Success")
    assert backend.set_run_state(fine, "Success")
    assert ("load", None) not in latest(fine) and latest(fine)[("transform", 2)][0] == "Pending"


@pytest.mark.parametrize("page", ["runs delete", "flows delete", "agent stop", "results prune"])
def test_the_new_commands_have_help_with_examples_and_exit_codes(page: str, tmp_path: Path) -> None:
    done = Place(tmp_path, f"sqlite://{tmp_path / 'flowspec.db'}").cli(*page.split(), "--help")
    assert done.returncode == 0
    assert f"  flowspec {page} " in done.stdout.split("examples:\n", 1)[1]
    assert "--backend URL" in done.stdout and "--format {text,json}" in done.stdout
    assert "Exit 0" in done.stdout and "FLOWSPEC_BACKEND" in done.stdout
