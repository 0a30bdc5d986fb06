"""Kept results, caching and restarts of a flow that runs in its own image: the docker environment
on a real engine, the result store on S3 (the moto server on 127.0.0.1, reached from the container
with host networking and dummy credentials). One flow, so one image, serves every case: a cache
hit and a target across runs; `runs restart` after a failure at the end, in the middle and in a
mapped child, with `--from` a middle task and with a changed `--param`, of `run FILE` and of a
registered flow through an agent. Each task prints `called NAME` when it is called, which
reaches the run's output: a task that is reused or Cached prints nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine_fixtures import IMAGE_PYTHON, cache_dir

pytestmark = [pytest.mark.aws, pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]
BUCKET = "kept-results"
AWS_WHEELS = ["boto3>=1.26"]

TASKS = '''
import os

def _called(name):
    print(f"called {name}", flush=True)
    if name in os.environ.get("FAIL_TASKS", "").split(","):
        raise RuntimeError(f"{name} fails on purpose")

def extract(day):
    _called("extract")
    return [1, 2, 3]

def square(x):
    _called("square")
    return x * x

def report(rows):
    _called("report")
    return f"{len(rows)} rows"

def scale(rows, n):
    _called("scale")
    return [r * n for r in rows]

def each(x):
    _called(f"each{x}")
    return x + 1

def load(rows, plus, square):
    _called("load")
    return sum(rows) + sum(plus) + square
'''

FLOW = """\
  extract:
    run: tasks:extract
    with: {day: "${{ params.day }}"}
  square:
    run: tasks:square
    cache: true
    with: {x: 3}
  report:
    run: tasks:report
    target: "reports/${{ params.day }}.pkl"
    with: {rows: "${{ tasks.extract }}"}
  scale:
    run: tasks:scale
    with: {rows: "${{ tasks.extract }}", n: "${{ params.n }}"}
  each:
    run: tasks:each
    map: {x: "${{ tasks.extract }}"}
  load:
    run: tasks:load
    with: {rows: "${{ tasks.scale }}", plus: "${{ tasks.each }}", square: "${{ tasks.square }}"}
"""


@pytest.fixture(scope="session")
def aws_wheels() -> Path:
    """A cached folder of the wheels of boto3 (and its dependencies) for the image's Python."""
    folder = cache_dir() / f"wheels-aws-py{IMAGE_PYTHON}"
    stamp = folder / ".complete"
    if stamp.is_file():
        return folder
    folder.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", IMAGE_PYTHON, "--dest", str(folder), *AWS_WHEELS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot download the wheels images install from (needs PyPI): {proc.stderr[-2000:]}")
    stamp.write_text("\n".join(AWS_WHEELS) + "\n")
    return folder


@pytest.fixture
def s3_flows(docker_flows, moto, aws_wheels: Path, tmp_path: Path):
    """docker_flows whose wheelhouse holds boto3 and whose environment points boto3 at moto."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for folder in (Path(docker_flows.env["FLOWSPEC_WHEELHOUSE"]), aws_wheels):
        for wheel in folder.glob("*.whl"):
            if not (house / wheel.name).exists():
                os.symlink(wheel, house / wheel.name)
    docker_flows.env.update({k: v for k, v in moto.env.items() if k.startswith("AWS_")},
                            FLOWSPEC_WHEELHOUSE=str(house))
    moto.client("s3").create_bucket(Bucket=BUCKET)
    return docker_flows


def _flow(flows, moto) -> Path:
    spec = flows.write("kept", FLOW, environment="  network_mode: host\n", code=TASKS)
    with open(spec, "a") as fh:
        fh.write("parameters:\n  day: {type: string, default: '2026-01-01'}\n  n: {type: integer, default: 2}\n"
                 f"results:\n  type: s3\n  bucket: {BUCKET}\n  prefix: team/\n  endpoint_url: {moto.url}\n"
                 "outputs:\n  total: ${{ tasks.load }}\n")
    return spec


def _run(flows, *args: str, fail: str = "", code: int = 0) -> tuple[dict, set[str], str]:
    """The CLI's JSON, the tasks called (each printed `called NAME`) and its standard error."""
    env = {**flows.env, "FAIL_TASKS": fail}
    proc = flows.cli(*args, "--format", "json", env=env)
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-5000:]
    called = {line.split("called ", 1)[1].split()[0] for line in proc.stderr.splitlines() if "called " in line
              and "fails on purpose" not in line}
    return json.loads(proc.stdout), called, proc.stderr


def _states(result: dict) -> dict:
    return {name: task["state"] for name, task in result["tasks"].items()}


def test_cache_target_and_restarts_from_a_container_with_an_s3_store(s3_flows, moto):
    spec = _flow(s3_flows, moto)
    # A failure at the end: everything else succeeded and was kept in the bucket.
    first, called, err = _run(s3_flows, "run", str(spec), fail="load", code=1)
    assert called == {"extract", "square", "report", "scale", "each1", "each2", "each3", "load"}, err[-3000:]
    assert _states(first)["load"] == "Failed" and _states(first)["scale"] == "Success"
    keys = [o["Key"] for o in moto.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "team/targets/reports/2026-01-01.pkl" in keys and all(k.startswith("team/") for k in keys)

    # `runs restart` runs only the failed task, inside a new container, from the kept results.
    again, called, err = _run(s3_flows, "runs", "restart", first["run_id"])
    assert called == {"load"}, err[-3000:]
    assert again["state"] == "Success" and again["outputs"] == {"total": 12 + 9 + 9}
    assert again["restart"]["load"]["action"] == "runs again"
    assert all(again["restart"][t]["action"] == "reused" for t in ("extract", "square", "report", "scale", "each"))
    assert {_states(again)[t] for t in ("extract", "scale", "each")} == {"Cached"}

    # A new run: the cached task and the target are hits across runs (Cached, not called).
    second, called, err = _run(s3_flows, "run", str(spec))
    assert called == {"extract", "scale", "each1", "each2", "each3", "load"}, err[-3000:]
    assert _states(second)["square"] == "Cached" and _states(second)["report"] == "Cached"
    assert "s3://kept-results/team/targets/reports/2026-01-01.pkl" in err

    # --from a middle task: it and what is downstream of it run again, the rest is reused.
    middle, called, err = _run(s3_flows, "runs", "restart", second["run_id"], "--from", "scale")
    assert called == {"scale", "load"}, err[-3000:]
    assert middle["restart"]["scale"]["why"] == "named by --from" and middle["outputs"] == {"total": 30}

    # A changed parameter: what reads it runs again, and what takes their results.
    changed, called, err = _run(s3_flows, "runs", "restart", second["run_id"], "--param", "n=5")
    assert called == {"scale", "load"}, err[-3000:]
    assert changed["restart"]["scale"]["why"] == "parameter n changed"
    assert changed["outputs"] == {"total": 30 + 9 + 9}

    # A failure in the middle: the failed task and what follows it.
    fourth, called, err = _run(s3_flows, "run", str(spec), fail="scale", code=1)
    assert _states(fourth)["scale"] == "Failed" and _states(fourth)["load"] == "TriggerFailed"
    middle, called, err = _run(s3_flows, "runs", "restart", fourth["run_id"])
    assert called == {"scale", "load"}, err[-3000:]
    assert middle["state"] == "Success" and middle["outputs"] == {"total": 30}

    # A failure in a mapped child: the restart runs that child and what waits for it.
    third, called, err = _run(s3_flows, "run", str(spec), fail="each2", code=1)
    assert _states(third)["each"] == "Failed" and _states(third)["load"] == "TriggerFailed"
    mapped, called, err = _run(s3_flows, "runs", "restart", third["run_id"])
    assert called == {"each2", "load"}, err[-3000:]
    assert mapped["state"] == "Success" and mapped["outputs"] == {"total": 30}


def test_a_registered_flows_restart_runs_in_a_container_through_an_agent(s3_flows, moto):
    spec = _flow(s3_flows, moto)
    assert s3_flows.cli("register", str(spec)).returncode == 0
    s3_flows.agent(env={**s3_flows.env, "FAIL_TASKS": "each3"})
    first = s3_flows.cli("run", "--name", "kept", "--watch", timeout=180)
    assert first.returncode == 1, first.stdout + first.stderr + s3_flows.agent_log()
    old = first.stdout.splitlines()[0]
    s3_flows.stop_agents()
    s3_flows.agent()
    again = s3_flows.cli("runs", "restart", old, "--watch", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr + s3_flows.agent_log()
    assert "2 run again (by an agent)" in again.stderr
    new = again.stdout.splitlines()[0]
    logs = s3_flows.cli("runs", "logs", new).stdout
    called = {line.split("called ", 1)[1].split()[0] for line in logs.splitlines() if "called " in line}
    assert called == {"each3", "load"}, logs
    shown = json.loads(s3_flows.cli("runs", "show", new, "--format", "json").stdout)
    assert shown["restart_of"] == old and shown["outputs"] == {"total": 30}
    assert shown["restart"]["each"]["children"] == [0, 1] and shown["restart"]["scale"]["action"] == "reused"
