"""The PostgreSQL backend: one database shared by agents on any number of machines."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flowspec.backend.base import SCHEDULED, Backend, Tx
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

    def _insert_scheduled_runs(self, tx: Tx, runs: list[tuple], now: float) -> int:
        """As ScheduleStore's, with the runs copied into a temporary table (COPY: no statement to
        parse, no parameter per value) and moved from there into flow_runs in one statement. A
        scheduler pass over 10 000 clocks spent a third of its time in the driver parsing the
        placeholders of multi-row INSERTs."""
        from flowspec.backend.schedules import _number, _run_ids

        cursor = tx.cursor
        if not self._temporary_table(cursor):
            return super()._insert_scheduled_runs(tx, runs, now)
        with cursor.copy("COPY scheduled_runs_in FROM STDIN") as copy:
            for ord_, (run_id, row) in enumerate(zip(_run_ids(len(runs)), runs)):
                copy.write_row((ord_, run_id, *row))
        stamp = _number(now)
        # A run another scheduler made first is skipped.
        cursor.execute(
            "INSERT INTO flow_runs (id, flow_id, flow_name, state, labels, parameters, created, updated,"
            f" scheduled_start, clock) SELECT id, flow_id, flow_name, '{SCHEDULED}', labels, parameters, {stamp},"
            f" {stamp}, scheduled_start, clock FROM scheduled_runs_in ORDER BY ord ON CONFLICT DO NOTHING")
        created = cursor.rowcount
        cursor.execute("DELETE FROM scheduled_runs_in")  # a next batch in the same transaction starts empty
        return created

    def _temporary_table(self, cursor) -> bool:
        """Make sure the connection has the table runs are copied into (kept for the connection's
        life, emptied at every commit); False where the database refuses this role temporary
        tables (`REVOKE TEMPORARY`): runs are then inserted with multi-row statements."""
        if self._no_temporary_tables:
            return False
        try:
            with cursor.connection.transaction():  # a savepoint: a refusal leaves the pass's transaction usable
                cursor.execute("CREATE TEMP TABLE IF NOT EXISTS scheduled_runs_in (ord INTEGER, id TEXT,"
                               " flow_id BIGINT, flow_name TEXT, labels TEXT, parameters TEXT,"
                               " scheduled_start DOUBLE PRECISION, clock TEXT) ON COMMIT DELETE ROWS")
        except self._pg.errors.InsufficientPrivilege:
            self._no_temporary_tables = True
            return False
        return True

    _no_temporary_tables = False

    def _move_clocks(self, tx: Tx, moves: list[tuple[float, int, int]]) -> None:
        """As ScheduleStore's, with the clocks as three arrays: three parameters for the driver
        to pass, not one per clock."""
        if moves:
            times, flow_ids, positions = (list(column) for column in zip(*moves))
            # The range of flow ids keeps the join to those clocks: the planner would hash the
            # whole table (every part of a pass would read every clock: quadratic in clocks).
            tx.run("UPDATE clocks SET next_time = m.next_time FROM unnest(?::float8[], ?::bigint[], ?::integer[])"
                   " AS m (next_time, flow_id, position) WHERE clocks.flow_id = m.flow_id"
                   " AND clocks.position = m.position AND clocks.next_time < m.next_time"
                   f" AND clocks.flow_id BETWEEN {int(min(flow_ids))} AND {int(max(flow_ids))}", times, flow_ids, positions)

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
