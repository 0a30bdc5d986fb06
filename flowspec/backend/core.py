"""What every part of the backend stands on: transactions, the schema migration, labels, errors.

A backend is one `Store` per concern (flows, runs, task states, logs, agents, limits, claims),
combined into `flowspec.backend.base.Backend`. Every part runs the same SQL on SQLite and
PostgreSQL (written with `?` placeholders); a dialect supplies only a connection, transactions,
column types and a way to make one critical section run one caller at a time (`_serialize`).
A part may call another part's private helpers (`self._runs`, `self._move`): they are one
object, and one transaction may span concerns.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from flowspec.backend.schema import MIGRATIONS, SCHEMA_VERSION
from flowspec.errors import BackendError, FlowspecError

_S = TypeVar("_S", bound="Store")


class NotFoundError(FlowspecError):
    """A flow or flow run id that the backend does not hold."""


def normalize_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Labels as stored: unique, sorted, non-empty strings."""
    labels = tuple(labels)
    if any(not isinstance(label, str) or not label for label in labels):
        raise ValueError(f"labels must be non-empty strings, got {list(labels)!r}")
    return tuple(sorted(set(labels)))


def labels_match(run_labels: Iterable[str], agent_labels: Iterable[str]) -> bool:
    """May an agent with `agent_labels` take a run with `run_labels`?"""
    run, agent = set(run_labels), set(agent_labels)
    # An empty label list acts as a label of its own: unlabelled runs go to unlabelled agents only.
    return run <= agent if run else not agent


def _marks(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)


class Tx:
    """An open transaction over a DB-API cursor; SQL is written with `?` placeholders."""

    def __init__(self, cursor: Any, translate: Any = None) -> None:
        self._cur = cursor
        self._translate = translate or (lambda sql: sql)

    @property
    def cursor(self) -> Any:
        """The DB-API cursor, for what a dialect does beyond SQL text (PostgreSQL's COPY)."""
        return self._cur

    def run(self, sql: str, *params: Any) -> int:
        self._cur.execute(self._translate(sql), params)
        return self._cur.rowcount

    def all(self, sql: str, *params: Any) -> list[tuple]:
        self._cur.execute(self._translate(sql), params)
        return self._cur.fetchall()

    def one(self, sql: str, *params: Any) -> tuple | None:
        rows = self.all(sql, *params)
        return rows[0] if rows else None

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cur.executemany(self._translate(sql), list(rows))

    def batches(self, sql: str, size: int, *params: Any) -> Iterator[list[tuple]]:
        """The rows of a query, `size` at a time."""
        self._cur.execute(self._translate(sql), params)
        while rows := self._cur.fetchmany(size):
            yield rows


class Store(ABC):
    """The connection, transactions and schema that every part of the backend shares.

    Subclasses supply the dialect: `types` for the schema, `_transaction`, `_serialize` and
    `close`. Use as a context manager or call `close()`.
    """

    types: dict[str, str] = {}

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)

    @abstractmethod
    def _transaction(self, write: bool = True) -> AbstractContextManager[Tx]:
        """One transaction: committed when the block ends, rolled back if it raises."""

    @abstractmethod
    def _serialize(self, tx: Tx, name: str) -> None:
        """Make transactions that call this with the same `name` run one at a time."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    def _migrate(self) -> None:
        with self._transaction() as tx:
            self._serialize(tx, "migrate")
            tx.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = (tx.one("SELECT MAX(version) FROM schema_version") or (None,))[0] or 0
            if current > SCHEMA_VERSION:
                raise BackendError(
                    f"the backend at {self.url} has schema version {current}, but this flowspec"
                    f" only knows versions up to {SCHEMA_VERSION}",
                    hint="upgrade flowspec (pip install -U flowspec), or use another backend URL",
                )
            for statements in MIGRATIONS[current:]:
                for statement in statements:
                    tx.run(statement.format(**self.types))
            if current < SCHEMA_VERSION:
                tx.run("DELETE FROM schema_version")
                tx.run("INSERT INTO schema_version (version) VALUES (?)", SCHEMA_VERSION)

    def schema_version(self) -> int:
        with self._transaction(write=False) as tx:
            return tx.one("SELECT MAX(version) FROM schema_version")[0]


def redact_url(url: str) -> str:
    """The URL with any password removed, for messages."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None and "password" not in parts.query:
        return url  # rebuilding would turn sqlite:////abs into sqlite://abs
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}@{netloc.rsplit('@', 1)[1]}" if parts.username else netloc.rsplit("@", 1)[1]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))
