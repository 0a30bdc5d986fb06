"""A run's task runs counted by state as they are written (flowspec.backend.task_counts): the
summary `runs show` and the UI read from the counts equals a GROUP BY over the latest row of each
task run, whoever wrote the rows and however they were batched, on SQLite and PostgreSQL alike."""
from __future__ import annotations

import random
import time

from flowspec.backend import open_backend
from flowspec.backend.base import Backend
from flowspec.backend.schema import MIGRATIONS, SCHEMA_VERSION

# The schema version just before the migration that brought the counts.
COUNTS_MIGRATION = next(i for i, entry in enumerate(MIGRATIONS) if any("CREATE TABLE task_counts" in s for s in entry))


def grouped(backend: Backend, run_id: str) -> list:
    """The summary as a direct GROUP BY over the task states gives it (what task_summary read
    before the counts): per task in order of its first row, its own latest (state, attempt, time,
    message) and per state of its children (state, children, attempts), and their latest time."""
    with backend._transaction(write=False) as tx:
        order = [t for t, _ in tx.all("SELECT task, MIN(id) AS first FROM task_states WHERE run_id = ?"
                                      " GROUP BY task ORDER BY first", run_id)]
        own = {r[0]: tuple(r[1:]) for r in tx.all(
            "SELECT task, state, attempt, time, message FROM task_states WHERE id IN (SELECT MAX(id) FROM task_states"
            " WHERE run_id = ? AND map_index IS NULL GROUP BY task)", run_id)}
        rows = tx.all("SELECT t.task, t.state, COUNT(*), SUM(t.attempt), MAX(t.time) FROM task_states t JOIN"
                      " (SELECT MAX(id) AS id FROM task_states WHERE run_id = ? AND map_index IS NOT NULL"
                      " GROUP BY task, map_index) l ON t.id = l.id GROUP BY t.task, t.state ORDER BY t.state", run_id)
    children: dict[str, list] = {}
    for task, state, n, attempts, at in rows:
        children.setdefault(task, []).append((state, int(n), int(attempts), float(at)))
    return [(t, own.get(t), [c[:3] for c in children.get(t, [])], max((c[3] for c in children.get(t, [])),
                                                                       default=None)) for t in order]


def summed(backend: Backend, run_id: str) -> list:
    return [(task, own and (own.state, own.attempt, own.time, own.message), [g[:3] for g in groups],
             max((g[3] for g in groups), default=None)) for task, own, groups in backend.task_summary(run_id)]


def check(backend: Backend, run_id: str) -> None:
    assert summed(backend, run_id) == grouped(backend, run_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def lives(rng: random.Random, clock: Clock, task: str, index: int | None, end: bool = True) -> list[tuple]:
    """The rows of one task run: Running, maybe retried (Retrying, Running again), then a final
    state (unless `end` is False: still running)."""
    rows, attempt = [(task, index, "Running", 1, clock(), None)], 1
    while rng.random() < 0.3:
        rows.append((task, index, "Retrying", attempt, clock(), "boom"))
        attempt += 1
        rows.append((task, index, "Running", attempt, clock(), None))
    if rng.random() < 0.1:
        rows.append((task, index, "Looping", attempt, clock(), None))
        rows.append((task, index, "Running", attempt, clock(), None))
    if end:
        rows.append((task, index, rng.choice(["Success", "Success", "Failed", "Cached", "Skipped"]), attempt,
                     clock(), "done"))
    return rows


def interleaved(rng: random.Random, lanes: list[list[tuple]]) -> list[tuple]:
    """The rows of many task runs as they come, each run's in its order."""
    lanes = [list(lane) for lane in lanes if lane]
    out = []
    while lanes:
        lane = rng.choice(lanes)
        out.append(lane.pop(0))
        if not lane:
            lanes.remove(lane)
    return out


def write(rng: random.Random, backend: Backend, run_id: str, rows: list[tuple], checked: Backend) -> None:
    """Write `rows` in batches of random sizes (a batch may hold a task run's several rows),
    each timed as it is written, checking the summary after each."""
    at, clock = 0, Clock()
    clock.now = max([2000.0] + [g[3] or 0.0 for _, _, groups in checked.task_summary(run_id) for g in groups])
    while at < len(rows):
        size = rng.choice([1, 2, 5, 30, 200])
        backend.add_task_states(run_id, [(*r[:4], clock(), r[5]) for r in rows[at:at + size]])
        at += size
        check(checked, run_id)


def test_counts_equal_a_group_by_however_batched_and_whoever_writes(backend_url: str) -> None:
    rng, clock = random.Random(20), Clock()
    with open_backend(backend_url) as writer, open_backend(backend_url) as other:
        run_id = writer.create_flow_run(None, {}, (), "Running", flow_name="f").id
        lanes = [lives(rng, clock, "setup", None)]
        lanes += [lives(rng, clock, "load", i) for i in range(120)]
        lanes += [lives(rng, clock, "check", i) for i in rng.sample(range(200), 25)]  # sparse indexes
        rows = interleaved(rng, lanes)
        write(rng, writer, run_id, rows[:len(rows) // 2], other)
        # a second writer of the same run (a pod that took over): the first one's knowledge of
        # the run is out of date, and both count it through the database from then on
        tail = interleaved(rng, [lives(rng, clock, "load", i) for i in range(0, 60, 7)]
                           + [lives(rng, clock, "report", None, end=False)])
        write(rng, other, run_id, tail, writer)
        write(rng, writer, run_id, rows[len(rows) // 2:], other)
        # a run that ends Failed finishes its unfinished task runs in set-based statements
        writer.add_task_states(run_id, [("slow", i, "Running", 1, clock(), None) for i in range(5)])
        writer.add_run_tasks(run_id, ["setup", "load", "check", "report", "slow", "never"])
        assert writer.set_run_state(run_id, "Failed", "boom")
        check(other, run_id)
        shown = {task: (own and own[0], groups) for task, own, groups, _ in summed(other, run_id)}
        assert shown["slow"] == (None, [("Failed", 5, 5)]) and shown["never"] == ("Cancelled", [])
        assert shown["report"][0] == "Failed"


def test_a_writer_alone_counts_many_batches_of_one_map(backend_url: str) -> None:
    """The usual run: one process writes every row; children come and go between batches,
    some retried (attempts other than 1), some twice in one batch."""
    rng, clock = random.Random(7), Clock()
    with open_backend(backend_url) as backend:
        run_id = backend.create_flow_run(None, {}, (), "Running", flow_name="f").id
        rows = [("make", None, "Running", 1, clock(), None), ("make", None, "Success", 1, clock(), None)]
        rows += interleaved(rng, [lives(rng, clock, "square", i) for i in range(300)])
        rows += [("total", None, "Running", 1, clock(), None), ("total", None, "Retrying", 1, clock(), "x"),
                 ("total", None, "Running", 2, clock(), None)]
        write(rng, backend, run_id, rows, backend)
        with backend._transaction(write=False) as tx:  # a few rows per task and state, not one per child
            assert tx.one("SELECT COUNT(*) FROM task_counts WHERE run_id = ?", run_id)[0] <= 3 * 7


def test_cancelled_and_lost_runs_finish_their_task_runs_counted(backend_url: str) -> None:
    clock = Clock()
    with open_backend(backend_url) as backend:
        cancelled = backend.create_flow_run(None, {}, (), "Running", flow_name="f").id
        backend.add_run_tasks(cancelled, ["a", "b", "c"])
        backend.add_task_states(cancelled, [("a", None, "Success", 1, clock(), None)]
                                + [("b", i, "Running", 1, clock(), None) for i in range(4)]
                                + [("b", 0, "Success", 1, clock(), None)])
        assert backend.cancel_run(cancelled) == "Cancelling"
        assert backend.set_run_state(cancelled, "Cancelled", "stopped")
        check(backend, cancelled)
        assert summed(backend, cancelled)[1][2] == [("Cancelled", 3, 3), ("Success", 1, 1)]
        lost = backend.create_flow_run(None, {}, (), "Running", flow_name="f", heartbeat_timeout=0.01).id
        backend.add_task_states(lost, [("m", i, "Running", 1, clock(), None) for i in range(3)])
        time.sleep(0.05)
        marked = backend.mark_lost_runs("a test", timeout_s=0.01, run_id=lost, grace_s=0.05)
        assert [run.id for run, _ in marked] == [lost]
        check(backend, lost)
        assert summed(backend, lost)[0][2] == [("Failed", 3, 3)]


def test_deleting_runs_deletes_their_counts(backend_url: str) -> None:
    with open_backend(backend_url) as backend:
        run_id = backend.create_flow_run(None, {}, (), "Running", flow_name="f").id
        backend.add_task_states(run_id, [("m", i, "Success", 1, 1.0 + i, None) for i in range(3)])
        backend.set_run_state(run_id, "Success")
        assert backend.delete_runs([run_id]) == [run_id]
        with backend._transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM task_counts WHERE run_id = ?", run_id)[0] == 0
            assert tx.one("SELECT COUNT(*) FROM task_count_marks WHERE run_id = ?", run_id)[0] == 0


def test_rows_nobody_counted_are_counted_by_the_reader_and_the_migration(backend_url: str) -> None:
    """Runs recorded before the counts existed: the migration counts them; rows a writer put
    in without counting them (by hand) are added by whoever reads the counts."""
    rng, clock = random.Random(3), Clock()
    with open_backend(backend_url) as backend:
        runs = [backend.create_flow_run(None, {}, (), "Running", flow_name="f").id for _ in range(3)]
        for run_id in runs:
            backend.add_task_states(run_id, interleaved(rng, [lives(rng, clock, "t", None)]
                                                        + [lives(rng, clock, "m", i) for i in range(20)]))
        with backend._transaction() as tx:
            tx.run("INSERT INTO task_states (run_id, task, map_index, state, attempt, time, message)"
                   " VALUES (?, 'm', 3, 'Failed', 9, ?, 'by hand')", runs[0], clock())
        check(backend, runs[0])
        expected = {run_id: grouped(backend, run_id) for run_id in runs}
        with backend._transaction() as tx:  # back to the schema before the counts
            tx.run("DROP TABLE task_counts")
            tx.run("DROP TABLE task_count_marks")
            tx.run("UPDATE schema_version SET version = ?", COUNTS_MIGRATION)
    with open_backend(backend_url) as backend:
        assert backend.schema_version() == SCHEMA_VERSION
        assert {run_id: summed(backend, run_id) for run_id in runs} == expected
        backend.add_task_states(runs[1], [("m", 0, "Cancelled", 0, clock(), None)])
        check(backend, runs[1])


# -- the counts a writer keeps, row for row against the database's own GROUP BY --------------------
_FIELDS = "task, kind, state, n, attempts, last_time, first_id, latest_id"


def truth(backend: Backend, run_id: str) -> dict:
    """Per (task, kind, state): the run's counts as the migration computes them from the rows
    (its own statement, over the latest row of each task run)."""
    insert = next(s for s in MIGRATIONS[COUNTS_MIGRATION] if s.startswith("INSERT INTO task_counts"))
    query = insert[insert.index(" SELECT"):]
    with backend._transaction(write=False) as tx:
        rows = tx.all(f"WITH m (run_id, {_FIELDS}) AS ({query}) SELECT {_FIELDS} FROM m WHERE run_id = ?", run_id)
    return {tuple(r[:3]): tuple(r[3:]) for r in rows}


def kept(backend: Backend, run_id: str) -> tuple[dict, int, int]:
    """The run's task_counts rows as stored, its mark and its last row's id."""
    with backend._transaction(write=False) as tx:
        rows = tx.all(f"SELECT {_FIELDS} FROM task_counts WHERE run_id = ?", run_id)
        mark = tx.one("SELECT counted FROM task_count_marks WHERE run_id = ?", run_id)[0]
        top = tx.one("SELECT MAX(id) FROM task_states WHERE run_id = ?", run_id)[0]
    return {tuple(r[:3]): tuple(r[3:]) for r in rows}, mark, top


def check_kept(backend: Backend, run_id: str, written: list[tuple]) -> None:
    """What the writer stored equals the database's truth, field by field as the readers use them:
    n and attempts of every state a task run is in; for a task's own run the latest_id (the row
    `runs show` and the UI read) and last_time; a task's first row as the least first_id over
    its groups; for children a last_time no earlier than the truth's, no later than the task's
    latest child row, the greatest over the task's states equal to it. A stored group the truth
    lacks holds no task run (n and attempts 0)."""
    counts, mark, top = kept(backend, run_id)
    want = truth(backend, run_id)
    assert mark == top  # counted by the writer itself, nothing left for a reader to add
    for key, (n, attempts, at, _, latest) in want.items():
        assert key in counts, f"no group {key}"
        got = counts[key]
        assert got[:2] == (n, attempts), (key, got, want[key])
        if key[1] == 0:
            assert (got[2], got[4]) == (at, latest), (key, got, want[key])
        else:
            latest_child = max(r[4] for r in written if r[0] == key[0] and r[1] is not None)
            assert at <= got[2] <= latest_child, (key, got, want[key])
    for key, got in counts.items():
        if key not in want:
            assert got[:2] == (0, 0), (key, got)
    for task in {key[0] for key in want}:
        assert min(g[3] for k, g in counts.items() if k[0] == task and g[3] is not None) == \
            min(w[3] for k, w in want.items() if k[0] == task)
        children = [g[2] for k, g in counts.items() if k[0] == task and k[1] == 1 and g[0] > 0]
        if children:
            assert max(children) == max(w[2] for k, w in want.items() if k[0] == task and k[1] == 1)
    # count_since's own question, from the run's first row, gives the same
    from flowspec.backend import task_counts

    with backend._transaction(write=False) as tx:
        asked = {(g.task, g.kind, g.state): (g.n, g.attempts, g.first_id) for g in task_counts._delta(tx, run_id, 0)}
    assert {k: v for k, v in asked.items() if v[0]} == {k: (w[0], w[1], w[3]) for k, w in want.items()}


def counted_alone(backend: Backend, run_id: str, batches: list[list[tuple]], clock: Clock) -> None:
    """Write `batches` (rows re-timed by `clock`) as the run's one writer, checking after each that
    the writer counted it itself (its Tally knows the run) and what it stored."""
    written: list[tuple] = []
    for batch in batches:
        batch = [(*r[:4], clock(), r[5]) for r in batch]
        backend.add_task_states(run_id, batch)
        written += batch
        assert run_id in backend._tally._runs
        check_kept(backend, run_id, written)


def test_a_writers_counts_equal_the_migrations_group_by_batch_after_batch(backend_url: str) -> None:
    """Own rows netted within a batch (a state passed through, a state the task is back in with
    a new attempt or the same one), retries, mapped children beside their task's own rows, many
    tasks in one batch; on PostgreSQL also with ids that do not follow each other."""
    clock = Clock()
    with open_backend(backend_url) as backend:
        run_id = backend.create_flow_run(None, {}, (), "Running", flow_name="f").id
        counted_alone(backend, run_id, [
            [("a", None, "Pending", 0, 0, None), ("a", None, "Running", 1, 0, None), ("a", None, "Success", 1, 0, "ok")],
            [("b", None, "Running", 1, 0, None), ("c", None, "Running", 1, 0, None)],
            # back in Running within one batch: with attempt 2, and with the same attempt
            [("b", None, "Retrying", 1, 0, "x"), ("b", None, "Running", 2, 0, None),
             ("c", None, "Looping", 1, 0, None), ("c", None, "Running", 1, 0, None)],
            [("b", None, "Running", 2, 0, "again")],  # the same state again, a row of its own
            [("m", None, "Running", 1, 0, None)] + [("m", i, "Running", 1, 0, None) for i in range(6)]
            + [("m", 2, "Retrying", 1, 0, "x"), ("m", 2, "Running", 2, 0, None), ("m", 0, "Success", 1, 0, None)],
            [("m", i, "Success", 1, 0, None) for i in range(1, 6)] + [("m", 2, "Failed", 3, 0, None)]
            + [("m", None, "Retrying", 1, 0, "x"), ("m", None, "Running", 2, 0, None), ("m", None, "Failed", 2, 0, None),
               ("b", None, "Success", 2, 0, None), ("c", None, "Success", 1, 0, None)],
            [("m", None, "Running", 3, 0, None), ("m", None, "Success", 3, 0, None), ("m", 5, "Skipped", 0, 0, None)],
        ], clock)
    for seed in range(4):
        rng = random.Random(seed)
        with open_backend(backend_url) as backend:
            if seed == 3 and backend_url.startswith("postgres"):
                with backend._transaction() as tx:  # ids with gaps, as other runs' writers leave them
                    tx.run("ALTER SEQUENCE task_states_id_seq INCREMENT BY 3")
            run_id = backend.create_flow_run(None, {}, (), "Running", flow_name="f").id
            lanes = [lives(rng, clock, f"t{i}", None) for i in range(30)]
            lanes += [lives(rng, clock, "map", i) for i in range(40)] + [lives(rng, clock, "map", None)]
            lanes += [lives(rng, clock, f"late{i}", None, end=False) for i in range(5)]
            rows, batches = interleaved(rng, lanes), []
            while rows:
                size = rng.choice([1, 2, 3, 8, 40, 150])
                batches.append(rows[:size])
                rows = rows[size:]
            counted_alone(backend, run_id, batches, clock)
