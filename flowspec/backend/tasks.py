"""Task states: every state a task (or a mapped child) went through, and summaries of them."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flowspec.backend import task_counts
from flowspec.backend.core import Store, Tx, _marks


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


_TASK_COLS = "run_id, task, map_index, state, attempt, time, message"
# The states in which a task run is over: flowspec.runner's FINAL_STATES, named here so that the
# backend does not import the runner.
# Cached: a success whose result was stored (not run again); Looping is not final, it runs again
TASK_FINAL_STATES = ("Success", "Cached", "Failed", "TimedOut", "TriggerFailed", "Skipped", "Cancelled")


class TaskStore(Store):
    """Task states: appended in batches, read back latest-first or as they come."""

    # rows of one flow run (see RunStore.run_tables)
    run_tables = ("task_states", "task_counts", "task_count_marks", "run_tasks", "task_run_names", "run_outputs",
                  "run_links")

    def add_run_names(self, run_id: str, rows: Iterable[tuple[str, str | list]]) -> int:
        """Record `(task, names)`: the names of a task's runs (its `run_name`), a string for an
        unmapped task, a list by map index (None: not named) for a mapped one; one row per task,
        however many children it has."""
        import json

        rows = [(run_id, task, json.dumps(names)) for task, names in rows]
        if rows:
            with self._transaction() as tx:
                tx.many("INSERT INTO task_run_names (run_id, task, names) VALUES (?, ?, ?)", rows)
        return len(rows)

    def run_names(self, run_id: str) -> dict:
        """(task, map_index) → the task run's name, for the task runs that have one (map_index
        None for an unmapped task)."""
        import json

        with self._transaction(write=False) as tx:
            rows = tx.all("SELECT task, names FROM task_run_names WHERE run_id = ?", run_id)
        out: dict = {}
        for task, text in rows:
            names = json.loads(text)
            if isinstance(names, list):
                out.update(((task, i), n) for i, n in enumerate(names) if n is not None)
            else:
                out[task, None] = names
        return out

    def set_run_outputs(self, run_id: str, outputs: dict) -> None:
        """Keep a run's `outputs` (JSON; a value JSON cannot hold is kept as its text)."""
        import json

        text = json.dumps(outputs, default=str)
        with self._transaction() as tx:
            tx.run("DELETE FROM run_outputs WHERE run_id = ?", run_id)
            tx.run("INSERT INTO run_outputs (run_id, outputs) VALUES (?, ?)", run_id, text)

    def run_outputs(self, run_id: str) -> dict | None:
        """A run's outputs, or None when it recorded none."""
        import json

        with self._transaction(write=False) as tx:
            row = tx.one("SELECT outputs FROM run_outputs WHERE run_id = ?", run_id)
        return None if row is None else json.loads(row[0])

    def set_run_link(self, run_id: str, spec_path: str | None, spec_checksum: str | None,
                     restart_of: str | None = None, notes: dict | None = None, parent_run: str | None = None,
                     parent_task: str | None = None) -> None:
        """Keep where a local run's spec is (for `runs restart`) and, for a restart, the run it
        restarts and what it reused or ran again (`notes`: task → reason)."""
        import json

        with self._transaction() as tx:
            tx.run("DELETE FROM run_links WHERE run_id = ?", run_id)
            tx.run("INSERT INTO run_links (run_id, spec_path, spec_checksum, restart_of, notes, parent_run, parent_task)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)", run_id, spec_path, spec_checksum, restart_of,
                   None if notes is None else json.dumps(notes), parent_run, parent_task)

    def run_link(self, run_id: str) -> dict | None:
        """{spec_path, spec_checksum, restart_of, notes} of a run, or None."""
        with self._transaction(write=False) as tx:
            return _link(tx, run_id)

    def run_link_json(self, run_id: str) -> dict:
        """What `runs show --format json` says of a run's links: its spec, what it restarts and
        why each task was reused or ran again, its parent and its child flow runs, whose states
        come in one join (a read per child took seconds for 20 000 children)."""
        with self._transaction(write=False) as tx:
            link = _link(tx, run_id) or {}
            rows = tx.all("SELECT l.run_id, l.parent_task, r.state FROM run_links l JOIN flow_runs r"
                          " ON r.id = l.run_id WHERE l.parent_run = ? ORDER BY r.seq", run_id)
        return {"spec_path": link.get("spec_path"), "restart_of": link.get("restart_of"), "restart": link.get("notes"),
                "parent_run": link.get("parent_run"), "parent_task": link.get("parent_task"),
                "children": [{"run": c, "task": t, "state": state} for c, t, state in rows]}

    def child_runs(self, run_id: str) -> list[tuple[str, str]]:
        """(child run id, parent task) of the child flow runs of a run, in creation order."""
        with self._transaction(write=False) as tx:
            return [tuple(r) for r in tx.all("SELECT l.run_id, l.parent_task FROM run_links l JOIN flow_runs r"
                                             " ON r.id = l.run_id WHERE l.parent_run = ? ORDER BY r.seq", run_id)]

    def add_run_tasks(self, run_id: str, tasks: Iterable[str], upstream: dict[str, list] | None = None) -> int:
        """Record the tasks of a run's flow, in the spec's order, when the run starts (once: a
        second call for the same run records nothing): a run that ends before it reached some of
        them still lists them all (see `_finish_tasks`). `upstream`: per task, the tasks it waits
        for, as [[upstream, kind], ...]: the graph of a run whose flow is not registered."""
        import json

        rows = [(run_id, position, task, None if upstream is None else json.dumps(upstream.get(task, [])))
                for position, task in enumerate(tasks)]
        with self._transaction() as tx:
            if rows and tx.one("SELECT 1 FROM run_tasks WHERE run_id = ? LIMIT 1", run_id) is None:
                tx.many("INSERT INTO run_tasks (run_id, position, task, upstream) VALUES (?, ?, ?, ?)", rows)
                return len(rows)
        return 0

    def run_graph(self, run_id: str) -> tuple[list[str], list[tuple[str, str, str]]] | None:
        """A run's tasks in the spec's order and its edges (upstream, downstream, kind), as
        recorded when it started; None when it recorded no graph (a run of a registered flow,
        whose spec has it, or one of an earlier release)."""
        import json

        with self._transaction(write=False) as tx:
            rows = tx.all("SELECT task, upstream FROM run_tasks WHERE run_id = ? ORDER BY position", run_id)
        if not rows or any(text is None for _, text in rows):
            return None
        return [task for task, _ in rows], [(up, task, kind) for task, text in rows for up, kind in json.loads(text)]

    def _finish_tasks(self, tx: Tx, run_id: str, run_state: str, why: str | None) -> None:
        """A run ended `run_state` (not Success): give every task run it left unfinished a final
        state, Cancelled when the run was cancelled, else Failed; and every task of its flow that
        never started a Cancelled "not run" row, so that `runs show` lists them all.

        Two set-based statements over the run's rows, whatever their number (a map of 100 000
        children): the latest row of each (task, map_index) is picked in the database, as
        `latest_task_states` does."""
        final = "Cancelled" if run_state == "Cancelled" else "Failed"
        about = f"the flow run ended {run_state}" + (f" ({why})" if why else "")
        now = time.time()
        mark = task_counts.lock(tx, run_id)
        tx.run(f"INSERT INTO task_states ({_TASK_COLS}) SELECT t.run_id, t.task, t.map_index, ?, t.attempt, ?, ?"
               " FROM task_states t JOIN (SELECT MAX(id) AS last FROM task_states WHERE run_id = ?"
               " GROUP BY task, map_index) g ON t.id = g.last"
               f" WHERE t.state NOT IN ({_marks(TASK_FINAL_STATES)}) ORDER BY t.id",
               final, now, f"not finished: {about}", run_id, *TASK_FINAL_STATES)
        tx.run(f"INSERT INTO task_states ({_TASK_COLS}) SELECT r.run_id, r.task, NULL, 'Cancelled', 0, ?, ?"
               " FROM run_tasks r LEFT JOIN (SELECT DISTINCT task FROM task_states WHERE run_id = ?) s"
               " ON s.task = r.task WHERE r.run_id = ? AND s.task IS NULL ORDER BY r.position",
               now, f"not run: {about}", run_id, run_id)
        task_counts.count_since(tx, run_id, mark)

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
        """Append `(task, map_index, state, attempt, time, message)` rows in one transaction, and
        count them (flowspec.backend.task_counts) in it."""
        rows = list(rows)
        if rows:
            tally = self.__dict__.get("_tally") or self.__dict__.setdefault("_tally", task_counts.Tally())
            with self._transaction() as tx:
                mark = task_counts.lock(tx, run_id)
                self._insert_task_states(tx, run_id, rows)
                tally.count(tx, run_id, mark, rows)
        return len(rows)

    def _insert_task_states(self, tx: Tx, run_id: str, rows: list[tuple]) -> None:
        tx.many(f"INSERT INTO task_states ({_TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", [(run_id, *r) for r in rows])

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
        """A run's tasks without a row per mapped child, from its counts (a few rows per task,
        however many children): per task, in the order tasks were first recorded, `(task, its own
        latest state or None, [(state, children, attempts, last time)] over the latest state of
        each of its mapped children)`, by state. The greatest last time over a task's states is
        the time of its children's latest row (task_counts.Group.last_time)."""
        with self._transaction(write=False) as tx:
            groups = task_counts.groups(tx, run_id)
            own = [g.latest_id for g in groups if g.kind == 0 and g.n > 0]
            rows = tx.all(f"SELECT {_TASK_COLS} FROM task_states WHERE id IN ({_marks(own)})", *own) if own else []
        children: dict[str, list[tuple[str, int, int, float]]] = {}
        for g in sorted(groups, key=lambda g: g.state):
            if g.kind == 1 and g.n > 0:
                children.setdefault(g.task, []).append((g.state, g.n, g.attempts, float(g.last_time or 0.0)))
        states = {row[1]: TaskRunState(*row) for row in rows}
        return [(task, states.get(task), children.get(task, [])) for task, _ in _firsts(groups)]

    def task_firsts(self, run_id: str) -> list[tuple[str, int]]:
        """(task, the id of its first recorded state) of a run's tasks, in that order."""
        with self._transaction(write=False) as tx:
            return _firsts(task_counts.groups(tx, run_id))


def _firsts(groups: list[task_counts.Group]) -> list[tuple[str, int]]:
    """(task, the id of its first row), in that order: the least over the task's groups."""
    firsts: dict[str, int] = {}
    for g in groups:
        if g.first_id is not None:
            firsts[g.task] = min(firsts.get(g.task, g.first_id), g.first_id)
    return sorted(firsts.items(), key=lambda item: item[1])


def _link(tx: Tx, run_id: str) -> dict | None:
    """A run's row of run_links (see TaskStore.run_link), or None."""
    import json

    row = tx.one("SELECT spec_path, spec_checksum, restart_of, notes, parent_run, parent_task FROM run_links"
                 " WHERE run_id = ?", run_id)
    if row is None:
        return None
    return {"spec_path": row[0], "spec_checksum": row[1], "restart_of": row[2],
            "notes": None if row[3] is None else json.loads(row[3]), "parent_run": row[4], "parent_task": row[5]}
