"""The KV store against each backend: 50 task runs setting their own keys at once, in threads
and in processes, lose no write; the tasks write to the run's backend (FLOWSPEC_BACKEND)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TASKS = """\
from flowspec import kv

def put(i: int) -> None:
    kv.set(f"item/{i:03d}", {"i": i})
    kv.set("last", i)  # one key, many writers: the last one wins
"""
FLOW = """\
version: 1
name: parallel-kv
executor: {{type: local-dask, scheduler: {scheduler}, workers: 4}}
tasks:
  put: {{run: "tasks:put", map: {{i: {items}}}}}
"""


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_parallel_sets_lose_nothing(tmp_path: Path, backend_url: str, scheduler: str) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "flow.yaml").write_text(FLOW.format(scheduler=scheduler, items=list(range(50))))
    env = {**os.environ, "FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": backend_url}
    env.pop("PYTHONWARNINGS", None)

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    cli("run", tmp_path / "flow.yaml")
    listed = json.loads(cli("kv", "list", "item/", "--format", "json"))
    assert [item["value"]["i"] for item in listed] == list(range(50))
    assert json.loads(cli("kv", "get", "last")) in range(50)
