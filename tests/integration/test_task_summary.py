"""`Backend.task_summary`: a run's tasks with its mapped children counted by state in the
database, on SQLite and PostgreSQL alike (the query `runs show` makes for a large map)."""
from __future__ import annotations

from flowspec.backend.base import Backend


def test_children_are_counted_by_their_latest_state(backend: Backend) -> None:
    run_id = backend.create_flow_run(None, {}, (), "Running", flow_name="f").id
    rows = [("setup", None, "Running", 1, 1.0, None), ("setup", None, "Success", 1, 2.0, None)]
    for i in range(5):
        rows.append(("load", i, "Running", 1, 3.0 + i, None))
    rows += [("load", 1, "Retrying", 1, 9.0, "boom"), ("load", 1, "Running", 2, 10.0, None),
             ("load", 1, "Failed", 2, 11.0, "boom"), ("load", 0, "Success", 1, 12.0, None),
             ("load", 2, "Success", 1, 13.0, None), ("report", None, "Running", 1, 14.0, None),
             ("cancelled", None, "Cancelled", 0, 15.0, "the flow run was cancelled"),
             ("cancelled", 0, "Running", 1, 14.5, None)]
    backend.add_task_states(run_id, rows)
    summary = backend.task_summary(run_id)
    # per state: children, attempts; the latest time over a task's states is its children's latest
    assert [(task, own and (own.state, own.attempt), [g[:3] for g in groups], max((g[3] for g in groups), default=None))
            for task, own, groups in summary] == [
        ("setup", ("Success", 1), [], None),
        ("load", None, [("Failed", 1, 2), ("Running", 2, 2), ("Success", 2, 2)], 13.0),
        ("report", ("Running", 1), [], None),
        ("cancelled", ("Cancelled", 0), [("Running", 1, 1)], 14.5),
    ]
    assert backend.task_summary("no-such-run") == []


def test_a_follower_reads_each_new_state_once(backend: Backend) -> None:
    run_id = backend.create_flow_run(None, {}, (), "Running", flow_name="f").id
    other = backend.create_flow_run(None, {}, (), "Running", flow_name="g").id
    backend.add_task_states(run_id, [("a", None, "Running", 1, 1.0, None), ("a", None, "Success", 1, 2.0, None)])
    first, cursor = backend.task_states_since(run_id)
    assert [(t.task, t.state) for t in first] == [("a", "Running"), ("a", "Success")]
    backend.add_task_states(other, [("x", None, "Running", 1, 3.0, None)])
    backend.add_task_states(run_id, [("b", 0, "Running", 1, 4.0, None)])
    new, cursor = backend.task_states_since(run_id, cursor)
    assert [(t.task, t.map_index, t.state) for t in new] == [("b", 0, "Running")]
    assert backend.task_states_since(run_id, cursor) == ([], cursor)
