"""Flow runs and their state history: creating, moving, cancelling, heartbeats and lost runs."""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flowspec.backend.core import NotFoundError, Store, Tx, _marks, normalize_labels

SCHEDULED, QUEUED, SUBMITTED, RUNNING = "Scheduled", "Queued", "Submitted", "Running"
SUCCESS, FAILED, CANCELLING, CANCELLED = "Success", "Failed", "Cancelling", "Cancelled"
RUN_STATES = (SCHEDULED, QUEUED, SUBMITTED, RUNNING, SUCCESS, FAILED, CANCELLING, CANCELLED, "TimedOut")
FINAL_STATES = frozenset({SUCCESS, FAILED, CANCELLED, "TimedOut"})  # TimedOut: past the spec's `timeout`
WAITING_STATES = frozenset({SCHEDULED, QUEUED})
# A Cancelling run's process lives until its agent reports Cancelled, so it still holds its slots
# and can still go stale.
ACTIVE_STATES = frozenset({SUBMITTED, RUNNING, CANCELLING})
HEARTBEAT_TIMEOUT_S = 30.0  # the default: no heartbeat for this long and an active run is lost
# Before a run is marked lost, a second look this much later: a live process that an outage held
# up retries at least every second (flowspec.backend.outage) and heartbeats first.
LOST_GRACE_S = 2.0


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
    scheduled_start: float | None = None  # a run a schedule made: when it is to start


CREATED_BY_SCHEDULE = "created by the flow's schedule"  # the first entry of a run a clock made


@dataclass(frozen=True)
class StateEvent:
    """One entry of a flow run's state history."""

    run_id: str
    time: float
    state: str
    message: str | None


_RUN_COLS = ("id, flow_id, flow_name, state, labels, parameters, agent, created, updated, heartbeat, exit_code,"
             " message, runner, heartbeat_timeout, scheduled_start")


def _run(row: Sequence[Any]) -> FlowRun:
    fields = list(row)
    fields[4], fields[5] = tuple(json.loads(row[4])), json.loads(row[5])
    return FlowRun(*fields)


def lost_after(run: FlowRun, timeout_s: float, cap_s: float | None = None) -> float:
    """After how long without a heartbeat `run` is lost: its own timeout (`timeout_s` if it has
    none), or `cap_s` when shorter (an agent judges with at most its own --heartbeat-timeout)."""
    own = run.heartbeat_timeout or timeout_s
    return own if cap_s is None else min(own, cap_s)


def check_state(state: str) -> None:
    if state not in RUN_STATES:
        raise ValueError(f"unknown flow run state {state!r}; expected one of {', '.join(RUN_STATES)}")


class RunStore(Store):
    """Flow runs: each move of a run is a compare-and-set in SQL, recorded in its history.

    A run that ends other than Success has its unfinished task runs ended with it, in the same
    transaction (`TaskStore._finish_tasks`).
    """

    # The tables holding rows of one flow run (by `run_id`), deleted with it: each part of the
    # backend names its own, and `RetentionStore` collects them from every part.
    run_tables: tuple[str, ...] = ("run_states",)

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
        own_labels: bool = False,
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
                # own_labels (a subflow task's `labels`): these instead of the flow's
                flow_name = flow[0].name
                labels = labels if own_labels and labels else normalize_labels(labels + flow[0].labels)
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
        self, *, states: Iterable[str] | None = None, flow_name: str | None = None, limit: int | None = None,
        parent: str | None = None,
    ) -> list[FlowRun]:
        """Runs, newest first, optionally only in `states`, of one flow, or children of `parent`."""
        where, params = ["1 = 1"], []
        if parent is not None:
            where.append("id IN (SELECT run_id FROM run_links WHERE parent_run = ?)")
            params.append(parent)
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
        """The run's states, oldest first. A run a clock made has its first entry in its own row
        (Scheduled, when it was created): a scheduler pass writes one row per run, not two."""
        with self._transaction(write=False) as tx:
            rows = tx.all(
                "SELECT run_id, time, state, message FROM run_states WHERE run_id = ? ORDER BY id",
                run_id,
            )
            made = tx.one("SELECT created FROM flow_runs WHERE id = ? AND clock IS NOT NULL", run_id)
        first = [StateEvent(run_id, made[0], SCHEDULED, CREATED_BY_SCHEDULE)] if made else []
        return first + [StateEvent(*row) for row in rows]

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
            self._finish_tasks(tx, run.id, final, f"lost: {message}")
        self._fail_children(run.id, message)
        return message

    def _fail_children(self, run_id: str, message: str) -> None:
        """The child flow runs (subflows) of a lost run are failed as lost: a waiting one would
        start with nothing to wait for it, and one run in the parent's own process (a spec file
        child: no agent) is gone with it. A registered child an agent already runs is a live
        process of its own and runs to its end. Their own children follow, depth first."""
        child_runs = getattr(self, "child_runs", None)
        for child_id, _ in child_runs(run_id) if child_runs is not None else ():
            child = self.get_run(child_id)
            if child is None or child.state in FINAL_STATES or (child.state in ACTIVE_STATES and child.agent):
                continue
            final = CANCELLED if child.state == CANCELLING else FAILED
            why = (f"lost: its parent run {run_id} is lost and nothing waits for this run any more ({message})"
                   if child.state in WAITING_STATES else f"lost with its parent run {run_id}: {message}")
            with self._transaction() as tx:
                moved = self._move(tx, child_id, final, why, {child.state}, {})
            if moved:
                self._fail_children(child_id, message)

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
        if state in FINAL_STATES and state != SUCCESS:  # a run that succeeded finished every task
            self._finish_tasks(tx, run_id, state, message)
        return True

    def _record(self, tx: Tx, run_id: str, state: str, message: str | None, now: float) -> None:
        tx.run(
            "INSERT INTO run_states (run_id, time, state, message) VALUES (?, ?, ?, ?)",
            run_id, now, state, message,
        )
