"""Agent benchmarks: latency from `flowspec run --name` to the task starting, and throughput.

    python benchmarks/agents.py [latency|throughput|all] [--runs N] [--backend URL] [--json]

latency: an idle agent with default settings; each of N runs is created with the real CLI
(`flowspec run --name`, a new process), and the time is taken from just before that command
starts to the task's Running state as the flow run process recorded it. One run at a time.
Target: median under 1 s.

throughput: N one-task runs are created at once for one agent started with `--max-runs 4`;
the rate is N over the time from the first run's creation to the last run's final state.
Target: at least 4 runs per second on 2 cores.

Everything lives in a temporary flowspec home (SQLite there unless --backend is given, e.g. a
PostgreSQL URL), removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flowspec.backend import FINAL_STATES, Backend, open_backend

SPEC = """\
version: 1
name: bench
tasks:
  only:
    run: steps:noop
"""
STEPS = "def noop():\n    return None\n"


class Bench:
    """A temporary flowspec home with the `bench` flow registered and agents to start."""

    def __init__(self, root: Path, url: str | None) -> None:
        self.root = root
        self.url = url or f"sqlite://{root / 'flowspec.db'}"
        self.env = {**os.environ, "FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": self.url}
        for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):  # as a user runs it: .pyc files written
            self.env.pop(name, None)
        (root / "flow").mkdir()
        (root / "flow" / "flow.yaml").write_text(SPEC)
        (root / "flow" / "steps.py").write_text(STEPS)
        self.flowspec("register", str(root / "flow" / "flow.yaml"))

    def flowspec(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "flowspec", *args], env=self.env, capture_output=True,
                              text=True, check=True)
        return done.stdout

    @contextmanager
    def agent(self, *args: str) -> Iterator[None]:
        with open(self.root / "agent.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", *args], env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.5)  # started, and its first child warmed up: the agent is idle
            yield
        finally:
            proc.terminate()
            proc.wait()


def wait_final(backend: Backend, run_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while backend.get_run(run_id).state not in FINAL_STATES:
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not finish within {timeout:g}s")
        time.sleep(0.02)


def latency(bench: Bench, runs: int) -> dict:
    samples = []
    with bench.agent(), open_backend(bench.url) as backend:
        for _ in range(runs):
            start = time.time()
            run_id = bench.flowspec("run", "--name", "bench").strip()
            wait_final(backend, run_id)
            started = min(t.time for t in backend.task_states(run_id, history=True) if t.state == "Running")
            samples.append(started - start)
    return {"benchmark": "latency", "runs": runs, "median_s": round(statistics.median(samples), 3),
            "p90_s": round(sorted(samples)[int(0.9 * (runs - 1))], 3), "max_s": round(max(samples), 3),
            "target": "median < 1 s", "met": statistics.median(samples) < 1.0}


def throughput(bench: Bench, runs: int) -> dict:
    with bench.agent("--max-runs", "4"), open_backend(bench.url) as backend:
        flow = backend.get_flow("bench")
        ids = [backend.create_flow_run(flow.id).id for _ in range(runs)]
        first = backend.get_run(ids[0]).created
        for run_id in ids:
            wait_final(backend, run_id, timeout=600)
        last = max(backend.get_run(run_id).updated for run_id in ids)
        failed = sum(backend.get_run(run_id).state != "Success" for run_id in ids)
    rate = runs / (last - first)
    return {"benchmark": "throughput", "runs": runs, "seconds": round(last - first, 2),
            "runs_per_s": round(rate, 2), "not_success": failed, "target": ">= 4 runs/s", "met": rate >= 4}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="?", choices=("latency", "throughput", "all"), default="all")
    p.add_argument("--runs", type=int, help="runs per benchmark (default: 20 for latency, 200 for throughput)")
    p.add_argument("--backend", metavar="URL", help="a backend URL (default: a SQLite file in a temporary home)")
    p.add_argument("--json", action="store_true", help="one JSON object per benchmark")
    args = p.parse_args()
    results = []
    for name, bench_fn, default in (("latency", latency, 20), ("throughput", throughput, 200)):
        if args.which in (name, "all"):
            root = Path(tempfile.mkdtemp(prefix=f"flowspec-bench-{name}-"))
            try:
                results.append(bench_fn(Bench(root, args.backend), args.runs or default))
            finally:
                shutil.rmtree(root, ignore_errors=True)
    for result in results:
        print(json.dumps(result) if args.json else "  ".join(f"{k}={v}" for k, v in result.items()))
    return 0 if all(r["met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
