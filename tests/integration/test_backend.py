"""The backend against a real SQLite file and a real PostgreSQL server (each test runs on both)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowspec.backend import (
    CANCELLED,
    CANCELLING,
    QUEUED,
    RUNNING,
    SCHEDULED,
    SUBMITTED,
    SUCCESS,
    Backend,
    NotFoundError,
    open_backend,
)
from flowspec.backend.base import SCHEMA_VERSION
from flowspec.errors import BackendError

REPO = Path(__file__).resolve().parents[2]


def new_run(backend: Backend, *labels: str) -> str:
    return backend.create_flow_run(None, {}, labels, flow_name="f").id


def finish(backend: Backend, run_id: str, state: str = SUCCESS) -> None:
    assert backend.set_run_state(run_id, state)


def states(backend: Backend, run_id: str) -> list[str]:
    return [event.state for event in backend.run_history(run_id)]


def child_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


# ------------------------------------------------------------------------------- flows


def test_register_keeps_version_when_unchanged_and_bumps_it_otherwise(backend: Backend) -> None:
    args = ({"type": "local", "location": "x"}, "sum1", "spec: 1", {"type": "local"})
    flow, created = backend.register_flow("proj", "etl", ["dev"], *args)
    assert (flow.version, created, flow.labels) == (1, True, ("dev",))
    again, created = backend.register_flow("proj", "etl", ["dev"], *args)
    assert (again.id, again.version, created) == (flow.id, 1, False)
    changed, created = backend.register_flow("proj", "etl", ["dev"], args[0], "sum2", "spec: 2", args[3])
    assert (changed.version, created) == (2, True)
    relabelled, created = backend.register_flow("proj", "etl", ["dev", "gpu"], args[0], "sum2", "spec: 2", args[3])
    assert (relabelled.version, created) == (3, True)
    other, _ = backend.register_flow("other", "etl", [], *args)
    assert other.version == 1  # versions count per (project, name)

    assert backend.get_flow("etl", project="proj").version == 3
    assert backend.get_flow("etl", project="proj", version=1).spec_text == "spec: 1"
    assert backend.get_flow("missing") is None
    assert [(f.project, f.name, f.version) for f in backend.list_flows()] == [("other", "etl", 1), ("proj", "etl", 3)]
    assert [f.version for f in backend.list_flows(project="proj")] == [3]
    assert backend.list_projects() == ["other", "proj"]


def test_flow_runs_take_the_flows_labels_plus_their_own(backend: Backend) -> None:
    flow, _ = backend.register_flow("p", "etl", ["dev"], {"type": "local"}, "c", "s", {})
    run = backend.create_flow_run(flow.id, {"n": 3}, ["gpu"])
    assert (run.flow_name, run.labels, run.parameters, run.state) == ("etl", ("dev", "gpu"), {"n": 3}, SCHEDULED)
    local = backend.create_flow_run(None, {}, state=RUNNING, flow_name="adhoc")
    assert (local.flow_id, local.flow_name, backend.get_run(local.id).state) == (None, "adhoc", RUNNING)
    with pytest.raises(NotFoundError):
        backend.create_flow_run(9999, {})
    assert [r.id for r in backend.list_runs()] == [local.id, run.id]  # newest first
    assert [r.id for r in backend.list_runs(states=[SCHEDULED], flow_name="etl", limit=1)] == [run.id]
    assert backend.list_runs(states=[]) == []


# ------------------------------------------------------------------------- label rule

LABEL_CASES = [
    (("dev",), ("dev", "staging"), True),
    (("dev", "staging"), ("dev",), False),
    ((), (), True),
    ((), ("dev",), False),
    (("dev",), (), False),
    (("dev", "staging"), ("staging", "dev"), True),
]


def test_an_agent_takes_only_runs_whose_labels_it_covers(backend: Backend) -> None:
    for run_labels, agent_labels, taken in LABEL_CASES:
        run_id = new_run(backend, *run_labels)
        claimed = backend.claim_run("agent", agent_labels)
        assert (claimed is not None and claimed.id == run_id) == taken, (run_labels, agent_labels)
        backend.cancel_run(run_id)


def test_waiting_reason_names_the_agents_when_none_covers_the_labels(backend: Backend) -> None:
    run_id = new_run(backend, "gpu")
    backend.agent_heartbeat("a1", ["dev"], starting=True)
    reason = backend.waiting_reason(run_id)
    assert "no agent seen in the last 60 s has labels covering [gpu]" in reason
    assert "a1 [dev]" in reason
    backend.agent_heartbeat("a2", ["gpu", "dev"])
    assert backend.waiting_reason(run_id) is None
    assert [a.name for a in backend.list_agents(seen_within_s=60)] == ["a1", "a2"]


# ------------------------------------------------------------------------------ limits


def test_two_slots_then_queued_with_reason_until_a_slot_is_freed(backend: Backend) -> None:
    backend.set_limit("dev", 2)
    first, second, third = (new_run(backend, "dev") for _ in range(3))
    assert backend.claim_run("a", ["dev"]).id == first
    assert backend.claim_run("a", ["dev"]).id == second
    for _ in range(3):  # polling again must not add history entries
        assert backend.claim_run("a", ["dev"]) is None
    queued = backend.get_run(third)
    assert queued.state == QUEUED
    assert queued.message == f"label 'dev' is at its limit of 2 (held by runs {first}, {second})"
    assert states(backend, third) == [SCHEDULED, QUEUED]
    backend.agent_heartbeat("a", ["dev"])
    assert backend.waiting_reason(third) == queued.message
    [limit] = backend.list_limits()
    assert (limit.label, limit.limit, limit.in_use, limit.holders) == ("dev", 2, 2, (first, second))

    finish(backend, first)
    claimed = backend.claim_run("a", ["dev"])
    assert (claimed.id, claimed.state, claimed.agent) == (third, SUBMITTED, "a")
    assert states(backend, third) == [SCHEDULED, QUEUED, SUBMITTED]
    assert backend.list_limits()[0].in_use == 2


def test_a_freed_slot_goes_to_the_oldest_queued_run(backend: Backend) -> None:
    backend.set_limit("dev", 1)
    holder, waiting = new_run(backend, "dev"), new_run(backend, "dev")
    assert backend.claim_run("a", ["dev", "prod"]).id == holder
    assert backend.claim_run("a", ["dev", "prod"]) is None
    later = new_run(backend, "dev")  # Scheduled, newer than the Queued run
    other = new_run(backend, "prod")
    # A run needing only labels with room goes ahead of the blocked ones.
    assert backend.claim_run("a", ["dev", "prod"]).id == other
    finish(backend, holder)
    assert backend.claim_run("a", ["dev", "prod"]).id == waiting
    assert backend.get_run(later).state == QUEUED


def test_one_claim_takes_several_runs_as_claims_one_after_another_would(backend: Backend) -> None:
    backend.set_limit("dev", 2)
    dev = [new_run(backend, "dev") for _ in range(3)]
    prod = [new_run(backend, "prod") for _ in range(2)]
    gpu = new_run(backend, "gpu")  # not this agent's
    claimed = backend.claim_runs("a", ["dev", "prod"], 30.0, 10)
    assert [run.id for run in claimed] == [dev[0], dev[1], *prod]
    assert {(run.state, run.agent, run.heartbeat_timeout) for run in claimed} == {(SUBMITTED, "a", 30.0)}
    queued = backend.get_run(dev[2])  # the runs chosen before it in the same claim hold the slots
    assert (queued.state, queued.message) == (QUEUED, f"label 'dev' is at its limit of 2 (held by runs {dev[0]}, {dev[1]})")
    assert backend.claim_runs("a", ["dev", "prod"], None, 10) == []
    assert backend.get_run(gpu).state == SCHEDULED
    more = [new_run(backend, "prod") for _ in range(3)]
    assert [run.id for run in backend.claim_runs("a", ["prod"], None, 2)] == more[:2]  # at most `count`
    finish(backend, dev[0])
    assert [run.id for run in backend.claim_runs("a", ["dev", "prod"], None, 10)] == [dev[2], more[2]]


def test_labels_without_a_limit_never_constrain(backend: Backend) -> None:
    backend.set_limit("dev", 1)
    backend.set_limit("unused", 0)
    runs = [new_run(backend, "prod") for _ in range(5)] + [new_run(backend, "prod", "reporting")]
    claimed = [backend.claim_run("a", ["prod", "reporting", "dev"]) for _ in runs]
    assert [run.id for run in claimed] == runs


def test_a_run_needs_a_slot_in_each_limited_label(backend: Backend) -> None:
    backend.set_limit("a", 1)
    backend.set_limit("b", 2)
    only_a = new_run(backend, "a")
    both = new_run(backend, "a", "b")
    only_b = new_run(backend, "b")
    labels = ["a", "b"]
    assert backend.claim_run("x", labels).id == only_a
    assert backend.claim_run("x", labels).id == only_b  # `both` waits for 'a'
    assert backend.get_run(both).message == f"label 'a' is at its limit of 1 (held by runs {only_a})"
    assert backend.delete_limit("a") and not backend.delete_limit("a")
    backend.set_limit("a", 1)
    finish(backend, only_a)
    assert backend.claim_run("x", labels).id == both
    assert {(l.label, l.in_use, l.limit) for l in backend.list_limits()} == {("a", 1, 1), ("b", 2, 2)}
    blocked = new_run(backend, "a", "b")
    assert backend.claim_run("x", labels) is None
    message = backend.get_run(blocked).message
    assert "label 'a' is at its limit of 1" in message and "label 'b' is at its limit of 2" in message


def test_a_waiting_run_keeps_its_other_labels_slots_so_later_runs_cannot_starve_it(backend: Backend) -> None:
    backend.set_limit("a", 1)
    backend.set_limit("b", 1)
    holder = new_run(backend, "a")
    both = new_run(backend, "a", "b")
    labels = ["a", "b"]
    assert backend.claim_run("x", labels).id == holder
    later_b = new_run(backend, "b")  # 'b' is free, but `both` waits for it too and came first
    assert backend.claim_run("x", labels) is None
    assert backend.get_run(later_b).message == f"label 'b' is at its limit of 1 (kept for older waiting runs {both})"
    backend.agent_heartbeat("x", labels)
    assert backend.waiting_reason(later_b) == backend.get_run(later_b).message
    assert backend.get_run(both).message == f"label 'a' is at its limit of 1 (held by runs {holder})"
    finish(backend, holder)
    assert backend.claim_run("x", labels).id == both
    assert backend.claim_run("x", labels) is None
    assert backend.get_run(later_b).message == f"label 'b' is at its limit of 1 (held by runs {both})"
    assert states(backend, later_b) == [SCHEDULED, QUEUED]  # the reason changed holders, not the gist
    finish(backend, both)
    assert backend.claim_run("x", labels).id == later_b


def test_limit_must_be_a_non_negative_integer(backend: Backend) -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            backend.set_limit("dev", bad)
    assert backend.list_limits() == []


# ------------------------------------------------------------------------ state changes


def test_compare_and_set_moves_a_run_only_from_the_expected_states(backend: Backend) -> None:
    run_id = new_run(backend)
    assert backend.set_run_state(run_id, SUBMITTED, expected_from={SCHEDULED, QUEUED})
    assert not backend.set_run_state(run_id, SUBMITTED, expected_from={SCHEDULED, QUEUED})
    assert backend.set_run_state(run_id, RUNNING, "started", expected_from={SUBMITTED})
    assert backend.set_run_state(run_id, SUCCESS, expected_from={RUNNING}, exit_code=0)
    run = backend.get_run(run_id)
    assert (run.state, run.exit_code) == (SUCCESS, 0)
    assert states(backend, run_id) == [SCHEDULED, SUBMITTED, RUNNING, SUCCESS]
    assert backend.run_history(run_id)[2].message == "started"
    with pytest.raises(NotFoundError):
        backend.set_run_state("nope", RUNNING, expected_from={SCHEDULED})
    with pytest.raises(ValueError):
        backend.set_run_state(run_id, "Exploded")


def test_cancel_depends_on_where_the_run_is(backend: Backend) -> None:
    waiting, active, done = new_run(backend), new_run(backend), new_run(backend)
    backend.set_run_state(active, RUNNING)
    finish(backend, done)
    assert backend.cancel_run(waiting) == CANCELLED
    assert backend.cancel_run(active) == CANCELLING
    assert backend.run_heartbeat(active) == CANCELLING  # how the agent learns of it
    assert backend.cancel_run(done) == SUCCESS
    assert states(backend, done) == [SCHEDULED, SUCCESS]
    assert backend.claim_run("a", []) is None


def test_stale_runs_are_active_runs_without_a_recent_heartbeat(backend: Backend) -> None:
    claimed = new_run(backend)
    assert backend.claim_run("a", []).id == claimed
    never_claimed, done = new_run(backend), new_run(backend)
    finish(backend, done)
    time.sleep(0.3)
    assert [run.id for run in backend.stale_runs(0.2)] == [claimed]
    assert backend.run_heartbeat(claimed) == SUBMITTED
    assert backend.stale_runs(0.2) == []
    assert backend.get_run(never_claimed).state == SCHEDULED


def test_a_lost_run_is_marked_once_with_who_ran_it_and_a_late_heartbeat_wins(backend: Backend) -> None:
    run = backend.create_flow_run(None, {}, (), RUNNING, flow_name="f", runner="a local `flowspec run`, pid 7 on h",
                                  heartbeat_timeout=0.2)
    time.sleep(0.3)
    [stale] = backend.stale_runs(30.0)  # the run's own timeout counts, not the caller's default
    assert backend.run_heartbeat(run.id) == RUNNING  # its process was only slow: the beat lands first
    assert backend.mark_lost(stale, 30.0, "reader") is None
    assert backend.get_run(run.id).state == RUNNING
    time.sleep(0.3)
    [(marked, message)] = backend.mark_lost_runs("`flowspec runs list` (pid 8 on h)", grace_s=0)
    assert marked.id == run.id
    assert message == ("no heartbeat for 0.2s: the process running it (a local `flowspec run`, pid 7 on h) is gone;"
                       " marked Failed by `flowspec runs list` (pid 8 on h)")
    assert (backend.get_run(run.id).state, backend.get_run(run.id).message) == ("Failed", message)
    assert backend.mark_lost_runs("another reader", grace_s=0) == []  # once only
    assert states(backend, run.id) == [RUNNING, "Failed"]


def test_a_run_held_up_longer_than_its_timeout_heartbeats_within_the_grace_and_is_not_lost(
        backend: Backend, backend_url: str) -> None:
    """As after a SQLite lock held for longer than the timeout: the heartbeat is old, but its
    process is alive and beats as soon as it can; the second look sees it."""
    import threading

    run = backend.create_flow_run(None, {}, (), RUNNING, flow_name="f", heartbeat_timeout=0.2)
    time.sleep(0.3)
    with open_backend(backend_url) as other:
        late = threading.Timer(0.3, other.run_heartbeat, (run.id,))
        late.start()
        assert backend.mark_lost_runs("reader", grace_s=1.0) == []
        late.join()
    assert backend.get_run(run.id).state == RUNNING


def test_a_claimed_run_is_named_by_its_agent_and_carries_its_timeout(backend: Backend) -> None:
    run_id = new_run(backend)
    claimed = backend.claim_run("a1", [], heartbeat_timeout=0.2)
    assert (claimed.id, claimed.runner, claimed.heartbeat_timeout) == (run_id, "agent a1", 0.2)
    time.sleep(0.3)
    assert backend.mark_lost_runs("agent a2", spare=[run_id], grace_s=0) == []  # the agent's own live child
    [(_, message)] = backend.mark_lost_runs("agent a2", grace_s=0)
    assert "(agent a1) is gone; marked Failed by agent a2" in message


def test_an_agent_judges_with_at_most_its_own_timeout(backend: Backend) -> None:
    """A run claimed with a 30 s timeout is lost for an agent with a 0.2 s one, not for a reader."""
    run_id = new_run(backend)
    backend.claim_run("a1", [], heartbeat_timeout=30.0)
    time.sleep(0.3)
    assert backend.mark_lost_runs("`flowspec runs list`", grace_s=0) == []
    [(_, message)] = backend.mark_lost_runs("agent a2", 0.2, cap_s=0.2, grace_s=0)
    assert message.startswith("no heartbeat for 0.2s: the process running it (agent a1) is gone")
    assert backend.get_run(run_id).state == "Failed"


def test_a_stopped_agent_is_not_alive_until_it_starts_again(backend: Backend) -> None:
    backend.agent_heartbeat("a", ["x"], starting=True)
    backend.agent_stopped("a")
    assert backend.list_agents(60) == []
    [agent] = backend.list_agents()
    assert agent.stopped is not None and not agent.alive()
    backend.agent_heartbeat("a", ["x"], starting=True)
    assert [a.name for a in backend.list_agents(60)] == ["a"]


@pytest.mark.slow
def test_after_a_postgresql_restart_no_run_is_judged_lost_before_a_whole_timeout(postgres_server) -> None:
    """Nobody could heartbeat while the server was down: a heartbeat older than the timeout only
    counts once the server has been up for that long."""
    with open_backend(postgres_server.url) as backend:
        run = backend.create_flow_run(None, {}, (), RUNNING, flow_name="f", heartbeat_timeout=2.0)
        time.sleep(2.1)
        assert [r.id for r in backend.stale_runs(30.0)] == [run.id]
        postgres_server.restart("fast")
        with pytest.raises(BackendError):  # the connection the restart cut
            backend.stale_runs(30.0)
        assert backend.stale_runs(30.0) == []  # reconnected; the server is up for less than 2 s
        time.sleep(2.0)
        assert [r.id for r in backend.stale_runs(30.0)] == [run.id]


def _index_names(backend) -> set[str]:
    sql = ("SELECT indexname FROM pg_indexes" if backend.url.startswith("postgres")
           else "SELECT name FROM sqlite_master WHERE type = 'index'")
    with backend._transaction(write=False) as tx:
        return {row[0] for row in tx.all(sql)}


def test_the_ui_indexes_are_a_migration_and_logs_carry_only_their_own(backend: Backend) -> None:
    """`flowspec ui` reads with these indexes and writes no DDL itself; logs keep one index:
    a log line written costs the same whether a UI ever looked."""
    names = _index_names(backend)
    assert {"ui_flow_runs_by_created", "ui_flow_runs_by_updated", "ui_task_states_by_task"} <= names
    assert not {"ui_logs_by_level", "ui_logs_by_task"} & names


def test_an_older_database_is_migrated_and_its_runs_read(backend_url: str) -> None:
    from flowspec.backend.base import MIGRATIONS
    from flowspec.backend.postgres import PostgresBackend
    from flowspec.backend.sqlite import SQLiteBackend

    types = (SQLiteBackend if backend_url.startswith("sqlite") else PostgresBackend).types
    statements = ["CREATE TABLE schema_version (version INTEGER NOT NULL)", "INSERT INTO schema_version VALUES (1)",
                  *(sql.format(**types) for sql in MIGRATIONS[0]),
                  "INSERT INTO flow_runs (id, flow_name, state, labels, parameters, agent, created, updated, heartbeat)"
                  " VALUES ('0ld', 'f', 'Running', '[]', '{}', 'a0', 1.0, 1.0, 1.0)"]
    if backend_url.startswith("sqlite"):
        conn = sqlite3.connect(backend_url[len("sqlite://"):])
        with conn:
            for sql in statements:
                conn.execute(sql)
        conn.close()
    else:
        import psycopg

        with psycopg.connect(backend_url, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)
    with open_backend(backend_url) as backend:
        assert backend.schema_version() == SCHEMA_VERSION
        old = backend.get_run("0ld")
        assert (old.runner, old.heartbeat_timeout) == (None, None)
        assert "ui_flow_runs_by_created" in _index_names(backend)  # what the UI reads with
        # the caller's timeout; named by its agent column
        [(_, message)] = backend.mark_lost_runs("agent a1", 0.5, grace_s=0)
        assert message.startswith("no heartbeat for 0.5s: the process running it (agent a0) is gone")


def test_task_states_latest_per_task_and_index(backend: Backend) -> None:
    run_id = new_run(backend)
    backend.add_task_state(run_id, "extract", "Running")
    backend.add_task_state(run_id, "extract", "Retrying", attempt=1, message="boom")
    backend.add_task_state(run_id, "extract", "Success", attempt=2)
    for index in (0, 1):
        backend.add_task_state(run_id, "load", "Running", map_index=index)
    backend.add_task_state(run_id, "load", "Failed", map_index=1, message="bad row")
    latest = {(s.task, s.map_index): (s.state, s.attempt) for s in backend.task_states(run_id)}
    assert latest == {("extract", None): ("Success", 2), ("load", 0): ("Running", 1), ("load", 1): ("Failed", 1)}
    assert len(backend.task_states(run_id, history=True)) == 6
    # read a batch at a time, in the order each was first recorded, from another run's rows too
    other = new_run(backend)
    backend.add_task_state(other, "extract", "Failed")
    streamed = [(s.task, s.map_index, s.state) for s in backend.latest_task_states(run_id, batch=2)]
    assert streamed == [("extract", None, "Success"), ("load", 0, "Running"), ("load", 1, "Failed")]
    assert [s.run_id for s in backend.latest_task_states(other, batch=1)] == [other]
    assert backend.has_task_states(run_id) and not backend.has_task_states(new_run(backend))


def test_a_run_keeps_the_task_graph_it_started_with(backend: Backend) -> None:
    run_id, old = new_run(backend), new_run(backend)
    upstream = {"extract": [], "load": [["extract", "data"]], "report": [["extract", "after"], ["load", "data"]]}
    assert backend.add_run_tasks(run_id, ["extract", "load", "report"], upstream) == 3
    assert backend.run_graph(run_id) == (["extract", "load", "report"], [
        ("extract", "load", "data"), ("extract", "report", "after"), ("load", "report", "data")])
    backend.add_run_tasks(old, ["extract", "load"])  # as an earlier release recorded them: no graph
    assert backend.run_graph(old) is None and backend.run_graph(new_run(backend)) is None


def test_logs_are_read_incrementally(backend: Backend) -> None:
    run_id, other = new_run(backend), new_run(backend)
    now = time.time()
    assert backend.add_logs(run_id, [(now, "INFO", None, f"line {i}") for i in range(3)]) == 3
    backend.add_logs(other, [(now, "INFO", None, "elsewhere")])
    first = backend.logs(run_id)
    assert [line.message for line in first] == ["line 0", "line 1", "line 2"]
    backend.add_logs(run_id, [(now, "ERROR", "load[1]", "line 3"), (now, "INFO", None, "line 4")])
    more = backend.logs(run_id, after_id=first[-1].id)
    assert [(line.level, line.task, line.message) for line in more] == [
        ("ERROR", "load[1]", "line 3"), ("INFO", None, "line 4")]
    assert backend.logs(run_id, after_id=more[-1].id) == []
    assert len(backend.logs(run_id, limit=2)) == 2


# ------------------------------------------------------------------ schema and failures


def _stamp_version(url: str, version: int) -> None:
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url[len("sqlite://"):])
        try:
            with conn:
                conn.execute("UPDATE schema_version SET version = ?", (version,))
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (version,))


def test_a_database_from_a_newer_flowspec_is_refused(backend_url: str) -> None:
    with open_backend(backend_url) as backend:
        assert backend.schema_version() == SCHEMA_VERSION
    with open_backend(backend_url) as backend:  # reopening an up-to-date database is fine
        assert backend.schema_version() == SCHEMA_VERSION
    _stamp_version(backend_url, 99)
    with pytest.raises(BackendError) as caught:
        open_backend(backend_url)
    assert "schema version 99" in str(caught.value) and "upgrade flowspec" in str(caught.value)


def test_committed_work_survives_kill_9_of_the_client(backend_url: str) -> None:
    script = (
        "import sys, time\n"
        "from flowspec.backend import open_backend\n"
        "b = open_backend(sys.argv[1])\n"
        "run = b.create_flow_run(None, {}, flow_name='f')\n"
        "b.add_logs(run.id, [(time.time(), 'INFO', None, 'kept')])\n"
        "print(run.id, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, backend_url], stdout=subprocess.PIPE,
                             text=True, env=child_env())
    run_id = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    with open_backend(backend_url) as backend:
        assert backend.get_run(run_id).state == SCHEDULED
        assert [line.message for line in backend.logs(run_id)] == ["kept"]


def test_unreachable_postgres_is_named_without_its_password() -> None:
    with pytest.raises(BackendError) as caught:
        open_backend("postgresql://flowspec:s3cret@127.0.0.1:1/db")
    assert "postgresql://flowspec@127.0.0.1:1/db" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_postgres_backend_reconnects_after_losing_its_connection(postgres_url: str) -> None:
    import psycopg

    with open_backend(postgres_url) as backend:
        run_id = new_run(backend)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = 'postgres' AND pid <> pg_backend_pid()")
        with pytest.raises(BackendError, match="postgresql://flowspec@127.0.0.1"):
            backend.get_run(run_id)
        assert backend.get_run(run_id).state == SCHEDULED


def test_a_file_that_is_not_a_database_is_a_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "flowspec.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(BackendError, match="cannot be used"):
        open_backend(str(path))


def test_default_backend_lives_in_a_private_flowspec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWSPEC_BACKEND", raising=False)
    monkeypatch.setenv("FLOWSPEC_HOME", str(tmp_path / "home"))
    with open_backend() as backend:
        assert backend.schema_version() == SCHEMA_VERSION
        run_id = new_run(backend)
        shown = backend.url
    assert shown == f"sqlite://{tmp_path / 'home' / 'flowspec.db'}"
    with open_backend(shown) as again:  # the URL in messages opens the same backend
        assert again.get_run(run_id) is not None
    assert (tmp_path / "home" / "flowspec.db").is_file()
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    with pytest.raises(BackendError, match="unsupported backend URL"):
        open_backend("mysql://x@y/z")


# ------------------------------------------------------------------------- concurrency

WORKER = """
import json, sys, time
from flowspec.backend import open_backend

url, name, labels = sys.argv[1], sys.argv[2], sys.argv[3:]
claims = []
with open_backend(url) as backend:
    deadline = time.time() + 40
    while time.time() < deadline:
        run = backend.claim_run(name, labels)
        if run is None:
            if not backend.list_runs(states=["Scheduled", "Queued"]):
                break
            continue
        start = time.time()  # after the claim committed: inside the real slot interval
        assert backend.set_run_state(run.id, "Running", expected_from={"Submitted"})
        time.sleep(0.003)
        end = time.time()  # before Success commits: still inside it
        assert backend.set_run_state(run.id, "Success", expected_from={"Running"})
        claims.append([run.id, start, end])
print(json.dumps(claims))
"""


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    # Ends sort before starts at the same instant: touching intervals do not overlap.
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.slow
def test_four_agent_processes_never_exceed_the_limit(backend: Backend, backend_url: str) -> None:
    backend.set_limit("dev", 2)
    # Two pairs of agents: within a pair they race for the same runs (claimed twice?); across
    # pairs they want different runs and compete only for the 'dev' slots (limit exceeded?).
    # 200 runs, not 40: with the PostgreSQL claim lock removed, 40 runs went over the limit in
    # only one try out of three to six; 200 do so every time.
    run_ids = {new_run(backend, "dev", "ab"[i % 2]) for i in range(200)}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, backend_url, f"agent{i}", "dev", "ab"[i % 2]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        for i in range(4)
    ]
    claims = []
    for worker in workers:
        out, err = worker.communicate(timeout=55)
        assert worker.returncode == 0, err
        claims += json.loads(out)
    claimed = [run_id for run_id, _, _ in claims]
    assert sorted(claimed) == sorted(run_ids)  # every run exactly once
    assert max_overlap([(start, end) for _, start, end in claims]) <= 2
    for run_id in run_ids:
        assert states(backend, run_id).count(SUBMITTED) == 1
        assert backend.get_run(run_id).state == SUCCESS


# ----------------------------------------------------------------------------- child flow runs
CHILDREN_STEPS = "def nums(n):\n    return list(range(n))\n\n\ndef ident(x):\n    return x\n"
CHILDREN_CHILD = ("version: 1\nname: kid\nparameters:\n  x: {type: integer}\ntasks:\n"
                  "  a: {run: steps:ident, with: {x: \"${{ params.x }}\"}}\n")
CHILDREN_PARENT = ("version: 1\nname: mum\nparameters:\n  n: {type: integer}\ntasks:\n"
                   "  nums: {run: steps:nums, with: {n: \"${{ params.n }}\"}}\n"
                   "  kids: {flow: kid.yaml, map: {x: \"${{ tasks.nums }}\"}}\n")


def _flowspec(url: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "flowspec", *args, "--backend", url], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _transactions(admin, name: str) -> int:
    """The transactions the server counted in database `name`, once no client is connected to it
    (a client's counts are written when its connection ends, before it leaves pg_stat_activity)."""
    deadline = time.monotonic() + 30
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type ="
                        " 'client backend'", (name,)).fetchone()[0]:
        assert time.monotonic() < deadline, "a client stayed connected"
        time.sleep(0.05)
    return admin.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                         (name,)).fetchone()[0]


def test_runs_show_of_a_parent_reads_its_child_runs_at_once_whatever_their_number(postgres_url: str,
                                                                                 tmp_path: Path) -> None:
    import uuid

    import psycopg

    (tmp_path / "steps.py").write_text(CHILDREN_STEPS)
    (tmp_path / "kid.yaml").write_text(CHILDREN_CHILD)
    (tmp_path / "mum.yaml").write_text(CHILDREN_PARENT)
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # in database `postgres`: not counted in `name`
        admin.execute(f"CREATE DATABASE {name}")
        url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
        try:
            shown, reads = {}, {}
            for n in (1, 40):
                _flowspec(url, "run", "mum.yaml", "--param", f"n={n}", cwd=tmp_path)
                parent = next(r["id"] for r in json.loads(_flowspec(url, "runs", "list", "--format", "json",
                                                                    "--flow", "mum", cwd=tmp_path)))
                before = _transactions(admin, name)
                shown[n] = json.loads(_flowspec(url, "runs", "show", parent, "--format", "json", cwd=tmp_path))
                reads[n] = _transactions(admin, name) - before
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    children = shown[40]["children"]
    assert [c["task"] for c in children] == [f"kids[{i}]" for i in range(40)]
    assert {c["state"] for c in children} == {"Success"} and set(children[0]) == {"run", "task", "state"}
    assert reads[40] == reads[1], reads  # not one more read per child


# ------------------------------------------------------------------------------ schedules


def test_a_clock_runs_first_history_entry_is_its_own_row_also_in_a_database_of_before(backend_url: str) -> None:
    from flowspec.backend.runs import CREATED_BY_SCHEDULE
    from flowspec.schedules import Clock

    now = time.time() - 100  # a pass made a while ago: its first run is due
    with open_backend(backend_url) as backend:
        flow, _ = backend.register_flow("p", "clocked", [], {"type": "local"}, "c1", "", {})
        backend.record_clocks(flow.id, [Clock(interval=60.0, start=0.0)], False, now)
        assert backend.scheduler_pass(now, 150.0) >= 2
        *_, first = backend.list_runs(states=[SCHEDULED])  # newest first: the earliest is last
        entry = (SCHEDULED, first.created, CREATED_BY_SCHEDULE)
        assert [(e.state, e.time, e.message) for e in backend.run_history(first.id)] == [entry]
        claimed = backend.claim_run("a", [])
        assert claimed.id == first.id and claimed.state == SUBMITTED
        assert [e.state for e in backend.run_history(first.id)] == [SCHEDULED, SUBMITTED]
        with backend._transaction() as tx:  # as the schema before kept it: the entry as a row of its own
            tx.run("DELETE FROM run_states WHERE run_id = ?", first.id)
            for at, state, message in ((first.created, SCHEDULED, CREATED_BY_SCHEDULE), (time.time(), SUBMITTED, None)):
                tx.run("INSERT INTO run_states (run_id, time, state, message) VALUES (?, ?, ?, ?)", first.id, at,
                       state, message)
            tx.run("UPDATE schema_version SET version = ?", SCHEMA_VERSION - 1)
    with open_backend(backend_url) as backend:
        assert backend.schema_version() == SCHEMA_VERSION
        assert [(e.state, e.time, e.message) for e in backend.run_history(first.id)][:1] == [entry]
        assert [e.state for e in backend.run_history(first.id)] == [SCHEDULED, SUBMITTED]


def test_a_role_refused_temporary_tables_schedules_all_the_same(postgres_url: str) -> None:
    """PostgreSQL copies a pass's runs in through a temporary table; a database may refuse its
    role those (`REVOKE TEMPORARY`): the pass then inserts them with statements, every run once."""
    import uuid

    import psycopg

    from flowspec.schedules import Clock

    suffix = uuid.uuid4().hex[:12]
    role, name = f"limited_{suffix}", f"test_{suffix}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"CREATE DATABASE {name} OWNER {role}")
        admin.execute(f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC, {role}")
    url = postgres_url.replace("//flowspec@", f"//{role}@").rsplit("/", 1)[0] + f"/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TEMP TABLE t (a INTEGER)")  # what the pass meets
        now = time.time()
        with open_backend(url) as backend:
            for i in range(3):
                flow, _ = backend.register_flow("p", f"clocked-{i}", [], {"type": "local"}, f"c{i}", "", {})
                backend.record_clocks(flow.id, [Clock(interval=60.0, start=float(i))], False, now)
            made = backend.scheduler_pass(now, 600.0)
            assert made == 30 and backend.scheduler_pass(now, 600.0) == 0
            runs = backend.list_runs(states=[SCHEDULED])
            assert len(runs) == 30 and len({(run.flow_name, run.scheduled_start) for run in runs}) == 30
            assert states(backend, runs[0].id) == [SCHEDULED]
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {role}")
