"""Fixtures that start real servers: a PostgreSQL 15 server, and a backend of each kind."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on loopback; yields the URL of its `postgres` database."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install them, "
                    "e.g. `apt-get install postgresql`")
    root = Path(tempfile.mkdtemp(prefix="flowspec-pg-"))
    (root / "sock").mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "sock", "postgres", "postgres")
    data, port = root / "data", _free_port()
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "flowspec",
                                 "--auth=trust", "-E", "UTF8", "--no-sync"]), **run)
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root / 'sock'} -c fsync=off"
               " -c synchronous_commit=off -c full_page_writes=off")
    pg_ctl = str(bindir / "pg_ctl")
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-l", str(root / "server.log"),
                                 "-w", "start", "-o", options]), **run)
    try:
        yield f"postgresql://flowspec@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


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
