"""The task and flow keys of the expression language through the CLI: validate (positioned errors,
--strict signatures), plan and graph showing them, fmt ordering them, and env references in the
flow's name, labels and descriptions resolved for run, register and plan."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

STEPS = """\
def data():
    return {"rows": 3, "id": "j1"}
def is_big(data):
    return data["rows"] > 2
def process(data):
    return data["rows"]
def report(result, region):
    return result
def poll(job_id):
    return {"done": True}
def start():
    return "cluster"
def close(cluster):
    pass
def hook(info, url=None):
    pass
"""

SPEC = """\
version: 1
name: language
timeout: 10m
outputs:
  total: ${{ tasks.report }}
on_failure: {run: steps:hook, with: {url: "${{ env.ALERT_URL || 'http://127.0.0.1:9' }}"}}
parameters:
  regions: {type: array, default: [eu, us]}
tasks:
  data: {run: steps:data}
  check: {run: steps:is_big, with: {data: "${{ tasks.data }}"}}
  big: {run: steps:process, with: {data: "${{ tasks.data }}"}, if: "${{ tasks.check }}"}
  small: {run: steps:process, with: {data: "${{ tasks.data }}"}, if: "${{ not tasks.check }}"}
  report:
    run: steps:report
    map: {region: "${{ params.regions }}"}
    with: {result: "${{ tasks.big || tasks.small }}"}
    run_name: "report-${{ args.region }}"
    on_retry: steps:hook
  poll:
    run: steps:poll
    with: {job_id: "${{ tasks.data.id }}"}
    loop: {until: "${{ result.done or context.loop.index >= 3 }}", max: 10}
  cluster: {run: steps:start, cleanup: steps:close}
"""


@pytest.fixture
def home(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": ""}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(STEPS)
    path = tmp_path / "flow.yaml"
    path.write_text(SPEC)
    return path


def test_a_spec_with_every_new_key_validates_strictly(cli, spec):
    result = cli("validate", "--strict", spec)
    assert result.rc == 0 and "no errors in 1 file" in result.stdout, result.output


def test_strict_refuses_a_cleanup_and_a_hook_of_the_wrong_signature(cli, spec):
    spec.write_text(SPEC.replace("cleanup: steps:close", "cleanup: steps:start")
                    .replace("on_retry: steps:hook", "on_retry: steps:data"))
    result = cli("validate", "--strict", spec)
    assert result.rc == 1
    assert f"{spec}:19:15: error: tasks.report.on_retry: steps:data: it must take one positional argument" \
        in result.stdout, result.stdout
    assert f"{spec}:24:40: error: tasks.cluster.cleanup: steps:start: it must take one positional argument" \
        in result.stdout, result.stdout
    assert "hint: a cleanup is called with the task's result" in result.stdout


@pytest.mark.parametrize("old, new, where, message", [
    ("if: \"${{ tasks.check }}\"", "if: \"${{ tasks.chek }}\"", "12:69: error: tasks.big.if",
     "unknown task 'chek' in ${{ tasks.chek }}"),
    ("report-${{ args.region }}", "report-${{ args.regon }}", "18:23: error: tasks.report.run_name",
     "unknown argument 'regon' in ${{ args.regon }}"),
    ("total: ${{ tasks.report }}", "total: ${{ tasks.reprt }}", "5:10: error: outputs.total",
     "unknown task 'reprt' in ${{ tasks.reprt }}"),
    ("cleanup: steps:close", "cleanup: close", "24:40: error: tasks.cluster.cleanup",
     "'close': expected 'module:function' or 'path/to/file.py:function'"),
    ("on_retry: steps:hook", "on_retry: hook", "19:15: error: tasks.report.on_retry", "'hook': expected"),
    ("job_id: \"${{ tasks.data.id }}\"", "job_id: \"${{ result }}\"", "22:25: error: tasks.poll.with.job_id",
     "${{ result }} is allowed only in loop.until"),
])
def test_malformed_keys_are_errors_at_their_position(cli, spec, old, new, where, message):
    assert old in SPEC
    spec.write_text(SPEC.replace(old, new))
    result = cli("validate", spec)
    assert result.rc == 1 and f"{spec}:{where}: {message}" in result.stdout, result.stdout


def test_plan_shows_conditions_merges_run_names_loops_cleanups_hooks_and_outputs(cli, spec, home):
    text = cli("plan", spec, env=home)
    assert text.rc == 0, text.output
    for line in ("       waits for: data (data), check (if)", "       if: ${{ tasks.check }} (false: Skipped)",
                 "       merges big || small: runs when at least one of them succeeded",
                 "       run name: report-${{ args.region }}",
                 "       loops until ${{ result.done or context.loop.index >= 3 }}, at most 10 iterations",
                 "       cleanup: steps:close (with the result, once its consumers have finished)",
                 "       on_retry: steps:hook", "  timeout: 600s for the whole run (then TimedOut)",
                 "  output total: ${{ tasks.report }}",
                 "  on_failure: steps:hook with url=${{ env.ALERT_URL || 'http://127.0.0.1:9' }}"):
        assert line in text.stdout.splitlines(), (line, text.stdout)
    plan = json.loads(cli("plan", spec, "--format", "json", env=home).stdout)
    tasks = {t["name"]: t for t in plan["tasks"]}
    assert tasks["big"]["if"] == "${{ tasks.check }}" and tasks["big"]["condition_upstream"] == ["check"]
    assert tasks["report"]["merge"] == [["big", "small"]]
    assert tasks["report"]["run_name"] == "report-${{ args.region }}"
    assert tasks["poll"]["loop"] == {"until": "${{ result.done or context.loop.index >= 3 }}", "max": 10}
    assert tasks["cluster"]["cleanup"] == "steps:close"
    assert tasks["report"]["hooks"] == {"on_retry": {"run": "steps:hook", "with": {}}}
    assert plan["outputs"] == {"total": "${{ tasks.report }}"} and plan["timeout_s"] == 600.0
    assert plan["hooks"]["on_failure"]["with"] == {"url": "${{ env.ALERT_URL || 'http://127.0.0.1:9' }}"}


def test_graph_draws_condition_and_merge_edges(cli, spec):
    mermaid = cli("graph", spec)
    assert mermaid.rc == 0, mermaid.output
    ids = {line.split("[")[0].strip(): line for line in mermaid.stdout.splitlines() if "[" in line and "-->" not in line}
    names = {line.split('"')[1].split("<br/>")[0]: key for key, line in ids.items() if '"' in line}
    assert f"{names['check']} -.->|if| {names['big']}" in mermaid.stdout
    assert f"{names['big']} -.->|#124;#124;| {names['report']}" in mermaid.stdout
    assert f"{names['small']} -.->|#124;#124;| {names['report']}" in mermaid.stdout
    assert f"{names['data']} --> {names['big']}" in mermaid.stdout
    dot = cli("graph", spec, "--format", "dot").stdout
    assert '"check" -> "big" [style=dotted, label="if"];' in dot
    assert '"big" -> "report" [style=dashed, label="||"];' in dot


def test_fmt_puts_the_new_keys_in_the_reference_order(cli, tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text("version: 1\non_success: m:h\nname: x\ntimeout: 5m\ntasks:\n"
                    "  a:\n    cleanup: m:c\n    if: ${{ true }}\n    run: m:a\n")
    assert cli("fmt", path).rc == 0
    assert path.read_text() == ("version: 1\nname: x\ntasks:\n  a:\n    run: m:a\n    if: ${{ true }}\n"
                                "    cleanup: m:c\ntimeout: 5m\non_success: m:h\n")
    path.write_text("version: 1\nname: x\ntasks:\n  a:\n    if: ${{ true }}\n    trigger: none_failed\n    run: m:a\n")
    assert cli("fmt", path).rc == 0
    assert path.read_text() == "version: 1\nname: x\ntasks:\n  a:\n    run: m:a\n    trigger: none_failed\n    if: ${{ true }}\n"


# -- env references in the name, labels and descriptions -----------------------------------------
ENV_SPEC = """\
version: 1
name: ${{ env.FLOW_NAME }}
description: "for ${{ env.TEAM || 'nobody' }}"
environment:
  labels: ["${{ env.POOL || 'dev' }}"]
tasks:
  data: {run: steps:data}
"""


def test_run_resolves_the_flow_name_or_stops_at_its_position(cli, tmp_path, home, monkeypatch):
    monkeypatch.delenv("FLOW_NAME", raising=False)
    (tmp_path / "steps.py").write_text(STEPS)
    path = tmp_path / "flow.yaml"
    path.write_text(ENV_SPEC)
    result = cli("run", path, env=home)
    assert result.rc != 0
    assert f"{path}:2:7: error: name: environment variable FLOW_NAME is not set" in result.stderr, result.output
    assert "nothing was run" in result.stderr
    named = cli("run", path, "--format", "json", env={"FLOW_NAME": "nightly-etl"} | home)
    assert named.rc == 0 and json.loads(named.stdout)["flow"] == "nightly-etl", named.output


def test_validate_warns_of_an_unset_name_variable(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("FLOW_NAME", raising=False)
    path = tmp_path / "flow.yaml"
    path.write_text(ENV_SPEC)
    result = cli("validate", path)
    assert result.rc == 0
    assert f"{path}:2:7: warning: name: environment variable FLOW_NAME is not set" in result.stdout


def test_plan_and_register_read_the_name_and_labels_from_the_environment(cli, tmp_path, home, monkeypatch):
    monkeypatch.delenv("FLOW_NAME", raising=False)
    (tmp_path / "steps.py").write_text(STEPS)
    path = tmp_path / "flow.yaml"
    path.write_text(ENV_SPEC)
    env = {"FLOW_NAME": "nightly-etl", "POOL": "gpu", "TEAM": "data"} | home
    plan = json.loads(cli("plan", path, "--format", "json", env=env).stdout)
    assert (plan["flow"], plan["description"], plan["environment"]["labels"]) == ("nightly-etl", "for data", ["gpu"])
    registered = cli("register", path, "--format", "json", env=env)
    assert registered.rc == 0, registered.output
    flow = json.loads(registered.stdout)
    assert (flow["name"], flow["labels"]) == ("nightly-etl", ["gpu"])
    refused = cli("register", path, env=home)
    assert refused.rc != 0 and f"{path}:2:7: error: name: environment variable FLOW_NAME is not set" in refused.output


def test_a_reference_other_than_env_in_the_name_is_an_error(cli, tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(ENV_SPEC.replace("env.FLOW_NAME", "params.name"))
    result = cli("validate", path)
    assert result.rc == 1
    assert f"{path}:2:7: error: name: ${{{{ params.name }}}}: only env references are allowed in 'name'" in result.stdout


def test_a_parameter_description_that_reads_the_environment_runs(cli, tmp_path):
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flow.yaml").write_text(
        "version: 1\nname: described\nparameters:\n  p:\n    default: 1\n"
        "    description: \"from ${{ env.FS_DESC || 'nowhere' }}\"\ntasks:\n  data: {run: steps:data}\n")
    result = cli("run", "flow.yaml", cwd=tmp_path)
    assert result.rc == 0 and "internal error" not in result.output, result.output


def test_cache_validates_without_a_warning_and_runs(cli, tmp_path):
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flow.yaml").write_text("version: 1\nname: cached\ntasks:\n  data: {run: steps:data, cache: true}\n")
    checked = cli("validate", "flow.yaml", cwd=tmp_path, env={"FLOWSPEC_HOME": str(tmp_path / "home")})
    assert checked.rc == 0 and "warning" not in checked.output, checked.output
    ran = cli("run", "flow.yaml", cwd=tmp_path, env={"FLOWSPEC_HOME": str(tmp_path / "home")})
    assert ran.rc == 0, ran.output
    again = cli("run", "flow.yaml", cwd=tmp_path, env={"FLOWSPEC_HOME": str(tmp_path / "home")})
    assert again.rc == 0 and "Cached" in again.stdout, again.output
