"""A parameter default that reads `${{ secrets.NAME }}`: valid, secret (masked wherever shown),
resolved only where the run runs (`plan` shows the mask without reading it), and a secret that is
not set is an error naming where it was looked for."""
from __future__ import annotations

import json
from pathlib import Path

FLOW = """\
version: 1
name: tok
parameters:
  token: {type: string, default: "${{ secrets.API_KEY }}"}
tasks:
  show: {run: steps:show, with: {token: "${{ params.token }}"}}
"""

STEPS = """\
from flowspec import context


def show(token):
    context.logger.info("token is %s", token)
    return len(token)
"""


def test_a_secret_default_is_resolved_where_the_run_runs_and_masked(cli, tmp_path: Path):
    (tmp_path / "steps.py").write_text(STEPS)
    spec = tmp_path / "flow.yaml"
    spec.write_text(FLOW)
    env = {"FLOWSPEC_HOME": str(tmp_path / "home")}
    assert cli("validate", spec, env=env).rc == 0
    plan = cli("plan", spec, "--format", "json", env=env)
    assert plan.rc == 0, plan.output
    assert [(p["name"], p["value"], p["masked"]) for p in json.loads(plan.stdout)["parameters"]] == \
        [("token", "***", True)]
    unset = cli("run", spec, env=env)
    assert unset.rc == 2 and "parameter 'token': its default reads ${{ secrets.API_KEY }}" in unset.stderr
    assert "FLOWSPEC_SECRET_API_KEY" in unset.stderr and "Traceback" not in unset.output
    ran = cli("run", spec, env=env | {"FLOWSPEC_SECRET_API_KEY": "k-123456"})
    assert ran.rc == 0, ran.output
    assert "token is ***" in ran.stderr and "k-123456" not in ran.output
    runs = json.loads(cli("runs", "list", "--format", "json", env=env).stdout)
    shown = cli("runs", "show", runs[0]["id"], "--format", "json", env=env)
    assert json.loads(shown.stdout)["parameters"] == {"token": "***"} and "k-123456" not in shown.stdout
    logs = cli("runs", "logs", runs[0]["id"], env=env)
    assert "token is ***" in logs.stdout and "k-123456" not in logs.stdout
    assert b"k-123456" not in b"".join(p.read_bytes() for p in (tmp_path / "home").rglob("*") if p.is_file())
