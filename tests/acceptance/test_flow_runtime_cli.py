"""What the keys of the expression language do at run time, through `flowspec run`: `if` and the
merge of branches, the new triggers, `run_name`, `loop`, `cleanup`, task and flow hooks (posting to
a real HTTP server on loopback), `outputs` and a flow `timeout`."""
from __future__ import annotations

import http.server
import json
import re
import signal
import textwrap
import threading
import time

import pytest

STEPS = '''
import json, os, time
from flowspec import context

def pick(kind): return kind
def small(x): return f"small {x}"
def big(x): return f"big {x}"
def show(value):
    print("got", value)
    return value
def boom(**kwargs): raise ValueError("broken on purpose")
def ok(**kwargs): return "ok"
def load(table):
    context.logger.info("loading %s", table)
    return {"table": table, "rows": len(table)}
def count(step):
    context.logger.info("index %s previous %s", context.loop.index, context.loop.previous)
    return (context.loop.previous or 0) + step
def connect(): return {"conn": "db-1"}
def use(r): return r["conn"]
def close(r):
    with open("cleanup.txt", "a") as f:
        f.write(json.dumps(r) + "\\n")
def bad_close(r): raise RuntimeError("cannot close " + r["conn"])
def sleepy(seconds):
    time.sleep(seconds)
    return seconds
def record(info, tag="-"):
    with open("hooks.txt", "a") as f:
        f.write(json.dumps({"tag": tag, **info}) + "\\n")
def broken_hook(info): raise RuntimeError("hook is broken")
def on_exit(run):
    with open("on_exit.txt", "w") as f:
        f.write(json.dumps(run))
FLAKY = {"n": 0}
def flaky():
    FLAKY["n"] += 1
    if FLAKY["n"] < 2:
        raise ValueError("first try fails")
    return FLAKY["n"]
'''


@pytest.fixture
def flow_dir(tmp_path):
    (tmp_path / "steps.py").write_text(STEPS)
    return tmp_path


def _write(flow_dir, spec: str):
    path = flow_dir / "flow.yaml"
    path.write_text(textwrap.dedent(spec))
    return path


def _env(flow_dir, **more) -> dict:
    return {"FLOWSPEC_HOME": str(flow_dir / "home"), **more}


def _run(cli, flow_dir, spec: str, *args, timeout: float = 30, **env):
    path = _write(flow_dir, spec)
    result = cli("run", path, "--format", "json", *args, cwd=flow_dir, env=_env(flow_dir, **env), timeout=timeout)
    return result, json.loads(result.stdout)


def _states(report: dict) -> dict:
    return {name: (t["state"], t["message"]) for name, t in report["tasks"].items()}


def _logged(stderr: str, label: str, message: str) -> bool:
    line = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (INFO |WARNING|ERROR ) +" + label + r" \| " + message + "$")
    return any(line.match(ln) for ln in stderr.splitlines())


BRANCHES = """
    version: 1
    name: branches
    parameters:
      kind: {default: small}
    tasks:
      pick: {run: steps:pick, with: {kind: "${{ params.kind }}"}}
      small:
        run: steps:small
        if: ${{ tasks.pick == 'small' }}
        with: {x: 1}
      big:
        run: steps:big
        if: ${{ tasks.pick == 'big' }}
        with: {x: 2}
      after_big: {run: steps:show, with: {value: "${{ tasks.big }}"}}
      join: {run: steps:show, with: {value: "${{ tasks.small || tasks.big }}"}}
      done: {run: steps:ok, after: [small, big], trigger: none_failed}
    outputs:
      joined: ${{ tasks.join }}
      kind: ${{ params.kind }}
"""


@pytest.mark.parametrize("kind, other", [("small", "big"), ("big", "small")])
def test_if_skips_a_branch_and_a_merge_takes_the_branch_that_ran(cli, flow_dir, kind, other):
    result, report = _run(cli, flow_dir, BRANCHES, "--param", f"kind={kind}")
    assert result.rc == 0, result.stderr
    states = _states(report)
    assert states[other] == ("Skipped", f"condition false: tasks.pick == '{other}'")
    assert states[kind] == ("Success", None)
    # default-trigger tasks below a Skipped one are Skipped; the merge and the none_failed join run
    assert states["after_big"] == (("Skipped", "upstream skipped: big") if kind == "small" else ("Success", None))
    assert states["join"] == ("Success", None) and states["done"] == ("Success", None)
    assert report["outputs"] == {"joined": f"{kind} {1 if kind == 'small' else 2}", "kind": kind}
    assert _logged(result.stderr, "flow", rf"{other}: Skipped \(condition false: tasks.pick == '{other}'\)")


def test_a_merge_whose_branches_were_all_skipped_is_skipped_and_a_failed_branch_fails_its_trigger(cli, flow_dir):
    result, report = _run(cli, flow_dir, """
        version: 1
        name: merges
        tasks:
          a: {run: steps:ok, if: false}
          b: {run: steps:ok, if: "${{ 1 > 2 }}"}
          c: {run: steps:boom}
          none: {run: steps:show, with: {value: "${{ tasks.a || tasks.b }}"}}
          failed: {run: steps:show, with: {value: "${{ tasks.a || tasks.c }}"}}
    """)
    assert result.rc == 1
    states = _states(report)
    assert states["a"] == ("Skipped", "condition false: false")
    assert states["b"] == ("Skipped", "condition false: 1 > 2")
    assert states["none"] == ("Skipped", "upstream skipped: a, b")
    assert states["failed"] == ("TriggerFailed", "upstream did not succeed: c (Failed)")


def test_the_new_triggers(cli, flow_dir):
    result, report = _run(cli, flow_dir, """
        version: 1
        name: triggers
        tasks:
          good: {run: steps:ok}
          bad: {run: steps:boom}
          skipped: {run: steps:ok, if: false}
          all_failed_yes: {run: steps:ok, after: [bad], trigger: all_failed}
          all_failed_no: {run: steps:ok, after: [bad, good], trigger: all_failed}
          any_ok_yes: {run: steps:ok, after: [bad, good], trigger: any_successful}
          any_ok_no: {run: steps:ok, after: [bad], trigger: any_successful}
          none_failed_yes: {run: steps:ok, after: [good, skipped], trigger: none_failed}
          none_failed_no: {run: steps:ok, after: [good, bad], trigger: none_failed}
    """)
    states = _states(report)
    assert states["all_failed_yes"] == ("Success", None)
    assert states["all_failed_no"] == ("Skipped", "not every upstream task failed (trigger all_failed): good (Success)")
    assert states["any_ok_yes"] == ("Success", None)
    assert states["any_ok_no"] == ("TriggerFailed", "no upstream task succeeded (trigger any_successful): bad (Failed)")
    assert states["none_failed_yes"] == ("Success", None)
    assert states["none_failed_no"] == ("TriggerFailed", "upstream did not succeed: bad (Failed)")


NAMED = """
    version: 1
    name: named
    tasks:
      load:
        run: steps:load
        map: {table: [orders, users, items]}
        run_name: ${{ args.table }}
      one:
        run: steps:load
        with: {table: single}
        run_name: "load-${{ args.table }}"
"""


def test_run_name_names_task_runs_in_logs_json_and_runs_show(cli, flow_dir):
    result, report = _run(cli, flow_dir, NAMED, "--children")
    assert result.rc == 0, result.stderr
    assert report["tasks"]["load"]["children"] == [
        {"map_index": 0, "run_name": "orders", "state": "Success"},
        {"map_index": 1, "run_name": "users", "state": "Success"},
        {"map_index": 2, "run_name": "items", "state": "Success"}]
    assert report["tasks"]["one"]["run_name"] == "load-single"
    assert _logged(result.stderr, r"load\[orders\]", "loading orders")
    assert _logged(result.stderr, r"one\[load-single\]", "loading single")
    env = _env(flow_dir)
    shown = cli("runs", "show", report["run_id"], "--children", cwd=flow_dir, env=env)
    assert shown.rc == 0, shown.stderr
    assert re.search(r"^  load\[users\] +Success +1", shown.stdout, re.M), shown.stdout
    assert re.search(r"^  one\[load-single\] +Success", shown.stdout, re.M), shown.stdout
    rows = json.loads(cli("runs", "show", report["run_id"], "--children", "--format", "json",
                          cwd=flow_dir, env=env).stdout)["tasks"]
    assert [(t["task"], t["map_index"], t.get("run_name")) for t in rows if t["task"] == "load"] == [
        ("load", 0, "orders"), ("load", 1, "users"), ("load", 2, "items")]
    logs = cli("runs", "logs", report["run_id"], cwd=flow_dir, env=env)
    assert "load[items]" in logs.stdout, logs.stdout


def test_without_children_run_json_counts_children(cli, flow_dir):
    _, report = _run(cli, flow_dir, NAMED)
    assert report["tasks"]["load"]["children"] == {"Success": 3}


LOOP = """
    version: 1
    name: loops
    tasks:
      count:
        run: steps:count
        with: {step: 5}
        loop: {until: "${{ result >= 15 }}", max: MAX}
      after: {run: steps:show, with: {value: "${{ tasks.count }}"}}
    outputs:
      total: ${{ tasks.count }}
"""


def test_loop_runs_until_its_condition_with_index_and_previous(cli, flow_dir):
    path = _write(flow_dir, LOOP.replace("MAX", "10"))
    result = cli("run", path, "-v", cwd=flow_dir, env=_env(flow_dir))
    assert result.rc == 0, result.stderr
    for index, previous in ((0, None), (1, 5), (2, 10)):
        assert _logged(result.stderr, "count", f"index {index} previous {previous}")
    assert _logged(result.stderr, "count", "loop iteration 1: until is false, looping")
    assert _logged(result.stderr, "count", "loop iteration 2: until is true, the loop ends")
    assert len(re.findall(r"count Looping", result.stderr)) == 2, result.stderr
    _, report = _run(cli, flow_dir, LOOP.replace("MAX", "10"))
    assert report["outputs"] == {"total": 15}
    assert report["tasks"]["count"]["attempts"] == 1


def test_loop_past_its_max_fails_the_task(cli, flow_dir):
    result, report = _run(cli, flow_dir, LOOP.replace("MAX", "2"))
    assert result.rc == 1
    assert _states(report)["count"] == ("Failed", "loop passed its max of 2 iterations and until "
                                                  "(${{ result >= 15 }}) is still false; raise max or check the condition")
    assert _states(report)["after"][0] == "TriggerFailed"
    assert "Traceback" not in result.stderr


CLEANUP = """
    version: 1
    name: resources
    tasks:
      db: {run: steps:connect, cleanup: CLEANUP}
      use: {run: steps:use, with: {r: "${{ tasks.db }}"}}
      fail: {run: steps:boom, with: {r: "${{ tasks.db }}"}}
      later: {run: steps:ok, after: [use]}
"""


def test_cleanup_runs_once_after_every_consumer_even_a_failed_one(cli, flow_dir):
    path = _write(flow_dir, CLEANUP.replace("CLEANUP", "steps:close"))
    result = cli("run", path, cwd=flow_dir, env=_env(flow_dir))
    assert result.rc == 1  # `fail` failed, not the cleanup
    assert (flow_dir / "cleanup.txt").read_text() == '{"conn": "db-1"}\n'
    assert re.search(r"^db\.cleanup +Success +- +1 ", result.stdout, re.M), result.stdout
    lines = result.stderr.splitlines()
    cleanup_at = next(i for i, ln in enumerate(lines) if "db.cleanup Success" in ln)
    assert all(any(f"progress | {t}" in ln for ln in lines[:cleanup_at]) for t in ("use Success", "fail Failed"))


def test_a_failing_cleanup_fails_the_flow_run_with_its_own_row(cli, flow_dir):
    spec = CLEANUP.replace("CLEANUP", "steps:bad_close").replace(
        '      fail: {run: steps:boom, with: {r: "${{ tasks.db }}"}}\n', "")
    result, report = _run(cli, flow_dir, spec)
    assert result.rc == 1
    assert report["state"] == "Failed"
    assert _states(report)["db.cleanup"] == ("Failed", "cleanup steps:bad_close failed: RuntimeError: cannot close db-1")
    assert _states(report)["use"] == ("Success", None)
    assert "Traceback" in result.stderr and "cannot close db-1" in result.stderr


def test_cleanup_runs_when_the_run_is_cancelled(cli_start, flow_dir):
    path = _write(flow_dir, """
        version: 1
        name: cancelled
        tasks:
          db: {run: steps:connect, cleanup: steps:close}
          wait: {run: steps:sleepy, with: {seconds: 30, r: "${{ tasks.db }}"}}
    """.replace("def sleepy", "def sleepy"))
    (flow_dir / "steps.py").write_text(STEPS.replace("def sleepy(seconds):", "def sleepy(seconds, r=None):"))
    proc = cli_start("run", path, cwd=flow_dir, env=_env(flow_dir))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (flow_dir / "home" / "flowspec.db").exists():
        time.sleep(0.1)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert (flow_dir / "cleanup.txt").read_text() == '{"conn": "db-1"}\n'
    assert re.search(r"^db\.cleanup +Success", out, re.M), out


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(500 if self.path == "/down" else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    handler = type("Handler", (_Recorder,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.received
    server.shutdown()
    server.server_close()


def test_hooks_post_to_a_webhook_and_a_failing_hook_changes_no_state(cli, flow_dir, webhook_server):
    url, received = webhook_server
    result, report = _run(cli, flow_dir, """
        version: 1
        name: hooked
        parameters:
          hook_url: {type: string}
        tasks:
          flaky:
            run: steps:flaky
            retries: 1
            on_retry: {run: flowspec.hooks:webhook, with: {url: "${{ params.hook_url }}/retry"}}
            on_success: steps:broken_hook
          load:
            run: steps:load
            map: {table: [a, bb]}
            run_name: ${{ args.table }}
            on_success: {run: steps:record, with: {tag: "${{ params.hook_url }}"}}
          bad:
            run: steps:boom
            on_failure: {run: flowspec.hooks:slack, with: {url: "${{ params.hook_url }}/slack"}}
          down:
            run: steps:boom
            on_failure: {run: flowspec.hooks:webhook, with: {url: "${{ params.hook_url }}/down"}}
        on_failure: {run: flowspec.hooks:webhook, with: {url: "${{ params.hook_url }}/flow"}}
        on_success: steps:broken_hook
        environment: {on_exit: steps:on_exit}
    """, "--param", f"hook_url={url}", FLOWSPEC_UI_URL="http://127.0.0.1:8787")
    assert result.rc == 1
    states = _states(report)
    assert states["flaky"] == ("Success", None)  # its on_success hook raised: logged, nothing changed
    assert "hook flaky.on_success (steps:broken_hook) failed: RuntimeError: hook is broken" in result.stderr
    assert "Traceback" in result.stderr
    assert states["down"][0] == "Failed" and "hook down.on_failure (flowspec.hooks:webhook) failed:" \
        " HookError: POST http://127.0.0.1" in result.stderr
    by_path = {path: body for path, _, body in received}
    assert {path for path, _, _ in received} == {"/retry", "/slack", "/down", "/flow"}
    assert all(ctype == "application/json" for _, ctype, _ in received)
    retry = by_path["/retry"]
    assert {k: retry[k] for k in ("flow", "task", "run_name", "map_index", "state", "attempt")} == {
        "flow": "hooked", "task": "flaky", "run_name": None, "map_index": None, "state": "Retrying", "attempt": 1}
    assert retry["message"] == "ValueError: first try fails" and retry["run_id"] == report["run_id"]
    text = by_path["/slack"]["text"]
    assert "task *bad* of flow *hooked*: *Failed*" in text and "ValueError: broken on purpose" in text
    assert f"http://127.0.0.1:8787/runs/{report['run_id']}" in text
    flow = by_path["/flow"]
    assert flow["state"] == "Failed" and flow["task"] is None
    assert flow["message"] == "tasks that did not succeed: bad (Failed), down (Failed)"
    assert flow["tasks"]["load"] == {"state": "Success", "children": {"Success": 2}}
    assert set(flow) >= {"flow", "run_id", "task", "run_name", "map_index", "state", "message", "attempt",
                         "started", "ended", "tasks"}
    hooks = [json.loads(line) for line in (flow_dir / "hooks.txt").read_text().splitlines()]
    assert sorted((h["run_name"], h["map_index"], h["state"], h["tag"]) for h in hooks) == [
        ("a", 0, "Success", url), ("bb", 1, "Success", url)]
    summary = json.loads((flow_dir / "on_exit.txt").read_text())  # the on_exit argument is JSON
    assert summary["state"] == "Failed" and summary["tasks"]["bad"]["state"] == "Failed"


def test_outputs_are_stored_with_the_run_and_shown(cli, flow_dir):
    result, report = _run(cli, flow_dir, """
        version: 1
        name: outs
        parameters:
          tables: {default: [x, yy]}
        tasks:
          load: {run: steps:load, map: {table: "${{ params.tables }}"}}
        outputs:
          rows: ${{ tasks.load[-1].rows }}
          first: ${{ tasks.load[0] }}
          tables: ${{ params.tables }}
    """)
    assert result.rc == 0, result.stderr
    expected = {"rows": 2, "first": {"table": "x", "rows": 1}, "tables": ["x", "yy"]}
    assert report["outputs"] == expected
    env = _env(flow_dir)
    shown = json.loads(cli("runs", "show", report["run_id"], "--format", "json", cwd=flow_dir, env=env).stdout)
    assert shown["outputs"] == expected
    text = cli("runs", "show", report["run_id"], cwd=flow_dir, env=env).stdout
    assert "outputs:\n  rows: 2\n  first: {\"table\": \"x\", \"rows\": 1}\n" in text


def test_a_flow_timeout_stops_running_tasks_and_ends_timed_out(cli, flow_dir):
    result, report = _run(cli, flow_dir, """
        version: 1
        name: slow
        timeout: 1s
        tasks:
          quick: {run: steps:ok}
          wait: {run: steps:sleepy, with: {seconds: 20}, after: [quick]}
          never: {run: steps:ok, after: [wait]}
        on_failure: steps:record
        environment: {on_exit: steps:on_exit}
    """)
    assert result.rc == 1
    assert result.seconds < 10
    assert report["state"] == "TimedOut"
    assert report["message"] == "the flow run exceeded its timeout of 1s"
    states = _states(report)
    assert states["quick"] == ("Success", None)
    assert states["wait"] == ("Cancelled", "the flow run timed out")
    assert states["never"] == ("Cancelled", "the flow run timed out")
    hook = json.loads((flow_dir / "hooks.txt").read_text())
    assert hook["state"] == "TimedOut"
    assert json.loads((flow_dir / "on_exit.txt").read_text())["state"] == "TimedOut"
    runs = json.loads(cli("runs", "list", "--format", "json", cwd=flow_dir, env=_env(flow_dir)).stdout)
    assert runs[0]["state"] == "TimedOut" and runs[0]["exit_code"] == 1
    follow = cli("runs", "logs", report["run_id"], "--follow", cwd=flow_dir, env=_env(flow_dir), timeout=20)
    assert follow.rc == 1, follow.output  # a TimedOut run is over: following it ends


@pytest.mark.parametrize("executor", [
    "{type: local-dask, workers: 2}",
    "{type: local-dask, workers: 2, scheduler: processes}",
    pytest.param("{type: dask, workers: 2}", marks=pytest.mark.slow),
])
def test_named_looping_children_on_every_executor(cli, flow_dir, executor):
    result, report = _run(cli, flow_dir, f"""
        version: 1
        name: pooled
        tasks:
          count:
            run: steps:count
            map: {{step: [5, 7]}}
            run_name: "by-${{{{ args.step }}}}"
            loop: {{until: "${{{{ result >= 15 }}}}"}}
        outputs:
          totals: ${{{{ tasks.count }}}}
        executor: {executor}
    """, "--children", timeout=120)
    assert result.rc == 0, result.stderr
    assert report["outputs"] == {"totals": [15, 21]}
    assert [c["run_name"] for c in report["tasks"]["count"]["children"]] == ["by-5", "by-7"]
    for name, previous in (("by-5", 10), ("by-7", 14)):
        assert _logged(result.stderr, rf"count\[{name}\]", f"index 2 previous {previous}"), result.stderr


def test_a_flow_hook_reads_task_results_and_params(cli, flow_dir):
    result, report = _run(cli, flow_dir, """
        version: 1
        name: reads
        parameters:
          who: {default: ops}
        tasks:
          load: {run: steps:load, with: {table: orders}}
        on_success: {run: steps:record, with: {tag: "${{ params.who }}: ${{ tasks.load.rows }} rows"}}
    """)
    assert result.rc == 0, result.stderr
    [hook] = [json.loads(line) for line in (flow_dir / "hooks.txt").read_text().splitlines()]
    assert hook["tag"] == "ops: 6 rows" and hook["state"] == "Success" and hook["message"] is None
    assert hook["tasks"] == {"load": {"state": "Success", "children": {}}}
    assert "outputs" not in report  # a flow without outputs keeps the JSON it always had


@pytest.mark.slow
def test_branches_and_merges_on_a_dask_cluster(cli, flow_dir):
    """The dask executor keeps results on its workers: a condition and a merge read the values."""
    result, report = _run(cli, flow_dir, BRANCHES + "    executor: {type: dask, workers: 2}\n",
                          "--param", "kind=big", timeout=120)
    assert result.rc == 0, result.stderr
    states = _states(report)
    assert states["small"] == ("Skipped", "condition false: tasks.pick == 'small'")
    assert states["big"] == ("Success", None) and states["join"] == ("Success", None)
    assert report["outputs"] == {"joined": "big 2", "kind": "big"}


def test_an_output_that_cannot_be_read_fails_the_run_and_says_why(cli, flow_dir):
    result, report = _run(cli, flow_dir, """
        version: 1
        name: badout
        tasks:
          load: {run: steps:load, with: {table: orders}}
        outputs:
          rows: ${{ tasks.load.rows }}
          missing: ${{ tasks.load.count }}
    """)
    assert result.rc == 1
    assert report["state"] == "Failed"
    assert report["outputs"] == {"rows": 6, "missing": None}
    message = "output missing: ${{ tasks.load.count }}: tasks.load has no key 'count'; its keys: 'rows', 'table'"
    assert _states(report)["outputs.missing"] == ("Failed", message)
    assert report["message"] == message
