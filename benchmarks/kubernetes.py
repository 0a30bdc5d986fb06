"""Kubernetes benchmarks: flow runs as Jobs through an agent, against the cluster's own floor.

    python benchmarks/kubernetes.py [latency|many|all] [--runs N] [--json]

It uses the cluster of $KUBECONFIG, the engine at $DOCKER_HOST (where images are built), the
PostgreSQL backend at $FLOWSPEC_BACKEND (pods reach it, on loopback with host networking), the
registry $BENCH_REGISTRY (default 127.0.0.1:5055), the base image $BENCH_BASE_IMAGE (default
localhost/debian-python:bookworm) and, for offline builds, $FLOWSPEC_WHEELHOUSE. The test
fixtures (tests/integration/kube_fixtures.py, engine_fixtures.py) start all of these.

latency  an idle agent; from just before `flowspec run --name` starts to the task's Running
         state as the pod recorded it, one run at a time, next to a bare `kubectl create` of
         the same Job (same image, same pod settings) whose container prints the time as it
         starts. Target: median <= floor median + 1 s.
many     20 runs created at once, labelled `dev`, for one agent started with --max-runs 4 and
         a concurrency limit dev=2: every one Success, at most 2 Running at once in the
         recorded history, and no Job or pod left (waited for up to 60 s after the last final
         state: the agent deletes each Job after its pod recorded the end).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TASKS = "from flowspec import context\n\ndef step(n: int = 1):\n    context.logger.info('step %d', n)\n    return n\n"


def spec(name: str, labels: str, registry: str, base: str) -> str:
    return (f"version: 1\nname: {name}\ntasks:\n  only:\n    run: tasks:step\nstorage:\n  type: docker\n"
            f"  image_name: {name}\n  registry_url: {registry}\n  base_image: {base}\n"
            f"environment:\n  type: kubernetes-job\n  namespace: bench\n  labels: {labels}\n")


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.registry = os.environ.get("BENCH_REGISTRY", "127.0.0.1:5055")
        self.base = os.environ.get("BENCH_BASE_IMAGE", "localhost/debian-python:bookworm")
        self.env = {**os.environ, "FLOWSPEC_HOME": str(root / "home")}
        for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):  # as a user runs it: .pyc files written
            self.env.pop(name, None)
        for need in ("KUBECONFIG", "DOCKER_HOST", "FLOWSPEC_BACKEND"):
            if not self.env.get(need):
                sys.exit(f"benchmarks/kubernetes.py: set {need} (see the module docstring)")
        self.agent_proc = None
        self.kubectl("create", "namespace", "bench", check=False)

    def flowspec(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run([sys.executable, "-m", "flowspec", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"flowspec {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        done = subprocess.run(["kubectl", *args], env=self.env, capture_output=True, text=True, input=input)
        if check and done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def register(self, name: str, labels: str) -> dict:
        folder = self.root / name
        folder.mkdir()
        (folder / "tasks.py").write_text(TASKS)
        (folder / "flow.yaml").write_text(spec(name, labels, self.registry, self.base))
        self.flowspec("register", str(folder / "flow.yaml"))
        from flowspec.backend import open_backend

        with open_backend(self.env["FLOWSPEC_BACKEND"]) as backend:
            return backend.get_flow(name).storage

    def agent(self, *args: str) -> None:
        log = open(self.root / "agent.log", "ab")
        self.agent_proc = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", *args],
                                           env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        time.sleep(2.0)  # started, its warm child ready: the agent is idle

    def stop_agent(self) -> None:
        if self.agent_proc is not None:
            self.agent_proc.terminate()
            self.agent_proc.wait(60)
            self.agent_proc = None

    def task_started(self, run_id: str, timeout: float = 120) -> float:
        from flowspec.backend import open_backend

        deadline = time.monotonic() + timeout
        with open_backend(self.env["FLOWSPEC_BACKEND"]) as backend:
            while time.monotonic() < deadline:
                running = [s.time for s in backend.task_states(run_id, history=True) if s.state == "Running"]
                if running:
                    return running[0]
                time.sleep(0.05)
        raise SystemExit(f"run {run_id}: the task did not start in {timeout:g}s")

    def wait_final(self, run_ids: list[str], timeout: float = 600) -> dict:
        from flowspec.backend import FINAL_STATES, open_backend

        deadline = time.monotonic() + timeout
        with open_backend(self.env["FLOWSPEC_BACKEND"]) as backend:
            while time.monotonic() < deadline:
                runs = {r: backend.get_run(r) for r in run_ids}
                if all(run.state in FINAL_STATES for run in runs.values()):
                    return {r: (run, backend.run_history(r)) for r, run in runs.items()}
                time.sleep(0.2)
        raise SystemExit("runs did not finish in time")


def floor_job(name: str, image: str) -> dict:
    """The Job flowspec sends for the bench flow, with a container that prints the time at start."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "bench"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "hostNetwork": True,
                "containers": [{"name": "flow", "image": image,
                                "command": ["/opt/venv/bin/python", "-c", "import time; print(time.time())"]}]}}}}


def latency(bench: Bench, runs: int) -> dict:
    location = bench.register("bench-latency", "[]")
    bench.agent("--poll-interval", "0.5")
    ours, floor = [], []
    try:
        for i in range(runs):
            start = time.time()
            run_id = bench.flowspec("run", "--name", "bench-latency").strip().split()[-1]
            ours.append(bench.task_started(run_id) - start)
            bench.wait_final([run_id])
            name = f"floor-{uuid.uuid4().hex[:8]}"
            start = time.time()
            bench.kubectl("create", "-f", "-", input=json.dumps(floor_job(name, location["image"])))
            bench.kubectl("wait", "--for=condition=complete", f"job/{name}", "-n", "bench", "--timeout=120s")
            printed = float(bench.kubectl("logs", f"job/{name}", "-n", "bench").split()[0])
            floor.append(printed - start)
            bench.kubectl("delete", "job", name, "-n", "bench", "--cascade=foreground", "--wait=false")
    finally:
        bench.stop_agent()
    ours_m, floor_m = statistics.median(ours), statistics.median(floor)
    return {"benchmark": "latency", "runs": runs, "median_s": round(ours_m, 3), "max_s": round(max(ours), 3),
            "floor_median_s": round(floor_m, 3), "floor_max_s": round(max(floor), 3),
            "target": "median <= floor median + 1 s", "met": ours_m <= floor_m + 1.0}


def most_running(histories: list) -> int:
    """The most runs Running at the same time, from their recorded state histories."""
    edges = []
    for history in histories:
        started = next((e.time for e in history if e.state == "Running"), None)
        ended = next((e.time for e in history if e.state in ("Success", "Failed", "Cancelled")), None)
        if started is not None and ended is not None:
            edges += [(started, 1), (ended, -1)]
    now = most = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def many(bench: Bench, runs: int) -> dict:
    bench.register("bench-many", "[dev]")
    bench.flowspec("concurrency-limit", "set", "dev", "2")
    bench.agent("--label", "dev", "--max-runs", "4")
    try:
        start = time.time()
        ids = [bench.flowspec("run", "--name", "bench-many").strip().split()[-1] for _ in range(runs)]
        done = bench.wait_final(ids)
        seconds = time.time() - start
        # A run's final state is written from inside its pod; the agent then deletes the Job.
        deadline = time.time() + 60
        while (left := bench.kubectl("get", "jobs,pods", "-n", "bench", "-l", "flowspec.io/flow=bench-many",
                                     "-o", "name").split()) and time.time() < deadline:
            time.sleep(0.2)
        cleaned = time.time() - start - seconds
    finally:
        bench.stop_agent()
        bench.flowspec("concurrency-limit", "delete", "dev")
    states = [run.state for run, _ in done.values()]
    top = most_running([history for _, history in done.values()])
    return {"benchmark": "many", "runs": runs, "seconds": round(seconds, 1),
            "success": states.count("Success"), "most_running": top, "left": len(left),
            "all_deleted_after_s": round(cleaned, 1),
            "target": "all Success, at most 2 Running, nothing left",
            "met": states.count("Success") == runs and top <= 2 and not left}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="all", choices=("latency", "many", "all"))
    p.add_argument("--runs", type=int, default=None, help="runs (default: 10 for latency, 20 for many)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="flowspec-bench-k8s-") as root:
        bench = Bench(Path(root))
        if args.what in ("latency", "all"):
            results.append(latency(bench, args.runs or 10))
        if args.what in ("many", "all"):
            results.append(many(bench, args.runs or 20))
    for r in results:
        print(json.dumps(r) if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))
    return 0 if all(r["met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
