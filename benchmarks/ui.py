"""How fast `flowspec ui` answers on a big backend.

Builds a backend (SQLite, or with --backend a PostgreSQL database) of N runs (several flows,
states, labels, agents) and one run of M mapped children with L log lines, starts `flowspec ui` on it, and reports the server time
(its `Server-Timing` header) of: the runs list (first and 50th page, each filter, the children
of a run of many child flow runs among them), the run page
of the big run and its heatmap data, a log search, the whole log's download (and the server's
peak memory around it), the start time, and the CPU an idle run page's event stream costs.
With --browser (Playwright and Debian's chromium), also the heatmap's paint time and the
longest task while the page loads.

    python benchmarks/ui.py                                   # scaled down: a few seconds
    python benchmarks/ui.py --runs 100000 --children 100000 --lines 1000000
    python benchmarks/ui.py --backend postgresql://flowspec@127.0.0.1:5432/bench   # an empty database
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The targets, at 100 000 runs and a run of 100 000 children with 1 000 000 log lines.
TARGETS = {"runs list": 150, "run page of the big run": 300, "run page of a run of": 300, "log search": 1000, "heatmap paint": 250,
           "longest task": 200, "idle run page stream": 1, "start to first answer": 0.5}
STATES = ("Success", "Success", "Success", "Failed", "Cancelled", "Running", "Scheduled", "Queued")
FLOWS = ("etl", "train", "report", "ingest", "score")
LABELS = (["gpu"], ["cpu"], ["gpu", "big"], [], ["eu"])
AGENTS = ("agent-a", "agent-b", "agent-c", None)


def build(url: str, runs: int, children: int, lines: int) -> str:
    """The backend, filled in bulk through the backend's own transactions; returns the big run's id."""
    from flowspec.backend import open_backend

    rng = random.Random(7)
    backend = open_backend(url)
    now = time.time() - runs
    rows = []
    for n in range(runs):
        state = STATES[n % len(STATES)]
        rows.append((uuid.uuid4().hex, None, FLOWS[n % len(FLOWS)], state, json.dumps(LABELS[n % len(LABELS)]),
                     json.dumps({"n": n}), AGENTS[n % len(AGENTS)], now + n, now + n + rng.random(), 1e9))
    # heartbeat_timeout 1e9: the synthetic Running runs are never judged lost while measuring
    with backend._transaction() as tx:
        tx.many("INSERT INTO flow_runs (id, flow_id, flow_name, state, labels, parameters, agent, created, updated,"
                " heartbeat_timeout) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    # Running, and never judged lost (no process heartbeats it): its page keeps its streams open
    big = backend.create_flow_run(None, {"size": children}, flow_name="big-map", state="Running", runner="benchmark",
                                  heartbeat_timeout=1e9)
    start = time.time()
    states = [("make", None, "Running", 1, start, None), ("make", None, "Success", 1, start + 1, None)]
    for i in range(children):
        states.append(("square", i, "Running", 1, start + 1 + i / children, None))
        states.append(("square", i, "Failed" if i % 97 == 0 else "Success", 1, start + 1.5 + i / children, None))
    states.append(("total", None, "Running", 1, start + 3, None))
    for at in range(0, len(states), 50_000):
        backend.add_task_states(big.id, states[at:at + 50_000])
    batch = []
    for i in range(lines):
        child = i % max(children, 1)
        batch.append((start + i / max(lines, 1), "ERROR" if i % 1000 == 999 else "INFO", f"square[{child}]",
                      f"child {child} step {i}: processed record {rng.randrange(10**9)}"))
        if len(batch) == 50_000:
            backend.add_logs(big.id, batch)
            batch = []
    backend.add_logs(big.id, batch + [(time.time(), "INFO", None, "needle in the haystack")])
    backend.close()
    return big.id


def link_children(url: str, count: int) -> str:
    """Make every 5th run a child flow run of the oldest one (as a map of subflows would, spread
    over the runs made since), once; returns the parent's id."""
    from flowspec.backend import open_backend

    with open_backend(url) as backend, backend._transaction() as tx:
        found = tx.one("SELECT parent_run FROM run_links WHERE parent_task LIKE 'fanout[%' LIMIT 1")
        if found:
            return found[0]
        ids = [row[0] for row in tx.all("SELECT id FROM flow_runs ORDER BY seq LIMIT ?", count * 5 + 1)]
        tx.many("INSERT INTO run_links (run_id, parent_run, parent_task) VALUES (?, ?, ?)",
                [(run_id, ids[0], f"fanout[{k}]") for k, run_id in enumerate(ids[5::5][:count])])
        return ids[0]


def start_ui(db: str, home: Path) -> tuple[subprocess.Popen, str, float]:
    """`flowspec ui` on the backend, and the seconds from its start to its first answer."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLOWSPEC_HOME": str(home)}
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flowspec", "ui", "--port", "0", "--backend", str(db)],
                            env=env, stdout=subprocess.PIPE, text=True)
    url = re.search(r"serving (http://\S+?)/? ", proc.stdout.readline()).group(1)
    get(url + "/static/favicon.svg")
    return proc, url, time.perf_counter() - began


def get(url: str) -> tuple[float, bytes, dict]:
    """Server time in ms (Server-Timing), the body, the headers."""
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
        timing = response.headers.get("server-timing", "app;dur=nan")
        return float(timing.split("dur=")[1]), body, dict(response.headers)


def timed(url: str, repeat: int = 3) -> float:
    return statistics.median(get(url)[0] for _ in range(repeat))


def page_50(url: str) -> float | str:
    """Follow 'next' 49 times, then time the 50th page."""
    target = url
    for _ in range(49):
        _, _, headers = get(target)
        link = headers.get("link") or headers.get("Link")
        if not link:
            return "no 50th page (fewer matches)"
        target = url.split("/runs", 1)[0] + link[1:link.index(">")]
    return timed(target)


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_stream_cpu(url: str, db: str, run_id: str, pid: int, seconds: float) -> float:
    """Percent of a core the server spends while one run page's event stream stays open (on
    a run that does not change: the stream resumes where the page left off)."""
    import socket
    from urllib.parse import urlsplit

    from flowspec.backend import open_backend

    with open_backend(db) as backend, backend._transaction(write=False) as tx:
        log = tx.one("SELECT MAX(id) FROM logs WHERE run_id = ?", run_id)[0]
        task = tx.one("SELECT MAX(id) FROM task_states WHERE run_id = ?", run_id)[0]
        updated = tx.one("SELECT updated FROM flow_runs WHERE id = ?", run_id)[0]
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(f"GET /runs/{run_id}/events?kinds=state,tasks,log&resume={log}-{task}-{updated!r} HTTP/1.1\r\n"
                 f"Host: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode())
    time.sleep(3)  # the first tick sends the state once
    before = cpu_seconds(pid)
    time.sleep(seconds)
    used = cpu_seconds(pid) - before
    sock.close()
    return used / seconds * 100


def browser_figures(url: str, run_id: str) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", chromium_sandbox=False, args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.add_init_script("window.__long = 0; new PerformanceObserver(l => l.getEntries().forEach("
                             "e => { window.__long = Math.max(window.__long, e.duration); }))"
                             ".observe({type: 'longtask', buffered: true});")
        began = time.perf_counter()
        page.goto(f"{url}/runs/{run_id}")
        while page.evaluate("document.querySelector('canvas.heatmap')?.dataset.painted") is None:
            time.sleep(0.02)
        loaded = time.perf_counter() - began
        painted = float(page.evaluate("document.querySelector('canvas.heatmap').dataset.painted"))
        time.sleep(0.5)
        longest = page.evaluate("window.__long")
        browser.close()
    return {"heatmap paint (ms)": round(painted, 1), "longest task (ms)": round(longest, 1),
            "page until heatmap drawn (s)": round(loaded, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5_000)
    parser.add_argument("--children", type=int, default=5_000)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--child-runs", type=int, default=20_000, help="child flow runs of one run (default 20000)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--browser", action="store_true", help="also measure in Debian's chromium")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (reused if it exists)")
    parser.add_argument("--backend", metavar="URL", help="a PostgreSQL database to build in (empty, or built by an"
                        " earlier run with the same --keep DIR) instead of a SQLite file")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="flowspec-ui-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    db, home = args.backend or str(folder / "flowspec.db"), folder / "home"
    home.mkdir(exist_ok=True)
    began = time.perf_counter()
    big = (folder / "big-run").read_text() if (folder / "big-run").exists() else None
    if big is None:
        big = build(db, args.runs, args.children, args.lines)
        (folder / "big-run").write_text(big)
    kind = "PostgreSQL" if args.backend else "SQLite"
    print(f"backend: {kind}, {args.runs} runs, one of {args.children} children and {args.lines} log lines"
          f" ({time.perf_counter() - began:.1f} s to build" + ("" if args.backend else
                                                                f"; {Path(db).stat().st_size / 1e6:.0f} MB") + ")")
    parent = link_children(db, args.child_runs)
    proc, url, first = start_ui(db, home)  # the first start (the backend's migrations, indexes included, ran in build)
    proc.terminate()
    proc.communicate(timeout=10)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - began
    proc, url, startup = start_ui(db, home)
    report: dict[str, float | str] = {"first start (s)": round(first, 2),
                                "start to first answer (s)": round(startup, 2),
                                "of which a bare python start (s)": round(bare, 2)}
    try:
        for name, query in [("no filter", ""), ("flow", "flow=train"), ("state", "state=Failed"),
                            ("two states", "state=Queued&state=Running"), ("label", "label=big"),
                            ("agent", "agent=agent-b"), ("time", "since=0&until=%f" % (time.time() - args.runs / 2)),
                            ("parent", f"parent={parent}")]:
            report[f"runs list, {name}, page 1 (ms)"] = timed(f"{url}/runs?{query}")
            report[f"runs list, {name}, page 50 (ms)"] = page_50(f"{url}/runs?{query}")
        report[f"run page of a run of {args.child_runs} child runs (ms)"] = timed(f"{url}/runs/{parent}")
        report["its JSON twin, every child run listed (ms)"] = timed(f"{url}/runs/{parent}.json")
        report["run page of the big run, first view (ms)"] = get(f"{url}/runs/{big}")[0]
        report["run page of the big run, again (ms)"] = timed(f"{url}/runs/{big}")
        # what the page asks for next, in the order a browser does: the first is not cached yet
        report["its tasks, graph and heatmaps, loaded after the page, first (ms)"] = get(f"{url}/runs/{big}/tasks")[0]
        report["its tasks, again (ms)"] = timed(f"{url}/runs/{big}/tasks")
        report["run page JSON (ms)"] = timed(f"{url}/runs/{big}.json")
        report["its timeline, loaded after the page, first (ms)"] = get(f"{url}/runs/{big}/gantt")[0]
        report["heatmap data, first (ms)"] = get(f"{url}/runs/{big}/children/square.json")[0]
        report["heatmap data, again (ms)"] = timed(f"{url}/runs/{big}/children/square.json")
        report["log search, one hit (ms)"] = timed(f"{url}/runs/{big}/logs?q=needle+in+the")
        report["log search, no hit (ms)"] = timed(f"{url}/runs/{big}/logs?q=no+such+text")
        report["log filter, ERROR level (ms)"] = timed(f"{url}/runs/{big}/logs?level=ERROR")
        rss = proc_status(proc.pid, "VmRSS")
        started = time.perf_counter()
        _, body, _ = get(f"{url}/runs/{big}/logs.txt")
        report["whole log download (s)"] = round(time.perf_counter() - started, 2)
        report["whole log size (MB)"] = round(len(body) / 1e6, 1)
        report["server peak memory growth during download (MB)"] = round(
            (proc_status(proc.pid, "VmHWM") - rss) / 1024, 1)
        report["idle run page stream (% of a core)"] = round(idle_stream_cpu(url, db, big, proc.pid, args.idle_seconds), 2)
        if args.browser:
            report.update(browser_figures(url, big))
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    width = max(map(len, report))
    for name, value in report.items():
        target = next((t for prefix, t in TARGETS.items() if name.startswith(prefix)), None)
        shown = f"{value:.1f}" if isinstance(value, float) else str(value)
        verdict = "" if target is None or not isinstance(value, (int, float)) else (
            f"  target < {target:g}: {'PASS' if value < target else 'MISS'}")
        print(f"{name:<{width}}  {shown}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
