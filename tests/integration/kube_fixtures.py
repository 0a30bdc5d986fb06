"""A real single-node Kubernetes cluster (v1.20) on loopback, for the k8s tests.

The scripts that start and stop it are the repository's (tests/infra: `start-k8s.sh`,
`start-node.sh`, `stop-k8s.sh`); the binaries (kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet and a static `pause`) live in the test cache (`kube-1.20.2/`). They come
from a prebuilt tarball when one is at hand (`kube-1.20.2-linux-amd64.tar.xz` in
`$FLOWSPEC_K8S_CACHE`, default `../shared/k8s` beside the repository), else they are built once
with tests/infra/build-k8s-1.20-from-debian.sh (~10 min on 2 cores) when its Debian packages are
installed, else the tests skip saying how to get them. The kubelet runs pods on the Docker engine
of `engine_fixtures` (`$DOCKER_HOST`, or a dockerd of the session). The cluster has no Services
and no cluster IPs: pods use host networking, their IP is 127.0.0.1.

Its ports are fixed (etcd 23790/23800, API server 16443, kubelet 10250): one cluster per machine.
A cluster that is already running (started by another test session) is reused and left running;
with `KUBECONFIG` set, that cluster is used instead and nothing is started.
"""
from __future__ import annotations

import contextlib
import fcntl
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

from engine_fixtures import REPO, SCRIPTS, CliFlows, cache_dir, missing_programs

API_PORT = 16443
TARBALL = "kube-1.20.2-linux-amd64.tar.xz"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "pause")
PAUSE_IMAGE = "localhost/pause:3.2"
NODE_READY_S = 120
BUILD_SCRIPT = SCRIPTS / "build-k8s-1.20-from-debian.sh"
# What the build script needs installed (it would install them itself: a test run does not).
BUILD_PACKAGES = ("dpkg-dev", "golang-go", "rsync", "jq", "gcc", "libc6-dev", "golang-github-modern-go-reflect2-dev")


def prebuilt_dir() -> Path:
    """Where a prebuilt tarball of the binaries may be: a cache, never a requirement."""
    return Path(os.environ.get("FLOWSPEC_K8S_CACHE") or REPO.parent / "shared" / "k8s")


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


def _missing_tools() -> str:
    needs = {"etcd": "etcd-server", "etcdctl": "etcd-client", "kubectl": "kubernetes-client", "docker": "docker.io",
             "openssl": "openssl", "curl": "curl"}
    if not os.environ.get("DOCKER_HOST"):  # else the kubelet runs pods on that engine
        needs["dockerd"] = "docker.io"
    return missing_programs(needs)


def _missing_build_packages() -> list[str]:
    def installed(package: str) -> bool:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        return done.returncode == 0 and "install ok installed" in done.stdout

    if shutil.which("dpkg-query") is None:
        return list(BUILD_PACKAGES)
    return [p for p in BUILD_PACKAGES if not installed(p)]


def _say(request: pytest.FixtureRequest, text: str) -> None:
    """A line on the terminal now, through pytest's output capture (a long wait is announced)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[kube_cluster] {text}", file=sys.stderr, flush=True)


def _unpack(tarball: Path, target: Path) -> None:
    partial = Path(tempfile.mkdtemp(prefix="kube-bin-", dir=cache_dir()))
    with tarfile.open(tarball) as tar:
        tar.extractall(partial, filter="data")
    found = {p.name: p for p in partial.rglob("*") if p.name in BINARIES}
    if set(found) != set(BINARIES):
        shutil.rmtree(partial, ignore_errors=True)
        pytest.skip(f"{tarball} lacks {', '.join(sorted(set(BINARIES) - set(found)))}")
    for name, path in found.items():
        path.chmod(0o755)
        path.replace(partial / name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a session cut short never leaves half the binaries


def _build(request: pytest.FixtureRequest, target: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="kube-build-", dir=cache_dir()))
    partial = work / "out"
    log = cache_dir() / "kube-build.log"
    _say(request, f"building the Kubernetes 1.20 binaries from Debian's source with {BUILD_SCRIPT.name} into "
                  f"{target} (once; about 10 min on 2 cores; log: {log}; FLOWSPEC_K8S_BUILD=0 skips instead)")
    try:
        with open(log, "wb") as out:
            done = subprocess.run(["bash", str(BUILD_SCRIPT), str(work), str(partial)], stdout=out,
                                  stderr=subprocess.STDOUT, timeout=3600)
        if done.returncode != 0 or not all((partial / b).exists() for b in BINARIES):
            pytest.fail(f"{BUILD_SCRIPT.name} failed ({done.returncode}); its log:\n"
                        + log.read_text(errors="replace")[-3000:])
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def kube_binaries(request: pytest.FixtureRequest) -> Path:
    """The kube binaries in the test cache: unpacked from a prebuilt tarball, or built once with
    the repository's script; skip, saying how to get them, when neither is possible."""
    target = cache_dir() / "kube-1.20.2"
    if all((target / b).exists() for b in BINARIES):
        return target
    with open(cache_dir() / "kube-1.20.2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be unpacking or building them now
        if all((target / b).exists() for b in BINARIES):
            return target
        tarball = prebuilt_dir() / TARBALL
        if tarball.is_file():
            _unpack(tarball, target)
            return target
        how = (f"build them once with `{os.path.relpath(BUILD_SCRIPT, REPO)} /tmp/kube-build {target}` (about 10 min on"
               f" 2 cores; it installs the Debian packages {' '.join(BUILD_PACKAGES)} and fetches Debian's kubernetes"
               f" source package), or put a prebuilt {TARBALL} in $FLOWSPEC_K8S_CACHE, or set KUBECONFIG to a"
               " cluster of yours")
        if os.environ.get("FLOWSPEC_K8S_BUILD") == "0":
            pytest.skip(f"the Kubernetes 1.20 binaries are not in {target} (FLOWSPEC_K8S_BUILD=0): {how}")
        if missing := _missing_build_packages():
            pytest.skip(f"the Kubernetes 1.20 binaries are not in {target}, and building them needs the Debian "
                        f"packages {' '.join(missing)}: {how}")
        _build(request, target)
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
    result = subprocess.run(["bash", str(SCRIPTS / name), str(state)], env=env, capture_output=True, text=True,
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
    """Where a session that started the cluster notes its state folder, for others to reuse: one
    place per machine, as the cluster's ports are (whatever test cache a session uses)."""
    return Path(tempfile.gettempdir()) / "flowspec-test-k8s-running.json"


def _given_cluster(kubeconfig: str) -> KubeCluster:
    """KUBECONFIG's cluster, once its API server answers: the contributor's own, used as it is."""
    if not _api_up(kubeconfig):
        pytest.skip(f"the cluster of KUBECONFIG={kubeconfig} does not answer (kubectl get --raw /readyz): start "
                    "it, or unset KUBECONFIG to let the tests start a cluster of their own")
    return KubeCluster(kubeconfig)


def _noted_cluster(wait: float = NODE_READY_S + 60) -> dict:
    """What the session that runs the cluster noted; a session still starting it notes it once
    its node is Ready, so wait for that while the API port stays open."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return json.loads(running_marker().read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline or not _port_open(API_PORT):
                return {}
            time.sleep(1)


def _reuse_running() -> KubeCluster | None:
    if not _port_open(API_PORT):
        return None
    noted = _noted_cluster()
    if not noted and not _port_open(API_PORT):
        return None  # a start that failed: this session starts its own
    kubeconfig = noted.get("kubeconfig")
    if not kubeconfig or not os.path.exists(kubeconfig) or not _api_up(kubeconfig):
        pytest.skip(f"something else holds 127.0.0.1:{API_PORT}, the test cluster's fixed API port, and it is"
                    " not a test cluster this machine started: stop it, or set KUBECONFIG to use it")
    wait_node_ready(kubeconfig)
    return KubeCluster(kubeconfig, noted.get("docker_host"), Path(noted["state_dir"]))


def start_cluster(bin_dir: Path, docker_host: str, root: Path) -> KubeCluster:
    """Start etcd, the control plane and a kubelet on the engine at `docker_host`; node Ready."""
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
        subprocess.run(["bash", str(SCRIPTS / "stop-k8s.sh"), str(cluster.state_dir)], capture_output=True,
                       env={**os.environ, "DOCKER_HOST": cluster.docker_host}, timeout=120)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    """The cluster: `KUBECONFIG`'s, one already running here, or a fresh one for the session."""
    pytest.importorskip("kubernetes", reason="the Kubernetes tests need `pip install kubernetes` (flowspec[k8s])")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is missing: apt-get install kubernetes-client")
    if os.environ.get("KUBECONFIG"):
        yield _given_cluster(os.environ["KUBECONFIG"])
        return
    if (running := _reuse_running()) is not None:
        yield running
        return
    if missing := _missing_tools():
        pytest.skip(f"the test cluster needs {missing}; or set KUBECONFIG to a cluster of yours")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's kubelet needs root: run the Kubernetes tests as root, or set KUBECONFIG "
                    "to a cluster of yours")
    bin_dir = kube_binaries(request)
    docker_host = request.getfixturevalue("docker_host")
    root = Path(tempfile.mkdtemp(prefix="flowspec-k8s-"))
    cluster = start_cluster(bin_dir, docker_host, root)
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
