"""Fixtures that start real servers: a PostgreSQL 15 server, a backend of each kind, and a Dask
scheduler with its workers."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowspec.backend import Backend, open_backend


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # The server refuses to run as root; as any other user it runs as that user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    """A throwaway PostgreSQL server on loopback, in a temporary folder, that a test may stop,
    start and restart (`pg_ctl`) under its clients."""

    def __init__(self, bindir: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="flowspec-pg-"))
        (self.root / "sock").mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.root / "sock", "postgres", "postgres")
        self.data, self.port, self.pg_ctl = self.root / "data", _free_port(), str(bindir / "pg_ctl")
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(self.data), "-U", "flowspec",
                                     "--auth=trust", "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        self.options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root / 'sock'} -c fsync=off"
                        " -c synchronous_commit=off -c full_page_writes=off")
        self.url = f"postgresql://flowspec@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(_as_postgres([self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"),
                                     "-w", *args]), check=check, capture_output=True, text=True)

    def start(self) -> None:
        self.ctl("start", "-o", self.options)

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "restart", "-o", self.options)

    def destroy(self) -> None:
        self.ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _postgres_server() -> PostgresServer:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install them, "
                    "e.g. `apt-get install postgresql`")
    server = PostgresServer(bindir)
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on loopback; yields the URL of its `postgres` database."""
    server = _postgres_server()
    try:
        yield server.url
    finally:
        server.destroy()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, to restart or stop under its clients."""
    server = _postgres_server()
    try:
        yield server
    finally:
        server.destroy()


def _admin(postgres_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'flowspec.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    name = f"test_{uuid.uuid4().hex}"
    _admin(server, f"CREATE DATABASE {name}")
    yield server.rsplit("/", 1)[0] + f"/{name}"
    _admin(server, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def backend(backend_url: str) -> Iterator[Backend]:
    """A fresh backend of each kind, closed afterwards."""
    with open_backend(backend_url) as opened:
        yield opened


# -- a real Dask cluster on loopback ---------------------------------------------------------------
class DaskCluster:
    """A `dask scheduler` and a `dask worker` (a nanny per worker process, which starts a new
    worker when one dies) running as separate processes. The workers' working directory is an
    empty folder of their own, so they can import nothing that a test writes beside a spec."""

    nworkers = 2

    def __init__(self, address: str, worker_dir: Path, log_dir: Path) -> None:
        self.address, self.worker_dir, self.log_dir = address, worker_dir, log_dir

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_for_workers(self, timeout: float = 60) -> None:
        """Until all the workers are connected (after one died, its nanny starts a new one)."""
        with self.client() as client:
            client.wait_for_workers(self.nworkers, timeout=timeout)

    def run_on_workers(self, fn, *args) -> dict:
        """fn(*args) on every worker: {worker address: value}."""
        with self.client() as client:
            client.wait_for_workers(self.nworkers, timeout=60)
            return client.run(fn, *args)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def _start_group(cmd: list[str], cwd: Path, log: Path, env: dict) -> subprocess.Popen:
    # A session of its own: teardown stops the process and whatever it started (the worker
    # processes under their nannies) by this group's id, and a Ctrl-C in the terminal that
    # runs pytest does not reach it half-way through a test.
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[DaskCluster]:
    """A scheduler and two worker processes (two threads each) on 127.0.0.1, for the session."""
    pytest.importorskip("distributed", reason="the dask executor needs `pip install dask[distributed]`")
    root = Path(tempfile.mkdtemp(prefix="flowspec-dask-"))
    worker_dir, log_dir = root / "worker-cwd", root / "logs"
    worker_dir.mkdir()
    log_dir.mkdir()
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)  # pytest's warning filters are not the cluster's business
    scheduler = _start_group([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                              "--port", address.rsplit(":", 1)[1], "--no-dashboard",
                              "--dashboard-address", "127.0.0.1:0"],  # its HTTP server too: no fixed port
                             root, log_dir / "scheduler.log", env)
    worker = _start_group([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", str(DaskCluster.nworkers),
                           "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard"],
                          worker_dir, log_dir / "worker.log", env)
    cluster = DaskCluster(address, worker_dir, log_dir)
    try:
        try:
            cluster.wait_for_workers()
        except Exception as exc:
            pytest.fail(f"the Dask cluster did not start: {type(exc).__name__}: {exc}\n{cluster.logs()}")
        yield cluster
    finally:
        _stop_group(worker)
        _stop_group(scheduler)
        shutil.rmtree(root, ignore_errors=True)


# Platform fixtures live in modules of their own (a Docker engine with base images and a registry,
# a Kubernetes cluster, the moto server); star-imported so every integration test can use them.
from engine_fixtures import *  # noqa: E402,F401,F403
from kube_fixtures import *  # noqa: E402,F401,F403
from aws_fixtures import *  # noqa: E402,F401,F403
