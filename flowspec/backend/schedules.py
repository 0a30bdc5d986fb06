"""Schedules in the backend: the clocks of each flow's latest version, the scheduler's pass
that turns them into Scheduled runs, and pausing.

A pass is safe to run from any number of schedulers at once, on any number of machines: each
run it makes is inserted with `INSERT ... ON CONFLICT DO NOTHING` against a unique index on
(clock, scheduled_start), so a flow, clock and time get one run whoever inserts it first.
`clocks.next_time` (the first time a clock has not planned yet) only spares work: a scheduler
killed between its inserts and its update only makes the next pass redo inserts that are
then ignored.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from itertools import chain
from dataclasses import dataclass

from flowspec.backend.core import NotFoundError, Store, Tx
from flowspec.backend.runs import SCHEDULED

PASS_BATCH = 1000  # clocks per transaction: bounded transactions whatever the number of clocks
MAX_RUNS_PER_CLOCK = 1000  # per pass: a catchup after a long stop advances in steps
INSERT_ROWS = 500  # rows per multi-row statement: 2 500 parameters, within SQLite's and PostgreSQL's limits


@dataclass(frozen=True)
class ScheduleRow:
    """One clock of a flow's latest version, as `flowspec schedules list` shows it."""

    project: str
    flow_name: str
    version: int
    position: int
    definition: dict
    catchup: bool
    next_time: float
    paused: float | None
    next_run: float | None  # the earliest Scheduled run this clock made that has not started


def _run_ids(n: int) -> list[str]:
    """`n` random version-4 UUIDs in hex, as `uuid.uuid4().hex` makes them, at a third of its cost."""
    text = os.urandom(16 * n).hex()
    return [f"{text[i:i + 12]}4{text[i + 13:i + 16]}{'89ab'[int(text[i + 16], 16) & 3]}{text[i + 17:i + 32]}"
            for i in range(0, 32 * n, 32)]


def _number(value: float) -> str:
    """A finite number as an SQL literal (repr round-trips a float exactly)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return repr(float(value))


def clock_id(project: str, flow_name: str, clock_key: str) -> str:
    """A run's `clock`: its flow (across versions) and when the clock fires."""
    return f"{project}/{flow_name}#{clock_key}"


class ScheduleStore(Store):
    def record_clocks(self, flow_id: int, clocks: Iterable, catchup: bool, now: float | None = None) -> int:
        """Make `clocks` (flowspec.schedules.Clock) the schedule of the flow `flow_id`'s name,
        replacing its older versions' clocks and their Scheduled runs that have not started.
        Returns how many of those runs were removed."""
        from flowspec.schedules import times

        now = time.time() if now is None else now
        with self._transaction() as tx:
            row = tx.one("SELECT project, name FROM flows WHERE id = ?", flow_id)
            if row is None:
                raise NotFoundError(f"no registered flow has id {flow_id}")
            project, name = row
            old = dict(tx.all("SELECT clock_key, next_time FROM clocks WHERE project = ? AND flow_name = ?",
                              project, name))
            # The old versions' runs that have not started give way to the new version's.
            stale = tx.all("SELECT id, clock, scheduled_start FROM flow_runs WHERE flow_id IN (SELECT id FROM flows"
                           " WHERE project = ? AND name = ? AND id <> ?) AND state = ? AND clock IS NOT NULL",
                           project, name, flow_id, SCHEDULED)
            self._delete_scheduled(tx, [r[0] for r in stale])
            unplanned: dict[str, float] = {}
            for _, clock, start in stale:
                unplanned[clock] = min(start, unplanned.get(clock, start))
            tx.run("DELETE FROM clocks WHERE project = ? AND flow_name = ?", project, name)
            rows = []
            for position, clock in enumerate(clocks):
                # A clock the old version had goes on from where it was (its removed runs are
                # planned again, for this version); a new one starts from now.
                if clock.key in old:
                    first = min(old[clock.key], unplanned.get(clock_id(project, name, clock.key), old[clock.key]))
                else:
                    first = next(iter(times(clock, now, now + 86400.0 * 366 * 30)), float("inf"))
                rows.append((flow_id, position, project, name, clock.key, json.dumps(clock.to_json()),
                             int(catchup), first))
            tx.many("INSERT INTO clocks (flow_id, position, project, flow_name, clock_key, definition, catchup,"
                    " next_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(stale)

    def _delete_scheduled(self, tx: Tx, run_ids: list[str]) -> None:
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            tx.run(f"DELETE FROM run_states WHERE run_id IN ({marks})", *chunk)
            tx.run(f"DELETE FROM flow_runs WHERE id IN ({marks}) AND state = ?", *chunk, SCHEDULED)

    def scheduler_pass(self, now: float, horizon: float) -> int:
        """Create the Scheduled runs of every clock of every unpaused flow up to `now + horizon`;
        returns how many this call created (runs another scheduler made first are not counted)."""
        from flowspec.schedules_pass import Planner

        until, created, after_key = now + horizon, 0, (-1, -1)
        planner = Planner(now, MAX_RUNS_PER_CLOCK)  # shared by the batches: one walk per cron expression
        while True:
            with self._transaction() as tx:
                batch = tx.all(
                    "SELECT c.flow_id, c.position, c.project, c.flow_name, c.clock_key, c.definition, c.catchup,"
                    " c.next_time, f.labels FROM clocks c JOIN flows f ON f.id = c.flow_id"
                    " WHERE c.next_time <= ? AND (c.flow_id > ? OR (c.flow_id = ? AND c.position > ?))"
                    # Bounds the indexes can start from: each page reads its own rows, not every
                    # row before it again (a pass would be quadratic in clocks).
                    " AND c.flow_id >= ? AND f.id >= ?"
                    " AND NOT EXISTS (SELECT 1 FROM schedule_pauses p WHERE p.project = c.project"
                    " AND p.flow_name = c.flow_name) ORDER BY c.flow_id, c.position LIMIT ?",
                    until, after_key[0], after_key[0], after_key[1], after_key[0], after_key[0], PASS_BATCH)
                if not batch:
                    return created
                created += self._plan(tx, batch, now, until, planner)
                after_key = (batch[-1][0], batch[-1][1])

    def _plan(self, tx: Tx, batch: list[tuple], now: float, until: float, planner) -> int:
        """Plan a batch of clocks and write their runs and next times."""
        runs, moves = self._plan_batch(batch, now, until, planner)
        created = self._insert_scheduled_runs(tx, runs, now) if runs else 0
        self._move_clocks(tx, moves)
        return created

    def _plan_batch(self, batch: list[tuple], now: float, until: float, planner) -> tuple[list[tuple], list[tuple]]:
        """The runs (flow id, flow name, labels, parameters, time, clock) of clocks' rows up to
        `until`, and each clock's next time after them (next time, flow id, position)."""
        from flowspec.schedules import Clock

        runs, moves = [], []
        planned: dict = {}  # clocks that fire alike and are planned from the same time: computed once
        for flow_id, position, project, name, key, definition, catchup, next_time, flow_labels in batch:
            data = json.loads(definition)
            clock = Clock.from_json(data)
            # Without catchup, times already past are skipped: a stopped scheduler loses them.
            start = next_time if catchup else max(next_time, now)
            if (key, start) not in planned:
                planned[key, start] = planner.times(clock, start, until)
            due, nxt = planned[key, start]
            labels = json.dumps(sorted(set(clock.labels))) if clock.labels is not None else flow_labels
            params = json.dumps(data["parameters"]) if data.get("parameters") else "{}"
            clock_name = clock_id(project, name, key)
            runs += [(flow_id, name, labels, params, t, clock_name) for t in due]
            moves.append((nxt, flow_id, position))
        return runs, moves

    def _insert_scheduled_runs(self, tx: Tx, runs: list[tuple], now: float) -> int:
        """Insert Scheduled runs (flow id, flow name, labels, parameters, time, clock), skipping
        those another scheduler made first; returns how many were made here. Their first history
        entry is their row itself (`RunStore.run_history`): a pass writes one row per run, not two.
        (PostgreSQL's backend copies them in instead.)"""
        # Numbers go into the statements as literals, text as parameters: a driver's work grows
        # with the parameters (psycopg parses every placeholder of a long statement each time).
        stamp, ids = _number(now), _run_ids(len(runs))
        values = [(f"(?, {int(flow_id)}, ?, '{SCHEDULED}', ?, ?, {stamp}, {stamp}, {_number(t)}, ?)",
                   (run_id, name, labels, params, clock_name))
                  for run_id, (flow_id, name, labels, params, t, clock_name) in zip(ids, runs)]
        created = 0
        for begin in range(0, len(values), INSERT_ROWS):
            # A run another scheduler made first is ignored.
            chunk = values[begin:begin + INSERT_ROWS]
            created += tx.run("INSERT INTO flow_runs (id, flow_id, flow_name, state, labels, parameters, created,"
                              f" updated, scheduled_start, clock) VALUES {', '.join(row for row, _ in chunk)}"
                              " ON CONFLICT DO NOTHING", *chain.from_iterable(texts for _, texts in chunk))
        return created

    def _move_clocks(self, tx: Tx, moves: list[tuple[float, int, int]]) -> None:
        """Set each clock's (next time, flow id, position) next time, never backwards: another
        scheduler may have planned further meanwhile."""
        for begin in range(0, len(moves), PASS_BATCH):
            # The next time stays a parameter: it may be infinite, which SQL has no literal for.
            chunk = moves[begin:begin + PASS_BATCH]
            rows = ", ".join(f"(?, {int(flow_id)}, {int(position)})" for _, flow_id, position in chunk)
            tx.run(f"WITH m (next_time, flow_id, position) AS (VALUES {rows}) UPDATE clocks"
                   " SET next_time = m.next_time FROM m WHERE clocks.flow_id = m.flow_id"
                   " AND clocks.position = m.position AND clocks.next_time < m.next_time",
                   *(nxt for nxt, _, _ in chunk))

    def schedules(self) -> list[ScheduleRow]:
        with self._transaction(write=False) as tx:
            rows = tx.all(
                "SELECT c.project, c.flow_name, f.version, c.position, c.definition, c.catchup, c.next_time,"
                " p.paused, (SELECT MIN(r.scheduled_start) FROM flow_runs r WHERE r.flow_id = c.flow_id"
                " AND r.state = ? AND r.clock = c.project || '/' || c.flow_name || '#' || c.clock_key)"
                " FROM clocks c JOIN flows f ON f.id = c.flow_id LEFT JOIN schedule_pauses p"
                " ON p.project = c.project AND p.flow_name = c.flow_name ORDER BY c.project, c.flow_name, c.position",
                SCHEDULED)
        return [ScheduleRow(pr, n, v, pos, json.loads(d), bool(cu), nt, pa, nr)
                for pr, n, v, pos, d, cu, nt, pa, nr in rows]

    def pause_schedule(self, name: str, project: str | None = None, now: float | None = None) -> tuple[str, int]:
        """Pause a flow's clocks and remove their Scheduled runs that have not started; returns
        (project, runs removed)."""
        now = time.time() if now is None else now
        with self._transaction() as tx:
            project = self._scheduled_flow(tx, name, project)
            runs = tx.all("SELECT id, scheduled_start FROM flow_runs WHERE state = ? AND clock IS NOT NULL"
                          " AND flow_id IN (SELECT id FROM flows WHERE project = ? AND name = ?)", SCHEDULED, project, name)
            tx.run("INSERT INTO schedule_pauses (project, flow_name, paused) VALUES (?, ?, ?)"
                   " ON CONFLICT (project, flow_name) DO NOTHING", project, name, now)
            self._delete_scheduled(tx, [r[0] for r in runs])
            if runs:  # planned again on resume (from then on, or from here with catchup)
                tx.run("UPDATE clocks SET next_time = ? WHERE project = ? AND flow_name = ? AND next_time > ?",
                       min(r[1] for r in runs), project, name, min(r[1] for r in runs))
        return project, len(runs)

    def resume_schedule(self, name: str, project: str | None = None) -> tuple[str, bool]:
        """Resume a paused flow's clocks; returns (project, whether it was paused)."""
        with self._transaction() as tx:
            project = self._scheduled_flow(tx, name, project)
            was = tx.run("DELETE FROM schedule_pauses WHERE project = ? AND flow_name = ?", project, name) > 0
        return project, was

    def _scheduled_flow(self, tx: Tx, name: str, project: str | None) -> str:
        from flowspec.errors import UsageError

        where, params = "flow_name = ?", [name]
        if project is not None:
            where, params = where + " AND project = ?", params + [project]
        projects = sorted({r[0] for r in tx.all(f"SELECT project FROM clocks WHERE {where}", *params)})
        if not projects:
            raise NotFoundError(f"flow '{name}'{f' in project {project}' if project else ''} has no schedule",
                                hint="register a spec with `schedule:`; see the schedules with: flowspec schedules list")
        if len(projects) > 1:
            raise UsageError(f"a scheduled flow named '{name}' exists in several projects: {', '.join(projects)}",
                             hint="name one with --project")
        return projects[0]

    def next_scheduled(self) -> dict[tuple[str, str], float]:
        """(project, flow name) → the earliest Scheduled run a clock made that has not started."""
        with self._transaction(write=False) as tx:
            rows = tx.all("SELECT f.project, f.name, MIN(r.scheduled_start) FROM flow_runs r JOIN flows f"
                          " ON f.id = r.flow_id WHERE r.state = ? AND r.clock IS NOT NULL GROUP BY f.project, f.name",
                          SCHEDULED)
        return {(p, n): t for p, n, t in rows}
