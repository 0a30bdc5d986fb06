"""The KV store through the CLI: `flowspec kv set|get|list|delete`, `from flowspec import kv` in
tasks running in parallel (threads and processes), and `${{ kv.KEY }}` in a spec."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

TASKS = """\
from flowspec import kv

def put(i: int) -> None:
    kv.set(f"item/{i:03d}", {"i": i})

def read(watermark) -> str:
    print("watermark was", watermark, "from kv", kv.get("watermark"), kv.get("missing", "dflt"))
    kv.set("watermark", "2026-02-01")
    kv.delete("item/000")
    return watermark
"""
PARALLEL = """\
version: 1
name: parallel-kv
executor: {{type: local-dask, scheduler: {scheduler}, workers: 4}}
tasks:
  put: {{run: "tasks:put", map: {{i: {items}}}}}
"""
READS = """\
version: 1
name: reads-kv
tasks:
  read: {run: "tasks:read", with: {watermark: "${{ kv.watermark }}"}}
"""


@pytest.fixture()
def env(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": str(tmp_path / "kv.db")}


def test_kv_commands(cli, env, tmp_path: Path) -> None:
    assert cli("kv", "set", "watermark", '"2026-01-01"', env=env).rc == 0
    assert cli("kv", "set", "plain", "not json at all", env=env).rc == 0
    (tmp_path / "v.json").write_text('{"rows": [1, 2]}')
    assert cli("kv", "set", "doc", "--file", tmp_path / "v.json", env=env).rc == 0
    got = cli("kv", "get", "plain", env=env)
    assert got.rc == 0 and json.loads(got.stdout) == "not json at all"
    assert json.loads(cli("kv", "get", "doc", "--format", "json", env=env).stdout) == {"rows": [1, 2]}
    listed = json.loads(cli("kv", "list", "--format", "json", env=env).stdout)
    assert [item["key"] for item in listed] == ["doc", "plain", "watermark"]
    assert [i["key"] for i in json.loads(cli("kv", "list", "wa", "--format", "json", env=env).stdout)] == ["watermark"]
    missing = cli("kv", "get", "nope", env=env)
    assert missing.rc == 1 and "no key 'nope'" in missing.stderr and "Traceback" not in missing.stderr
    assert cli("kv", "delete", "plain", env=env).rc == 0
    assert cli("kv", "get", "plain", env=env).rc == 1
    assert cli("kv", "set", "x", env=env).rc == 2  # no value given


def test_kv_from_stdin(tmp_path: Path, env) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "flowspec", "kv", "set", "s", "-"], input="[1, 2, 3]\n",
                          text=True, capture_output=True, env={**__import__("os").environ, **env})
    assert done.returncode == 0, done.stderr
    from tests.acceptance.conftest import run_cli

    assert json.loads(run_cli("kv", "get", "s", env=env).stdout) == [1, 2, 3]


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_parallel_sets_lose_nothing(cli, env, tmp_path: Path, scheduler: str) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "flow.yaml").write_text(PARALLEL.format(scheduler=scheduler, items=list(range(50))))
    done = cli("run", tmp_path / "flow.yaml", env=env, timeout=120)
    assert done.rc == 0, done.output
    listed = json.loads(cli("kv", "list", "item/", "--format", "json", env=env).stdout)
    assert [item["value"]["i"] for item in listed] == list(range(50))


def test_kv_reference_and_task_api(cli, env, tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "flow.yaml").write_text(READS)
    cli("kv", "set", "watermark", '"2026-01-01"', env=env)
    cli("kv", "set", "item/000", "1", env=env)
    other = tmp_path / "other.db"  # --backend: the tasks' kv is the run's backend, not $FLOWSPEC_BACKEND
    assert cli("kv", "set", "watermark", '"2025-12-31"', "--backend", other, env=env).rc == 0
    done = cli("run", tmp_path / "flow.yaml", "--format", "json", "--backend", other, env=env)
    assert done.rc == 0, done.output
    assert "watermark was 2025-12-31 from kv 2025-12-31 dflt" in done.stderr
    assert json.loads(cli("kv", "get", "watermark", "--backend", other, env=env).stdout) == "2026-02-01"
    done = cli("run", tmp_path / "flow.yaml", env=env)
    assert done.rc == 0 and "watermark was 2026-01-01" in done.output
    assert cli("kv", "get", "item/000", env=env).rc == 1
    run_id = json.loads(cli("runs", "list", "--format", "json", env=env).stdout)[0]["id"]
    history = cli("runs", "logs", run_id, env=env).stdout
    assert 'kv.watermark = "2026-01-01"' in history  # the value read at run start is in the run's history
    bad = tmp_path / "bad.yaml"
    bad.write_text(READS.replace("kv.watermark", "kv.nothing"))
    failed = cli("run", bad, env=env)
    assert failed.rc != 0 and "kv.nothing" in failed.output and "Traceback" not in failed.output


CONDITIONAL = """\
version: 1
name: conditional-kv
tasks:
  first:
    run: tasks:read
    with: {watermark: "x"}
  gated:
    run: tasks:read
    if: ${{ kv.enabled == true }}
    with: {watermark: "${{ kv.watermark }}"}
    on_success: {run: "tasks:put", with: {i: "${{ kv.hook_index }}"}}
"""


def test_kv_in_a_condition_and_a_hook(cli, env, tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(TASKS.replace("def put(i: int)", "def put(info, i: int)"))
    (tmp_path / "flow.yaml").write_text(CONDITIONAL)
    assert cli("validate", tmp_path / "flow.yaml").rc == 0
    for key, value in (("enabled", "false"), ("watermark", '"w"'), ("hook_index", "7")):
        cli("kv", "set", key, value, env=env)
    skipped = json.loads(cli("run", tmp_path / "flow.yaml", "--format", "json", env=env).stdout)
    assert skipped["tasks"]["gated"]["state"] == "Skipped"
    cli("kv", "set", "enabled", "true", env=env)
    ran = json.loads(cli("run", tmp_path / "flow.yaml", "--format", "json", env=env).stdout)
    assert ran["tasks"]["gated"]["state"] == "Success"
    assert json.loads(cli("kv", "get", "item/007", env=env).stdout) == {"i": 7}  # the hook's argument
