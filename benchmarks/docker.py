"""Docker benchmarks: builds of docker storage, and flow runs in containers through an agent.

    python benchmarks/docker.py [build|latency|many|all] [--repeat N] [--runs N] [--json]

It uses the engine at $DOCKER_HOST when that is set, else starts Debian's dockerd on a private
socket (tests/infra/start-dockerd.sh) and stops it at the end. Base image:
$BENCH_BASE_IMAGE, else `localhost/debian-python:bookworm` imported from the debootstrap tarball
the tests cache (~/.cache/flowspec-tests). Installs in the image come from a wheelhouse (the
tests' cached dependency wheels plus a wheel of this checkout, built once), as builds here have
no network; that also keeps flowspec's wheel the same while the checkout changes.

build     unchanged: `flowspec build` of a flow built before (a CLI process). Target < 1 s.
          one-line change: `flowspec build` after one line of task code changed, next to a plain
          `docker build` of the same generated context after another one-line change (the same
          base image and layer cache). Target: flowspec <= 1.3 x plain.
latency   an idle agent; from just before `flowspec run --name` starts to the task's Running
          state as the container recorded it, one run at a time, next to the engine's own
          `docker run --rm IMAGE python -c pass`. Target: median <= floor median + 0.5 s.
many      20 runs created at once for one agent with --max-runs 4: every one Success and no
          container left.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "infra"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowspec-tests"
BASE = "localhost/debian-python:bookworm"
DEPS = ["pyyaml>=6.0", "jsonschema>=4.18", "cloudpickle>=2.0", "psycopg[binary]>=3.1"]
TASKS = "from flowspec import context\n\ndef step(n: int = 1):\n    context.logger.info('step %d', n)\n    return n\n"


def spec(name: str, base: str) -> str:
    return (f"version: 1\nname: {name}\ntasks:\n  only:\n    run: tasks:step\nstorage:\n  type: docker\n"
            f"  base_image: {base}\nenvironment:\n  type: docker\n")


class Engine:
    """The engine to use: $DOCKER_HOST, or a private dockerd started (and stopped) here."""

    def __init__(self, root: Path) -> None:
        self.root, self.started = root, False
        self.host = os.environ.get("DOCKER_HOST")

    def __enter__(self) -> Engine:
        if not self.host:
            subprocess.run(["bash", str(SCRIPTS / "start-dockerd.sh"), str(self.root / "engine")], check=True,
                           capture_output=True, timeout=60)
            self.host, self.started = f"unix://{self.root / 'engine'}/docker.sock", True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.started:
            return
        engine = self.root / "engine"
        pid = int((engine / "docker.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        subprocess.run(["umount", str(engine / "docker-exec" / "netns" / "default")], capture_output=True)

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env={**os.environ, "DOCKER_HOST": self.host}, capture_output=True,
                              text=True, **kw)


def base_image(engine: Engine) -> str:
    base = os.environ.get("BENCH_BASE_IMAGE", BASE)
    if engine.docker("image", "inspect", base).returncode != 0:
        tarball = CACHE / "debian-python-bookworm.tar.gz"
        if not tarball.is_file():
            sys.exit(f"no base image {base} and no {tarball}: run the docker tests once (they build it)")
        engine.docker("import", str(tarball), base, check=True)
    return base


def wheelhouse(root: Path) -> Path:
    folder = root / "wheels"
    folder.mkdir()
    deps = CACHE / ("wheels-py%d.%d" % sys.version_info[:2])
    if not (deps / ".complete").is_file():
        deps.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--dest", str(deps),
                        *DEPS], check=True)
        (deps / ".complete").write_text("\n".join(DEPS))
    for wheel in deps.glob("*.whl"):
        os.symlink(wheel, folder / wheel.name)
    source = root / "src"
    shutil.copytree(ROOT / "flowspec", source / "flowspec", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(folder), str(source)],
                   check=True)
    return folder


class Bench:
    def __init__(self, root: Path, engine: Engine, base: str, wheels: Path) -> None:
        self.root, self.engine, self.base = root, engine, base
        self.url = f"sqlite://{root / 'flowspec.db'}"
        self.env = {**os.environ, "DOCKER_HOST": engine.host, "FLOWSPEC_WHEELHOUSE": str(wheels),
                    "FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": self.url}
        self.env.pop("PYTHONWARNINGS", None)
        for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):  # as a user runs it: .pyc files written
            self.env.pop(name, None)

    def flow(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir()
        (folder / "tasks.py").write_text(TASKS)
        (folder / "flow.yaml").write_text(spec(name, self.base))
        return folder / "flow.yaml"

    def cli(self, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flowspec", *args], env=self.env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"flowspec {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return elapsed, proc

    def change(self, path: Path, n: int) -> None:
        tasks = path.parent / "tasks.py"
        tasks.write_text(tasks.read_text() + f"\nCHANGED = {n}\n")


# -- build -----------------------------------------------------------------------------------------
def bench_build(b: Bench, repeat: int) -> list[dict]:
    path = b.flow("built")
    b.cli("build", str(path))
    unchanged = [b.cli("build", str(path))[0] for _ in range(repeat)]
    ours, plain = [], []
    for i in range(repeat):
        b.change(path, 2 * i)
        ours.append(b.cli("build", str(path))[0])
        b.change(path, 2 * i + 1)
        plain.append(plain_build(b, path))
    o, p = statistics.median(ours), statistics.median(plain)
    return [{"name": "build: unchanged flow", "value": statistics.median(unchanged), "unit": "s",
             "target": "< 1 s", "ok": statistics.median(unchanged) < 1.0},
            {"name": "build: one-line change (flowspec build)", "value": o, "unit": "s"},
            {"name": "build: one-line change (plain docker build, same context)", "value": p, "unit": "s"},
            {"name": "build: flowspec / plain", "value": o / p, "unit": "x", "target": "<= 1.3", "ok": o / p <= 1.3}]


def plain_build(b: Bench, path: Path) -> float:
    """`docker build DIR` of the context flowspec would send for this spec (written untimed): the
    same Dockerfile, base image and layer cache, the build check step included."""
    env = {k: v for k, v in b.env.items() if k.startswith(("DOCKER_", "FLOWSPEC_"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from flowspec.compile import compile_file
        from flowspec.storage.base import serialize
        from flowspec.storage.docker import BuildPlan

        compiled, _ = compile_file(str(path))
        payload, fp = serialize(compiled)
        plan = BuildPlan(compiled, payload, fp)
        context = b.root / "plain-context"
        shutil.rmtree(context, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(plan.context())) as tar:
            tar.extractall(context)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    started = time.perf_counter()
    proc = subprocess.run(["docker", "build", "-q", "-f", str(context / "Dockerfile.flowspec"), "-t",
                           "localhost/plain:bench", str(context)],
                          env={**os.environ, "DOCKER_HOST": b.engine.host}, capture_output=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"plain docker build failed: {proc.stderr.decode()[-2000:]}")
    return elapsed


# -- agents ----------------------------------------------------------------------------------------
def start_agent(b: Bench, *args: str) -> subprocess.Popen:
    log = open(b.root / f"agent-{time.time_ns()}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", *args], env=b.env, stdout=log,
                            stderr=subprocess.STDOUT)
    time.sleep(2.0)  # idle: started, warm child ready
    return proc


def stop_agent(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def first_running(backend, run_id: str, timeout: float = 120) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [s for s in backend.task_states(run_id, history=True) if s.state == "Running"]
        if states:
            return states[0].time
        run = backend.get_run(run_id)
        if run.state in ("Success", "Failed", "Cancelled"):
            raise SystemExit(f"run {run_id} ended {run.state} before a task ran: {run.message}")
        time.sleep(0.02)
    raise SystemExit(f"run {run_id} did not start a task within {timeout}s")


def bench_latency(b: Bench, runs: int) -> list[dict]:
    from flowspec.backend import open_backend

    path = b.flow("latency")
    image = json.loads(b.cli("register", str(path), "--format", "json")[1].stdout)["storage"]["image"]
    floor = []
    for _ in range(runs):
        started = time.perf_counter()
        b.engine.docker("run", "--rm", image, "/opt/venv/bin/python", "-c", "pass", check=True)
        floor.append(time.perf_counter() - started)
    agent = start_agent(b)
    latencies = []
    try:
        with open_backend(b.url) as backend:
            for _ in range(runs):
                started = time.time()
                _, proc = b.cli("run", "--name", "latency")
                latencies.append(first_running(backend, proc.stdout.split()[0]) - started)
                time.sleep(0.5)
    finally:
        stop_agent(agent)
    lat, fl = statistics.median(latencies), statistics.median(floor)
    return [{"name": "latency: docker run IMAGE python -c pass (floor)", "value": fl, "unit": "s",
             "detail": "each: " + " ".join(f"{x:.2f}" for x in floor)},
            {"name": "latency: run --name to task Running in its container", "value": lat, "unit": "s",
             "target": f"<= floor + 0.5 = {fl + 0.5:.2f} s", "ok": lat <= fl + 0.5,
             "detail": "each: " + " ".join(f"{x:.2f}" for x in latencies)}]


def bench_many(b: Bench, runs: int) -> list[dict]:
    from flowspec.backend import FINAL_STATES, open_backend

    path = b.flow("many")
    b.cli("register", str(path))
    agent = start_agent(b, "--max-runs", "4")
    try:
        started = time.perf_counter()
        ids = [b.cli("run", "--name", "many")[1].stdout.split()[0] for _ in range(runs)]
        with open_backend(b.url) as backend:
            while True:
                states = [backend.get_run(i).state for i in ids]
                if all(s in FINAL_STATES for s in states):
                    break
                time.sleep(0.2)
        elapsed = time.perf_counter() - started
    finally:
        stop_agent(agent)
    left = b.engine.docker("ps", "-aq", "--filter", "label=flowspec.run-id").stdout.split()
    ok = all(s == "Success" for s in states) and not left
    return [{"name": f"many: {runs} runs, --max-runs 4", "value": elapsed, "unit": "s",
             "target": "all Success, no container left", "ok": ok,
             "detail": f"{states.count('Success')}/{runs} Success, {len(left)} containers left"}]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="all", choices=("build", "latency", "many", "all"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--runs", type=int, default=5, help="latency runs (default 5)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    rows: list[dict] = []
    try:
        with Engine(root) as engine:
            b = Bench(root, engine, base_image(engine), wheelhouse(root))
            if args.what in ("build", "all"):
                rows += bench_build(b, args.repeat)
            if args.what in ("latency", "all"):
                rows += bench_latency(b, args.runs)
            if args.what in ("many", "all"):
                rows += bench_many(b, 20)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            verdict = "" if "ok" not in r else ("PASS" if r["ok"] else "MISS")
            target = f"  target {r['target']}" if "target" in r else ""
            print(f"{r['name']:<62} {r['value']:8.3f} {r['unit']:<2}{target}  {verdict} {r.get('detail', '')}")
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
