"""The backend: rows, the rules every backend shares, and the SQL both dialects run.

A backend holds registered flows, flow runs with their state history, task states, logs, agents
and per-label concurrency limits. SQLite and PostgreSQL run the same SQL (written with `?`
placeholders); a dialect supplies only a connection, transactions, column types and a way to
make one critical section run one caller at a time (`_serialize`).

Every public method is one transaction, committed before it returns: a client killed with
`kill -9` loses nothing it was told was stored. Times are UTC epoch seconds (floats).
"""
from __future__ import annotations

import json
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from flowspec.errors import BackendError, FlowspecError

SCHEDULED, QUEUED, SUBMITTED, RUNNING = "Scheduled", "Queued", "Submitted", "Running"
SUCCESS, FAILED, CANCELLING, CANCELLED = "Success", "Failed", "Cancelling", "Cancelled"
RUN_STATES = (SCHEDULED, QUEUED, SUBMITTED, RUNNING, SUCCESS, FAILED, CANCELLING, CANCELLED)
FINAL_STATES = frozenset({SUCCESS, FAILED, CANCELLED})
WAITING_STATES = frozenset({SCHEDULED, QUEUED})
# A Cancelling run's process lives until its agent reports Cancelled, so it still holds its slots
# and can still go stale.
ACTIVE_STATES = frozenset({SUBMITTED, RUNNING, CANCELLING})
AGENT_SEEN_WINDOW_S = 60.0
HEARTBEAT_TIMEOUT_S = 30.0  # the default: no heartbeat for this long and an active run is lost
# Before a run is marked lost, a second look this much later: a live process that an outage held
# up retries at least every second (flowspec.backend.outage) and heartbeats first.
LOST_GRACE_S = 2.0


class NotFoundError(FlowspecError):
    """A flow or flow run id that the backend does not hold."""


# ----------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Flow:
    """One registered version of a flow."""

    id: int
    project: str
    name: str
    version: int
    labels: tuple[str, ...]
    storage: dict[str, Any]
    spec_checksum: str
    spec_text: str
    environment: dict[str, Any]
    created: float


@dataclass(frozen=True)
class FlowRun:
    """One run of a flow; `flow_id` is None for a local run of an unregistered spec."""

    id: str
    flow_id: int | None
    flow_name: str
    state: str
    labels: tuple[str, ...]
    parameters: dict[str, Any]
    agent: str | None
    created: float
    updated: float
    heartbeat: float | None
    exit_code: int | None
    message: str | None
    runner: str | None = None  # what runs it: "agent NAME" or "a local `flowspec run` (pid P on host H)"
    heartbeat_timeout: float | None = None  # no heartbeat for this long: the run is lost


@dataclass(frozen=True)
class StateEvent:
    """One entry of a flow run's state history."""

    run_id: str
    time: float
    state: str
    message: str | None


@dataclass(frozen=True)
class TaskRunState:
    """One recorded state of a task (or of one mapped child when `map_index` is set)."""

    run_id: str
    task: str
    map_index: int | None
    state: str
    attempt: int
    time: float
    message: str | None


@dataclass(frozen=True)
class LogLine:
    """One log line of a flow run; `id` grows, so a follower asks for lines after the last id."""

    id: int
    run_id: str
    time: float
    level: str
    task: str | None
    message: str


@dataclass(frozen=True)
class Agent:
    """An agent as last seen by the backend."""

    name: str
    labels: tuple[str, ...]
    started: float
    last_seen: float
    stopped: float | None = None  # when it said it stopped (Ctrl-C, SIGTERM); None while it serves

    def alive(self, now: float | None = None) -> bool:
        """Seen within AGENT_SEEN_WINDOW_S and not stopped since."""
        return self.stopped is None and (now or time.time()) - self.last_seen <= AGENT_SEEN_WINDOW_S


@dataclass(frozen=True)
class ConcurrencyLimit:
    """A per-label cap on active flow runs, with the runs holding its slots now."""

    label: str
    limit: int
    in_use: int
    holders: tuple[str, ...]


# ------------------------------------------------------------------------ shared rules


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


@dataclass(frozen=True)
class SlotBlock:
    """A limited label of a run whose slots are all taken (or kept for older waiting runs)."""

    label: str
    limit: int
    holders: tuple[str, ...]
    kept_for: tuple[str, ...] = ()

    @property
    def gist(self) -> str:
        return f"label '{self.label}' is at its limit of {self.limit}"

    def __str__(self) -> str:
        parts = [f"held by runs {', '.join(self.holders)}"] if self.holders else []
        if self.kept_for:
            parts.append(f"kept for older waiting runs {', '.join(self.kept_for)}")
        return self.gist + (f" ({'; '.join(parts)})" if parts else "")


_HELD_BY = re.compile(r" \((held by|kept for) [^)]*\)")


def slot_blocks(
    labels: Iterable[str], limits: dict[str, int], holders: dict[str, list[str]],
    kept: dict[str, list[str]] | None = None,
) -> list[SlotBlock]:
    """The limited labels among `labels` that have no free slot (`kept`: slots set aside)."""
    kept = kept or {}
    return [
        SlotBlock(label, limits[label], tuple(holders.get(label, ())), tuple(kept.get(label, ())))
        for label in sorted(set(labels))
        if label in limits and len(holders.get(label, ())) + len(kept.get(label, ())) >= limits[label]
    ]


def same_gist(message: str | None, blocks: list[SlotBlock]) -> bool:
    """Is a stored Queued message about the same full labels (whoever holds them now)?"""
    return _HELD_BY.sub("", message or "") == "; ".join(b.gist for b in blocks)


def plan_claim(
    candidates: Iterable[FlowRun],
    agent_labels: Iterable[str],
    limits: dict[str, int],
    holders: dict[str, list[str]],
) -> tuple[FlowRun | None, list[tuple[FlowRun, list[SlotBlock]]]]:
    """Choose the run an agent takes now, and the runs it found blocked by full limits.

    `candidates` must be oldest first. The first run the agent may take that has a free slot
    in every limited label wins. A run blocked on a full label stops every later run needing
    that label too (it is just as full), and it keeps a slot of each of its other limited
    labels for itself, so that later runs cannot take those one by one while it waits: a
    freed slot always goes to the oldest waiting run, and no run starves. Runs that need
    only labels with room to spare may go ahead.
    """
    agent_labels = set(agent_labels)
    kept: dict[str, list[str]] = {}
    blocked: list[tuple[FlowRun, list[SlotBlock]]] = []
    for run in candidates:
        if not labels_match(run.labels, agent_labels):
            continue
        blocks = slot_blocks(run.labels, limits, holders, kept)
        if not blocks:
            return run, blocked
        blocked.append((run, blocks))
        full = {block.label for block in blocks}
        for label in (set(run.labels) & limits.keys()) - full:
            kept.setdefault(label, []).append(run.id)
    return None, blocked


def agent_reason(run_labels: Sequence[str], agents: Iterable[Agent]) -> str | None:
    """Why no live agent can take a run with these labels, or None when one can."""
    agents = list(agents)
    if any(labels_match(run_labels, agent.labels) for agent in agents):
        return None
    seen = ", ".join(f"{a.name} [{', '.join(a.labels)}]" for a in agents) or "none"
    window = f"in the last {AGENT_SEEN_WINDOW_S:g} s"
    if not run_labels:
        return f"the run has no labels and no agent without labels was seen {window}; agents: {seen}"
    return f"no agent seen {window} has labels covering [{', '.join(run_labels)}]; agents: {seen}"


def lost_after(run: FlowRun, timeout_s: float, cap_s: float | None = None) -> float:
    """After how long without a heartbeat `run` is lost: its own timeout (`timeout_s` if it has
    none), or `cap_s` when shorter (an agent judges with at most its own --heartbeat-timeout)."""
    own = run.heartbeat_timeout or timeout_s
    return own if cap_s is None else min(own, cap_s)


def check_state(state: str) -> None:
    if state not in RUN_STATES:
        raise ValueError(f"unknown flow run state {state!r}; expected one of {', '.join(RUN_STATES)}")


# --------------------------------------------------------------------------- the schema

# Each entry is one schema version; append, never edit a released one. `{serial}`, `{float}`
# and `{bigint}` are filled in by the dialect.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE projects (name TEXT PRIMARY KEY, created {float} NOT NULL)",
        "CREATE TABLE flows (id {serial}, project TEXT NOT NULL REFERENCES projects (name),"
        " name TEXT NOT NULL, version INTEGER NOT NULL, labels TEXT NOT NULL,"
        " storage TEXT NOT NULL, spec_checksum TEXT NOT NULL, spec_text TEXT NOT NULL,"
        " environment TEXT NOT NULL, created {float} NOT NULL, UNIQUE (project, name, version))",
        # seq gives runs a total creation order (FIFO) that ties in `created` cannot break.
        "CREATE TABLE flow_runs (seq {serial}, id TEXT NOT NULL UNIQUE,"
        " flow_id {bigint} REFERENCES flows (id), flow_name TEXT NOT NULL, state TEXT NOT NULL,"
        " labels TEXT NOT NULL, parameters TEXT NOT NULL, agent TEXT, created {float} NOT NULL,"
        " updated {float} NOT NULL, heartbeat {float}, exit_code INTEGER, message TEXT)",
        "CREATE INDEX flow_runs_by_state ON flow_runs (state, seq)",
        "CREATE TABLE run_states (id {serial}, run_id TEXT NOT NULL REFERENCES flow_runs (id),"
        " time {float} NOT NULL, state TEXT NOT NULL, message TEXT)",
        "CREATE INDEX run_states_by_run ON run_states (run_id, id)",
        "CREATE TABLE task_states (id {serial}, run_id TEXT NOT NULL REFERENCES flow_runs (id),"
        " task TEXT NOT NULL, map_index INTEGER, state TEXT NOT NULL, attempt INTEGER NOT NULL,"
        " time {float} NOT NULL, message TEXT)",
        "CREATE INDEX task_states_by_run ON task_states (run_id, id)",
        "CREATE TABLE logs (id {serial}, run_id TEXT NOT NULL REFERENCES flow_runs (id),"
        " time {float} NOT NULL, level TEXT NOT NULL, task TEXT, message TEXT NOT NULL)",
        "CREATE INDEX logs_by_run ON logs (run_id, id)",
        "CREATE TABLE agents (name TEXT PRIMARY KEY, labels TEXT NOT NULL,"
        " started {float} NOT NULL, last_seen {float} NOT NULL)",
        "CREATE TABLE concurrency_limits (label TEXT PRIMARY KEY,"
        " slots INTEGER NOT NULL CHECK (slots >= 0))",
    ],
    [
        # Lost runs are judged by whoever reads them, with the run's own timeout, and named by
        # what ran them; an agent that stops says so.
        "ALTER TABLE flow_runs ADD COLUMN runner TEXT",
        "ALTER TABLE flow_runs ADD COLUMN heartbeat_timeout {float}",
        "ALTER TABLE agents ADD COLUMN stopped {float}",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_FLOW_COLS = "id, project, name, version, labels, storage, spec_checksum, spec_text, environment, created"
_RUN_COLS = ("id, flow_id, flow_name, state, labels, parameters, agent, created, updated, heartbeat, exit_code,"
             " message, runner, heartbeat_timeout")
_TASK_COLS = "run_id, task, map_index, state, attempt, time, message"
_LOG_COLS = "id, run_id, time, level, task, message"


def _flow(row: Sequence[Any]) -> Flow:
    fields = list(row)
    fields[4] = tuple(json.loads(row[4]))
    fields[5], fields[8] = json.loads(row[5]), json.loads(row[8])
    return Flow(*fields)


def _run(row: Sequence[Any]) -> FlowRun:
    fields = list(row)
    fields[4], fields[5] = tuple(json.loads(row[4])), json.loads(row[5])
    return FlowRun(*fields)


def _agent(row: Sequence[Any]) -> Agent:
    return Agent(row[0], tuple(json.loads(row[1])), row[2], row[3], row[4])


def _marks(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)


class Tx:
    """An open transaction over a DB-API cursor; SQL is written with `?` placeholders."""

    def __init__(self, cursor: Any, translate: Any = None) -> None:
        self._cur = cursor
        self._translate = translate or (lambda sql: sql)

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


# -------------------------------------------------------------------------- the backend


class Backend(ABC):
    """Flows, flow runs, states, logs, agents and concurrency limits, in one SQL database.

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

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # ---- schema

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

    # ---- projects and flows

    def list_projects(self) -> list[str]:
        with self._transaction(write=False) as tx:
            return [row[0] for row in tx.all("SELECT name FROM projects ORDER BY name")]

    def register_flow(
        self,
        project: str,
        name: str,
        labels: Iterable[str],
        storage: dict[str, Any],
        checksum: str,
        spec_text: str,
        environment: dict[str, Any],
    ) -> tuple[Flow, bool]:
        """Store a new version of a flow, or return the latest one if nothing changed."""
        labels = normalize_labels(labels)
        with self._transaction() as tx:
            self._serialize(tx, "register")  # two registrations must not take one version
            tx.run(
                "INSERT INTO projects (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                project, time.time(),
            )
            latest = self._flows(tx, "project = ? AND name = ?", project, name)
            if latest and (latest[0].spec_checksum, latest[0].labels) == (checksum, labels):
                return latest[0], False
            version = latest[0].version + 1 if latest else 1
            row = tx.one(
                "INSERT INTO flows (project, name, version, labels, storage, spec_checksum,"
                " spec_text, environment, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" RETURNING {_FLOW_COLS}",
                project, name, version, json.dumps(labels), json.dumps(storage), checksum,
                spec_text, json.dumps(environment), time.time(),
            )
            return _flow(row), True

    def get_flow(self, name: str, project: str | None = None, version: int | None = None) -> Flow | None:
        """A flow by name: its latest version unless `version` is given."""
        where, params = ["name = ?"], [name]
        for column, value in (("project", project), ("version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self._transaction(write=False) as tx:
            flows = self._flows(tx, " AND ".join(where), *params)
        projects = sorted({flow.project for flow in flows})
        if len(projects) > 1:
            raise FlowspecError(
                f"a flow named '{name}' exists in several projects: {', '.join(projects)}",
                hint="name the project",
            )
        return flows[0] if flows else None

    def get_flow_by_id(self, flow_id: int) -> Flow | None:
        with self._transaction(write=False) as tx:
            flows = self._flows(tx, "id = ?", flow_id)
        return flows[0] if flows else None

    def list_flows(self, project: str | None = None) -> list[Flow]:
        """The latest version of each flow, by project and name."""
        latest = "version = (SELECT MAX(version) FROM flows g WHERE g.project = flows.project AND g.name = flows.name)"
        with self._transaction(write=False) as tx:
            if project is None:
                flows = self._flows(tx, latest)
            else:
                flows = self._flows(tx, f"project = ? AND {latest}", project)
        return sorted(flows, key=lambda flow: (flow.project, flow.name))

    def _flows(self, tx: Tx, where: str, *params: Any) -> list[Flow]:
        rows = tx.all(f"SELECT {_FLOW_COLS} FROM flows WHERE {where} ORDER BY version DESC", *params)
        return [_flow(row) for row in rows]

    # ---- flow runs and their states

    def create_flow_run(
        self,
        flow_id: int | None,
        parameters: dict[str, Any] | None = None,
        labels: Iterable[str] = (),
        state: str = SCHEDULED,
        *,
        flow_name: str | None = None,
        run_id: str | None = None,
        runner: str | None = None,
        heartbeat_timeout: float | None = None,
    ) -> FlowRun:
        """A new run of a registered flow (its labels plus `labels`), or of a local spec.

        A local run has `flow_id=None` and names its flow with `flow_name`; created active, it
        says what runs it (`runner`) and after how long without a heartbeat it counts as lost.
        """
        check_state(state)
        labels = normalize_labels(labels)
        now, run_id = time.time(), run_id or uuid.uuid4().hex
        beat = now if state in ACTIVE_STATES else None
        with self._transaction() as tx:
            if flow_id is not None:
                flow = self._flows(tx, "id = ?", flow_id)
                if not flow:
                    raise NotFoundError(f"no registered flow has id {flow_id}")
                flow_name, labels = flow[0].name, normalize_labels(labels + flow[0].labels)
            elif not flow_name:
                raise ValueError("a run of an unregistered flow needs a flow_name")
            row = tx.one(
                "INSERT INTO flow_runs (id, flow_id, flow_name, state, labels, parameters, created,"
                " updated, heartbeat, runner, heartbeat_timeout) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" RETURNING {_RUN_COLS}",
                run_id, flow_id, flow_name, state, json.dumps(labels),
                json.dumps(parameters or {}), now, now, beat, runner, heartbeat_timeout,
            )
            self._record(tx, run_id, state, None, now)
        return _run(row)

    def get_run(self, run_id: str) -> FlowRun | None:
        with self._transaction(write=False) as tx:
            runs = self._runs(tx, "id = ?", run_id)
        return runs[0] if runs else None

    def runs_by_prefix(self, prefix: str, limit: int = 2) -> list[FlowRun]:
        """Runs whose id starts with `prefix` (hex digits only), oldest first, at most `limit`."""
        if not re.fullmatch(r"[0-9a-f]+", prefix):
            return []
        with self._transaction(write=False) as tx:
            return self._runs(tx, "id LIKE ?", prefix + "%", limit=limit)

    def list_runs(
        self, *, states: Iterable[str] | None = None, flow_name: str | None = None, limit: int | None = None
    ) -> list[FlowRun]:
        """Runs, newest first, optionally only in `states` or of one flow."""
        where, params = ["1 = 1"], []
        if states is not None:
            states = list(states)
            where.append(f"state IN ({_marks(states)})" if states else "1 = 0")
            params += states
        if flow_name is not None:
            where.append("flow_name = ?")
            params.append(flow_name)
        with self._transaction(write=False) as tx:
            return self._runs(tx, " AND ".join(where), *params, newest_first=True, limit=limit)

    def set_run_state(
        self,
        run_id: str,
        state: str,
        message: str | None = None,
        *,
        expected_from: set[str] | None = None,
        exit_code: int | None = None,
    ) -> bool:
        """Move a run to `state` and record it in the history.

        With `expected_from`, a compare-and-set: the move happens only if the run is in one of
        those states (returns False otherwise), so two agents cannot both move the same run.
        """
        check_state(state)
        extra: dict[str, Any] = {} if exit_code is None else {"exit_code": exit_code}
        if state == SCHEDULED:
            extra["agent"] = None  # rescheduled: whichever agent had it let it go
        with self._transaction() as tx:
            return self._move(tx, run_id, state, message, expected_from, extra)

    def run_history(self, run_id: str) -> list[StateEvent]:
        with self._transaction(write=False) as tx:
            rows = tx.all(
                "SELECT run_id, time, state, message FROM run_states WHERE run_id = ? ORDER BY id",
                run_id,
            )
        return [StateEvent(*row) for row in rows]

    def cancel_run(self, run_id: str) -> str:
        """Cancel a run; returns its state afterwards.

        A waiting run becomes Cancelled; an active one Cancelling (its agent stops the process
        and sets Cancelled); a finished one is left as it is.
        """
        with self._transaction() as tx:
            # Retried because an agent may take the run between our read and our write.
            for _ in range(5):
                state = self._state_of(tx, run_id)
                if state in FINAL_STATES or state == CANCELLING:
                    return state
                target = CANCELLED if state in WAITING_STATES else CANCELLING
                if self._move(tx, run_id, target, "cancelled by the user", {state}, {}):
                    return target
            return self._state_of(tx, run_id)

    def run_heartbeat(self, run_id: str) -> str:
        """Mark an active run alive; returns its state (an agent sees Cancelling this way)."""
        with self._transaction() as tx:
            tx.run(
                f"UPDATE flow_runs SET heartbeat = ? WHERE id = ? AND state IN ({_marks(ACTIVE_STATES)})",
                time.time(), run_id, *ACTIVE_STATES,
            )
            return self._state_of(tx, run_id)

    def stale_runs(self, timeout_s: float, run_id: str | None = None, *,
                   cap_s: float | None = None) -> list[FlowRun]:
        """Active runs whose heartbeat (or last update, if none yet) is older than their timeout
        (see `lost_after`); only `run_id` if given."""
        where, params = f"state IN ({_marks(ACTIVE_STATES)})", [*ACTIVE_STATES]
        if run_id is not None:
            where, params = where + " AND id = ?", params + [run_id]
        with self._transaction(write=False) as tx:
            # Active runs are few (a handful per agent): their timeouts are compared here.
            now, runs = time.time(), self._runs(tx, where, *params)
            stale = [r for r in runs if (r.heartbeat or r.updated) < now - lost_after(r, timeout_s, cap_s)]
            up = self._up_for(tx) if stale else None
        # Nobody could heartbeat while the server was down: a run is judged only by heartbeats
        # it could have sent, so not before the server has been up for a whole timeout.
        return [r for r in stale if up is None or up >= lost_after(r, timeout_s, cap_s)]

    def _up_for(self, tx: Tx) -> float | None:
        """How long the database server has been up, when it has a start time (else None)."""
        return None

    def mark_lost(self, run: FlowRun, timeout_s: float, marked_by: str, cap_s: float | None = None) -> str | None:
        """Fail (Cancelling: cancel) a stale run, if it is still in the state it was read in and
        has not heartbeated since: a heartbeat that arrives meanwhile wins. Returns the message
        recorded, or None when the run was not lost after all."""
        timeout = lost_after(run, timeout_s, cap_s)
        final = CANCELLED if run.state == CANCELLING else FAILED
        who = run.runner or (f"agent {run.agent}" if run.agent else "a process that did not say who it was")
        message = (f"no heartbeat for {timeout:g}s: the process running it ({who}) is gone;"
                   f" marked {final} by {marked_by}")
        asked = time.monotonic()
        with self._transaction() as tx:
            if time.monotonic() - asked > 1.0:
                return None  # we waited for the backend (a lock held elsewhere): so did its heartbeats
            now = time.time()
            if tx.run(
                "UPDATE flow_runs SET state = ?, message = ?, updated = ? WHERE id = ? AND state = ?"
                " AND COALESCE(heartbeat, updated) <= ?",
                final, message, now, run.id, run.state, run.heartbeat or run.updated,
            ) == 0:
                return None
            self._record(tx, run.id, final, message, now)
        return message

    def mark_lost_runs(self, marked_by: str, timeout_s: float = HEARTBEAT_TIMEOUT_S, run_id: str | None = None,
                       spare: Iterable[str] = (), cap_s: float | None = None,
                       grace_s: float = LOST_GRACE_S) -> list[tuple[FlowRun, str]]:
        """Mark every lost run (or only `run_id`) Failed, except the runs in `spare` (an agent's
        own live children); returns each run marked with its message. Readers call it too:
        a lost run is seen by whoever looks, not only by agents.

        A run that looks lost gets a second look `grace_s` later: a process that the backend
        held up (a lock held for longer than the timeout) has heartbeated by then, and wins."""
        spare = set(spare)
        stale = [run for run in self.stale_runs(timeout_s, run_id, cap_s=cap_s) if run.id not in spare]
        if stale and grace_s > 0:
            time.sleep(grace_s)
        marked = []
        for run in stale:
            if message := self.mark_lost(run, timeout_s, marked_by, cap_s):
                marked.append((run, message))
        return marked

    def _runs(
        self, tx: Tx, where: str, *params: Any, newest_first: bool = False, limit: int | None = None
    ) -> list[FlowRun]:
        sql = f"SELECT {_RUN_COLS} FROM flow_runs WHERE {where} ORDER BY seq"
        sql += " DESC" if newest_first else ""
        if limit is not None:
            sql += " LIMIT ?"
            params += (int(limit),)
        return [_run(row) for row in tx.all(sql, *params)]

    def _state_of(self, tx: Tx, run_id: str) -> str:
        row = tx.one("SELECT state FROM flow_runs WHERE id = ?", run_id)
        if row is None:
            raise NotFoundError(f"no flow run has id {run_id}")
        return row[0]

    def _move(
        self,
        tx: Tx,
        run_id: str,
        state: str,
        message: str | None,
        expected_from: Iterable[str] | None,
        extra: dict[str, Any],
    ) -> bool:
        now = time.time()
        columns = {"state": state, "message": message, "updated": now, **extra}
        sql = f"UPDATE flow_runs SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?"
        params = [*columns.values(), run_id]
        if expected_from is not None:
            expected = list(expected_from)
            sql += f" AND state IN ({_marks(expected)})" if expected else " AND 1 = 0"
            params += expected
        # The state test sits in the UPDATE itself: the row lock (PostgreSQL) or the write
        # lock (SQLite) makes test and write one step.
        if tx.run(sql, *params) == 0:
            self._state_of(tx, run_id)  # raises NotFoundError for an unknown run
            return False
        self._record(tx, run_id, state, message, now)
        return True

    def _record(self, tx: Tx, run_id: str, state: str, message: str | None, now: float) -> None:
        tx.run(
            "INSERT INTO run_states (run_id, time, state, message) VALUES (?, ?, ?, ?)",
            run_id, now, state, message,
        )

    # ---- claiming runs (agents)

    def claim_run(self, agent_name: str, agent_labels: Iterable[str],
                  heartbeat_timeout: float | None = None) -> FlowRun | None:
        """Take the oldest waiting run this agent may run and that has free slots.

        The run moves to Submitted (agent set, heartbeat now). Runs found blocked by a full
        limit move to Queued with a message naming the label, its limit and the holders.
        """
        with self._transaction() as tx:
            # Every claim runs alone, so the slot count it reads is still true when it writes.
            self._serialize(tx, "claim")
            waiting = self._runs(tx, f"state IN ({_marks(WAITING_STATES)})", *WAITING_STATES)
            limits, holders = self._slots(tx)
            chosen, blocked = plan_claim(waiting, agent_labels, limits, holders)
            for run, blocks in blocked:
                self._queue(tx, run, blocks)
            if chosen is None:
                return None
            extra = {"agent": agent_name, "heartbeat": time.time(), "runner": f"agent {agent_name}",
                     "heartbeat_timeout": heartbeat_timeout}
            if not self._move(tx, chosen.id, SUBMITTED, None, WAITING_STATES, extra):
                return None  # cancelled meanwhile; the agent simply polls again
            return self._runs(tx, "id = ?", chosen.id)[0]

    def _slots(self, tx: Tx) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Limits by label, and the active runs holding each limited label's slots."""
        limits = {label: slots for label, slots in tx.all("SELECT label, slots FROM concurrency_limits")}
        holders: dict[str, list[str]] = {label: [] for label in limits}
        rows = tx.all(
            f"SELECT id, labels FROM flow_runs WHERE state IN ({_marks(ACTIVE_STATES)}) ORDER BY seq",
            *ACTIVE_STATES,
        )
        for run_id, labels in rows:
            for label in json.loads(labels):
                if label in holders:
                    holders[label].append(run_id)
        return limits, holders

    def _queue(self, tx: Tx, run: FlowRun, blocks: list[SlotBlock]) -> None:
        message = "; ".join(map(str, blocks))
        if run.state == QUEUED and same_gist(run.message, blocks):
            # Same full labels, maybe other holders: refresh the message without new history.
            if run.message != message:
                tx.run("UPDATE flow_runs SET message = ? WHERE id = ?", message, run.id)
            return
        self._move(tx, run.id, QUEUED, message, {run.state}, {})

    def waiting_reason(self, run_id: str) -> str | None:
        """Why a Scheduled or Queued run is not running yet; None when nothing holds it back."""
        with self._transaction(write=False) as tx:
            runs = self._runs(tx, "id = ?", run_id)
            if not runs:
                raise NotFoundError(f"no flow run has id {run_id}")
            if runs[0].state not in WAITING_STATES:
                return None
            agents = self._agents(tx, AGENT_SEEN_WINDOW_S)
            limits, holders = self._slots(tx)
        run = runs[0]
        blocks = [str(block) for block in slot_blocks(run.labels, limits, holders)]
        if not blocks and run.state == QUEUED and run.message:
            blocks = [run.message]  # its slots are kept for older waiting runs: the claim said which
        return "; ".join(r for r in [agent_reason(run.labels, agents), *blocks] if r) or None

    # ---- task states and logs

    def add_task_state(
        self,
        run_id: str,
        task: str,
        state: str,
        *,
        map_index: int | None = None,
        attempt: int = 1,
        message: str | None = None,
    ) -> None:
        self.add_task_states(run_id, [(task, map_index, state, attempt, time.time(), message)])

    def add_task_states(
        self, run_id: str, rows: Iterable[tuple[str, int | None, str, int, float, str | None]]
    ) -> int:
        """Append `(task, map_index, state, attempt, time, message)` rows in one transaction."""
        rows = [(run_id, *row) for row in rows]
        if rows:
            with self._transaction() as tx:
                tx.many(f"INSERT INTO task_states ({_TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def task_states(self, run_id: str, *, history: bool = False) -> list[TaskRunState]:
        """The latest state of each (task, map_index), or with `history` every state recorded."""
        if not history:
            return list(self.latest_task_states(run_id))
        with self._transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_TASK_COLS} FROM task_states WHERE run_id = ? ORDER BY id", run_id)
        return [TaskRunState(*row) for row in rows]

    def has_task_states(self, run_id: str) -> bool:
        """Has any task state of this run been recorded (has it started before)?"""
        with self._transaction(write=False) as tx:
            return tx.one("SELECT 1 FROM task_states WHERE run_id = ? LIMIT 1", run_id) is not None

    def latest_task_states(self, run_id: str, batch: int = 10_000) -> Iterator[TaskRunState]:
        """The latest state of each (task, map_index), in the order each was first recorded,
        picked in the database and read `batch` rows at a time: a map of a million children is
        never held whole (consume it while the backend is open)."""
        cols = ", ".join(f"t.{c.strip()}" for c in _TASK_COLS.split(","))
        with self._transaction(write=False) as tx:
            for rows in tx.batches(f"SELECT {cols} FROM task_states t JOIN (SELECT MIN(id) AS first,"
                                   " MAX(id) AS last FROM task_states WHERE run_id = ? GROUP BY task, map_index) g"
                                   " ON t.id = g.last ORDER BY g.first", batch, run_id):
                for row in rows:
                    yield TaskRunState(*row)

    def task_states_since(self, run_id: str, after_id: int = 0) -> tuple[list[TaskRunState], int]:
        """The states recorded for a run after row `after_id`, in order, and the id to ask after
        next time: a reader that polls a running run (`--watch`) reads each row once."""
        with self._transaction(write=False) as tx:
            rows = tx.all(f"SELECT id, {_TASK_COLS} FROM task_states WHERE run_id = ? AND id > ? ORDER BY id",
                          run_id, after_id)
        return [TaskRunState(*row[1:]) for row in rows], (rows[-1][0] if rows else after_id)

    def task_summary(self, run_id: str) -> list[tuple[str, TaskRunState | None, list[tuple[str, int, int, float]]]]:
        """A run's tasks without a row per mapped child, counted in the database (a map of a
        million children stays a few grouped queries): per task, in the order tasks were first
        recorded, `(task, its own latest state or None, [(state, children, attempts, last
        time)] over the latest state of each of its mapped children)`."""
        with self._transaction(write=False) as tx:
            # One pass for each task's first row and its own latest row, one for the children.
            tasks = tx.all("SELECT task, MIN(id) AS first, MAX(CASE WHEN map_index IS NULL THEN id END)"
                           " FROM task_states WHERE run_id = ? GROUP BY task ORDER BY first", run_id)
            order, latest = [t[0] for t in tasks], [t[2] for t in tasks if t[2] is not None]
            own = tx.all(f"SELECT {_TASK_COLS} FROM task_states WHERE id IN ({_marks(latest)})",
                         *latest) if latest else []
            children = tx.all(
                "SELECT t.task, t.state, COUNT(*), SUM(t.attempt), MAX(t.time) FROM task_states t JOIN"
                " (SELECT MAX(id) AS id FROM task_states WHERE run_id = ? AND map_index IS NOT NULL"
                " GROUP BY task, map_index) latest ON t.id = latest.id GROUP BY t.task, t.state ORDER BY t.state",
                run_id)
        states = {row[1]: TaskRunState(*row) for row in own}
        groups: dict[str, list[tuple[str, int, int, float]]] = {}
        for task, state, n, attempts, at in children:
            groups.setdefault(task, []).append((state, int(n), int(attempts), float(at)))
        return [(task, states.get(task), groups.get(task, [])) for task in order]

    def add_logs(self, run_id: str, lines: Iterable[tuple[float, str, str | None, str]]) -> int:
        """Append `(time, level, task, message)` lines in one transaction; returns how many."""
        rows = [(run_id, *line) for line in lines]
        if rows:
            with self._transaction() as tx:
                tx.many("INSERT INTO logs (run_id, time, level, task, message) VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def logs(self, run_id: str, after_id: int = 0, limit: int | None = None) -> list[LogLine]:
        """A run's log lines with id > `after_id`, oldest first (poll with the last id seen)."""
        sql = f"SELECT {_LOG_COLS} FROM logs WHERE run_id = ? AND id > ? ORDER BY id"
        params: list[Any] = [run_id, after_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._transaction(write=False) as tx:
            return [LogLine(*row) for row in tx.all(sql, *params)]

    # ---- agents

    def agent_heartbeat(self, name: str, labels: Iterable[str], *, starting: bool = False) -> None:
        """Record that an agent is alive; `starting` also resets its start time."""
        restart = ", started = excluded.started, stopped = NULL" if starting else ""
        now = time.time()
        with self._transaction() as tx:
            tx.run(
                "INSERT INTO agents (name, labels, started, last_seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET labels = excluded.labels,"
                f" last_seen = excluded.last_seen{restart}",
                name, json.dumps(normalize_labels(labels)), now, now,
            )

    def agent_stopped(self, name: str) -> None:
        """Record that an agent stopped: it no longer counts as alive, however recently seen."""
        with self._transaction() as tx:
            tx.run("UPDATE agents SET stopped = ? WHERE name = ?", time.time(), name)

    def list_agents(self, seen_within_s: float | None = None) -> list[Agent]:
        """Every agent ever seen; with `seen_within_s`, only those seen since that are still serving."""
        with self._transaction(write=False) as tx:
            return self._agents(tx, seen_within_s)

    def _agents(self, tx: Tx, seen_within_s: float | None) -> list[Agent]:
        where, since = ("last_seen >= ?", -1.0) if seen_within_s is None else (
            "last_seen >= ? AND stopped IS NULL", time.time() - seen_within_s)
        rows = tx.all(f"SELECT name, labels, started, last_seen, stopped FROM agents WHERE {where} ORDER BY name",
                      since)
        return [_agent(row) for row in rows]

    # ---- concurrency limits

    def set_limit(self, label: str, limit: int) -> None:
        """Cap the active runs carrying `label` at `limit` (0 stops new ones)."""
        normalize_labels([label])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"a concurrency limit must be an integer >= 0, got {limit!r}")
        with self._transaction() as tx:
            tx.run(
                "INSERT INTO concurrency_limits (label, slots) VALUES (?, ?)"
                " ON CONFLICT (label) DO UPDATE SET slots = excluded.slots",
                label, limit,
            )

    def delete_limit(self, label: str) -> bool:
        """Remove a label's limit; False if it had none."""
        with self._transaction() as tx:
            return tx.run("DELETE FROM concurrency_limits WHERE label = ?", label) > 0

    def list_limits(self) -> list[ConcurrencyLimit]:
        with self._transaction(write=False) as tx:
            limits, holders = self._slots(tx)
        return [
            ConcurrencyLimit(label, limits[label], len(holders[label]), tuple(holders[label]))
            for label in sorted(limits)
        ]


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


__all__ = [
    "ACTIVE_STATES", "AGENT_SEEN_WINDOW_S", "Agent", "HEARTBEAT_TIMEOUT_S", "Backend", "CANCELLED", "CANCELLING",
    "ConcurrencyLimit", "FAILED", "FINAL_STATES", "Flow", "FlowRun", "LogLine", "NotFoundError",
    "QUEUED", "RUNNING", "RUN_STATES", "SCHEDULED", "SUBMITTED", "SUCCESS", "StateEvent",
    "TaskRunState", "WAITING_STATES", "agent_reason", "labels_match", "plan_claim", "redact_url",
]
