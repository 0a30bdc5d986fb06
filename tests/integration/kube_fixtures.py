"""A real single-node Kubernetes cluster (v1.20) on loopback, for the k8s tests.

The binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and a static
`pause`) come as one tarball beside the scripts that start them (`start-k8s.sh`,
`start-node.sh`, `stop-k8s.sh`), in `$FLOWSPEC_K8S_DIR` (default: `../shared/k8s` beside the
repository). The tarball is unpacked once into the test cache; the kubelet runs pods on the
Docker engine of `engine_fixtures`, so images built there are on the node already. The cluster
has no Services and no cluster IPs: pods use host networking, their IP is 127.0.0.1.

Its ports are fixed (etcd 23790/23800, API server 16443): one cluster per machine. A cluster
that is already running (started by another test session) is reused and left running; with
`KUBECONFIG` set, that cluster is used instead and nothing is started.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine_fixtures import CliFlows

REPO = Path(__file__).resolve().parents[2]
API_PORT = 16443
TARBALL = "kube-1.20.2-linux-amd64.tar.xz"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "pause")
PAUSE_IMAGE = "localhost/pause:3.2"
NODE_READY_S = 120


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "flowspec-tests"


def k8s_dir() -> Path:
    return Path(os.environ.get("FLOWSPEC_K8S_DIR") or REPO.parent / "shared" / "k8s")


@dataclass
class KubeCluster:
    """A cluster the tests may use: its kubeconfig, and kubectl/API helpers on it."""

    kubeconfig: str
    docker_host: str | None = None  # the engine the kubelet runs pods on, when we know it
    state_dir: Path | None = None
    _apis: dict = field(default_factory=dict, repr=False)

    def env(self, **extra: str) -> dict:
        """os.environ pointed at this cluster (for a flowspec command or kubectl)."""
        return {**os.environ, "KUBECONFIG": self.kubeconfig, **extra}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], capture_output=True,
                              text=True, check=check, input=input, timeout=timeout)

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def client(self):
        """An ApiClient on this cluster (its own configuration, never the global default)."""
        if "client" not in self._apis:
            from kubernetes import config

            self._apis["client"] = config.new_client_from_config(config_file=self.kubeconfig)
        return self._apis["client"]

    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.client())

    def batch(self):
        from kubernetes import client

        return client.BatchV1Api(self.client())

    def pods(self, namespace: str, selector: str = "") -> list[dict]:
        return self.get_json("pods", "-n", namespace, "-l", selector)["items"] if selector else \
            self.get_json("pods", "-n", namespace)["items"]

    def wait_gone(self, kind: str, namespace: str, selector: str, timeout: float = 60) -> list[str]:
        """Wait until nothing of `kind` matches `selector`; return what is left (empty: all gone)."""
        deadline = time.monotonic() + timeout
        while True:
            names = self.kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "name").stdout.split()
            if not names or time.monotonic() > deadline:
                return names
            time.sleep(0.5)


@dataclass
class Namespace:
    """A namespace of one test: created fresh, deleted (with what is in it) afterwards."""

    cluster: KubeCluster
    name: str


def _api_up(kubeconfig: str) -> bool:
    result = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"],
                            capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and result.stdout.strip() == "ok"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _missing_tools() -> list[str]:
    needs = {"kubectl": "kubectl (Debian package kubernetes-client)", "etcd": "etcd (Debian package etcd-server)",
             "etcdctl": "etcdctl (Debian package etcd-client)", "dockerd": "dockerd (Debian package docker.io)",
             "openssl": "openssl (Debian package openssl)", "curl": "curl (Debian package curl)"}
    return [why for tool, why in needs.items() if shutil.which(tool) is None]


def unpack_binaries() -> Path:
    """The kube binaries, unpacked once into the test cache; skip when the tarball is missing."""
    source = k8s_dir()
    tarball = source / TARBALL
    scripts = [source / s for s in ("start-k8s.sh", "start-node.sh", "stop-k8s.sh")]
    missing = [str(p) for p in [tarball, *scripts] if not p.exists()]
    if missing:
        pytest.skip(f"the Kubernetes 1.20 binaries and scripts are missing ({', '.join(missing)}): set "
                    "FLOWSPEC_K8S_DIR to the folder that holds them, or KUBECONFIG to use another cluster")
    target = cache_dir() / "kube-1.20.2"
    if not all((target / b).exists() for b in BINARIES):
        partial = Path(tempfile.mkdtemp(prefix="kube-bin-", dir=cache_dir()))
        with tarfile.open(tarball) as tar:
            tar.extractall(partial, filter="data")
        found = {p.name: p for p in partial.rglob("*") if p.name in BINARIES}
        if set(found) != set(BINARIES):
            pytest.skip(f"{tarball} lacks {', '.join(sorted(set(BINARIES) - set(found)))}")
        for name, path in found.items():
            path.chmod(0o755)
            path.replace(partial / name)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # atomic: a session cut short never leaves half the binaries
    return target


def import_pause(bin_dir: Path, docker_host: str) -> None:
    """The kubelet's sandbox image, made from the static pause binary (no registry outside)."""
    env = {**os.environ, "DOCKER_HOST": docker_host}
    have = subprocess.run(["docker", "image", "inspect", PAUSE_IMAGE], env=env, capture_output=True)
    if have.returncode == 0:
        return
    tar = subprocess.run(["tar", "-C", str(bin_dir), "-c", "pause"], capture_output=True, check=True).stdout
    subprocess.run(["docker", "import", "-c", 'ENTRYPOINT ["/pause"]', "-", PAUSE_IMAGE], input=tar, env=env,
                   capture_output=True, check=True)


def _script(name: str, state: Path, bin_dir: Path, docker_host: str, timeout: float = 180) -> None:
    env = {**os.environ, "KUBE_BIN": str(bin_dir), "DOCKER_HOST": docker_host}
    result = subprocess.run(["bash", str(k8s_dir() / name), str(state)], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(state.glob("*.log")))
        raise RuntimeError(f"{name} failed ({result.returncode}): {result.stdout}{result.stderr}\n{logs}")


def wait_node_ready(kubeconfig: str, timeout: float = NODE_READY_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "nodes", "-o",
                              "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}"],
                             capture_output=True, text=True).stdout.split()
        if "True" in out:
            return
        time.sleep(0.5)
    raise RuntimeError(f"no node became Ready within {timeout:g}s")


def running_marker() -> Path:
    """Where a session that started the cluster notes its state folder, for others to reuse."""
    return cache_dir() / "k8s-running.json"


def _reuse_running() -> KubeCluster | None:
    if not _port_open(API_PORT):
        return None
    try:
        noted = json.loads(running_marker().read_text())
    except (OSError, ValueError):
        noted = {}
    kubeconfig = noted.get("kubeconfig")
    if not kubeconfig or not os.path.exists(kubeconfig) or not _api_up(kubeconfig):
        pytest.skip(f"something else holds 127.0.0.1:{API_PORT}, the test cluster's fixed API port, and it is"
                    " not a test cluster this machine started: stop it, or set KUBECONFIG to use it")
    wait_node_ready(kubeconfig)
    return KubeCluster(kubeconfig, noted.get("docker_host"), Path(noted["state_dir"]))


def start_cluster(docker_host: str, root: Path) -> KubeCluster:
    """Start etcd, the control plane and a kubelet on the engine at `docker_host`; node Ready."""
    bin_dir = unpack_binaries()
    import_pause(bin_dir, docker_host)
    state = root / "state"
    state.mkdir(parents=True)
    cluster = KubeCluster(str(state / "kubeconfig"), docker_host, state)
    try:
        _script("start-k8s.sh", state, bin_dir, docker_host)
        _script("start-node.sh", state, bin_dir, docker_host)
        wait_node_ready(cluster.kubeconfig)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: KubeCluster) -> None:
    if cluster.state_dir is not None and cluster.docker_host:
        subprocess.run(["bash", str(k8s_dir() / "stop-k8s.sh"), str(cluster.state_dir)], capture_output=True,
                       env={**os.environ, "DOCKER_HOST": cluster.docker_host}, timeout=120)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    """The cluster: `KUBECONFIG`'s, one already running here, or a fresh one for the session."""
    pytest.importorskip("kubernetes", reason="the Kubernetes tests need `pip install kubernetes` (flowspec[k8s])")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is missing: install the Debian package kubernetes-client")
    if os.environ.get("KUBECONFIG"):
        yield KubeCluster(os.environ["KUBECONFIG"])
        return
    if (running := _reuse_running()) is not None:
        yield running
        return
    if missing := _missing_tools():
        pytest.skip(f"a test cluster needs {', '.join(missing)}")
    docker_host = request.getfixturevalue("docker_host")
    root = Path(tempfile.mkdtemp(prefix="flowspec-k8s-"))
    cluster = start_cluster(docker_host, root)
    marker = running_marker()
    marker.write_text(json.dumps({"kubeconfig": cluster.kubeconfig, "docker_host": docker_host,
                                  "state_dir": str(cluster.state_dir), "pid": os.getpid()}))
    try:
        yield cluster
    finally:
        marker.unlink(missing_ok=True)
        stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> Iterator[Namespace]:
    """A fresh namespace for one test (with its default service account); deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while kube_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {name} got no default service account")
        time.sleep(0.2)
    try:
        yield Namespace(kube_cluster, name)
    finally:
        kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# -- flows on the cluster, through the CLI ------------------------------------------------------------
# Wheels for the images: flowspec's dependencies and psycopg (the engine fixtures' list), plus
# what a dask-kubernetes image needs (dask[distributed], kubernetes), for this Python's versions.
K8S_WHEELS = ["pyyaml>=6.0", "jsonschema>=4.18", "cloudpickle>=2.0", "psycopg[binary]>=3.1"]


@pytest.fixture(scope="session")
def k8s_wheelhouse() -> Path:
    """A cached folder of wheels for offline installs in images, dask and kubernetes included."""
    from importlib.metadata import version

    pins = [f"dask[distributed]=={version('distributed')}", f"kubernetes=={version('kubernetes')}"]
    folder = cache_dir() / f"wheels-k8s-py3.11-{version('distributed')}-{version('kubernetes')}"
    stamp = folder / ".complete"
    if stamp.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", "3.11", "--dest", str(folder), *K8S_WHEELS, *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"cannot download the wheels images install from (needs PyPI): {proc.stderr[-2000:]}")
    stamp.write_text("\n".join(K8S_WHEELS + pins) + "\n")
    return folder


class KubeFlows(CliFlows):
    """Flow folders with docker storage and a Kubernetes environment, the CLI on this session's
    engine and cluster, a PostgreSQL backend of their own (pods reach it with host networking),
    and agent processes, stopped at the end."""

    agent_stop_s = 60.0  # stopping an agent deletes its Jobs, Foreground
    wait_s = 120.0

    def __init__(self, root: Path, cluster: KubeCluster, namespace: str, url: str, docker_host: str,
                 wheelhouse: Path, base_image: str, registry: str) -> None:
        self.root, self.cluster, self.namespace, self.url = root, cluster, namespace, url
        self.base_image, self.registry = base_image, registry
        self.env = {**os.environ, "DOCKER_HOST": docker_host, "FLOWSPEC_WHEELHOUSE": str(wheelhouse),
                    "FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": url, "KUBECONFIG": cluster.kubeconfig}
        self.env.pop("PYTHONWARNINGS", None)  # pytest's warning filters are not the children's business
        self.agents: list[tuple[subprocess.Popen, Path]] = []

    def write(self, name: str, tasks: str, environment: str, code: str, files: dict | None = None,
              storage: str = "", top: str = "") -> Path:
        """NAME/flow.yaml (+ tasks.py and `files`): docker storage pushed to the registry."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tasks.py").write_text(code)
        for file, text in (files or {}).items():
            (folder / file).write_text(text)
        spec = (f"version: 1\nname: {name}\n{top}tasks:\n{tasks}storage:\n  type: docker\n"
                f"  image_name: {name}\n  registry_url: {self.registry}\n  base_image: {self.base_image}\n{storage}"
                f"environment:\n{environment}")
        (folder / "flow.yaml").write_text(spec)
        return folder / "flow.yaml"

    def register(self, path: Path) -> None:
        done = self.cli("register", str(path), timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr

    def start_run(self, name: str, *args: str) -> str:
        done = self.cli("run", "--name", name, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split()[-1]

    def history(self, run_id: str) -> list:
        with self.backend() as backend:
            return backend.run_history(run_id)

    def logs(self, run_id: str) -> str:
        done = self.cli("runs", "logs", run_id)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def wait_logs(self, run_id: str, text: str, timeout: float = 20) -> str:
        """The run's logs once they hold `text` (the pod's output is recorded as it streams)."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs(run_id)
            if text in logs or time.monotonic() > deadline:
                return logs
            time.sleep(0.2)

    def left(self, run_id: str, timeout: float = 60) -> list[str]:
        """Jobs and pods of this run still in the cluster after `timeout` (empty: all gone)."""
        selector = f"flowspec.io/run-id={run_id}"
        return self.cluster.wait_gone("jobs,pods", self.namespace, selector, timeout)


@pytest.fixture(scope="module")
def kube_flows(request: pytest.FixtureRequest, kube_cluster: KubeCluster, tmp_path_factory) -> Iterator[KubeFlows]:
    """Flows on the cluster for one test module: a namespace and a backend database of its own."""
    import psycopg

    docker_host = request.getfixturevalue("docker_host")
    base_image = request.getfixturevalue("base_image")
    registry = request.getfixturevalue("registry")
    wheelhouse = request.getfixturevalue("k8s_wheelhouse")
    server = request.getfixturevalue("postgres_url")
    database = f"k8s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    kube_cluster.kubectl("create", "namespace", namespace)
    flows = KubeFlows(tmp_path_factory.mktemp("k8s-flows"), kube_cluster, namespace,
                      server.rsplit("/", 1)[0] + f"/{database}", docker_host, wheelhouse, base_image, registry)
    try:
        yield flows
    finally:
        flows.stop_agents()
        kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
