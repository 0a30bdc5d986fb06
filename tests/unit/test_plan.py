"""`flowspec plan`'s content: order, mapping, effective settings, masking, and the backend view."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flowspec.backend import open_backend
from flowspec.compile import compile_file
from flowspec.drivers import TABLES
from flowspec.plan import MASK, backend_view, build_plan, render_text

SPEC = """\
version: 1
name: planned
parameters:
  people: {type: array, default: [a, b, c]}
  api_token: {type: string, default: not-shown}
tasks:
  summary:
    run: exploding_tasks:summary
    with:
      names: ${{ tasks.greet }}
      key: ${{ env.SERVICE_API_KEY }}
  greet:
    run: exploding_tasks:greet
    map:
      name: ${{ params.people }}
    retries: 2
  shout:
    run: exploding_tasks:shout
    map:
      text: ${{ tasks.greet }}
    after: [summary]
    timeout: 1m
executor:
  type: local-dask
  workers: 2
storage:
  type: docker
  image_name: planned
  env_vars:
    API_KEY: ${{ env.PLAN_TEST_KEY || 'not-shown-either' }}
    MODE: fast
environment:
  labels: [dev, gpu]
  env:
    REGION: ${{ env.PLAN_TEST_REGION || 'eu-west-1' }}
    DB_PASSWORD: ${{ env.PLAN_TEST_DB_PASSWORD }}
"""
TASKS = "raise RuntimeError('task code must not be imported by a plan')\n"


@pytest.fixture
def spec(tmp_path: Path):
    (tmp_path / "flow.yaml").write_text(SPEC)
    (tmp_path / "exploding_tasks.py").write_text(TASKS)
    compiled, diags = compile_file(str(tmp_path / "flow.yaml"))
    assert not diags
    return compiled


@pytest.fixture
def plan(spec, tmp_path):
    params = {"people": ["a", "b", "c"], "api_token": "not-shown"}
    return build_plan(spec, params, {"people": "--param"}, str(tmp_path / "no.db"), environ={})


def test_tasks_come_in_execution_order_with_upstreams_and_mapping(plan):
    tasks = {t["name"]: t for t in plan["tasks"]}
    assert [t["name"] for t in plan["tasks"]] == ["greet", "summary", "shout"]
    assert tasks["greet"]["map"] == {"name": {"over": "params.people", "items": 3}}
    assert tasks["greet"]["children"] == 3 and tasks["greet"]["retries"] == 2
    assert tasks["shout"]["map"] == {"text": {"over": "tasks.greet", "items": 3, "per_child": True}}
    assert tasks["shout"]["upstream"] == ["greet", "summary"] and tasks["shout"]["after"] == ["summary"]
    assert tasks["shout"]["timeout_s"] == 60
    assert tasks["summary"]["data_upstream"] == ["greet"] and tasks["summary"]["children"] is None


def test_no_task_code_is_imported(plan):
    assert "exploding_tasks" not in sys.modules


def test_parameters_show_their_source_and_secrets_are_masked(plan):
    params = {p["name"]: p for p in plan["parameters"]}
    assert params["people"]["value"] == ["a", "b", "c"] and params["people"]["source"] == "--param"
    assert params["api_token"]["value"] == MASK and params["api_token"]["source"] == "default"
    assert "not-shown" not in render_text(plan) and "not-shown" not in json.dumps(plan)


def test_settings_are_effective_and_warnings_say_what_would_stop_the_run(plan):
    assert plan["executor"]["settings"] == {"scheduler": "threads", "workers": 2}
    assert plan["executor"]["defaults"] == ["scheduler"]
    assert plan["storage"]["settings"]["env_vars"] == {"API_KEY": MASK, "MODE": "fast"}
    env = plan["environment"]
    assert env["env"] == {"REGION": "eu-west-1", "DB_PASSWORD": MASK}
    assert env["labels"] == ["dev", "gpu"]
    assert plan["env_references"] == [{"name": "SERVICE_API_KEY", "task": "summary", "set": False, "fallback": None}]
    warnings = "\n".join(plan["warnings"])
    assert "SERVICE_API_KEY" in warnings  # read by a task, set nowhere
    assert "environment.env.DB_PASSWORD: environment variable PLAN_TEST_DB_PASSWORD is not set" in warnings
    assert plan["executor"]["available"] == (TABLES["executor"]["local-dask"] is not None)
    assert ("executor type 'local-dask' is not available" in warnings) == (not plan["executor"]["available"])


def test_a_missing_backend_file_is_not_reachable_and_not_created(tmp_path):
    view = backend_view(str(tmp_path / "absent.db"), ("dev",))
    assert view["reachable"] is False and "absent.db" in view["reason"]
    assert not (tmp_path / "absent.db").exists()


def test_agents_that_could_pick_the_flow_up_and_the_limits_on_its_labels(tmp_path):
    url = f"sqlite:///{tmp_path / 'backend.db'}"
    with open_backend(url) as backend:
        backend.agent_heartbeat("gpu-box", ["dev", "gpu", "big"], starting=True)
        backend.agent_heartbeat("cpu-box", ["dev"], starting=True)
        backend.agent_heartbeat("plain", [], starting=True)
        backend.set_limit("gpu", 2)
        backend.set_limit("prod", 1)
    view = backend_view(url, ("dev", "gpu"))
    assert view["reachable"] is True
    assert {a["name"]: a["can_run"] for a in view["agents"]} == {"gpu-box": True, "cpu-box": False, "plain": False}
    assert view["limits"] == [{"label": "gpu", "limit": 2, "in_use": 0}]
    unlabelled = backend_view(url, ())
    assert {a["name"]: a["can_run"] for a in unlabelled["agents"]} == {"gpu-box": False, "cpu-box": False,
                                                                        "plain": True}
