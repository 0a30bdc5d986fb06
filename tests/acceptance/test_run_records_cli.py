"""What the backend keeps of a run, as `runs show`, `runs logs`, `runs list` and `runs cancel` tell
it: runs cut short by Ctrl-C or `kill -9` end every task, credentials are masked, and the commands
say what they do. Each test has its own flowspec home and SQLite backend."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

STEPS = """\
import os, time
from flowspec import context

def quick() -> None:
    context.logger.info("quick")

def slow(item: int) -> None:
    context.logger.info("slow %d started", item)
    time.sleep(60)

def connect(db_password: str, out: str) -> None:
    context.logger.info("connecting with password %s", db_password)
    with open(out, "w") as fh:  # what the task was given
        fh.write(db_password)
"""
STALE = """\
version: 1
name: stale
tasks:
  first: {run: "steps:quick"}
  transform: {run: "steps:slow", map: {item: [1, 2, 3]}, after: [first]}
  load: {run: "steps:quick", after: [transform]}
"""
SECRET = """\
version: 1
name: secret
parameters:
  db_password: {type: string}
  out: {type: string}
tasks:
  connect: {run: "steps:connect", with: {db_password: "${{ params.db_password }}", out: "${{ params.out }}"}}
"""


class Home:
    """A flow folder and a private flowspec home (its default SQLite backend)."""

    def __init__(self, cli, cli_start, root: Path) -> None:
        self._cli, self._start, self.root = cli, cli_start, root
        self.env = {"FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": ""}
        (root / "steps.py").write_text(STEPS)

    def spec(self, name: str, text: str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        return path

    def cli(self, *args):
        return self._cli(*args, env=self.env)

    def start(self, *args):
        return self._start(*args, env=self.env)

    def json(self, *args):
        done = self.cli(*args, "--format", "json")
        assert done.rc == 0, done.output
        return json.loads(done.stdout)

    def wait_running_child(self, timeout: float = 30.0) -> str:
        """The id of the one run, once a child of `transform` is recorded Running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.json("runs", "list")
            if runs:
                tasks = self.json("runs", "show", runs[0]["id"], "--children")["tasks"]
                if any(t["task"] == "transform" and t["state"] == "Running" for t in tasks):
                    return runs[0]["id"]
            time.sleep(0.2)
        raise AssertionError("no child of transform was recorded Running")


@pytest.fixture
def home(cli, cli_start, tmp_path: Path) -> Home:
    return Home(cli, cli_start, tmp_path)


def _tasks(home: Home, run_id: str, *flags: str) -> dict:
    return {(t["task"], t["map_index"]): (t["state"], t["message"])
            for t in home.json("runs", "show", run_id, *flags)["tasks"]}


# -- a run cut short ends every task run, and lists every task --------------------------------------
def test_after_ctrl_c_no_task_run_is_left_running(home: Home) -> None:
    proc = home.start("run", home.spec("stale", STALE), "--format", "json")
    run_id = home.wait_running_child()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    children = _tasks(home, run_id, "--children")
    assert not [key for key, (state, _) in children.items() if state not in ("Success", "Cancelled")], children
    [(running, (_, message))] = [(k, v) for k, v in children.items() if k[0] == "transform" and k[1] is not None
                                 and "not finished" in (v[1] or "")]
    assert message == "not finished: the flow run ended Cancelled (interrupted by the user)"
    summary = _tasks(home, run_id)
    assert [k[0] for k in summary] == ["first", "transform", "load"]
    assert summary[("transform", None)][0] == summary[("load", None)][0] == "Cancelled"
    shown = home.cli("runs", "show", run_id)
    assert "Running" not in shown.stdout.split("\ntasks:")[1], shown.stdout


def test_after_kill_9_the_lost_run_ends_its_task_runs_failed_and_lists_tasks_it_never_reached(home: Home) -> None:
    proc = home.start("run", home.spec("stale", STALE), "--heartbeat-timeout", "1", "--format", "json")
    run_id = home.wait_running_child()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(1.2)
    shown = home.json("runs", "show", run_id)  # marks it lost
    assert shown["state"] == "Failed"
    lost = shown["message"]
    summary = {t["task"]: (t["state"], t["message"]) for t in shown["tasks"]}
    assert list(summary) == ["first", "transform", "load"]
    assert summary["first"] == ("Success", None)
    assert summary["transform"][0] == "Failed"
    assert summary["load"] == ("Cancelled", f"not run: the flow run ended Failed (lost: {lost})")
    children = _tasks(home, run_id, "--children")
    failed = [v for k, v in children.items() if k[0] == "transform" and v[0] == "Failed"]
    assert failed == [("Failed", f"not finished: the flow run ended Failed (lost: {lost})")]
    assert all(state in ("Success", "Failed", "Cancelled") for state, _ in children.values()), children
    assert "Running" not in home.cli("runs", "show", run_id).stdout.split("\ntasks:")[1]


# -- credentials are masked -------------------------------------------------------------------------
def test_a_password_parameter_is_masked_in_runs_show_list_history_and_logs(home: Home) -> None:
    out = home.root / "given.txt"
    done = home.cli("run", home.spec("secret", SECRET), "--param", "db_password=hunter2", "--param", f"out={out}")
    assert done.rc == 0, done.output
    assert out.read_text() == "hunter2"  # the task got the real value
    assert "hunter2" not in done.output and "connecting with password ***" in done.stderr  # the live log too
    [listed] = home.json("runs", "list")
    run_id = listed["id"]
    outputs = [home.cli("runs", "show", run_id).stdout, home.cli("runs", "show", run_id, "--format", "json").stdout,
               home.cli("runs", "logs", run_id).stdout, home.cli("runs", "logs", run_id, "--format", "json").stdout,
               home.cli("runs", "list", "--format", "json").stdout]
    for text in outputs:
        assert "hunter2" not in text, text
    assert all("***" in text for text in outputs[:4]), outputs
    assert "connecting with password ***" in outputs[2]
    assert json.loads(outputs[1])["parameters"]["db_password"] == "***"
    assert json.loads(outputs[1])["parameters"]["out"] == str(out)
    assert b"hunter2" not in (home.root / "home" / "flowspec.db").read_bytes()


def test_a_registered_flow_run_gets_the_real_password_and_shows_it_masked(home: Home) -> None:
    out = home.root / "given.txt"
    assert home.cli("register", home.spec("secret", SECRET)).rc == 0
    agent = home.start("agent", "start", "--name", "a1", "--poll-interval", "0.1")
    try:
        done = home.cli("run", "--name", "secret", "--param", "db_password=hunter2", "--param", f"out={out}", "--watch")
        assert done.rc == 0, done.output
        assert "hunter2" not in done.stdout and "connecting with password ***" in done.stdout
        assert out.read_text() == "hunter2"
        run_id = home.json("runs", "list")[0]["id"]
        for args in (("runs", "show", run_id), ("runs", "logs", run_id), ("runs", "list", "--format", "json")):
            text = home.cli(*args).stdout
            assert "hunter2" not in text and "***" in text, text
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)


# -- what the commands say ----------------------------------------------------------------------------
def test_runs_list_says_when_more_runs_exist_than_it_shows(home: Home) -> None:
    spec = home.spec("quick", "version: 1\nname: quick\ntasks:\n  q: {run: 'steps:quick'}\n")
    for _ in range(3):
        assert home.cli("run", spec).rc == 0
    cut = home.cli("runs", "list", "--limit", "2")
    assert cut.rc == 0 and len(cut.stdout.strip().splitlines()) == 3  # the header and 2 runs
    assert "more runs match; only the 2 newest are shown (see more with --limit N" in cut.stderr
    assert len(json.loads(home.cli("runs", "list", "--limit", "2", "--format", "json").stdout)) == 2
    whole = home.cli("runs", "list", "--limit", "3")
    assert whole.rc == 0 and whole.stderr == ""


def test_runs_cancel_of_a_local_run_says_its_process_cancels_it(home: Home) -> None:
    spec = home.spec("slow", "version: 1\nname: slow\ntasks:\n  s: {run: 'steps:slow', with: {item: 1}}\n")
    proc = home.start("run", spec, "--format", "json")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [r["state"] for r in home.json("runs", "list")] != ["Running"]:
        time.sleep(0.1)
    run_id = home.json("runs", "list")[0]["id"]
    done = home.cli("runs", "cancel", run_id)
    assert done.rc == 0, done.output
    assert done.stdout.startswith(f"run {run_id}: Cancelling (a local run: a local `flowspec run`, pid {proc.pid} on ")
    assert "sees the cancel at its next heartbeat (within 1s)" in done.stdout
    assert "agent" not in done.stdout
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert home.json("runs", "show", run_id)["state"] == "Cancelled"


def test_runs_logs_follow_of_a_cancelled_run_exits_1_not_as_an_interrupt(home: Home) -> None:
    assert home.cli("register", home.spec("secret", SECRET)).rc == 0
    run_id = home.cli("run", "--name", "secret", "--param", "db_password=x", "--param", "out=y").stdout.strip()
    assert home.cli("runs", "cancel", run_id).rc == 0  # waiting (no agent): Cancelled at once
    followed = home.cli("runs", "logs", run_id, "--follow")
    assert followed.rc == 1, followed.output
