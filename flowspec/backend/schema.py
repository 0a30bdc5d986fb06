"""The backend's schema: one entry per version, applied in order by `Store._migrate`.

A concern that needs tables of its own appends an entry here; a released entry is never edited.
"""
from __future__ import annotations

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
    [
        # The tasks of a run's flow, written when it starts: a run that ends early (cancelled,
        # lost) still shows the tasks it never reached. `flowspec agent stop` asks an agent to stop.
        "CREATE TABLE run_tasks (run_id TEXT NOT NULL REFERENCES flow_runs (id), position INTEGER NOT NULL,"
        " task TEXT NOT NULL)",
        "CREATE INDEX run_tasks_by_run ON run_tasks (run_id, position)",
        "ALTER TABLE agents ADD COLUMN stop_requested {float}",
    ],
    [
        # The names of a task's runs when it has a `run_name` (one row per task: JSON, a string for
        # an unmapped task, a list by map index for a mapped one), and a run's `outputs` (JSON).
        "CREATE TABLE task_run_names (run_id TEXT NOT NULL REFERENCES flow_runs (id), task TEXT NOT NULL,"
        " names TEXT NOT NULL)",
        "CREATE INDEX task_run_names_by_run ON task_run_names (run_id, task)",
        "CREATE TABLE run_outputs (run_id TEXT PRIMARY KEY REFERENCES flow_runs (id), outputs TEXT NOT NULL)",
    ],
    [
        # Where a `flowspec run FILE` run came from (the spec's path and checksum), so that
        # `flowspec runs restart` can run it again, and what a restart was of and what it reused
        # or ran again and why (`notes`: JSON).
        # A child flow run of a `flow:` task names its parent run and task (`per_region[2]`).
        "CREATE TABLE run_links (run_id TEXT PRIMARY KEY REFERENCES flow_runs (id), spec_path TEXT,"
        " spec_checksum TEXT, restart_of TEXT, notes TEXT, parent_run TEXT, parent_task TEXT)",
        "CREATE INDEX run_links_by_parent ON run_links (parent_run)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
