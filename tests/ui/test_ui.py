"""`flowspec ui` in a real browser, and the command's own rules (token, extra, vendored files)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, run_cli, start_cli
from tests.ui.conftest import FLOWS, start_ui

STATIC = REPO / "flowspec" / "ui" / "static"
browser = pytest.mark.browser
# tests that start `flowspec ui` without a browser
server = pytest.mark.skipif(importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None,
                            reason='the UI is not installed: pip install "flowspec[ui]"')


def fetch(url: str, headers: dict | None = None, method: str = "GET", data: bytes | None = None):
    request = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


# --------------------------------------------------------------------------- the command


def test_vendored_files_match_their_sha256sums():
    lines = (STATIC / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split("  ", 1)) for line in lines if line)
    assert {"htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js"} <= sums.keys()
    for name, digest in sums.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name


def test_templates_load_nothing_from_elsewhere():
    for path in (REPO / "flowspec" / "ui" / "templates").glob("*.html"):
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name


def test_a_non_loopback_host_without_a_token_is_refused(tmp_path):
    done = run_cli("ui", "--host", "0.0.0.0", "--backend", tmp_path / "b.db", env={"FLOWSPEC_HOME": str(tmp_path),
                                                                                  "FLOWSPEC_UI_TOKEN": ""})
    assert done.rc == 2
    assert "--host 0.0.0.0" in done.stderr and "--token" in done.stderr and "Traceback" not in done.output


def test_the_help_has_examples_that_parse(tmp_path):
    done = run_cli("ui", "--help", env={"FLOWSPEC_HOME": str(tmp_path)})
    assert done.rc == 0 and "flowspec ui --host 0.0.0.0 --token" in done.stdout and "FLOWSPEC_BACKEND" in done.stdout
    taken = run_cli("ui", "--port", "70000", env={"FLOWSPEC_HOME": str(tmp_path)})
    assert taken.rc == 2 and "--port 70000" in taken.stderr


def test_a_missing_extra_names_the_pip_line(tmp_path):
    # -S leaves out site-packages, where Starlette is installed; flowspec comes from the tree.
    proc = subprocess.run([sys.executable, "-S", "-m", "flowspec", "ui", "--backend", str(tmp_path / "b.db")],
                          cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(REPO), "FLOWSPEC_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert 'pip install "flowspec[ui]"' in proc.stderr and "Traceback" not in proc.stderr


@server
def test_starts_fast_and_asks_for_its_token(tmp_path):
    started = time.monotonic()
    ui = start_ui(str(tmp_path / "b.db"), tmp_path, env={"FLOWSPEC_UI_TOKEN": "s3cret-token"})
    try:
        status, _, _ = fetch(ui.url + "/runs")
        ready = time.monotonic() - started
        assert status == 401
        assert fetch(ui.url + "/runs.json", {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert fetch(ui.url + "/runs.json", {"Authorization": "Bearer wrong"})[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(ui.url + "/agents?token=s3cret-token") as response:  # sets the cookie, redirects
            assert response.status == 200 and response.url.endswith("/agents")
        with opener.open(ui.url + "/limits.json") as response:
            assert response.status == 200
    finally:
        ui.stop()
    # The whole start, interpreter included, on a shared test machine: the server itself
    # starts in well under half a second (benchmarks/ui.py measures it).
    assert ready < 3.0, ready


@server
def test_the_ui_writes_no_ddl(tmp_path):
    """The UI's indexes come with the backend's migrations: a read-only UI leaves the database's
    schema as it found it (here one of its indexes dropped by hand)."""
    import sqlite3

    db = tmp_path / "b.db"
    assert run_cli("runs", "list", "--backend", str(db), env={"FLOWSPEC_HOME": str(tmp_path)}).rc == 0
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX ui_flow_runs_by_updated")
        before = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    ui = start_ui(str(db), tmp_path)
    try:
        assert fetch(ui.url + "/runs.json")[0] == 200
    finally:
        ui.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == before
    conn.close()


@server
def test_read_only_refuses_a_post(ui, world):
    status, body, _ = fetch(f"{ui.url}/runs/{world['waiting']}/cancel", method="POST", data=b"csrf=x",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and "--allow-actions" in body
    status, body, _ = fetch(f"{ui.url}/runs/{world['waiting']}")
    assert "to cancel this run from here" in body and 'method="post"' not in body  # offered, not shown


@server
def test_json_twins_match_the_cli(ui, world):
    env = world["env"]
    listed = json.loads(run_cli("runs", "list", "--backend", world["db"], "--format", "json", env=env).stdout)
    status, body, _ = fetch(ui.url + "/runs.json")
    assert status == 200
    web = json.loads(body)
    assert [r["id"] for r in web] == [r["id"] for r in listed]
    for mine, theirs in zip(web, listed):
        assert mine == theirs | {"parameters": mine["parameters"]}, mine["id"]
        assert mine["parameters"].get("api_token") in (None, "***")
    shown = json.loads(run_cli("runs", "show", world["failed"], "--backend", world["db"], "--format", "json",
                               env=env).stdout)
    status, body, _ = fetch(f"{ui.url}/runs/{world['failed']}", {"Accept": "application/json"})
    mine = json.loads(body)
    assert mine == shown | {"parameters": mine["parameters"]}
    assert mine["parameters"]["api_token"] == "***" and "s3cr3t-value" not in body
    assert [t.get("run_name") for t in mine["tasks"]][0] == "make 6"  # a task's `run_name`
    # the heatmap's data names each child by its `run_name`, and is filtered by it
    heat = json.loads(fetch(f"{ui.url}/runs/{world['failed']}/children/square.json")[1])
    assert heat["names"] == [f"<b>n{i}</b>" for i in range(6)] and heat["indexes"] is None
    heat = json.loads(fetch(f"{ui.url}/runs/{world['failed']}/children/square.json?name=N3")[1])
    assert (heat["names"], heat["indexes"], heat["states"]) == (["<b>n3</b>"], [3], ["Failed"])
    assert fetch(ui.url + "/runs.json?state=Bogus")[0] == 400
    flows = json.loads(run_cli("flows", "list", "--backend", world["db"], "--format", "json", env=env).stdout)
    assert json.loads(fetch(ui.url + "/flows.json")[1]) == flows
    limits = json.loads(run_cli("concurrency-limit", "list", "--backend", world["db"], "--format", "json",
                                env=env).stdout)
    assert [{k: v for k, v in lim.items() if k != "waiting"} for lim in json.loads(fetch(ui.url + "/limits.json")[1])] \
        == limits
    assert json.loads(fetch(f"{ui.url}/runs/{world['failed'][:6]}.json")[1])["id"] == world["failed"]
    status, body, _ = fetch(f"{ui.url}/runs/ffffffffffff.json")
    assert status == 404 and "ffffffffffff" in json.loads(body)["error"]


@server
def test_runs_list_pages_by_keyset_and_filters(ui, world):
    status, body, headers = fetch(ui.url + "/runs.json?state=failed")
    assert status == 200 and [r["state"] for r in json.loads(body)] == ["Failed"]
    gpu = json.loads(fetch(ui.url + "/runs.json?label=gpu")[1])  # other tests may add gpu runs to this world
    assert world["waiting"] in [r["id"] for r in gpu] and all("gpu" in r["labels"] for r in gpu)
    assert world["failed"] not in [r["id"] for r in gpu]
    assert json.loads(fetch(ui.url + "/runs.json?flow=nothing-like-it")[1]) == []
    everything = [r["id"] for r in json.loads(fetch(ui.url + "/runs.json")[1])]
    assert len(everything) >= 2
    seen, url = [], ui.url + "/runs.json?limit=1"
    while url:  # one run a page, by the Link header, until the last page has none
        status, body, headers = fetch(url)
        seen += [r["id"] for r in json.loads(body)]
        link = headers.get("Link") or headers.get("link")
        url = ui.url + link[1:link.index(">")] if link else None
    assert seen == everything
    two = json.loads(fetch(ui.url + "/runs.json?state=Failed&state=scheduled")[1])
    assert [r["id"] for r in two] == [i for i in everything if i in (world["failed"], world["waiting"])]
    assert len(json.loads(fetch(ui.url + "/runs.json?state=Failed,Scheduled&limit=1")[1])) == 1


@server
def test_the_log_stream_resumes_after_last_event_id(ui, world):
    page = fetch(f"{ui.url}/runs/{world['failed']}/logs?after=0")[1]
    ids = [int(x) for x in re.findall(r'data-id="(\d+)"', page)]
    cut = ids[2]
    request = urllib.request.Request(f"{ui.url}/runs/{world['failed']}/events?kinds=log",
                                     headers={"Last-Event-ID": f"{cut}-0-0"})
    with urllib.request.urlopen(request, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event: list[str] = []
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line == "" and any(e.startswith("event: log") for e in event):
                break
            event = [] if line == "" else event + [line]
    sent = [int(x) for x in re.findall(r'data-id="(\d+)"', "\n".join(event))]
    assert sent == ids[3:]
    assert event[0] == f"id: {sent[-1]}-0-0.0"


# ------------------------------------------------------------------------------ in a browser


@browser
def test_every_page_opens_without_a_console_error(ui, world, watched, shots):
    page = watched
    for path, name, marker in [("/runs", "runs", "table.runs"), (f"/runs/{world['failed']}", "run", "#task-graph"),
                               (f"/runs/{world['waiting']}", "run-waiting", "#waiting-reason"),
                               (f"/runs/{world['failed']}/traceback", "traceback", "#traceback"),
                               ("/flows", "flows", "table.flows"), ("/flows/default/hostile-flow", "flow", "#spec-text"),
                               ("/flows/default/hostile-flow?version=2&diff=1", "flow-diff", "pre.diff"),
                               ("/agents", "agents", "h1"), ("/limits", "limits", "table.limits")]:
        page.goto(ui.url + path)
        page.wait_for_selector(marker)
        shots(page, name)
    page.goto(f"{ui.url}/runs/{world['waiting']}")
    reason = page.inner_text("#waiting-reason")
    assert "no agent" in reason and "gpu" in reason
    page.goto(ui.url + "/runs?limit=1")  # one run a page: "Older runs" appends the next one
    assert page.locator("#run-rows tr[id^=run-]").count() == 1
    page.click("#more-runs a")
    page.wait_for_selector("#run-rows tr[id^=run-]:nth-child(2)")


@browser
@pytest.mark.parametrize("csp", ["with the CSP", "escaping alone"])
def test_hostile_names_parameters_and_logs_never_run(ui, world, browser, csp):
    # Without the Content-Security-Policy too: escaping alone must keep markup inert.
    context = browser.new_context(bypass_csp=csp == "escaping alone")
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path in ["/runs", f"/runs/{world['failed']}", f"/runs/{world['failed']}/traceback",
                 f"/runs/{world['failed']}/logs?q=script", "/flows/default/hostile-flow"]:
        page.goto(ui.url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__xss") is None, path
        assert page.locator("img[src=x]").count() == 0, path
    page.goto(f"{ui.url}/runs/{world['failed']}")
    assert "<script>window.__xss=1</script>" in page.inner_text("table.params")
    assert "s3cr3t-value" not in page.content()
    assert '"><img src=x onerror=' in page.inner_text("#logs")
    page.goto(f"{ui.url}/flows/default/hostile-flow?version=2&diff=1")
    assert "s3cr3t-value" not in page.content() and "***" in page.inner_text("#spec-text")
    assert not dialogs
    context.close()


@browser
def test_graph_heatmap_and_timeline_are_drawn(ui, world, watched, shots):
    page = watched
    page.goto(f"{ui.url}/runs/{world['failed']}")
    page.wait_for_selector("#task-graph")  # the tasks, graph and heatmaps come just after the page
    assert page.locator("#task-graph g.node").count() == 3
    assert page.locator("#task-graph g.node.bad[data-task=square]").count() == 1
    # a local run (`flowspec run FILE`, no registered spec) recorded its graph when it started
    assert page.locator("#task-graph path.edge.data").count() == 2
    assert page.locator("#task-graph path.edge").count() == 2 and page.locator("#no-edges").count() == 0
    until(page, "document.querySelector('canvas.heatmap')?.dataset.painted !== undefined")
    colours = page.evaluate("""() => {
        const c = document.querySelector('canvas.heatmap'), ctx = c.getContext('2d');
        const cell = c.cell, seen = new Set();
        for (let i = 0; i < 6; i++) {
          const x = (i % c.columns) * cell + 2, y = Math.floor(i / c.columns) * cell + 2;
          seen.add(Array.from(ctx.getImageData(x, y, 1, 1).data).join(','));
        }
        return Array.from(seen);
    }""")
    assert "214,69,65,255" in colours and "46,157,87,255" in colours  # a failed child among successes
    page.locator("details.gantt-row", has_text="square").locator("summary").click()
    page.wait_for_selector(".gantt-child")
    assert page.locator(".gantt-child").count() == 6
    assert page.locator(".gantt-child .gantt-name").nth(3).inner_text() == "square[<b>n3</b>]"  # its run_name
    assert "make [make 6]" in page.inner_text("table.tasks")
    page.fill(".gantt-filter input", "N4")  # the timeline's children, filtered by name on the server
    until(page, "document.querySelectorAll('.gantt-child').length === 1")
    assert page.inner_text(".gantt-child .gantt-name") == "square[<b>n4</b>]"
    page.fill(".gantt-filter input", "")
    until(page, "document.querySelectorAll('.gantt-child').length === 6")
    # hovering a cell names the child; a click on the failed child's cell shows its log lines
    page.locator("canvas.heatmap").scroll_into_view_if_needed()
    box = page.locator("canvas.heatmap").bounding_box()
    cell = page.evaluate("document.querySelector('canvas.heatmap').cell")
    page.mouse.move(box["x"] + 3 * cell + cell / 2, box["y"] + cell / 2)
    assert page.inner_text("#heat-tip") == "square[<b>n3</b>] (#3): Failed"
    page.mouse.click(box["x"] + 3 * cell + cell / 2, box["y"] + cell / 2)
    until(page, "[...document.querySelectorAll('#log-rows td.task')].every(td => td.textContent === 'square[<b>n3</b>]')"
                " && document.querySelectorAll('#log-rows tr').length > 0")
    # filtered by name: the other cells are dimmed
    page.fill(".heat-name-filter", "n4")
    lit = page.evaluate("""() => {
        const c = document.querySelector('canvas.heatmap'), ctx = c.getContext('2d'), lit = [];
        for (let i = 0; i < 6; i++) {
          const x = (i % c.columns) * c.cell + 2, y = Math.floor(i / c.columns) * c.cell + 2;
          if (ctx.getImageData(x, y, 1, 1).data[0] !== 230) lit.push(i);
        }
        return lit;
    }""")
    assert lit == [4]
    shots(page, "run-heatmap")


@browser
def test_timed_out_looping_and_cached_are_coloured_and_counted(tmp_path, watched):
    """A TimedOut run, and task states TimedOut, Looping and Cached (a success not run again),
    as the flow language's runtime records them: each its own colour in the graph, the heatmap,
    the timeline and the state badges, Cached one of the success family; the run is final."""
    from flowspec.backend import open_backend

    db = str(tmp_path / "b.db")
    with open_backend(db) as backend:
        run = backend.create_flow_run(None, flow_name="states", state="Running")
        now = time.time()
        backend.add_task_states(run.id, [("slow", None, "TimedOut", 1, now, "took too long"),
                                         ("again", None, "Looping", 2, now + 1, None),
                                         ("stored", None, "Cached", 1, now + 2, None)]
                                + [("m", i, state, 1, now + 3, None) for i, state in
                                   enumerate(["Cached", "Success", "TimedOut", "Looping"])])
    ui = start_ui(db, tmp_path)
    page = watched
    try:
        page.goto(f"{ui.url}/runs/{run.id}")
        page.wait_for_selector("#task-graph")
        node = page.locator("#task-graph g.node")
        assert {node.nth(i).get_attribute("data-task"): node.nth(i).get_attribute("class") for i in range(4)} == {
            "slow": "node bad timedout", "again": "node run looping", "stored": "node ok cached", "m": "node run"}
        assert page.locator("#no-edges").is_visible()  # a run that recorded no graph says so
        assert all(f"1 {s}" in page.text_content("#task-graph") for s in ("Cached", "Success", "TimedOut", "Looping"))
        badges = {page.locator("table.tasks span.state", has_text=s).first.get_attribute("class")
                  for s in ("TimedOut", "Looping", "Cached")}
        assert badges == {"state bad timedout", "state run looping", "state ok cached"}
        until(page, "document.querySelector('canvas.heatmap')?.dataset.painted !== undefined")
        colours = page.evaluate("""() => {
            const c = document.querySelector('canvas.heatmap'), ctx = c.getContext('2d'), out = [];
            for (let i = 0; i < 4; i++) out.push(Array.from(ctx.getImageData(i * c.cell + 2, 2, 1, 1).data).join(','));
            return out;
        }""")
        assert colours == ["126,201,154,255", "46,157,87,255", "232,115,38,255", "23,162,184,255"]
        # the timeline: each task's bar in its state's colour
        page.wait_for_selector("details.gantt-row")
        assert page.locator("details.gantt-row svg.bar.timedout[data-state=TimedOut]").count() == 1
        assert page.locator("details.gantt-row svg.bar.cached").count() == 1
        page.locator("details.gantt-row", has_text="m (4 children)").locator("summary").click()
        page.wait_for_selector(".gantt-child svg.bar.looping")
        # TimedOut is final: the run's stream ends (a Cached task stays Cached), and the runs
        # list filters by it
        with open_backend(db) as backend:
            backend.set_run_state(run.id, "TimedOut", "the run exceeded its timeout of 1s")
        status, events, _ = fetch(f"{ui.url}/runs/{run.id}/events?kinds=state,tasks,log")
        assert status == 200 and events.rstrip().endswith("data: The run has ended."), events[-300:]
        tasks = {t["task"]: t["state"] for t in json.loads(fetch(f"{ui.url}/runs/{run.id}.json")[1])["tasks"]}
        assert (tasks["slow"], tasks["again"], tasks["stored"]) == ("TimedOut", "Failed", "Cached")
        listed = json.loads(fetch(f"{ui.url}/runs.json?state=TimedOut")[1])
        assert [r["id"] for r in listed] == [run.id]
        page.goto(f"{ui.url}/runs")
        assert page.locator("select[name=state] option", has_text="TimedOut").count() == 1
        assert page.locator("span.state.bad.timedout", has_text="TimedOut").count() == 1
    finally:
        ui.stop()


@browser
def test_logs_are_searched_on_the_server_and_downloaded_whole(ui, world, watched):
    page = watched
    page.goto(f"{ui.url}/runs/{world['failed']}")
    page.fill("#log-filter input[name=q]", "squaring 4")
    page.click("#log-filter button[type=submit]")
    page.wait_for_selector("#search-note")
    assert page.locator("#log-rows tr").count() == 1
    assert "squaring 4" in page.inner_text("#log-rows")
    status, text, headers = fetch(f"{ui.url}/runs/{world['failed']}/logs.txt")
    assert status == 200 and "attachment" in headers["content-disposition"]
    assert "squaring 0" in text and "Traceback (most recent call last)" in text
    assert "with token ***" in text and "s3cr3t" not in text  # masked as `runs logs` masks it
    status, body, _ = fetch(f"{ui.url}/runs/{world['failed']}/logs.json?q=s3cr3t")
    assert json.loads(body) == []  # a search cannot probe a masked value
    cli = json.loads(run_cli("runs", "logs", world["failed"], "--backend", world["db"], "--format", "json",
                             env=world["env"]).stdout)
    assert json.loads(fetch(f"{ui.url}/runs/{world['failed']}/logs.json")[1]) == cli
    paged, url = [], f"{ui.url}/runs/{world['failed']}/logs.json?limit=3"
    while url:  # a page at a time, by the Link header
        status, body, headers = fetch(url)
        paged += json.loads(body)
        link = headers.get("Link") or headers.get("link")
        url = ui.url + link[1:link.index(">")] if link else None
    assert paged == cli
    page.click("#traceback-link") if page.locator("#traceback-link").count() else page.goto(
        f"{ui.url}/runs/{world['failed']}/traceback")
    assert "ValueError" in page.inner_text("#traceback")


@browser
def test_live_updates_arrive_without_a_reload(ui, world, watched, tmp_path, shots):
    page = watched
    flow = tmp_path / "slow"
    shutil.copytree(FLOWS / "slow", flow)
    runner = start_cli("run", flow / "flow.yaml", "--backend", world["db"], env=world["env"])
    try:
        run_id = _wait_for_run(world["db"], "slow-flow")
        page.goto(ui.url + "/runs")
        page.wait_for_selector(f"#run-{run_id}")
        page.goto(f"{ui.url}/runs/{run_id}")
        page.evaluate("window.__same_page = true")
        page.wait_for_selector("#log-rows td.msg:has-text('tick 3')", timeout=20_000)
        page.wait_for_selector("#run-state:has-text('Success')", timeout=30_000)
        page.wait_for_selector("#task-graph g.node.ok[data-task=finish]", timeout=10_000)
        page.wait_for_selector("#history span.state:has-text('Success')", timeout=10_000)
        page.wait_for_selector("#gantt .gantt-name:has-text('finish')", timeout=10_000)
        page.wait_for_selector("p.following:has-text('The run has ended.')", timeout=10_000)
        assert page.evaluate("window.__same_page") is True  # no reload happened
        shots(page, "run-live")
    finally:
        runner.communicate(timeout=60)


@browser
def test_the_runs_list_follows_state_changes(ui, world, watched, tmp_path, shots):
    page = watched
    flow = tmp_path / "slow"
    shutil.copytree(FLOWS / "slow", flow)
    page.goto(ui.url + "/runs")
    page.evaluate("window.__same_page = true")
    filtered = page.context.new_page()
    filtered.goto(ui.url + "/runs?flow=hostile-flow")
    newest = _newest(world["db"])
    runner = start_cli("run", flow / "flow.yaml", "--backend", world["db"], "--param", "ticks=3", env=world["env"])
    try:
        run_id = _wait_for_run(world["db"], "slow-flow", newer_than=newest)
        # a new run is added at the top, then its row follows its state
        page.wait_for_selector(f"#run-{run_id}", timeout=15_000)
        page.wait_for_selector(f"#run-{run_id}[data-state=Success]", timeout=30_000)
        assert page.evaluate("window.__same_page") is True
        assert page.locator(f"#run-{run_id}").count() == 1
        assert page.locator("#run-rows tr").first.get_attribute("id") == f"run-{run_id}"
        # a filtered list is not given runs that do not pass its filter
        assert filtered.locator(f"#run-{run_id}").count() == 0
        shots(page, "runs")
    finally:
        runner.communicate(timeout=60)


@browser
def test_a_token_given_once_opens_every_page_and_stream(world, watched, browser):
    page = watched
    ui = start_ui(world["db"], world["home"], "--token", "tok-" + "x" * 20)
    try:
        page.goto(f"{ui.url}/runs/{world['failed']}?token=tok-{'x' * 20}")
        assert "token" not in page.url  # dropped from the address once it is a cookie
        until(page, "document.querySelector('canvas.heatmap')?.dataset.painted !== undefined")
        page.goto(ui.url + "/limits")
        page.wait_for_selector("table.limits")
        assert page.context.request.get(ui.url + "/runs.json").status == 200
        stranger = browser.new_context()  # no cookie: refused
        assert stranger.request.get(ui.url + "/runs").status == 401
        stranger.close()
    finally:
        ui.stop()


@browser
def test_cancel_with_allow_actions(world, watched, tmp_path):
    page = watched
    created = run_cli("run", "--name", "hostile-flow", "--backend", world["db"], env=world["env"])
    run_id = created.stdout.strip().splitlines()[-1]
    ui = start_ui(world["db"], world["home"], "--allow-actions")
    try:
        page.goto(f"{ui.url}/runs/{run_id}")
        page.click("#cancel-run")
        page.wait_for_selector("#run-state:has-text('Cancelled')")
        status, body, _ = fetch(f"{ui.url}/runs/{run_id}/cancel", method="POST", data=b"csrf=stale",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 403 and "CSRF" in body
    finally:
        ui.stop()
    shown = json.loads(run_cli("runs", "show", run_id, "--backend", world["db"], "--format", "json",
                               env=world["env"]).stdout)
    assert shown["state"] == "Cancelled"


def until(page, expression: str, timeout: float = 10) -> None:
    """Wait for a JavaScript expression to be true. (Playwright's wait_for_function evaluates
    its text in the page, which the UI's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        time.sleep(0.05)


@browser
def test_a_run_held_by_a_full_limit_says_who_holds_it(tmp_path, watched):
    """A real agent runs one run of a label limited to 1; the next waits, and says why."""
    page = watched
    home, db = tmp_path / "home", str(tmp_path / "limited.db")
    home.mkdir()
    env = {"FLOWSPEC_HOME": str(home)}
    flow = tmp_path / "slow"
    shutil.copytree(FLOWS / "slow", flow)
    (flow / "flow.yaml").write_text((flow / "flow.yaml").read_text().replace("default: 6", "default: 40"))
    assert run_cli("register", flow / "flow.yaml", "--backend", db, "--label", "gpu", env=env).rc == 0
    assert run_cli("concurrency-limit", "set", "gpu", "1", "--backend", db, env=env).rc == 0
    first = run_cli("run", "--name", "slow-flow", "--backend", db, env=env).stdout.split()[-1]
    second = run_cli("run", "--name", "slow-flow", "--backend", db, env=env).stdout.split()[-1]
    agent = start_cli("agent", "start", "--label", "gpu", "--backend", db, "--poll-interval", "0.2", env=env)
    ui = start_ui(db, home)
    try:
        deadline = time.monotonic() + 30
        while json.loads(fetch(f"{ui.url}/runs/{second}.json")[1])["state"] != "Queued":
            assert time.monotonic() < deadline, "the second run was never queued behind the limit"
            time.sleep(0.2)
        page.goto(f"{ui.url}/runs/{second}")
        reason = page.inner_text("#waiting-reason")
        assert "'gpu' is at its limit of 1" in reason and first in reason
        page.goto(ui.url + "/limits")
        assert first[:8] in page.inner_text("table.limits") and second[:8] in page.inner_text("table.limits")
    finally:
        ui.stop()
        agent.send_signal(signal.SIGINT)  # it cancels its runs and says it stopped
        agent.communicate(timeout=60)


def _newest(db) -> str | None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT id FROM flow_runs ORDER BY seq DESC LIMIT 1").fetchone()
    return row[0] if row else None


def _wait_for_run(db, flow: str, newer_than: str | None = None, timeout: float = 20) -> str:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT id FROM flow_runs WHERE flow_name = ? ORDER BY seq DESC LIMIT 1",
                               (flow,)).fetchone()
        if row and row[0] != newer_than:
            return row[0]
        time.sleep(0.1)
    raise AssertionError(f"no run of {flow} appeared in {timeout} s")


# ------------------------------------------------------------------ parent, child and restarted runs


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A failed `flowspec run FILE` of a flow with a child flow run per region (one fails), and
    a `flowspec ui --allow-actions` over it."""
    root = tmp_path_factory.mktemp("ui-family")
    home, db = root / "home", str(root / "family.db")
    home.mkdir()
    env = {"FLOWSPEC_HOME": str(home)}
    shutil.copytree(FLOWS / "family", root / "family")
    done = run_cli("run", root / "family" / "flow.yaml", "--backend", db, env=env, timeout=60)
    assert done.rc == 1, done.output  # region ap fails
    parent = json.loads(run_cli("runs", "list", "--backend", db, "--flow", "family", "--format", "json",
                                env=env).stdout)[0]["id"]
    ui = start_ui(db, home, "--allow-actions")
    yield {"root": root, "home": home, "db": db, "env": env, "parent": parent, "ui": ui}
    ui.stop()


@server
def test_parent_and_child_runs_match_the_cli(family):
    ui, env, db, parent = family["ui"], family["env"], family["db"], family["parent"]
    listed = json.loads(run_cli("runs", "list", "--parent", parent[:8], "--backend", db, "--format", "json",
                                env=env).stdout)
    assert len(listed) == 3
    for ref in (parent, parent[:8]):  # an id or a unique prefix, as --parent takes it
        assert json.loads(fetch(f"{ui.url}/runs.json?parent={ref}")[1]) == listed
    failed = json.loads(fetch(f"{ui.url}/runs.json?parent={parent}&state=Failed")[1])
    assert [r["id"] for r in failed] == [r["id"] for r in listed if r["state"] == "Failed"]
    status, body, _ = fetch(f"{ui.url}/runs.json?parent=ffffffffffff")
    assert status == 404 and "parent=ffffffffffff" in json.loads(body)["error"]
    for run_id in (parent, listed[0]["id"]):  # the parent lists its children, a child names its parent
        shown = json.loads(run_cli("runs", "show", run_id, "--backend", db, "--format", "json", env=env).stdout)
        assert json.loads(fetch(f"{ui.url}/runs/{run_id}.json")[1]) == shown
    assert [c["task"] for c in shown["children"]] == [] and shown["parent_run"] == parent
    page = fetch(f"{ui.url}/runs/{parent}")[1]
    assert page.count('<tr id="child-') == 3 and f'href="/runs?parent={parent}"' in page
    assert f'id="parent-run">Child flow run of run <a class="mono" href="/runs/{parent}">' in \
        fetch(f"{ui.url}/runs/{listed[0]['id']}")[1]
    rows = fetch(f"{ui.url}/runs/{parent}/child-runs?after=0")[1]  # the "more" link's fragment
    assert rows.count('<tr id="child-') == 3 and "more-children" not in rows
    listing = fetch(f"{ui.url}/runs?parent={parent}")[1]
    assert 'id="parent-filter"' in listing and listing.count('<tr id="run-') == 3


@server
def test_a_restart_needs_the_flag_and_a_finished_run(ui, world, family):
    status, body, _ = fetch(f"{ui.url}/runs/{world['failed']}/restart", method="POST", data=b"csrf=x",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and "--allow-actions" in body
    assert "to restart this run from here" in fetch(f"{ui.url}/runs/{world['failed']}")[1]
    # with the flag: a run still waiting is refused with the command's own words
    waiting = run_cli("run", "--name", "hostile-flow", "--backend", world["db"], env=world["env"]).stdout.split()[-1]
    other = start_ui(world["db"], world["home"], "--allow-actions")
    try:
        csrf = re.search(r'name="csrf" value="([^"]+)"', fetch(f"{other.url}/runs/{waiting}")[1]).group(1)
        status, body, _ = fetch(f"{other.url}/runs/{waiting}/restart", method="POST", data=f"csrf={csrf}".encode(),
                                headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        assert status == 409 and "has not finished" in json.loads(body)["error"], body
        assert 'id="restart-run"' not in fetch(f"{other.url}/runs/{waiting}")[1]  # not offered either
    finally:
        other.stop()
        run_cli("runs", "cancel", waiting, "--backend", world["db"], env=world["env"])


@browser
def test_restart_from_the_run_page(family, watched, shots):
    page, ui, parent = watched, family["ui"], family["parent"]
    page.goto(f"{ui.url}/runs/{parent}")
    assert page.locator("#restart-from").input_value() == "per_region"  # the failed task, chosen to begin with
    page.select_option("#restart-from", "")  # what did not succeed, and what follows it
    (family["root"] / "family" / "fixed").write_text("")  # the broken region is fixed: the restart succeeds
    page.click("#restart-run")
    page.wait_for_selector("#restart-of")
    new = page.url.rsplit("/", 1)[1]
    assert new != parent and page.get_attribute("#restart-of a", "href") == f"/runs/{parent}"
    assert page.get_attribute("#restart-notes tr[data-task=prepare]", "data-action") == "reused"
    assert page.get_attribute("#restart-notes tr[data-task=per_region]", "data-action") == "runs again"
    page.wait_for_selector("#run-state:has-text('Success')", timeout=30_000)
    page.wait_for_selector("table.tasks span.state.cached", timeout=10_000)  # prepare: Cached from the old run
    page.wait_for_selector("#child-runs tr[data-state=Success]", timeout=10_000)
    assert page.locator("#child-runs tbody tr").count() == 3
    shots(page, "run-restart")
    page.click("#restart-of a")
    page.wait_for_selector(f"#restarted-as a[href='/runs/{new}']")
    page.click("#child-runs tbody tr[data-state=Failed] a")
    page.wait_for_selector("#parent-run")
    assert page.get_attribute("#parent-run a", "href") == f"/runs/{parent}"
    assert "per_region[2]" in page.inner_text("#parent-run")


@server
def test_a_late_run_says_so_as_the_cli_does(tmp_path):
    """A scheduled run past its time is Late, with the reason, in the list and on its page."""
    import sqlite3

    from flowspec.backend import open_backend

    db = str(tmp_path / "late.db")
    with open_backend(db) as backend:
        run = backend.create_flow_run(None, {}, ["nightly"], flow_name="late-flow")
    with sqlite3.connect(db) as conn:  # as `flowspec scheduler` made it, its time a minute ago
        conn.execute("UPDATE flow_runs SET scheduled_start = ? WHERE id = ?", (time.time() - 60, run.id))
    conn.close()
    env = {"FLOWSPEC_HOME": str(tmp_path)}
    ui = start_ui(db, tmp_path)
    try:
        listed = json.loads(run_cli("runs", "list", "--backend", db, "--format", "json", env=env).stdout)
        assert listed[0]["state"] == "Late" and "late_reason" in listed[0]
        assert json.loads(fetch(ui.url + "/runs.json")[1]) == listed
        shown = json.loads(run_cli("runs", "show", run.id, "--backend", db, "--format", "json", env=env).stdout)
        mine = json.loads(fetch(f"{ui.url}/runs/{run.id}.json")[1])
        assert mine == shown and mine["waiting_reason"].startswith("due at ")
        assert "due at " in fetch(f"{ui.url}/runs/{run.id}")[1]
    finally:
        ui.stop()
