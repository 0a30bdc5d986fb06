"""The PostgreSQL backend: one database shared by agents on any number of machines."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flowspec.backend.base import Backend, Tx
from flowspec.errors import BackendError, require

CONNECT_TIMEOUT_S = 10
# Keys of transaction-scoped advisory locks, one per critical section; the high bits spell
# "flow" so they are unlikely to collide with another application's locks in the same database.
_LOCK_KEYS = {"migrate": 0x666C6F7700000001, "register": 0x666C6F7700000002, "claim": 0x666C6F7700000003}


def to_pyformat(sql: str) -> str:
    """Our SQL uses `?` placeholders (sqlite3); psycopg wants `%s`."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresBackend(Backend):
    """A backend in a PostgreSQL database, reached by a `postgresql://` URL.

    Transactions run at READ COMMITTED: after `_serialize` waits for its advisory lock, each
    following statement sees everything the previous holder committed.
    """

    types = {"serial": "BIGSERIAL PRIMARY KEY", "float": "DOUBLE PRECISION", "bigint": "BIGINT"}

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._pg = require("psycopg", "postgres", "the PostgreSQL backend")
        self._raw_url = url
        self._lock = threading.RLock()  # one connection, shared by an agent's threads
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self):  # -> psycopg.Connection
        try:
            return self._pg.connect(self._raw_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except self._pg.OperationalError as exc:
            raise BackendError(
                f"cannot connect to the PostgreSQL backend at {self.url}: {_first_line(exc)}",
                hint="check that the server is running and that the URL (FLOWSPEC_BACKEND) is right",
            ) from None

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Tx]:
        with self._lock:
            if self._conn.broken or self._conn.closed:  # the server restarted or the network dropped
                self._conn.close()
                self._conn = self._connect()  # raises BackendError while the server is down; retried by callers
            with self._errors(), self._conn.transaction(), self._conn.cursor() as cursor:
                yield Tx(cursor, to_pyformat)

    def _up_for(self, tx: Tx) -> float | None:
        return float(tx.one("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")[0])

    def _serialize(self, tx: Tx, name: str) -> None:
        # Released at commit or rollback, and by the server if the client dies mid-transaction.
        tx.run("SELECT pg_advisory_xact_lock(?)", _LOCK_KEYS[name])

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn a lost connection or server failure into a BackendError."""
        try:
            yield
        except (self._pg.OperationalError, self._pg.InterfaceError) as exc:
            raise BackendError(
                f"the PostgreSQL backend at {self.url} failed: {_first_line(exc)}",
                hint="check that the server is running and reachable, then retry",
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
