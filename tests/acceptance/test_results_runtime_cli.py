"""`results`, `persist`, `cache` and `target` at run time, through the CLI: results kept in the
store on every executor, a hit Cached (a Success everywhere) without a call, mapped children
cached one by one, a damaged stored result failing its task run with both digests, and a value
that cannot be pickled logged while its task keeps its state."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

STEPS = """\
import threading
from pathlib import Path

CALLS = Path(__file__).with_name("calls.txt")


def note(what):
    with CALLS.open("a") as f:
        f.write(what + "\\n")


def nums(n):
    note("nums")
    return list(range(n))


def square(x):
    note(f"square {x}")
    return x * x


def total(xs):
    note("total")
    return sum(xs)


def lock():
    return threading.Lock()
"""

FLOW = """\
version: 1
name: kept
parameters:
  n: {type: integer, default: 3}
EXECUTOR
results: {type: local, directory: store}
tasks:
  nums:
    run: steps:nums
    with: {n: "${{ params.n }}"}
  sq:
    run: steps:square
    map: {x: "${{ tasks.nums }}"}
    cache: true
  total:
    run: steps:total
    with: {xs: "${{ tasks.sq }}"}
    target: "totals/${{ params.n }}.pkl"
"""


def write(folder: Path, executor: str = "", extra: str = "") -> Path:
    (folder / "steps.py").write_text(STEPS)
    (folder / "flow.yaml").write_text(FLOW.replace("EXECUTOR", executor) + extra)
    return folder / "flow.yaml"


def calls(folder: Path) -> list[str]:
    path = folder / "calls.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def states(cli, env, run_id: str) -> dict:
    shown = cli("runs", "show", run_id, "--format", "json", env=env)
    assert shown.rc == 0, shown.output
    return {t["task"]: t["state"] for t in json.loads(shown.stdout)["tasks"] if t["map_index"] is None}


def last_run(cli, env) -> str:
    return json.loads(cli("runs", "list", "--format", "json", env=env).stdout)[0]["id"]


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home")}


def kept(store: Path, run: str, task: str, index: int | None = None) -> bool:
    """Whether `run` kept the result of `task` (`index`: of that mapped child) in the store."""
    from flowspec.results import LocalResultStore, RunKey

    return LocalResultStore(store).exists("kept", task, RunKey(run, index))


def test_results_are_kept_per_run_and_a_second_run_is_cached(cli, tmp_path, env):
    spec = write(tmp_path)
    first = cli("run", spec, env=env)
    assert first.rc == 0, first.output
    assert sorted(calls(tmp_path)) == ["nums", "square 0", "square 1", "square 2", "total"]
    run1 = last_run(cli, env)
    store = tmp_path / "store"
    assert kept(store, run1, "nums")  # persist: the default with `results`
    assert [kept(store, run1, "sq", i) for i in range(4)] == [True, True, True, False]
    assert [p.name.endswith("-5.pack") for p in (store / "runs" / run1).iterdir()] == [True]  # in one pack
    assert (tmp_path / "store" / "targets" / "totals" / "3.pkl").is_file()

    second = cli("run", spec, env=env)
    assert second.rc == 0, second.output
    assert calls(tmp_path) == ["nums"]  # no call for a hit
    assert "Cached: result loaded from" in second.output and "totals/3.pkl" in second.output
    assert "sq: 3 of 3 mapped runs Cached: results loaded from" in second.output  # one line for the children
    assert "Success" in second.stdout  # the flow run: a hit counts as a success
    got = states(cli, env, last_run(cli, env))
    assert got == {"nums": "Success", "sq": "Cached", "total": "Cached"}


def test_mapped_children_are_cached_one_by_one(cli, tmp_path, env):
    spec = write(tmp_path)
    assert cli("run", spec, env=env).rc == 0
    calls(tmp_path)
    more = cli("run", spec, "--param", "n=4", env=env)
    assert more.rc == 0, more.output
    assert sorted(calls(tmp_path)) == ["nums", "square 3", "total"]  # a new target path: total runs
    shown = json.loads(cli("runs", "show", last_run(cli, env), "--format", "json", env=env).stdout)
    sq = next(t for t in shown["tasks"] if t["task"] == "sq" and t["map_index"] is None)
    assert sq["state"] == "Success"


def test_a_damaged_stored_result_fails_its_task_run_naming_both_digests(cli, tmp_path, env):
    spec = write(tmp_path)
    assert cli("run", spec, env=env).rc == 0
    target = tmp_path / "store" / "targets" / "totals" / "3.pkl"
    target.write_bytes(target.read_bytes()[:-1] + b"X")
    result = cli("run", spec, env=env)
    assert result.rc == 1, result.output
    assert "checksum mismatch: written with sha256" in result.output and "but holds sha256" in result.output
    assert str(target) in result.output
    assert states(cli, env, last_run(cli, env))["total"] == "Failed"
    assert "Traceback" not in result.output


def test_a_result_that_cannot_be_pickled_is_an_error_and_the_task_keeps_its_state(cli, tmp_path, env):
    spec = write(tmp_path, extra="  lock: {run: steps:lock}\n")
    result = cli("run", spec, env=env)
    assert result.rc == 0, result.output
    assert "the result of task 'lock' cannot be kept: a _thread.lock cannot be pickled" in result.output
    assert states(cli, env, last_run(cli, env))["lock"] == "Success"


def test_persist_false_keeps_nothing_and_no_results_keeps_nothing(cli, tmp_path, env):
    spec = write(tmp_path, extra="  other: {run: steps:nums, with: {n: 1}, persist: false}\n")
    assert cli("run", spec, env=env).rc == 0
    assert kept(tmp_path / "store", last_run(cli, env), "nums")
    assert not kept(tmp_path / "store", last_run(cli, env), "other")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "steps.py").write_text(STEPS)
    (plain / "flow.yaml").write_text("version: 1\nname: plain\ntasks:\n  a: {run: steps:nums, with: {n: 2}}\n")
    assert cli("run", plain / "flow.yaml", env=env).rc == 0
    assert not (tmp_path / "home" / "results").exists()


@pytest.mark.parametrize("executor", ["executor: {type: local-dask, scheduler: threads}",
                                      "executor: {type: local-dask, scheduler: processes, workers: 2}",
                                      "executor: {type: dask, workers: 1, threads: 2}"])
def test_cache_and_target_work_on_local_dask_and_across_executors(cli, tmp_path, env, executor):
    spec = write(tmp_path)
    assert cli("run", spec, env=env).rc == 0  # local
    calls(tmp_path)
    write(tmp_path, executor)
    again = cli("run", spec, env=env, timeout=60)
    assert again.rc == 0, again.output
    assert calls(tmp_path) == ["nums"]
    run2 = last_run(cli, env)
    assert states(cli, env, run2) == {"nums": "Success", "sq": "Cached", "total": "Cached"}
    assert kept(tmp_path / "store", run2, "nums")  # kept where it ran; a Cached run is not copied
    assert not kept(tmp_path / "store", run2, "sq", 2)


def test_a_cache_key_template_and_expiry(cli, tmp_path, env):
    spec = write(tmp_path)
    text = spec.read_text().replace("cache: true", 'cache: {key: "sq-${{ args.x }}", expires: 1h}')
    spec.write_text(text)
    assert cli("run", spec, env=env).rc == 0
    assert (tmp_path / "store" / "flows" / "kept" / "sq" / "sq-1.pkl").is_file()
    calls(tmp_path)
    assert cli("run", spec, env=env).rc == 0
    assert calls(tmp_path) == ["nums"]


@pytest.mark.parametrize("executor", ["", "executor: {type: local-dask, scheduler: processes, workers: 2}\n"],
                         ids=["local", "local-dask-processes"])
def test_a_result_holding_a_secret_is_not_kept_and_reruns(cli, tmp_path, env, executor):
    """flowspec writes a secret nowhere: a result whose bytes hold one is not put in the store (a
    warning says so), the task keeps its state, and the next run calls it again."""
    planted = "kept-s3cr3t-\u00e9"
    (tmp_path / "leaky.py").write_text("def leak(token):\n    return {'dsn': 'db://u:' + token + '@db'}\n")
    spec = write(tmp_path, executor, extra='  leak: {run: leaky:leak, with: {token: "${{ secrets.DB_TOKEN }}"}, cache: true}\n')
    run_env = {**env, "FLOWSPEC_SECRET_DB_TOKEN": planted}
    for _ in range(2):
        result = cli("run", spec, env=run_env)
        assert result.rc == 0, result.output
        assert "its result is not kept: it holds the value of a secret" in result.output
        assert states(cli, env, last_run(cli, env))["leak"] == "Success"
    assert not kept(tmp_path / "store", last_run(cli, env), "leak")
    assert kept(tmp_path / "store", last_run(cli, env), "nums")
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            assert planted.encode() not in path.read_bytes(), path
