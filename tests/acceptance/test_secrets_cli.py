"""Secrets through the CLI: `flowspec secrets set|list|delete`, `${{ secrets.NAME }}` from the
environment and from the backend's encrypted store, `secret: true` parameters, and masking: a
planted value is searched for in every byte flowspec wrote."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import _env

PLANTED = "pl4nted-S3CRET-value"
PARAM = "param-Pa55-word"
TASKS = """\
import logging

def leak(token: str, password: str, conn: str) -> None:
    import os
    print("the token is", token, "and the env has", os.environ["DB_URL"])
    logging.getLogger("flowspec.task").warning("password %s", password)
    raise RuntimeError(f"cannot log in with {token} / {password} / {conn}")

def fine(token: str) -> int:
    return len(token)
"""
FLOW = """\
version: 1
name: leaky
parameters:
  password: {type: string, secret: true}
environment:
  env: {DB_URL: "postgresql://u:${{ secrets.API_TOKEN }}@db/x"}
tasks:
  leak:
    run: tasks:leak
    with: {token: "${{ secrets.API_TOKEN }}", password: "${{ params.password }}", conn: "x${{ secrets.API_TOKEN }}x"}
"""
MISSING = """\
version: 1
name: missing
tasks:
  first: {run: tasks:fine, with: {token: "${{ secrets.NOT_THERE }}"}}
"""


def _key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _cli(args, env: dict, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], input=stdin, text=True,
                          capture_output=True, env=_env(env), cwd=cwd, timeout=60)


@pytest.fixture()
def env(tmp_path: Path) -> dict:
    (tmp_path / "tmp").mkdir()  # crash reports and temporary files land here, and are searched
    return {"FLOWSPEC_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}


def _every_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_secrets_commands_need_a_key_and_never_show_values(env: dict, tmp_path: Path) -> None:
    refused = _cli(["secrets", "set", "API_TOKEN"], env, stdin=PLANTED)
    assert refused.returncode == 2 and "FLOWSPEC_SECRETS_KEY" in refused.stderr
    assert "Fernet.generate_key()" in refused.stderr
    env = {**env, "FLOWSPEC_SECRETS_KEY": _key()}
    assert _cli(["secrets", "set", "API_TOKEN"], env, stdin=PLANTED + "\n").returncode == 0
    (tmp_path / "v").write_text("other")
    assert _cli(["secrets", "set", "OTHER", "--file", tmp_path / "v"], env).returncode == 0
    listed = _cli(["secrets", "list", "--format", "json"], env)
    assert [s["name"] for s in json.loads(listed.stdout)] == ["API_TOKEN", "OTHER"]
    assert PLANTED not in listed.stdout
    assert _cli(["secrets", "set", "X", PLANTED], env).returncode == 2  # never from the command line
    assert _cli(["secrets", "delete", "OTHER"], env).returncode == 0
    assert _cli(["secrets", "delete", "OTHER"], env).returncode == 1
    assert PLANTED.encode() not in _every_byte(Path(env["FLOWSPEC_HOME"]))


@pytest.mark.parametrize("provider", ["env", "store"])
def test_a_planted_secret_is_nowhere(env: dict, tmp_path: Path, provider: str) -> None:
    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "tasks.py").write_text(TASKS)
    (flow / "flow.yaml").write_text(FLOW)
    if provider == "env":
        env = {**env, "FLOWSPEC_SECRET_API_TOKEN": PLANTED}
    else:
        env = {**env, "FLOWSPEC_SECRETS_KEY": _key()}
        assert _cli(["secrets", "set", "API_TOKEN"], env, stdin=PLANTED).returncode == 0
    outputs = []
    for fmt in ("text", "json"):
        done = _cli(["run", flow / "flow.yaml", "--param", f"password={PARAM}", "--format", fmt, "-v"], env)
        assert done.returncode == 1, done.stderr
        outputs += [done.stdout, done.stderr]
        assert "cannot log in with ***" in done.stdout + done.stderr
    run_id = json.loads(_cli(["runs", "list", "--format", "json"], env).stdout)[0]["id"]
    for args in (["runs", "show", run_id], ["runs", "show", run_id, "--format", "json"], ["runs", "logs", run_id],
                 ["runs", "list"], ["runs", "list", "--format", "json"], ["runs", "logs", run_id, "--format", "json"]):
        shown = _cli(args, env)
        assert shown.returncode == 0, shown.stderr
        outputs += [shown.stdout, shown.stderr]
    text = "\n".join(outputs)
    assert "the token is ***" in text and "password ***" in text
    for value in (PLANTED, PARAM):
        assert value not in text
        assert value.encode() not in _every_byte(tmp_path), f"{value} was written to a file"


def test_an_unresolvable_secret_fails_before_any_task(env: dict, tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "flow.yaml").write_text(MISSING)
    done = _cli(["run", tmp_path / "flow.yaml"], env)
    assert done.returncode != 0
    assert "NOT_THERE" in done.stderr and "FLOWSPEC_SECRET_NOT_THERE" in done.stderr
    assert "secret store" in done.stderr and "flow.yaml:4:" in done.stderr and "Traceback" not in done.stderr
    assert json.loads(_cli(["runs", "list", "--format", "json"], env).stdout) == []  # no task ran


AGENT_FLOW = """\
version: 1
name: agent-leaky
parameters:
  password: {type: string, secret: true}
tasks:
  leak:
    run: tasks:leak
    with: {token: "${{ secrets.API_TOKEN }}", password: "${{ params.password }}", conn: "c"}
"""


def test_a_secret_parameter_of_an_agent_run_is_stored_encrypted(env: dict, tmp_path: Path) -> None:
    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "tasks.py").write_text(TASKS)
    (flow / "flow.yaml").write_text(AGENT_FLOW)
    env = {**env, "FLOWSPEC_SECRETS_KEY": _key(), "FLOWSPEC_SECRET_API_TOKEN": PLANTED, "DB_URL": "x"}
    assert _cli(["register", flow / "flow.yaml"], env).returncode == 0
    no_key = {k: v for k, v in env.items() if k != "FLOWSPEC_SECRETS_KEY"}
    refused = _cli(["run", "--name", "agent-leaky", "--param", f"password={PARAM}"], no_key)
    assert refused.returncode == 2 and "FLOWSPEC_SECRETS_KEY" in refused.stderr
    agent = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--poll-interval", "0.2"],
                             env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        watched = _cli(["run", "--name", "agent-leaky", "--param", f"password={PARAM}", "--watch"], env)
    finally:
        agent.terminate()
        out, err = agent.communicate(timeout=30)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    text = watched.stdout + watched.stderr + out + err
    assert "cannot log in with *** / *** / c" in text
    run_id = json.loads(_cli(["runs", "list", "--format", "json"], env).stdout)[0]["id"]
    for args in (["runs", "show", run_id], ["runs", "show", run_id, "--format", "json"], ["runs", "logs", run_id]):
        text += _cli(args, env).stdout
    for value in (PLANTED, PARAM):
        assert value not in text
        assert value.encode() not in _every_byte(tmp_path), f"{value} was written to a file"
