"""A run's task runs counted by state, kept beside its task states (the `task_counts` table).

Per (run, task, kind, state), `kind` 1 for the mapped children of a task and 0 for the task's own
runs: how many are in that state now (their latest row), their attempts summed, when one last
entered it (see Group), the id of the latest row counted into it, and the id of the task's first row. A
run's task table then reads a few rows per task, not the latest of 200 000 rows of a map of
100 000 children (flowspec.backend.tasks.TaskStore.task_summary).

Every writer of task states counts what it wrote in the same transaction: `lock` first (writers
of one run take turns on its `task_count_marks` row, so the rows after the mark are theirs alone),
then, once the rows are in, `Tally.count` (a writer that wrote every row of the run: it knows each
task run's state) or `count_since` (anyone: asks the database). A reader adds the rows written
after the mark to what it reads (`groups`), so counts are exact whoever wrote the rows.

Rows are appended, never changed, and deleted only with their whole run: the rows up to a mark
never change their counts again, which makes each batch's change a question about its own rows.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, compress, repeat
from operator import is_, itemgetter, not_

from flowspec.backend.core import Tx

# One batch's change, per (task, kind, state): +1 for each key's latest new row, -1 for the
# latest row it had before the batch (rows up to `mark`), looked up in ui_task_states_by_task.
# The new rows are gathered first by task_states_by_run (or the ids): grouped in one statement,
# SQLite would walk the run's every row in ui_task_states_by_task to skip a sort.
_DELTA = (
    "WITH new AS MATERIALIZED (SELECT id, task, map_index FROM task_states WHERE run_id = ? AND id > ?),"
    " k AS (SELECT MAX(id) AS id, MIN(id) AS first_id FROM new GROUP BY task, map_index)"
    " SELECT task, kind, state, SUM(n), SUM(attempts), MAX(time), MIN(first_id), MAX(latest_id) FROM ("
    " SELECT t.task, CASE WHEN t.map_index IS NULL THEN 0 ELSE 1 END AS kind, t.state, 1 AS n, t.attempt AS attempts,"
    " t.time, k.first_id, t.id AS latest_id FROM k JOIN task_states t ON t.id = k.id"
    " UNION ALL"
    " SELECT p.task, CASE WHEN p.map_index IS NULL THEN 0 ELSE 1 END, p.state, -1, -p.attempt, NULL, NULL, NULL"
    " FROM task_states p WHERE p.id IN (SELECT CASE WHEN n.map_index IS NULL"
    " THEN (SELECT MAX(q.id) FROM task_states q WHERE q.run_id = ? AND q.task = n.task AND q.map_index IS NULL"
    " AND q.id <= ?)"
    " ELSE (SELECT MAX(q.id) FROM task_states q WHERE q.run_id = ? AND q.task = n.task AND q.map_index = n.map_index"
    " AND q.id <= ?) END FROM (SELECT DISTINCT task, map_index FROM new) n)"
    ") d GROUP BY task, kind, state"
)

_UPSERT = (
    "INSERT INTO task_counts (run_id, task, kind, state, n, attempts, last_time, first_id, latest_id)"
    " VALUES {values} ON CONFLICT (run_id, task, kind, state) DO UPDATE SET"
    " n = task_counts.n + excluded.n, attempts = task_counts.attempts + excluded.attempts,"
    " last_time = CASE WHEN excluded.last_time > task_counts.last_time OR task_counts.last_time IS NULL"
    " THEN excluded.last_time ELSE task_counts.last_time END,"
    " first_id = CASE WHEN excluded.first_id < task_counts.first_id OR task_counts.first_id IS NULL"
    " THEN excluded.first_id ELSE task_counts.first_id END,"
    " latest_id = CASE WHEN excluded.latest_id > task_counts.latest_id OR task_counts.latest_id IS NULL"
    " THEN excluded.latest_id ELSE task_counts.latest_id END"
)


_CHUNK = 100  # rows per upsert: 900 parameters, under any SQLite's limit (999 before 3.32)


@lru_cache(maxsize=None)
def _upsert_sql(rows: int) -> str:
    return _UPSERT.format(values=", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows))


@dataclass(slots=True)
class Group:
    """The task runs of one task and kind in one state (their latest rows)."""

    task: str
    kind: int  # 1: mapped children; 0: the task's own runs (at most one is counted)
    state: str
    n: int
    attempts: int
    # No earlier than any task run now in this state entered it, no later than the latest row of
    # the task's children (a batch's latest time, for each state the batch moved children into):
    # the greatest over a task's states is its children's latest time.
    last_time: float | None
    first_id: int | None  # the task's first row is the least over its groups
    latest_id: int | None  # the latest row counted into this group: the task's own row, when kind 0 and n 1


def lock(tx: Tx, run_id: str) -> int:
    """Take the run's turn to write task states (held until the transaction ends; SQLite's
    writer holds the whole file already) and return its mark: its rows up to there are counted."""
    row = tx.one("INSERT INTO task_count_marks (run_id, counted) VALUES (?, 0) ON CONFLICT (run_id)"
                 " DO UPDATE SET counted = task_count_marks.counted RETURNING counted", run_id)
    return int(row[0])


def count_since(tx: Tx, run_id: str, mark: int) -> int:
    """Count the run's rows after `mark` (written in this transaction, after `lock`) and move
    the mark past them; returns the new mark."""
    groups = _delta(tx, run_id, mark)
    if not groups:
        return mark
    return _store(tx, run_id, groups, max(g.latest_id for g in groups if g.latest_id is not None))


def _store(tx: Tx, run_id: str, groups: list[Group], mark: int | None) -> int:
    """Add `groups` to the counts and move the mark to `mark` (None: the run's last row)."""
    return _upsert(tx, run_id, [(run_id, g.task, g.kind, g.state, g.n, g.attempts, g.last_time, g.first_id,
                                 g.latest_id) for g in groups], mark)


def _upsert(tx: Tx, run_id: str, rows: list[tuple], mark: int | None) -> int:
    """Add `rows` (run_id and a Group's fields, no two of one group) to the counts and move the
    mark as `_store` does. A statement per _CHUNK rows: a chain of 10 000 tasks upserts a row
    each, and a statement a row costs a third more."""
    for start in range(0, len(rows), _CHUNK):
        part = rows[start:start + _CHUNK]
        tx.run(_upsert_sql(len(part)), *chain.from_iterable(part))
    if mark is None:  # one statement the fewer: each gives the interpreter's lock back and forth
        return int(tx.one("UPDATE task_count_marks SET counted = (SELECT MAX(id) FROM task_states WHERE run_id = ?)"
                          " WHERE run_id = ? RETURNING counted", run_id, run_id)[0])
    tx.run("UPDATE task_count_marks SET counted = ? WHERE run_id = ?", mark, run_id)
    return mark


@dataclass
class _Known:
    """Every task run of one run, as the one writer of all its rows wrote them."""

    mark: int
    codes: dict[str, bytearray] = field(default_factory=dict)  # per mapped task: each child's state, by index
    attempts: dict[str, dict[int, int]] = field(default_factory=dict)  # per mapped task: attempts other than 1
    own: dict[str, tuple[str, int]] = field(default_factory=dict)  # per task: its own latest (state, attempt)


class Tally:
    """What a writer knows of the runs it wrote from their first row on: each task run's state,
    one byte per mapped child (a map of a million children: 1 MB), so that counting a batch asks
    the database nothing per row (`count_since` costs more than the insert itself). Only while
    nobody else wrote a row of the run: the mark tells (else `count_since`, from then on)."""

    RUNS = 8  # runs known at once, the last written (a process writing more is counted by the database)

    def __init__(self) -> None:
        self._runs: OrderedDict[str, _Known] = OrderedDict()
        self._codes: dict[str, int] = {}
        self._states: list[str] = [""]  # by code; 0: no row yet

    def count(self, tx: Tx, run_id: str, mark: int, rows: list[tuple]) -> int:
        """Count `rows` (task, map_index, state, attempt, time, message), just written after
        `mark`, and move the mark past them; returns the new mark."""
        known = self._runs.pop(run_id, None)
        ids: range | list[int] | None = None
        if known is None and mark == 0:
            ids = _batch_ids(tx, run_id, 0, len(rows))
            known = None if ids is None else _Known(0)  # the run's first rows, all ours
        for state in set(map(_STATE, rows)) - self._codes.keys():
            if len(self._states) > 255:
                known = None  # a byte per child no longer tells every state apart
                break
            self._codes[state] = len(self._states)
            self._states.append(state)
        if known is None or known.mark != mark:
            return count_since(tx, run_id, mark)  # not ours alone: asked of the database, from now on
        tasks = set(map(_TASK, rows))
        new_tasks = {task for task in tasks if task not in known.codes and task not in known.own}
        indexes = list(map(_INDEX, rows))
        mine = list(map(is_, indexes, repeat(None))) if None in indexes else None  # a task's own rows
        if (new_tasks or mine) and ids is None:
            # A task's first row (a task first seen here) and its own latest row: by their places
            # in the batch, whose ids these are
            ids = _batch_ids(tx, run_id, mark, len(rows))
            if ids is None:  # someone else's rows after all: the database counts, from now on
                return count_since(tx, run_id, mark)
        firsts = _firsts(rows, ids, new_tasks) if new_tasks else {}
        upserts = []
        if mine:
            latest_ids = dict(zip(compress(map(_TASK, rows), mine), compress(ids, mine)))  # the last one wins
            upserts += self._own(known, run_id, list(compress(rows, mine)), latest_ids, firsts)
        if mine is None or False in mine:
            children = rows if mine is None else list(compress(rows, map(not_, mine)))
            for g in self._mapped(known, children, indexes if mine is None else None, single=len(tasks) == 1):
                upserts.append((run_id, g.task, 1, g.state, g.n, g.attempts, g.last_time, firsts.get(g.task), None))
        known.mark = _upsert(tx, run_id, upserts, None if ids is None else ids[-1])
        self._runs[run_id] = known
        while len(self._runs) > self.RUNS:
            self._runs.popitem(last=False)
        return known.mark

    @staticmethod
    def _own(known: _Known, run_id: str, rows: list[tuple], latest_ids: dict[str, int],
             firsts: dict[str, int]) -> list[tuple]:
        """The batch's change to its tasks' own runs (`rows`: the batch's own rows), as rows to
        upsert: per task, its latest own row counted in and the one it had before out, a group
        each; none for the states it passed through within the batch. Those net to nothing (n
        and attempts 0, no task run in them: readers skip them, and only first_id is read of a
        group without task runs, which the task's current group carries). A state the task is
        back in keeps its group however it nets: its latest_id must move to the task's new row."""
        latest = {row[0]: row for row in rows}  # each task's last own row
        out = []
        own, first = known.own, firsts.get
        for task, (_, _, state, attempt, at, _) in latest.items():
            before = own.get(task)
            own[task] = (state, attempt)
            if before is None:
                out.append((run_id, task, 0, state, 1, attempt, at, first(task), latest_ids[task]))
            elif before[0] == state:
                out.append((run_id, task, 0, state, 0, attempt - before[1], at, None, latest_ids[task]))
            else:
                out.append((run_id, task, 0, before[0], -1, -before[1], None, None, None))
                out.append((run_id, task, 0, state, 1, attempt, at, None, latest_ids[task]))
        return out

    def _mapped(self, known: _Known, rows: list[tuple], indexes: list[int] | None, single: bool) -> list[Group]:
        """The batch's change to the mapped children of its tasks (`rows`: theirs alone, `indexes`
        their map indexes if at hand; `single`: all of one task, known to be)."""
        out: dict[tuple[str, int, str], Group] = {}

        def group(task: str, kind: int, state: str) -> Group:
            g = out.get((task, kind, state))
            if g is None:
                g = out[task, kind, state] = Group(task, kind, state, 0, 0, None, None, None)
            return g

        if not rows:
            return []
        if single or (rows[0][0] == rows[-1][0] and len(set(map(_TASK, rows))) == 1):  # the usual batch
            self._children(known, rows[0][0], rows, list(map(_INDEX, rows)) if indexes is None else indexes, group)
        else:
            by_task: dict[str, list[tuple]] = {}
            for row in rows:
                by_task.setdefault(row[0], []).append(row)
            for task, found in by_task.items():
                self._children(known, task, found, list(map(_INDEX, found)), group)
        return list(out.values())

    def _children(self, known: _Known, task: str, found: list[tuple], indexes: list[int], group) -> None:
        """Count a task's mapped children in the batch: each one's latest row in, what it had
        before out. The interpreter's own loops (map, itemgetter, bytes.count) do most of it, a
        Python loop only sets each child's state (and reads attempts when some are not 1): this
        runs beside the tasks, holding the interpreter's lock."""
        codes = known.codes.get(task)
        if codes is None:
            codes = known.codes[task] = bytearray()
        top = max(indexes)
        if top >= len(codes):
            codes.extend(bytes(top + 1 - len(codes) + len(codes) // 2))
        news = list(map(self._codes.__getitem__, map(_STATE, found)))
        attempts = list(map(_ATTEMPT, found))
        extra = known.attempts.setdefault(task, {})
        unique = list(set(indexes))
        if len(unique) == len(indexes):  # a row per child: its latest
            unique = indexes
        pick = itemgetter(*unique) if len(unique) > 1 else lambda seq: (seq[unique[0]],)
        olds = pick(codes)
        for index, code in zip(indexes, news):
            codes[index] = code
        finals = news if unique is indexes else pick(codes)
        states, olds_text, finals_text = self._states, bytes(olds), bytes(finals)
        counted = []
        for code in range(1, len(states)):  # a few states: a count over bytes each
            n_old, n_new = olds_text.count(code), finals_text.count(code)
            if n_old:
                g = group(task, 1, states[code])
                g.n, g.attempts = g.n - n_old, g.attempts - n_old
            if n_new:
                g = group(task, 1, states[code])
                g.n, g.attempts = g.n + n_new, g.attempts + n_new
                counted.append(code)
        # The batch's latest time for each state it moved children into: no earlier than any
        # of them entered it, and no later than the children's latest row
        at = max(map(_TIME, found))
        for code in counted:
            g = group(task, 1, states[code])
            g.last_time = at if g.last_time is None or at > g.last_time else g.last_time
        # Attempts were counted as 1 each: the task runs whose attempt is not (a retry; 0 for one
        # never run) are few, and kept apart.
        if extra and not extra.keys().isdisjoint(unique):
            for index, old in zip(unique, olds):
                if index in extra:
                    group(task, 1, states[old]).attempts -= extra.pop(index) - 1
        if attempts.count(1) != len(attempts):
            last = dict(zip(indexes, attempts))
            for index, code in zip(unique, finals):
                if last[index] != 1:
                    group(task, 1, states[code]).attempts += last[index] - 1
                    extra[index] = last[index]


_TASK, _INDEX, _STATE = itemgetter(0), itemgetter(1), itemgetter(2)
_ATTEMPT, _TIME = itemgetter(3), itemgetter(4)


def _batch_ids(tx: Tx, run_id: str, mark: int, n: int) -> range | list[int] | None:
    """The ids of the run's rows after `mark`, which are the batch's `n` rows in its order; None
    when they are not n (someone else's rows). One aggregate row when the ids follow each other
    (SQLite: the writer holds the file; PostgreSQL: no other writer took a number between),
    else each id read."""
    count, low, high = tx.one("SELECT COUNT(*), MIN(id), MAX(id) FROM task_states WHERE run_id = ? AND id > ?",
                              run_id, mark)
    if count != n:
        return None
    if high - low + 1 == n:
        return range(low, high + 1)
    return [row[0] for row in tx.all("SELECT id FROM task_states WHERE run_id = ? AND id > ? ORDER BY id",
                                     run_id, mark)]


def _firsts(rows: list[tuple], ids: range | list[int], tasks: set[str]) -> dict[str, int]:
    """The id of the first row in the batch of each of `tasks` (a dict built from pairs in C)."""
    first = dict(zip(reversed(list(map(_TASK, rows))), reversed(ids)))  # the first one wins
    return {task: first[task] for task in tasks}


def groups(tx: Tx, run_id: str) -> list[Group]:
    """The run's counts with every row written after its mark added (none, when each writer
    counted its own): the counts as a GROUP BY over the latest row of each task run gives them."""
    # One statement: the mark and the counts from one snapshot (PostgreSQL's READ COMMITTED
    # gives each statement its own).
    rows = tx.all("SELECT m.counted, c.task, c.kind, c.state, c.n, c.attempts, c.last_time, c.first_id, c.latest_id"
                  " FROM task_count_marks m LEFT JOIN task_counts c ON c.run_id = m.run_id WHERE m.run_id = ?", run_id)
    mark = int(rows[0][0]) if rows else 0
    kept = {(r[1], r[2], r[3]): Group(*r[1:]) for r in rows if r[1] is not None}
    top = (tx.one("SELECT MAX(id) FROM task_states WHERE run_id = ?", run_id) or (None,))[0]
    if top is not None and top > mark:
        for g in _delta(tx, run_id, mark):
            have = kept.get((g.task, g.kind, g.state))
            kept[g.task, g.kind, g.state] = g if have is None else _merged(have, g)
    return list(kept.values())


def _delta(tx: Tx, run_id: str, mark: int) -> list[Group]:
    rows = tx.all(_DELTA, run_id, mark, run_id, mark, run_id, mark)
    return [Group(r[0], int(r[1]), r[2], int(r[3]), int(r[4]), r[5], r[6], r[7]) for r in rows]


def _merged(a: Group, b: Group) -> Group:
    def pick(x, y, better):
        return y if x is None else x if y is None else better(x, y)

    return Group(a.task, a.kind, a.state, a.n + b.n, a.attempts + b.attempts, pick(a.last_time, b.last_time, max),
                 pick(a.first_id, b.first_id, min), pick(a.latest_id, b.latest_id, max))

