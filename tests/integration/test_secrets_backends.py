"""A planted secret against each backend and on a process pool: after a failing run of
`flowspec run FILE` and an agent's run of the registered flow, no table of the backend (every
row of every table, as text), no file and no output holds it in any form (flowspec.masking)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.test_secrets_cli import EVERYWHERE_FLOW, EVERYWHERE_TASKS, ODD, ODD_PARAM, _forms, _key

pytestmark = pytest.mark.integration

POOL = "executor: {type: local-dask, scheduler: processes, workers: 2}\n"


def _every_row(url: str) -> str:
    """Every row of every table of the backend, as text."""
    if url.startswith("sqlite://"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite://"):]) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return "\n".join(repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        assert "logs" in tables and "flow_runs" in tables
        return "\n".join(r[0] for t in tables for r in conn.execute(f'SELECT t::text FROM "{t}" t'))


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "processes"])
def test_a_planted_secret_reaches_no_table_of_the_backend(tmp_path: Path, backend_url: str, executor: str) -> None:
    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "tasks.py").write_text(EVERYWHERE_TASKS)
    (flow / "flow.yaml").write_text(EVERYWHERE_FLOW + (POOL if executor == "processes" else ""))
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": backend_url,
           "TMPDIR": str(tmp_path / "tmp"), "FLOWSPEC_SECRETS_KEY": _key()}
    for name in ("PYTHONWARNINGS", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)

    def cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], env=env, input=stdin,
                              capture_output=True, text=True, timeout=180)

    assert cli("secrets", "set", "API_TOKEN", stdin=ODD).returncode == 0
    param = f"password={ODD_PARAM}"
    done = cli("run", flow / "flow.yaml", "--param", param, "--format", "json")
    assert done.returncode == 1, done.stderr
    outputs = [done.stdout, done.stderr]
    assert cli("register", flow / "flow.yaml").returncode == 0
    agent = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--poll-interval", "0.2"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        watched = cli("run", "--name", "everywhere", "--param", param, "--watch")
        # while the agent still has the database open: a SQLite backend's -wal file is there too
        live = b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file())
        assert backend_url.startswith("postgresql") or list(tmp_path.rglob("*.db-wal")), "no -wal file to search"
    finally:
        agent.terminate()
        out, err = agent.communicate(timeout=60)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    outputs += [watched.stdout, watched.stderr, out, err]
    runs = json.loads(cli("runs", "list", "--format", "json").stdout)
    assert len(runs) == 2
    for run in runs:
        for args in (("runs", "show", run["id"], "--format", "json"), ("runs", "logs", run["id"])):
            outputs.append(cli(*args).stdout)
    text = "\n".join(outputs)
    assert "split ***" in text and "hook sees ***" in text and "cannot log in with 'ret:***'" in text
    rows = _every_row(backend_url)
    assert "split ***" in rows and "ret:***" in rows
    written = live + b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file())
    for value in (ODD, ODD_PARAM):
        for form in _forms(value):
            assert form.decode() not in text, f"{form!r} was shown"
            assert form.decode() not in rows, f"{form!r} is in the backend"
            assert form not in written, f"{form!r} was written to a file"
