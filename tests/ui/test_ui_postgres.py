"""`flowspec ui` over a PostgreSQL backend: the same pages, JSON twins and log search."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.acceptance.conftest import REPO, run_cli
from tests.ui.conftest import make_world, start_ui
from tests.ui.test_ui import fetch, until

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture(scope="module")
def pg_world(tmp_path_factory):
    import sys

    # the integration fixtures import their sibling modules by name
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from tests.integration.conftest import _admin, _postgres_server

    server = _postgres_server()
    name = f"ui_{uuid.uuid4().hex}"
    _admin(server.url, f"CREATE DATABASE {name}")
    try:
        world = make_world(tmp_path_factory.mktemp("ui-pg"), server.url.rsplit("/", 1)[0] + f"/{name}")
        ui = start_ui(world["db"], world["home"])
        yield world, ui, server
        ui.stop()
    finally:
        server.destroy()


def test_json_twins_match_the_cli_on_postgres(pg_world):
    world, ui, _ = pg_world
    listed = json.loads(run_cli("runs", "list", "--backend", world["db"], "--format", "json", env=world["env"]).stdout)
    web = json.loads(fetch(ui.url + "/runs.json")[1])
    assert [r["id"] for r in web] == [r["id"] for r in listed]
    shown = json.loads(run_cli("runs", "show", world["failed"], "--backend", world["db"], "--format", "json",
                               env=world["env"]).stdout)
    mine = json.loads(fetch(f"{ui.url}/runs/{world['failed']}.json")[1])
    assert mine == shown | {"parameters": mine["parameters"]} and mine["parameters"]["api_token"] == "***"
    assert [r["id"] for r in json.loads(fetch(ui.url + "/runs.json?label=gpu")[1])] == [world["waiting"]]


def test_run_page_heatmap_and_search_on_postgres(pg_world, watched):
    world, ui, _ = pg_world
    page = watched
    page.goto(f"{ui.url}/runs/{world['failed']}")
    page.wait_for_selector("#task-graph")
    assert page.locator("#task-graph g.node").count() == 3
    until(page, "document.querySelector('canvas.heatmap')?.dataset.painted !== undefined")
    page.fill("#log-filter input[name=q]", "SQUARING 4")  # case-insensitive, as on SQLite
    page.click("#log-filter button[type=submit]")
    page.wait_for_selector("#search-note")
    assert page.locator("#log-rows tr").count() == 1
    page.goto(f"{ui.url}/runs/{world['waiting']}")
    assert "gpu" in page.inner_text("#waiting-reason")
    for path in ("/flows", "/flows/default/hostile-flow", "/agents", "/limits"):
        page.goto(ui.url + path)
        page.wait_for_selector("h1")


def test_a_database_that_is_down_gives_503_then_the_ui_goes_on(pg_world):
    world, ui, server = pg_world
    server.stop()
    try:
        status, body, _ = fetch(ui.url + "/runs.json")
        assert status == 503 and "PostgreSQL" in json.loads(body)["error"]
        status, body, _ = fetch(ui.url + "/runs")
        assert status == 503 and "<h1>503</h1>" in body
    finally:
        server.start()
    assert fetch(ui.url + "/runs.json")[0] == 200


def test_parent_and_child_runs_match_the_cli_on_postgres(pg_world, tmp_path):
    import shutil

    from tests.ui.conftest import FLOWS

    world, ui, _ = pg_world
    shutil.copytree(FLOWS / "family", tmp_path / "family")
    assert run_cli("run", tmp_path / "family" / "flow.yaml", "--backend", world["db"], env=world["env"],
                   timeout=60).rc == 1
    parent = json.loads(run_cli("runs", "list", "--flow", "family", "--backend", world["db"], "--format", "json",
                                env=world["env"]).stdout)[0]["id"]
    listed = json.loads(run_cli("runs", "list", "--parent", parent, "--backend", world["db"], "--format", "json",
                                env=world["env"]).stdout)
    assert len(listed) == 3 and json.loads(fetch(f"{ui.url}/runs.json?parent={parent}")[1]) == listed
    shown = json.loads(run_cli("runs", "show", parent, "--backend", world["db"], "--format", "json",
                               env=world["env"]).stdout)
    assert json.loads(fetch(f"{ui.url}/runs/{parent}.json")[1]) == shown and len(shown["children"]) == 3
    assert fetch(f"{ui.url}/runs/{parent}")[1].count('<tr id="child-') == 3
