"""Fixtures for a real Docker engine: Debian's dockerd on a private socket, a local base image
with Python, the registry on 127.0.0.1:5055 and a folder of wheels for offline installs.

    docker_host     session: `$DOCKER_HOST` when it is set (an engine the contributor has: used
                    as it is, nothing is started), else `unix://DIR/docker.sock` of a dockerd
                    started for this session by tests/infra/start-dockerd.sh (no bridge, no
                    iptables; needs root), stopped at the end, its netns mount unmounted.
    base_image      session: `localhost/debian-python:bookworm` on that engine, imported from a
                    cached debootstrap tarball (built with debootstrap when missing, ~3 min).
    registry        session: `127.0.0.1:5055` (Debian's docker-registry), reused when one runs.
    auth_registry   session: another one on a free port that wants credentials (htpasswd).
    dependency_wheels session: a cached folder of wheels of flowspec's dependencies (and psycopg)
                    for the image's Python; storage installs from such a folder when
                    $FLOWSPEC_WHEELHOUSE names it (builds have no network here).
    wheelhouse      session: those plus flowspec's own wheel, built from this checkout once.
    docker_env      function: os.environ plus DOCKER_HOST and FLOWSPEC_WHEELHOUSE, for CLI calls.
    docker_flows    function: flow folders with docker storage from the base image, the CLI, agents
                    on a SQLite backend in the test's folder (stopped at the end).

Every engine, registry and image here lives on loopback or in temporary folders.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "infra"  # the scripts that start what the platform tests need
BASE_IMAGE = "localhost/debian-python:bookworm"
IMAGE_PYTHON = "3.11"  # bookworm's python3
REGISTRY = "127.0.0.1:5055"


def cache_dir() -> Path:
    """`$FLOWSPEC_TEST_CACHE`, else `$XDG_CACHE_HOME/flowspec-tests` (or ~/.cache/flowspec-tests):
    kept between test sessions."""
    given = os.environ.get("FLOWSPEC_TEST_CACHE")
    path = Path(given) if given else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowspec-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_programs(needs: dict[str, str]) -> str:
    """What of {program: Debian package} is not on PATH, and the command that installs it; ""
    when nothing is missing."""
    missing = {program: package for program, package in needs.items() if shutil.which(program) is None}
    if not missing:
        return ""
    programs = ", ".join(f"{program} (Debian package {package})" for program, package in missing.items())
    return f"{programs}: apt-get install {' '.join(dict.fromkeys(missing.values()))}"


def _run_script(name: str, root: Path, timeout: float, log: str) -> None:
    script = SCRIPTS / name
    try:
        subprocess.run(["bash", str(script), str(root)], check=True, capture_output=True, text=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        text = (root / log).read_text(errors="replace")[-3000:] if (root / log).exists() else ""
        pytest.fail(f"{name} did not start ({exc}):\n{getattr(exc, 'stderr', '') or ''}\n{text}")


def _stop_pidfile(pidfile: Path, grace: float = 20.0) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _given_engine(host: str) -> str:
    """$DOCKER_HOST, once it answers: the contributor's own engine, used as it is."""
    # In a child: a refused connection leaves the SDK's socket to the garbage collector, whose
    # ResourceWarning is an error here.
    ping = "import sys, docker; docker.DockerClient(base_url=sys.argv[1], timeout=10).ping()"
    done = subprocess.run([sys.executable, "-c", ping, host], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        pytest.skip(f"DOCKER_HOST={host} does not answer ({why}): start that engine, or unset DOCKER_HOST to let "
                    "the tests start a dockerd of their own (Debian package docker.io)")
    return host


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """`$DOCKER_HOST` when set; else a dockerd of this session on a private socket (a temp folder:
    no clash with others), started by tests/infra/start-dockerd.sh."""
    pytest.importorskip("docker", reason='the docker SDK is missing: pip install "flowspec[docker]"')
    if os.environ.get("DOCKER_HOST"):
        yield _given_engine(os.environ["DOCKER_HOST"])
        return
    needs = {"dockerd": "docker.io", "docker": "docker.io", "curl": "curl"}
    if missing := missing_programs(needs):
        pytest.skip(f"the docker tests start a dockerd of their own and need {missing}, or set DOCKER_HOST to "
                    "an engine you have")
    if os.geteuid() != 0:
        pytest.skip("the docker tests start a dockerd of their own, which needs root: run them as root, or set "
                    "DOCKER_HOST to an engine you have (e.g. unix:///var/run/docker.sock, or a rootless one)")
    root = Path(tempfile.mkdtemp(prefix="fs-dockerd-"))  # short: a socket path has at most 107 bytes
    try:
        _run_script("start-dockerd.sh", root, 60, "dockerd.log")
        yield f"unix://{root}/docker.sock"
    finally:
        _stop_pidfile(root / "docker.pid")
        netns = root / "docker-exec" / "netns" / "default"
        if os.path.ismount(netns):
            subprocess.run(["umount", str(netns)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _rootfs_tarball() -> Path:
    """The cached debootstrap tarball of bookworm with python3, venv and pip; built when missing."""
    cache = cache_dir()
    tarball = cache / "debian-python-bookworm.tar.gz"
    if tarball.is_file():
        return tarball
    if shutil.which("debootstrap") is None:
        pytest.skip(f"the base image {BASE_IMAGE} is built with debootstrap, which is missing: "
                    f"apt-get install debootstrap (or put a tarball of a bookworm root with python3 at {tarball})")
    work = Path(tempfile.mkdtemp(prefix="fs-rootfs-", dir=cache))
    try:
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip",
                        "bookworm", str(work / "root")], check=True, capture_output=True, timeout=1200)
        partial = cache / f".{tarball.name}.{os.getpid()}.tmp"
        subprocess.run(f"tar -C {work / 'root'} -c . | gzip -1 > {partial}", shell=True, check=True)
        os.replace(partial, tarball)  # atomic: another session never sees half a tarball
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"debootstrap of the base image failed: {exc}\n{getattr(exc, 'stderr', b'')!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


@pytest.fixture(scope="session")
def base_image(docker_host: str) -> str:
    """`localhost/debian-python:bookworm` on this session's engine (Python 3.11, venv, pip)."""
    import docker

    if "%d.%d" % sys.version_info[:2] != IMAGE_PYTHON:  # a flow loads only in the Python that made it
        pytest.skip(f"the base image (Debian bookworm) has Python {IMAGE_PYTHON}: run these tests with it")

    client = docker.DockerClient(base_url=docker_host)
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        if missing := missing_programs({"docker": "docker.io"}):
            pytest.skip(f"importing the base image {BASE_IMAGE} needs {missing}")
        tarball = _rootfs_tarball()
        # The CLI streams the file to the engine (the SDK's chunked upload of a file is refused).
        proc = subprocess.run(["docker", "import", str(tarball), BASE_IMAGE], capture_output=True, text=True,
                              env=dict(os.environ, DOCKER_HOST=docker_host), timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"docker import of {tarball} failed: {proc.stderr}")
        client.images.get(BASE_IMAGE)
    finally:
        client.close()
    return BASE_IMAGE


def _registry_up() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:5055 (a fixed port: one already running is reused)."""
    if _registry_up():
        yield REGISTRY
        return
    if missing := missing_programs({"docker-registry": "docker-registry", "curl": "curl"}):
        pytest.skip(f"the tests start a registry on {REGISTRY} and need {missing}")
    root = Path(tempfile.mkdtemp(prefix="fs-registry-"))
    try:
        _run_script("start-registry.sh", root, 30, "registry.log")
        yield REGISTRY
    finally:
        _stop_pidfile(root / "registry.pid", grace=5.0)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[str]:
    """Debian's docker-registry on a free loopback port with htpasswd auth (user `flowspec`): a
    push without `docker login` is refused as a real private registry refuses it."""
    if missing := missing_programs({"docker-registry": "docker-registry"}):
        pytest.skip(f"the tests start a registry that wants credentials and need {missing}")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(tempfile.mkdtemp(prefix="fs-authreg-"))
    # bcrypt, as the registry requires, from the C library (Python's crypt module; its
    # deprecation warning is not this test's business, so it runs in a child interpreter).
    hashed = subprocess.run([sys.executable, "-W", "ignore", "-c", "import crypt; print(crypt.crypt('secret', "
                             "crypt.mksalt(crypt.METHOD_BLOWFISH)))"], capture_output=True, text=True).stdout.strip()
    if not hashed.startswith("$2"):
        pytest.skip("no bcrypt in this Python's crypt module: cannot write the registry's htpasswd")
    (root / "htpasswd").write_text(f"flowspec:{hashed}\n")
    (root / "config.yml").write_text(f"version: 0.1\nlog: {{level: info}}\nstorage:\n  filesystem: {{rootdirectory: {root}/data}}\n"
                                     f"http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd: {{realm: flowspec-test, path: {root}/htpasswd}}\n")
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            except urllib.error.HTTPError:
                break  # 401: it is up, and it wants credentials
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"the auth registry did not start: {(root / 'registry.log').read_text()}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


# Wheels of flowspec's dependencies for the image's Python; flowspec's own wheel is built by
# docker storage from the checkout. psycopg lets a container reach a PostgreSQL backend.
WHEEL_REQUIREMENTS = ["pyyaml>=6.0", "jsonschema>=4.18", "cloudpickle>=2.0", "psycopg[binary]>=3.1"]


@pytest.fixture(scope="session")
def wheelhouse(dependency_wheels: Path) -> Iterator[Path]:
    """The dependency wheels plus flowspec's own, built once from this checkout for the session:
    images then hold the same flowspec whatever happens to the source tree meanwhile."""
    folder = Path(tempfile.mkdtemp(prefix="fs-wheels-"))
    try:
        for wheel in dependency_wheels.glob("*.whl"):
            os.symlink(wheel, folder / wheel.name)
        root = Path(__file__).resolve().parents[2]
        source = folder / "src"  # a copy: the build leaves nothing in the checkout
        shutil.copytree(root / "flowspec", source / "flowspec", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, source / name)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                               "--wheel-dir", str(folder), str(source)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"cannot build flowspec's wheel from {root}: {proc.stderr[-2000:]}")
        shutil.rmtree(source)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dependency_wheels() -> Path:
    """A cached folder of wheels of flowspec's dependencies for offline installs inside images."""
    folder = cache_dir() / f"wheels-py{IMAGE_PYTHON}"
    stamp = folder / ".complete"
    if stamp.is_file():
        return folder
    folder.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--dest", str(folder), *WHEEL_REQUIREMENTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot download the wheels images install from (needs PyPI): {proc.stderr[-2000:]}")
    stamp.write_text("\n".join(WHEEL_REQUIREMENTS) + "\n")
    return folder


@pytest.fixture
def docker_env(docker_host: str, wheelhouse: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for CLI calls: this session's engine, the wheelhouse, a private flowspec home."""
    env = dict(os.environ)
    env.update(DOCKER_HOST=docker_host, FLOWSPEC_WHEELHOUSE=str(wheelhouse),
               FLOWSPEC_HOME=str(tmp_path / "home"))
    env.pop("FLOWSPEC_BACKEND", None)
    env.pop("PYTHONWARNINGS", None)  # pytest's warning filters are not the image's business
    return env


# -- flows in images, through the CLI ----------------------------------------------------------------
FLOW_TASKS = '''
import json, os, sys, time
from flowspec import context

def hello(name: str = "World"):
    context.logger.info("hello %s from the container", name)
    print(f"printed by hello for {name}", flush=True)
    return name

def fail(message: str = "failing on purpose"):
    raise RuntimeError(message)

def hog(megabytes: int = 512):
    context.logger.info("allocating %d MB", megabytes)
    blocks = [bytearray(1024 * 1024) for _ in range(megabytes)]
    return len(blocks)

def nap(seconds: float = 60.0):
    context.logger.info("napping for %gs", seconds)
    time.sleep(seconds)

def show_env(names: list):
    context.logger.info("env %s", json.dumps({n: os.environ.get(n) for n in names}, sort_keys=True))

def read(path: str):
    with open(path) as fh:
        text = fh.read().strip()
    context.logger.info("read %s: %s", path, text)
    return text
'''


class CliFlows:
    """What the platform tests share: the CLI with `self.env`, agent processes logging to files in
    `self.root` (stopped with SIGTERM at the end), and the backend at `self.url`."""

    root: Path
    url: str
    env: dict[str, str]
    agent_stop_s = 30.0  # an agent stops its runs first: a platform's stop may take a while
    wait_s = 60.0

    def cli(self, *args: str, timeout: float = 300, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowspec", *args], env=env or self.env, capture_output=True,
                              text=True, timeout=timeout, **kw)

    def agent(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = self.root / f"agent-{len(self.agents)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--poll-interval", "0.1",
                                     *args], env=env or self.env, stdout=out, stderr=subprocess.STDOUT)
        self.agents.append((proc, log))
        return proc

    def agent_log(self, index: int = -1) -> str:
        return self.agents[index][1].read_text(errors="replace")

    def agent_logs(self) -> str:
        return "\n".join(log.read_text(errors="replace") for _, log in self.agents)

    def stop_agents(self) -> None:
        for proc, _ in self.agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.agents:
            try:
                proc.wait(self.agent_stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def backend(self):
        from flowspec.backend import open_backend

        return open_backend(self.url)

    def wait_run(self, run_id: str, states: tuple[str, ...] = ("Success", "Failed", "Cancelled"),
                 timeout: float | None = None):
        deadline = time.monotonic() + (self.wait_s if timeout is None else timeout)
        with self.backend() as backend:
            while True:
                run = backend.get_run(run_id)
                if run is not None and run.state in states:
                    return run
                if time.monotonic() > deadline:
                    raise AssertionError(f"run {run_id} is {run.state if run else None}, not {states}:\n"
                                         + self.agent_logs()[-5000:])
                time.sleep(0.1)


class DockerFlows(CliFlows):
    """Flow folders with docker storage and environment, the CLI with this session's engine, and
    agents on a SQLite backend in the test's folder (or `url`). Agents are stopped at the end."""

    def __init__(self, root: Path, env: dict[str, str], base: str) -> None:
        self.root, self.base = root, base
        self.url = f"sqlite://{root / 'backend.db'}"
        self.env = {**env, "FLOWSPEC_BACKEND": self.url}
        self.env.pop("PYTHONWARNINGS", None)  # pytest's warning filters are not the image's business
        self.agents: list[tuple[subprocess.Popen, Path]] = []

    def write(self, name: str, tasks: str, storage: str = "", environment: str = "", code: str = FLOW_TASKS) -> Path:
        """flows/NAME/flow.yaml with `tasks` (YAML), docker storage from the local base image."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tasks.py").write_text(code)
        storage = storage or f"  base_image: {self.base}\n"
        spec = (f"version: 1\nname: {name}\ntasks:\n{tasks}storage:\n  type: docker\n{storage}"
                f"environment:\n  type: docker\n{environment}")
        (folder / "flow.yaml").write_text(spec)
        return folder / "flow.yaml"

    def containers(self, run_id: str | None = None) -> list:
        import docker

        client = docker.DockerClient(base_url=self.env["DOCKER_HOST"])
        try:
            label = f"flowspec.run-id={run_id}" if run_id else "flowspec.run-id"
            for _ in range(20):
                try:
                    return client.containers.list(all=True, filters={"label": label})
                except docker.errors.NotFound:  # one went between the list and its inspection: list again
                    time.sleep(0.1)
            return client.containers.list(all=True, filters={"label": label})
        finally:
            client.close()


@pytest.fixture
def docker_flows(tmp_path: Path, docker_env: dict[str, str], base_image: str) -> Iterator[DockerFlows]:
    flows = DockerFlows(tmp_path, docker_env, base_image)
    try:
        yield flows
    finally:
        flows.stop_agents()
