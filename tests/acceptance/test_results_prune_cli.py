"""Freeing the space of kept results through the CLI: `runs delete` and `flows delete` remove the
runs' packs from the result store, `results prune [--keep-results DURATION]` removes what is
older (30 days by default) and never what a run still going kept, with what it freed said in
text and JSON, and a bad DURATION named as a usage error."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

STEPS = """\
import time
from pathlib import Path


def nums(n):
    return list(range(n))


def sq(x):
    return x * x


def total(xs):
    return sum(xs)


def hold(xs):
    go = Path(__file__).with_name("go")
    while not go.exists():
        time.sleep(0.05)
    return len(xs)
"""

FLOW = """\
version: 1
name: kept
parameters:
  n: {type: integer, default: 3}
results: {type: local, directory: STORE}
tasks:
  nums: {run: steps:nums, with: {n: "${{ params.n }}"}}
  sq: {run: steps:sq, map: {x: "${{ tasks.nums }}"}}
  total: {run: steps:total, with: {xs: "${{ tasks.sq }}"}, cache: true}
"""
DAY = 86400


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": ""}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flow.yaml").write_text(FLOW.replace("STORE", str(tmp_path / "store")))
    return tmp_path / "flow.yaml"


def run(cli, spec: Path, env: dict, *args: str) -> str:
    done = cli("run", spec, *args, "--format", "json", env=env)
    assert done.rc == 0, done.output
    return json.loads(done.stdout)["run_id"]


def files(folder: Path) -> dict[str, int]:
    """The files under `folder` with their sizes."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def age(folder: Path, days: float) -> None:
    past = time.time() - days * DAY
    for p in folder.rglob("*"):
        os.utime(p, (past, past))


def test_runs_delete_frees_the_kept_results_of_the_runs_and_nothing_else(cli, spec, env, tmp_path):
    first, second = run(cli, spec, env), run(cli, spec, env, "--param", "n=4")
    store = tmp_path / "store"
    mine = files(store / "runs" / first)
    assert mine and all(name.endswith(".pack") for name in mine)  # nums, 3 sq children, total: one pack
    cache = files(store / "flows")
    assert cache  # the cache key of total

    done = cli("runs", "delete", first, "--format", "json", env=env)
    assert done.rc == 0, done.output
    assert json.loads(done.stdout) == {"deleted": {"runs": [first]},
                                       "freed": {"results": 5, "objects": 1, "bytes": sum(mine.values()),
                                                 "errors": []}}
    assert not (store / "runs" / first).exists()  # the bytes are gone
    assert files(store / "runs" / second) and files(store / "flows") == cache  # another run's, and cache keys

    theirs = sum(files(store / "runs" / second).values())
    text = cli("runs", "delete", second, env=env)
    assert text.rc == 0, text.output
    assert text.stdout.splitlines() == [f"run {second}: deleted", f"kept results freed: 6 results, {theirs:,} bytes"]
    assert not (store / "runs" / second).exists()


def test_prune_keeps_30_days_by_default_and_says_what_it_freed(cli, spec, env, tmp_path):
    old = run(cli, spec, env)
    store = tmp_path / "store"
    age(store, 40)  # the old run's pack and the cache key of n=3 it wrote
    old_bytes = sum(files(store).values())
    new = run(cli, spec, env, "--param", "n=4")
    kept = sum(files(store / "runs" / new).values())

    week = cli("results", "prune", "--keep-results", "41d", env=env)
    assert week.rc == 0, week.output
    assert f"  local {store}/: 0 results freed (0 files, 0 bytes), 13 kept" in week.stdout
    assert week.stdout.endswith("freed 0 results, 0 bytes\n")

    done = cli("results", "prune", "--format", "json", env=env)
    assert done.rc == 0, done.output
    report = json.loads(done.stdout)
    assert report["keep_results"] == "30d" and report["keep_results_seconds"] == 30 * DAY
    assert abs(report["cutoff"] - (time.time() - 30 * DAY)) < 60
    assert (report["results"], report["objects"], report["bytes"]) == (6, 2, old_bytes)
    assert report["stores"] == [{"type": "local", "location": f"{store}/", "results": 6, "objects": 2,
                                 "bytes": old_bytes, "kept": 7, "error": None}]
    assert not (store / "runs" / old).exists() and sum(files(store / "runs" / new).values()) == kept
    assert len(files(store / "flows")) == 1  # the cache key of n=4, written by the new run

    text = cli("results", "prune", env=env)
    assert text.rc == 0 and "(30d, the default)" in text.stdout and "freed 0 results, 0 bytes" in text.stdout


def test_prune_never_removes_what_a_run_still_going_kept(cli, cli_start, spec, env, tmp_path):
    spec.write_text(spec.read_text() + "  hold: {run: steps:hold, with: {xs: \"${{ tasks.sq }}\"}}\n")
    going = cli_start("run", spec, env=env)
    try:
        folder = None
        for _ in range(300):  # its first pack: a couple of seconds after its first results
            runs = tmp_path / "store" / "runs"
            packs = list(runs.glob("*/*.pack")) if runs.exists() else []
            if packs:
                folder = packs[0].parent
                break
            time.sleep(0.1)
        assert folder is not None, "the running run wrote no pack"
        age(folder, 365)
        listed = json.loads(cli("runs", "list", "--format", "json", env=env).stdout)
        assert listed[0]["id"] == folder.name and listed[0]["state"] == "Running"

        done = cli("results", "prune", "--keep-results", "0s", "--format", "json", env=env)
        assert done.rc == 0, done.output
        assert json.loads(done.stdout)["results"] == 0 and files(folder)
    finally:
        (tmp_path / "go").write_text("")
        going.communicate(timeout=60)
    assert going.returncode == 0
    done = cli("results", "prune", "--keep-results", "0s", "--format", "json", env=env)
    assert done.rc == 0, done.output
    assert json.loads(done.stdout)["results"] == 7 and not folder.exists()  # ended: its results may go


@pytest.mark.parametrize("given", ["3x", "-1d", "", "7 days", "d"])
def test_a_bad_duration_is_a_usage_error_naming_the_flag(cli, env, given):
    done = cli("results", "prune", f"--keep-results={given}", env=env)
    assert done.rc == 2, done.output
    assert f"--keep-results: expected a duration such as 12h, 7d or 4w, got '{given}'" in done.stderr
    assert "Traceback" not in done.output


def test_flows_delete_frees_the_kept_results_of_its_runs(cli, cli_start, spec, env, tmp_path):
    assert cli("register", spec, env=env).rc == 0
    agent = cli_start("agent", "start", "--name", "a1", "--poll-interval", "0.1", env=env)
    try:
        done = cli("run", "--name", "kept", "--watch", env=env, timeout=60)
        assert done.rc == 0, done.output
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    ran = json.loads(cli("runs", "list", "--format", "json", env=env).stdout)[0]["id"]
    store = tmp_path / "store"
    size = sum(files(store / "runs" / ran).values())
    assert size > 0

    gone = cli("flows", "delete", "kept", env=env)
    assert gone.rc == 0, gone.output
    assert gone.stdout.splitlines() == ["flow 'kept' (project default): deleted version 1 and 1 run",
                                        f"kept results freed: 5 results, {size:,} bytes"]
    assert not (store / "runs" / ran).exists()
