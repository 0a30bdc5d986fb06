"""Agents as real processes: flows registered with the CLI, runs claimed from a real backend
(a SQLite file, and a real PostgreSQL server where a test takes `backend_url`), flow runs in
child processes, agents killed with SIGKILL or stopped with SIGTERM, and backends that blink under
them: a PostgreSQL server restarted or stopped for seconds with `pg_ctl`, a SQLite file held
locked by another process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowspec.backend import Backend, FlowRun, open_backend

pytestmark = pytest.mark.integration

TASKS = """
import json, os, sys, time
from pathlib import Path
from flowspec import context

def mark(out: str, seconds: float = 0.0):
    # Created exclusively: a run that ran twice would fail here.
    Path(out, context.run_id).open("x").close()
    time.sleep(seconds)

def nap(seconds: float = 0.0):
    context.logger.info("napping in process %d", os.getpid())
    time.sleep(seconds)

def die(code: int = 3):
    print("dying on purpose", file=sys.stderr, flush=True)
    os._exit(code)

def show_env(names: list):
    context.logger.info("env %s", json.dumps({n: os.environ.get(n) for n in names}, sort_keys=True))

def ticks(n: int, every: float):
    for i in range(n):
        context.logger.info("tick %d", i)
        time.sleep(every)
"""
POLL = "0.1"  # agents in these tests poll often, so that runs start quickly


class Cluster:
    """Flows registered through the CLI and agent processes on one backend; stopped at the end."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.env = {**os.environ, "FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": url}
        self.env.pop("PYTHONWARNINGS", None)  # pytest's warning filters must not reach the children
        (root / "flows").mkdir()
        (root / "flows" / "tasks.py").write_text(TASKS)
        self.agents: dict[str, tuple[subprocess.Popen, Path]] = {}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowspec", *args], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def flow(self, name: str, task: str, labels: tuple[str, ...] = (), with_: dict | None = None,
             env: dict | None = None, params: dict | None = None) -> int:
        """Write and register a one-task flow; returns its id."""
        spec = {"version": 1, "name": name, "parameters": params or {},
                "tasks": {"only": {"run": f"tasks:{task}", "with": with_ or {}}},
                "environment": {"labels": list(labels), "env": env or {}}}
        path = self.root / "flows" / f"{name}.yaml"
        path.write_text(json.dumps(spec))  # JSON is YAML
        done = self.cli("register", str(path), "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["id"]

    def agent(self, name: str, *labels: str, args: tuple[str, ...] = (), env: dict | None = None) -> int:
        """Start an agent process; returns its pid."""
        log = self.root / f"agent-{name}.log"
        cmd = [sys.executable, "-m", "flowspec", "agent", "start", "--name", name, "--poll-interval", POLL,
               *(f"--label={label}" for label in labels), *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
        self.agents[name] = (proc, log)
        return proc.pid

    def kill(self, name: str) -> None:
        proc = self.agents[name][0]
        proc.kill()
        proc.wait()

    def output(self) -> str:
        return "\n".join(f"--- agent {n}\n{log.read_text()}" for n, (_, log) in self.agents.items())

    def close(self) -> None:
        for proc, _ in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.agents.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path, backend_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, backend_url)
    yield c
    c.close()


@pytest.fixture
def sqlite_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, Backend]]:
    """A cluster on a SQLite file only, for behaviour that does not depend on the database."""
    c = Cluster(tmp_path, f"sqlite://{tmp_path / 'flowspec.db'}")
    with open_backend(c.url) as backend:
        yield c, backend
    c.close()


def wait_for(what: Callable[[], object], timeout: float, describe: Callable[[], str] = str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up after {timeout:g}s waiting; {describe()}")


def run_of(backend: Backend, run_id: str) -> FlowRun:
    run = backend.get_run(run_id)
    assert run is not None
    return run


def wait_state(backend: Backend, cluster: Cluster, run_id: str, states: set[str], timeout: float = 30) -> FlowRun:
    return wait_for(lambda: (run := run_of(backend, run_id)).state in states and run, timeout,
                    lambda: f"run {run_id} is {run_of(backend, run_id)}\n{cluster.output()}")


def logged(backend: Backend, run_id: str, text: str) -> bool:
    return any(text in line.message for line in backend.logs(run_id))


def history(backend: Backend, run_id: str) -> list[str]:
    return [event.state for event in backend.run_history(run_id)]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in edges:  # at equal times the end (-1) sorts first: touching is not overlapping
        current += step
        most = max(most, current)
    return most


def running_interval(backend: Backend, run_id: str) -> tuple[float, float]:
    events = backend.run_history(run_id)
    start = next(e.time for e in events if e.state == "Running")
    return start, events[-1].time


# ----------------------------------------------------------------------------------- scale


def test_three_agents_sixty_runs_labels_and_a_limit_of_two(cluster: Cluster, backend_url: str, tmp_path: Path) -> None:
    out = tmp_path / "marks"
    out.mkdir()
    mark = {"out": str(out), "seconds": 0.15}
    flows = {
        "f-dev": (cluster.flow("f-dev", "mark", ("dev",), mark), {"a-dev", "a-both"}),
        "f-prod": (cluster.flow("f-prod", "mark", ("prod",), mark), {"a-both"}),
        "f-both": (cluster.flow("f-both", "mark", ("dev", "prod"), mark), {"a-both"}),
        "f-none": (cluster.flow("f-none", "mark", (), mark), {"a-none"}),
    }
    assert cluster.cli("concurrency-limit", "set", "dev", "2").returncode == 0
    with open_backend(backend_url) as backend:
        runs = {backend.create_flow_run(flow_id).id: name for i in range(15) for name, (flow_id, _) in flows.items()}
        cluster.agent("a-dev", "dev")
        cluster.agent("a-both", "dev", "prod")
        cluster.agent("a-none")
        for run_id in runs:
            wait_state(backend, cluster, run_id, {"Success", "Failed", "Cancelled"}, timeout=120)
        finished = {run_id: run_of(backend, run_id) for run_id in runs}
        assert {r.state for r in finished.values()} == {"Success"}
        for run_id, name in runs.items():
            assert finished[run_id].agent in flows[name][1], (name, finished[run_id].agent)
            states = history(backend, run_id)
            assert states.count("Submitted") == states.count("Running") == 1, states
        assert sorted(p.name for p in out.iterdir()) == sorted(runs)  # each ran, and only once
        dev = [running_interval(backend, r) for r, name in runs.items() if name in ("f-dev", "f-both")]
        assert max_overlap(dev) == 2  # never more than the limit, and the limit was reached
        assert backend.list_limits()[0].in_use == 0


# ----------------------------------------------------------------------------- failures


def test_kill_9_of_an_agent_fails_its_run_frees_the_slot_and_keeps_its_records(
        cluster: Cluster, backend_url: str) -> None:
    flow_id = cluster.flow("sleeper", "nap", ("k",), {"seconds": "${{ params.seconds }}"},
                           params={"seconds": {"type": "number", "default": 60}})
    assert cluster.cli("concurrency-limit", "set", "k", "1").returncode == 0
    with open_backend(backend_url) as backend:
        cluster.agent("first", "k")
        doomed = backend.create_flow_run(flow_id).id
        wait_for(lambda: logged(backend, doomed, "napping"), 30, cluster.output)
        waiting = backend.create_flow_run(flow_id, {"seconds": 0.1}).id
        wait_state(backend, cluster, waiting, {"Queued"})
        cluster.agent("second", "k")
        cluster.kill("first")
        failed = wait_state(backend, cluster, doomed, {"Failed"})
        assert "agent" in failed.message and "died" in failed.message
        assert history(backend, doomed) == ["Scheduled", "Submitted", "Running", "Failed"]
        assert logged(backend, doomed, "napping")  # recorded before the kill, still there
        # the task it left running ended with the run
        assert [(t.task, t.state, t.message) for t in backend.task_states(doomed)] == [
            ("only", "Failed", f"not finished: the flow run ended Failed ({failed.message})")]
        done = wait_state(backend, cluster, waiting, {"Success", "Failed"})
        assert (done.state, done.agent) == ("Success", "second")


def test_a_run_whose_process_vanished_is_marked_failed_by_another_agent(
        cluster: Cluster, backend_url: str) -> None:
    flow_id = cluster.flow("sleeper", "nap", ("s",), {"seconds": 60})
    assert cluster.cli("concurrency-limit", "set", "s", "1").returncode == 0
    timeout = ("--heartbeat-timeout", "1.5")
    with open_backend(backend_url) as backend:
        cluster.agent("first", "s", args=timeout)
        lost = backend.create_flow_run(flow_id).id
        line = wait_for(lambda: [ln for ln in backend.logs(lost) if "napping" in ln.message], 30, cluster.output)
        child = int(line[0].message.rsplit(" ", 1)[1])
        # Freeze the child so it cannot notice its agent dying, kill the agent, then the child:
        # the run's process is gone without a word, as when a machine is lost.
        os.kill(child, signal.SIGSTOP)
        cluster.kill("first")
        os.kill(child, signal.SIGKILL)
        cluster.agent("second", "s", args=timeout)
        failed = wait_state(backend, cluster, lost, {"Failed"})
        assert "no heartbeat for 1.5s" in failed.message and "marked Failed by agent second" in failed.message
        assert backend.list_limits()[0].in_use == 0


def test_cancel_stops_the_running_child(sqlite_cluster: tuple[Cluster, Backend]) -> None:
    cluster, backend = sqlite_cluster
    flow_id = cluster.flow("sleeper", "nap", (), {"seconds": 60})
    cluster.agent("a")
    run_id = backend.create_flow_run(flow_id).id
    line = wait_for(lambda: [ln for ln in backend.logs(run_id) if "napping" in ln.message], 30, cluster.output)
    child = int(line[0].message.rsplit(" ", 1)[1])
    done = cluster.cli("runs", "cancel", run_id[:8])
    assert done.returncode == 0 and "Cancelling" in done.stdout, done.stderr
    cancelled = wait_state(backend, cluster, run_id, {"Cancelled", "Failed"}, timeout=15)
    assert (cancelled.state, cancelled.exit_code, cancelled.message) == ("Cancelled", 130, "cancelled by the user")
    assert [(t.task, t.state) for t in backend.task_states(run_id)] == [("only", "Cancelled")]
    wait_for(lambda: not Path(f"/proc/{child}").exists(), 10, lambda: f"process {child} still exists")


def test_a_child_that_dies_fails_its_run_with_exit_code_and_last_output(
        sqlite_cluster: tuple[Cluster, Backend]) -> None:
    cluster, backend = sqlite_cluster
    flow_id = cluster.flow("dier", "die", (), {"code": 3})
    cluster.agent("a")
    failed = wait_state(backend, cluster, backend.create_flow_run(flow_id).id, {"Failed", "Success"})
    assert failed.exit_code == 3
    assert "exited with code 3 without reporting a final state" in failed.message
    assert failed.message.endswith("dying on purpose")


def test_environment_precedence_agent_env_then_env_flags_then_the_flow(
        sqlite_cluster: tuple[Cluster, Backend]) -> None:
    cluster, backend = sqlite_cluster
    names = ["AGENT_ONLY", "SHARED", "FLAG_ONLY", "BOTH"]
    flow_id = cluster.flow("env", "show_env", (), {"names": names}, env={"BOTH": "flow"})
    cluster.agent("a", args=("--env", "SHARED=flag", "--env", "FLAG_ONLY=flag", "--env", "BOTH=flag"),
                  env={"AGENT_ONLY": "agent", "SHARED": "agent", "BOTH": "agent"})
    run_id = backend.create_flow_run(flow_id).id
    assert wait_state(backend, cluster, run_id, {"Success", "Failed"}).state == "Success"
    line = next(ln.message for ln in backend.logs(run_id) if ln.message.startswith("env "))
    assert json.loads(line[4:]) == {"AGENT_ONLY": "agent", "SHARED": "flag", "FLAG_ONLY": "flag", "BOTH": "flow"}


def test_label_rule_through_the_cli_empty_labels_included(sqlite_cluster: tuple[Cluster, Backend]) -> None:
    cluster, backend = sqlite_cluster
    cluster.flow("plain", "nap")
    cluster.flow("devflow", "nap", ("dev",))
    cluster.agent("a-dev", "dev")
    wait_for(lambda: backend.list_agents(), 10, cluster.output)
    plain = cluster.cli("run", "--name", "plain")
    assert plain.returncode == 0
    assert "the run has no labels and no agent without labels was seen" in plain.stderr
    gpu = cluster.cli("run", "--name", "devflow", "--label", "gpu")
    assert "no agent seen in the last 60 s has labels covering [dev, gpu]; agents: a-dev [dev]" in gpu.stderr
    watched = cluster.cli("run", "--name", "devflow", "--watch")
    assert watched.returncode == 0, watched.stderr
    assert watched.stderr == "" and "RUN     flow | Success" in watched.stdout
    plain_id, gpu_id = plain.stdout.strip(), gpu.stdout.strip()
    assert (run_of(backend, plain_id).state, run_of(backend, gpu_id).state) == ("Scheduled", "Scheduled")
    shown = json.loads(cluster.cli("runs", "show", plain_id, "--format", "json").stdout)
    assert "no agent without labels" in shown["waiting_reason"]
    cluster.agent("a-none")
    done = wait_state(backend, cluster, plain_id, {"Success", "Failed"})
    assert (done.state, done.agent) == ("Success", "a-none")
    assert run_of(backend, gpu_id).state == "Scheduled"  # no agent covers [dev, gpu]


# ------------------------------------------------------------------------------ stopping


def test_an_agent_stopped_with_sigterm_says_so_in_the_backend(sqlite_cluster: tuple[Cluster, Backend]) -> None:
    cluster, backend = sqlite_cluster
    flow_id = cluster.flow("sleeper", "nap", (), {"seconds": 60})
    cluster.agent("a")
    run_id = backend.create_flow_run(flow_id).id
    wait_for(lambda: logged(backend, run_id, "napping"), 30, cluster.output)
    proc = cluster.agents["a"][0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, cluster.output()
    stopped = run_of(backend, run_id)
    assert (stopped.state, stopped.message) == ("Cancelled", "stopped by its agent (SIGTERM)")
    # Seen a moment ago, but stopped: nothing counts on it any more.
    listed = json.loads(cluster.cli("agents", "list", "--format", "json").stdout)
    assert [(a["name"], a["status"], a["alive"]) for a in listed] == [("a", "stopped", False)]
    assert "stopped" in cluster.cli("agents", "list").stdout
    created = cluster.cli("run", "--name", "sleeper")
    assert "may wait forever" in created.stderr, created.stderr
    plan = cluster.cli("plan", str(cluster.root / "flows" / "sleeper.yaml"), "--format", "json")
    assert json.loads(plan.stdout)["backend"]["agents"] == [], plan.stdout + plan.stderr
    cluster.agent("a")  # the same name started again serves again
    wait_for(lambda: [a.name for a in backend.list_agents(60)] == ["a"], 10, cluster.output)


# ------------------------------------------------------------------------------- outages


def _outage_lines(cluster: Cluster) -> tuple[list[str], list[str]]:
    text = cluster.output()
    return ([ln for ln in text.splitlines() if "the backend failed, retrying" in ln],
            [ln for ln in text.splitlines() if "the backend is back after" in ln])


def _ticked_to_the_end(backend: Backend, run_id: str, n: int) -> None:
    """Every state and log line of a `ticks` run, each once and in order."""
    assert history(backend, run_id) == ["Scheduled", "Submitted", "Running", "Success"]
    ticks = [ln.message for ln in backend.logs(run_id) if ln.message.startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(n)]
    assert [(t.task, t.state) for t in backend.task_states(run_id, history=True)] == [
        ("only", "Running"), ("only", "Success")]


@pytest.mark.slow
def test_an_agent_and_its_run_ride_out_a_postgresql_restart_and_a_stop_of_seconds(
        tmp_path: Path, postgres_server) -> None:
    """`pg_ctl restart -m fast` ends every connection; then the server is down for 4 s. The agent
    and the run's process retry, the run goes on and ends Success with everything recorded."""
    cluster = Cluster(tmp_path, postgres_server.url)
    try:
        flow_id = cluster.flow("ticker", "ticks", (), {"n": 40, "every": 0.25})
        cluster.agent("a", args=("--outage-tolerance", "60"))
        with open_backend(postgres_server.url) as backend:
            run_id = backend.create_flow_run(flow_id).id
            wait_for(lambda: logged(backend, run_id, "tick 1"), 30, cluster.output)
        followed_path = tmp_path / "followed.txt"
        with open(followed_path, "w") as out:
            follower = subprocess.Popen([sys.executable, "-m", "flowspec", "runs", "logs", run_id, "--follow"],
                                        env=cluster.env, stdout=out, stderr=subprocess.PIPE, text=True)
        # It follows: the server goes away under it, not before it starts.
        wait_for(lambda: "tick 0" in followed_path.read_text(), 30, lambda: followed_path.read_text())
        postgres_server.restart("fast")
        time.sleep(1.0)
        postgres_server.stop("fast")
        time.sleep(4.0)
        postgres_server.start()
        follower_err = follower.communicate(timeout=60)[1]
        followed = followed_path.read_text()
        # The follower waited through both outages too, and missed nothing.
        assert follower.returncode == 0, follower_err
        assert [ln.rsplit("| ", 1)[1] for ln in followed.splitlines() if "| tick " in ln] == [
            f"tick {i}" for i in range(40)], followed
        with open_backend(postgres_server.url) as backend:
            done = wait_state(backend, cluster, run_id, {"Success", "Failed", "Cancelled"}, timeout=30)
            assert (done.state, done.message, done.exit_code) == ("Success", None, 0), cluster.output()
            _ticked_to_the_end(backend, run_id, 40)
            recorded = [ln.message for ln in backend.logs(run_id) if ln.message.startswith("recording: ")]
            assert any("the backend is back after" in m for m in recorded), recorded
            warned, back = _outage_lines(cluster)
            assert 1 <= len(warned) == len(back) <= 2, cluster.output()  # once per outage, each said to end
            assert cluster.agents["a"][0].poll() is None  # still serving: it takes the next run
            again = backend.create_flow_run(flow_id, {}).id
            assert wait_state(backend, cluster, again, {"Success", "Failed"}, timeout=30).state == "Success"
    finally:
        cluster.close()


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.slow
def test_an_agent_and_its_run_ride_out_a_sqlite_file_locked_by_another_process(
        sqlite_cluster: tuple[Cluster, Backend]) -> None:
    """Another process holds the write lock (BEGIN EXCLUSIVE) for 5 s, longer than one call
    waits for it and longer than the run's heartbeat timeout (2 s): the agent warns once,
    retries, says when it is back, and the run ends Success with all it logged meanwhile.
    `runs list`, run again and again all along, never takes the held-up run for lost."""
    import threading

    cluster, backend = sqlite_cluster
    flow_id = cluster.flow("ticker", "ticks", (), {"n": 36, "every": 0.25})
    cluster.agent("a", args=("--heartbeat-timeout", "2"))
    run_id = backend.create_flow_run(flow_id).id
    wait_for(lambda: logged(backend, run_id, "tick 1"), 30, cluster.output)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, cluster.url[len("sqlite://"):], "5"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    looking = threading.Event()
    reader = threading.Thread(target=lambda: [cluster.cli("runs", "list") for _ in iter(looking.is_set, True)])
    reader.start()
    try:
        assert holder.wait(30) == 0
        time.sleep(3)  # and a while after the lock is gone, when heartbeats are old
    finally:
        looking.set()
        reader.join()
    holder.stdout.close()
    done = wait_state(backend, cluster, run_id, {"Success", "Failed", "Cancelled"}, timeout=30)
    assert (done.state, done.exit_code) == ("Success", 0), cluster.output()
    _ticked_to_the_end(backend, run_id, 36)
    warned, back = _outage_lines(cluster)
    assert len(warned) == len(back) == 1, cluster.output()
    assert cluster.agents["a"][0].poll() is None


@pytest.mark.slow
def test_past_its_outage_tolerance_an_agent_stops_with_an_error(tmp_path: Path, postgres_server) -> None:
    cluster = Cluster(tmp_path, postgres_server.url)
    try:
        flow_id = cluster.flow("ticker", "ticks", (), {"n": 400, "every": 0.1})
        cluster.agent("a", args=("--outage-tolerance", "3"))
        with open_backend(postgres_server.url) as backend:
            run_id = backend.create_flow_run(flow_id).id
            wait_for(lambda: logged(backend, run_id, "tick 1"), 30, cluster.output)
        postgres_server.stop("fast")
        proc = cluster.agents["a"][0]
        assert proc.wait(30) == 1
        assert "longer than the outage tolerance of 3s" in cluster.output(), cluster.output()
    finally:
        cluster.close()


def test_run_name_watch_ends_failed_when_the_run_is_lost(sqlite_cluster: tuple[Cluster, Backend]) -> None:
    """No agent is left to notice: the watcher itself marks the run Failed, naming its agent."""
    cluster, backend = sqlite_cluster
    cluster.flow("sleeper", "nap", (), {"seconds": 60})
    cluster.agent("a", args=("--heartbeat-timeout", "1.5"))
    watch = subprocess.Popen([sys.executable, "-m", "flowspec", "run", "--name", "sleeper", "--watch"],
                             env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = watch.stdout.readline().strip()
        line = wait_for(lambda: [ln for ln in backend.logs(run_id) if "napping" in ln.message], 30, cluster.output)
        child = int(line[0].message.rsplit(" ", 1)[1])
        os.kill(child, signal.SIGSTOP)  # as in the test above: the run's process vanishes without a word
        cluster.kill("a")
        os.kill(child, signal.SIGKILL)
        out, err = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 1, out + err
    failed = run_of(backend, run_id)
    assert failed.state == "Failed"
    assert failed.message.startswith("no heartbeat for 1.5s: the process running it (agent a) is gone;"), failed.message
    assert "marked Failed by `flowspec run --watch`" in failed.message
    assert out.rstrip().endswith(f"flow run {run_id}: Failed ({failed.message})"), out


def test_an_agents_run_records_run_names_outputs_and_a_flow_timeout(sqlite_cluster: tuple[Cluster, Backend]) -> None:
    cluster, backend = sqlite_cluster
    specs = {
        "named": {"version": 1, "name": "named", "tasks": {
            "nap": {"run": "tasks:nap", "map": {"seconds": [0, 0.01]}, "run_name": "s${{ args.seconds }}"}},
            "outputs": {"naps": "${{ tasks.nap }}"}},
        "slow": {"version": 1, "name": "slow", "timeout": "1s", "tasks": {"nap": {"run": "tasks:nap",
                                                                               "with": {"seconds": 30}}}},
    }
    ids = {}
    for name, spec in specs.items():
        path = cluster.root / "flows" / f"{name}.yaml"
        path.write_text(json.dumps(spec))
        done = cluster.cli("register", str(path), "--format", "json")
        assert done.returncode == 0, done.stderr
        ids[name] = json.loads(done.stdout)["id"]
    cluster.agent("a")
    named = backend.create_flow_run(ids["named"]).id
    slow = backend.create_flow_run(ids["slow"]).id
    assert wait_state(backend, cluster, named, {"Success", "Failed"}).state == "Success"
    assert backend.run_outputs(named) == {"naps": [None, None]}
    assert backend.run_names(named) == {("nap", 0): "s0", ("nap", 1): "s0.01"}
    assert logged(backend, named, "napping in process")
    assert {line.task for line in backend.logs(named) if "napping" in line.message} == {"nap[s0]", "nap[s0.01]"}
    run = wait_state(backend, cluster, slow, {"TimedOut", "Failed", "Success"}, timeout=40)
    assert (run.state, run.exit_code, run.message) == ("TimedOut", 1, "the flow run exceeded its timeout of 1s")
