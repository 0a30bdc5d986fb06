"""The SQLite backend: one file, shared by the CLI and any number of agent processes."""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flowspec.backend.base import _TASK_COLS, Backend, Tx
from flowspec.errors import BackendError

BUSY_TIMEOUT_S = 30.0


class SQLiteBackend(Backend):
    """A backend in a SQLite file (WAL mode), safe for several processes on one machine.

    Every writing transaction starts with `BEGIN IMMEDIATE`: it takes the file's write lock up
    front, so writers queue on the busy timeout instead of failing when a read turns into a write.
    """

    types = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "float": "REAL", "bigint": "INTEGER"}

    def __init__(self, path: str | Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        path = Path(path).expanduser()
        super().__init__(f"sqlite://{path}")  # what open_backend reads back: sqlite:///abs/path.db
        if not path.parent.is_dir():
            raise BackendError(
                f"cannot open the SQLite backend {path}: the directory {path.parent} does not exist",
                hint="create the directory, or set FLOWSPEC_BACKEND to another path",
            )
        self.path = path
        self._lock = threading.RLock()  # one connection, shared by an agent's threads
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so sqlite3 never opens
        # a deferred transaction behind our back.
        with self._errors():
            self._conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        try:
            with self._errors():
                self._configure()
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _configure(self) -> None:
        # WAL lets readers run beside the one writer. synchronous=NORMAL in WAL mode survives a
        # killed process (only a power cut may lose the last commits) and avoids an fsync per write.
        self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Tx]:
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            cursor = self._conn.cursor()
            try:
                yield Tx(cursor)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # some errors end the transaction themselves
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                cursor.close()

    def _insert_task_states(self, tx: Tx, run_id: str, rows: list[tuple]) -> None:
        """As Backend's, in one statement over the rows as one JSON text: SQLite then inserts the
        whole batch without the interpreter's lock, which the recorder's thread would otherwise
        take back for every row from the thread running the tasks."""
        tx.run(f"INSERT INTO task_states ({_TASK_COLS}) SELECT ?, json_extract(value, '$[0]'),"
               " json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
               " json_extract(value, '$[4]'), json_extract(value, '$[5]') FROM json_each(?) ORDER BY key",
               run_id, json.dumps(rows, ensure_ascii=False))

    def _serialize(self, tx: Tx, name: str) -> None:
        pass  # BEGIN IMMEDIATE already lets one writer in at a time

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn a locked, unreadable or corrupt database into a BackendError."""
        try:
            yield
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # our bug or a caller's, not the file's
        except sqlite3.DatabaseError as exc:
            raise BackendError(
                f"the SQLite backend {self.path} cannot be used: {exc}",
                hint="if another process holds it, retry; if the file is damaged, restore or"
                " move it away (a new one is created)",
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
