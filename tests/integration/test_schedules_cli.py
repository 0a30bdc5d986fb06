"""Schedules through the CLI, on SQLite and PostgreSQL: `register` records the clocks,
`flowspec scheduler` creates each flow, clock and time's run exactly once (several schedulers at
once), zone transitions follow the wall clock, a new version replaces unstarted runs, pause and
resume, Late runs with their reason, and an agent starting a scheduled run at its time.
The scheduler's clock is set with FLOWSPEC_NOW (a testing aid)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TASKS = "def hello(full: bool = True) -> None:\n    print('hello', full)\n"


def _spec(schedule: str, catchup: bool = False, name: str = "clocked") -> str:
    return (f"version: 1\nname: {name}\nparameters:\n  full: {{type: boolean, default: true}}\n"
            f"schedule:\n{schedule}catchup: {str(catchup).lower()}\ntasks:\n  hello: {{run: \"tasks:hello\","
            " with: {full: \"${{ params.full }}\"}}\n")


def _env(tmp_path: Path, backend_url: str, now: str | None = None) -> dict:
    env = {**os.environ, "FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": backend_url}
    env.pop("PYTHONWARNINGS", None)
    env.pop("FLOWSPEC_NOW", None)
    if now:
        env["FLOWSPEC_NOW"] = now
    return env


def _cli(env: dict, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done


def _ok(env: dict, *args) -> str:
    done = _cli(env, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _register(tmp_path: Path, env: dict, text: str, name: str = "flow.yaml") -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / name).write_text(text)
    _ok(env, "register", tmp_path / name)


def _scheduled(env: dict) -> list[dict]:
    runs = json.loads(_ok(env, "runs", "list", "--limit", "100000", "--format", "json"))
    return sorted((r for r in runs if r["scheduled_start"] is not None), key=lambda r: r["scheduled_start"])


def _local(runs: list[dict], tz: str) -> list[str]:
    from zoneinfo import ZoneInfo

    return [datetime.fromtimestamp(r["scheduled_start"], ZoneInfo(tz)).isoformat() for r in runs]


@pytest.mark.parametrize("tz, start, clock, expected", [
    # spring forward: 02:30 does not exist on 8 March; it runs once at 03:00 CDT
    ("America/Chicago", "2026-03-07T00:00:00-06:00", "30 2 * * *",
     ["2026-03-07T02:30:00-06:00", "2026-03-08T03:00:00-05:00", "2026-03-09T02:30:00-05:00"]),
    # fall back: 01:30 occurs twice on 1 November; it runs once
    ("America/Chicago", "2026-10-31T00:00:00-05:00", "30 1 * * *",
     ["2026-10-31T01:30:00-05:00", "2026-11-01T01:30:00-05:00", "2026-11-02T01:30:00-06:00"]),
    # every 20 minutes of the missing hour: all of them fall on 03:00, once
    ("Europe/Berlin", "2026-03-29T00:00:00+01:00", "*/20 2 * * *",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00", "2026-03-30T02:20:00+02:00",
      "2026-03-30T02:40:00+02:00"]),
    # Lord Howe moves by half an hour: 02:15 does not exist on 4 October (02:00 -> 02:30)
    ("Australia/Lord_Howe", "2026-10-03T00:00:00+10:30", "15 2 * * *",
     ["2026-10-03T02:15:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
    # and back on 5 April: 01:45 happens twice (at +11:00, then +10:30); it runs once
    ("Australia/Lord_Howe", "2026-04-04T00:00:00+11:00", "45 1 * * *",
     ["2026-04-04T01:45:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
])
def test_zone_transitions_follow_the_wall_clock(tmp_path, backend_url, tz, start, clock, expected):
    env = _env(tmp_path, backend_url, start)
    _register(tmp_path, env, _spec(f'  - cron: "{clock}"\n    timezone: {tz}\n'))
    horizon = "71h" if len(expected) == 3 else "47h"
    _ok(env, "scheduler", "--once", "--horizon", horizon)
    assert _local(_scheduled(env), tz) == expected
    again = json.loads(_ok(env, "scheduler", "--once", "--horizon", horizon, "--format", "json"))
    assert again["created"] == 0


@pytest.mark.parametrize("tz, clock, registered, later, missed", [
    # spring forward: 02:30 of 8 March does not exist; it is caught up once, at 03:00 CDT
    ("America/Chicago", "30 2 * * *", "2026-03-06T12:00:00-06:00", "2026-03-10T12:00:00-05:00",
     ["2026-03-07T02:30:00-06:00", "2026-03-08T03:00:00-05:00", "2026-03-09T02:30:00-05:00",
      "2026-03-10T02:30:00-05:00"]),
    # fall back: 02:00 and 02:30 of 25 October happen twice; each is caught up once
    ("Europe/Berlin", "*/30 2 * * *", "2026-10-24T12:00:00+02:00", "2026-10-26T12:00:00+01:00",
     ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:00:00+01:00",
      "2026-10-26T02:30:00+01:00"]),
    # Lord Howe's half-hour change: 02:15 of 4 October does not exist (02:00 -> 02:30)
    ("Australia/Lord_Howe", "15 2 * * *", "2026-10-02T12:00:00+10:30", "2026-10-05T12:00:00+11:00",
     ["2026-10-03T02:15:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
])
@pytest.mark.parametrize("catchup", [True, False])
def test_catchup_both_ways_across_a_zone_change(tmp_path, backend_url, tz, clock, registered, later, missed, catchup):
    """No scheduler ran from `registered` to `later`: with catchup each missed time runs once
    (the wall clock's rules apply to them too); without, they are skipped and the clock goes on."""
    _register(tmp_path, _env(tmp_path, backend_url, registered),
              _spec(f'  - cron: "{clock}"\n    timezone: {tz}\n', catchup=catchup))
    env = _env(tmp_path, backend_url, later)
    done = json.loads(_ok(env, "scheduler", "--once", "--horizon", "1h", "--format", "json"))
    assert _local(_scheduled(env), tz) == (missed if catchup else [])
    assert done["created"] == (len(missed) if catchup else 0)
    _ok(env, "scheduler", "--once", "--horizon", "24h")  # the clock goes on from now either way
    upcoming = [t for t in _local(_scheduled(env), tz) if t not in missed]
    assert len(upcoming) == (1 if clock.startswith(("30", "15")) else 2), upcoming
    assert datetime.fromisoformat(upcoming[0]).timestamp() > datetime.fromisoformat(later).timestamp()


@pytest.mark.parametrize("tz, start, anchor, interval, horizon, expected", [
    # an interval is absolute time: a day after 09:00 CST is 10:00 CDT
    ("America/Chicago", "2026-03-07T00:00:00-06:00", "2026-03-07T09:00:00", "24h", "71h",
     ["2026-03-07T09:00:00-06:00", "2026-03-08T10:00:00-05:00", "2026-03-09T10:00:00-05:00"]),
    # twelve hours after 20:00 CEST is 07:00 CET
    ("Europe/Berlin", "2026-10-24T00:00:00+02:00", "2026-10-24T08:00:00", "12h", "47h",
     ["2026-10-24T08:00:00+02:00", "2026-10-24T20:00:00+02:00", "2026-10-25T07:00:00+01:00",
      "2026-10-25T19:00:00+01:00"]),
    # a day after 02:15 at +10:30 is 02:45 at +11:00
    ("Australia/Lord_Howe", "2026-10-03T00:00:00+10:30", "2026-10-03T02:15:00", "24h", "71h",
     ["2026-10-03T02:15:00+10:30", "2026-10-04T02:45:00+11:00", "2026-10-05T02:45:00+11:00"]),
])
def test_intervals_are_absolute_across_zone_changes(tmp_path, backend_url, tz, start, anchor, interval, horizon,
                                                    expected):
    env = _env(tmp_path, backend_url, start)
    _register(tmp_path, env, _spec(f'  - interval: {interval}\n    start: "{anchor}"\n    timezone: {tz}\n'))
    _ok(env, "scheduler", "--once", "--horizon", horizon)
    assert _local(_scheduled(env), tz) == expected
    assert json.loads(_ok(env, "scheduler", "--once", "--horizon", horizon, "--format", "json"))["created"] == 0


def test_several_schedulers_at_once_make_each_run_once(tmp_path, backend_url):
    env = _env(tmp_path, backend_url, "2026-03-07T00:00:00Z")
    for i in range(5):
        _register(tmp_path, env, _spec('  - cron: "*/5 * * * *"\n    timezone: America/Chicago\n'
                                       '  - interval: 7m\n    parameters: {full: false}\n    labels: [night]\n',
                                       name=f"f{i}"), name=f"f{i}.yaml")
    procs = [subprocess.Popen([sys.executable, "-m", "flowspec", "scheduler", "--once", "--horizon", "6h",
                               "--format", "json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    created = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        created.append(json.loads(out)["created"])
    runs = _scheduled(env)
    keys = [(r["flow"], r["scheduled_start"], r["parameters"].get("full")) for r in runs]
    assert len(keys) == len(set(keys)), "a flow, clock and time has two runs"
    t0 = datetime.fromisoformat("2026-03-07T00:00:00+00:00").timestamp()
    every_7m = sum(1 for k in range(int(t0 // 420), int((t0 + 6 * 3600) // 420) + 1) if t0 < k * 420 <= t0 + 6 * 3600)
    # registered at 00:00: from 00:05 to 06:00 every 5 minutes, and every 7 minutes of the epoch
    assert sum(created) == len(runs) == 5 * (6 * 12 + every_7m)
    night = [r for r in runs if r["parameters"] == {"full": False}]
    assert night and all(r["labels"] == ["night"] for r in night)


def test_new_version_pause_resume_and_catchup(tmp_path, backend_url):
    env = _env(tmp_path, backend_url, "2026-05-01T00:00:00Z")
    _register(tmp_path, env, _spec("  - interval: 1h\n"))
    _ok(env, "scheduler", "--once", "--horizon", "5h")
    assert len(_scheduled(env)) == 5
    listed = json.loads(_ok(env, "schedules", "list", "--format", "json"))
    assert listed[0]["flow"] == "clocked" and listed[0]["next_run"] is not None
    flows = json.loads(_ok(env, "flows", "list", "--format", "json"))
    assert flows[0]["next_run"] == datetime.fromisoformat("2026-05-01T01:00:00+00:00").timestamp()
    # a new version with another clock: the old version's unstarted runs give way
    _register(tmp_path, env, _spec("  - interval: 2h\n"))
    assert _scheduled(env) == []
    _ok(env, "scheduler", "--once", "--horizon", "5h")
    assert [r["flow_id"] for r in _scheduled(env)] == [2, 2]
    paused = _ok(env, "schedules", "pause", "clocked")
    assert "2 scheduled runs" in paused and _scheduled(env) == []
    _ok(env, "scheduler", "--once", "--horizon", "5h")
    assert _scheduled(env) == []
    assert "paused" in _ok(env, "flows", "list")
    later = _env(tmp_path, backend_url, "2026-05-02T00:00:00Z")
    _ok(later, "schedules", "resume", "clocked")
    _ok(later, "scheduler", "--once", "--horizon", "1h")  # catchup off: the missed day is skipped
    assert [r["scheduled_start"] for r in _scheduled(later)] == [datetime.fromisoformat("2026-05-02T00:00:00+00:00").timestamp()]
    # catchup on: every time missed while no scheduler ran is run once
    _register(tmp_path, later, _spec("  - interval: 2h\n", catchup=True))
    much_later = _env(tmp_path, backend_url, "2026-05-02T10:00:00Z")
    _ok(much_later, "scheduler", "--once", "--horizon", "1h")
    starts = [r["scheduled_start"] for r in _scheduled(much_later)]
    base = datetime.fromisoformat("2026-05-02T00:00:00+00:00").timestamp()
    assert starts == [base + h * 3600 for h in range(0, 11, 2)]


def test_late_runs_say_why_and_an_agent_starts_a_run_at_its_time(tmp_path, backend_url):
    env = _env(tmp_path, backend_url)
    past = _env(tmp_path, backend_url, str(time.time() - 120))
    # runs planned by a scheduler that ran two minutes ago: now Late, and no agent has the label
    _register(tmp_path, past, _spec("  - interval: 4s\n    labels: [clock]\n"))
    _ok(past, "scheduler", "--once", "--horizon", "30s")
    listed = _ok(env, "runs", "list")
    assert "Late" in listed and "no agent" in listed
    late = next(r for r in json.loads(_ok(env, "runs", "list", "--format", "json")) if r["state"] == "Late")
    shown = _ok(env, "runs", "show", late["id"])
    assert "state:      Late" in shown and "no agent" in shown
    # the current runs: an agent starts the first one at its time, not before
    _ok(env, "schedules", "pause", "clocked")
    _ok(env, "schedules", "resume", "clocked")
    _ok(env, "scheduler", "--once", "--horizon", "9s")
    upcoming = [r for r in _scheduled(env) if r["scheduled_start"] > time.time()]
    assert upcoming
    first = upcoming[0]
    agent = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--label", "clock",
                              "--poll-interval", "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 40
        while time.time() < deadline:
            state = json.loads(_ok(env, "runs", "show", first["id"], "--format", "json"))["state"]
            if state == "Success":
                break
            time.sleep(0.5)
    finally:
        agent.terminate()
        agent.communicate(timeout=30)
    assert state == "Success"
    for run in _scheduled(env):
        history = json.loads(_ok(env, "runs", "show", run["id"], "--format", "json"))["history"]
        submitted = [e["time"] for e in history if e["state"] == "Submitted"]
        # The first entry, kept in the run's own row, once, when the scheduler made it.
        assert [e["message"] for e in history if e["state"] == "Scheduled"] == ["created by the flow's schedule"]
        assert history[0]["state"] == "Scheduled" and history[0]["time"] == pytest.approx(run["created"])
        if run["id"] == first["id"]:  # at its time, within a poll interval (and a process start)
            assert run["scheduled_start"] <= submitted[0] < run["scheduled_start"] + 2.0
            assert [e["state"] for e in history] == ["Scheduled", "Submitted", "Running", "Success"]
        assert all(t >= run["scheduled_start"] for t in submitted), "a run started before its time"


def test_schedulers_survive_a_database_restart_and_a_kill(tmp_path, postgres_server):
    """Two schedulers in their loops; the database restarts under them, then one is killed with
    SIGKILL: runs keep coming, each flow, clock and time once."""
    import signal

    env = _env(tmp_path, postgres_server.url)
    _register(tmp_path, env, _spec("  - interval: 1s\n"))

    def scheduler():
        return subprocess.Popen([sys.executable, "-m", "flowspec", "scheduler", "--horizon", "2s", "--interval", "0.3"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    first, second = scheduler(), scheduler()
    try:
        time.sleep(3)
        postgres_server.restart()
        restarted = time.time()
        time.sleep(4)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        time.sleep(3)
        alive = second.poll() is None
    finally:
        for proc in (first, second):
            proc.kill()
        errors = [proc.communicate(timeout=10)[1] for proc in (first, second)][1]
    assert alive, errors
    starts = [r["scheduled_start"] for r in _scheduled(env)]
    assert len(starts) == len(set(starts)), "a time has two runs"
    assert any(t > restarted + 5 for t in starts), errors  # made after the restart, and after the kill
    assert all(b - a == 1.0 for a, b in zip(starts, starts[1:])), "a time was skipped"


def test_deleting_a_scheduled_flow_takes_its_planned_runs(tmp_path, backend_url):
    env = _env(tmp_path, backend_url, "2026-05-01T00:00:00Z")
    _register(tmp_path, env, _spec("  - interval: 1h\n"))
    _ok(env, "scheduler", "--once", "--horizon", "3h")
    assert len(_scheduled(env)) == 3
    _ok(env, "flows", "delete", "clocked")
    assert _scheduled(env) == [] and json.loads(_ok(env, "schedules", "list", "--format", "json")) == []
    assert json.loads(_ok(env, "scheduler", "--once", "--format", "json"))["created"] == 0


@pytest.mark.slow
def test_schedulers_and_agents_through_a_kill_and_a_database_restart(tmp_path, postgres_server):
    """Two schedulers and two agents in real time on PostgreSQL; the database restarts under them
    and one scheduler is killed with SIGKILL: every flow, clock and time in the window has one run,
    run once by one agent, never before its time, and it succeeds."""
    import signal

    env = _env(tmp_path, postgres_server.url)
    names = [f"f{i}" for i in range(3)]
    for name in names:
        _register(tmp_path, env, _spec("  - interval: 3s\n", name=name), name=f"{name}.yaml")

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", "flowspec", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    schedulers = [start("scheduler", "--horizon", "10s", "--interval", "0.5") for _ in range(2)]
    agents = [start("agent", "start", "--name", f"a{k}", "--poll-interval", "0.5", "--max-runs", "4") for k in range(2)]
    try:
        deadline = time.time() + 60
        while not _scheduled(env) and time.time() < deadline:  # a first pass made (times before it are skipped)
            time.sleep(0.5)
        window = (time.time(), time.time() + 18)
        time.sleep(4)
        postgres_server.restart()
        time.sleep(5)
        schedulers[0].send_signal(signal.SIGKILL)
        time.sleep(max(0.0, window[1] - time.time()))
        schedulers[1].terminate()
        deadline = time.time() + 120
        while time.time() < deadline:
            runs = [r for r in _scheduled(env) if window[0] < r["scheduled_start"] <= window[1]]
            if runs and all(r["state"] in ("Success", "Failed", "Cancelled") for r in runs):
                break
            time.sleep(1)
    finally:
        for proc in schedulers + agents:
            if proc.poll() is None:
                proc.terminate()
        errors = "\n".join(proc.communicate(timeout=60)[1][-2000:] for proc in schedulers + agents)
    expected = {(name, t) for name in names for t in range(int(window[0] // 3) * 3, int(window[1]) + 1, 3)
                if window[0] < t <= window[1]}
    made = [(r["flow"], r["scheduled_start"]) for r in runs]
    assert len(made) == len(set(made)), "a flow, clock and time has two runs"
    assert set(made) == {(name, float(t)) for name, t in expected}, errors
    assert all(r["state"] == "Success" for r in runs), [(r["flow"], r["state"], r["message"]) for r in runs]
    for run in runs:
        history = json.loads(_ok(env, "runs", "show", run["id"], "--format", "json"))["history"]
        submitted = [e["time"] for e in history if e["state"] == "Submitted"]
        assert len(submitted) == 1 and submitted[0] >= run["scheduled_start"], (run["id"], history)
