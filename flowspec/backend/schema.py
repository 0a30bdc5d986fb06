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
        # The KV store (JSON text per key, last writer wins) and the secret store (Fernet
        # tokens: the backend never holds a secret in clear).
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated {float} NOT NULL)",
        "CREATE TABLE secrets (name TEXT PRIMARY KEY, token TEXT NOT NULL, updated {float} NOT NULL)",
    ],
    [
        # Schedules: the clocks of each flow's latest version, the next time each has not yet
        # planned, and paused flows. A scheduled run names its clock; the unique index makes a
        # run per flow, clock and time exactly once whatever the number of schedulers (runs that
        # no clock made have a NULL clock, and NULLs never collide).
        "ALTER TABLE flow_runs ADD COLUMN scheduled_start {float}",
        "ALTER TABLE flow_runs ADD COLUMN clock TEXT",
        "CREATE UNIQUE INDEX flow_runs_by_clock ON flow_runs (clock, scheduled_start)",
        "CREATE TABLE clocks (flow_id {bigint} NOT NULL REFERENCES flows (id), position INTEGER NOT NULL,"
        " project TEXT NOT NULL, flow_name TEXT NOT NULL, clock_key TEXT NOT NULL, definition TEXT NOT NULL,"
        " catchup INTEGER NOT NULL, next_time {float} NOT NULL, PRIMARY KEY (flow_id, position))",
        "CREATE INDEX clocks_by_next ON clocks (next_time)",
        "CREATE TABLE schedule_pauses (project TEXT NOT NULL, flow_name TEXT NOT NULL, paused {float} NOT NULL,"
        " PRIMARY KEY (project, flow_name))",
    ],
    [
        # The reads of `flowspec ui` (flowspec.ui.queries): the runs list newest first, alone and
        # by each filter; the changes since a time (its live updates); a task's states (heatmaps,
        # timeline). IF NOT EXISTS: a UI of an earlier release created them itself. Logs get no
        # index by level or task: the two made every log line written 40 % to 2.3 times dearer,
        # and a filtered log page reads the run's lines through logs_by_run (docs/ui.md, Scale).
        "CREATE INDEX IF NOT EXISTS ui_flow_runs_by_created ON flow_runs (created, id)",
        "CREATE INDEX IF NOT EXISTS ui_flow_runs_by_flow ON flow_runs (flow_name, created, id)",
        "CREATE INDEX IF NOT EXISTS ui_flow_runs_by_state_created ON flow_runs (state, created, id)",
        "CREATE INDEX IF NOT EXISTS ui_flow_runs_by_agent ON flow_runs (agent, created, id)",
        "CREATE INDEX IF NOT EXISTS ui_flow_runs_by_flow_id ON flow_runs (flow_id, created, id)",
        "CREATE INDEX IF NOT EXISTS ui_flow_runs_by_updated ON flow_runs (updated)",
        "CREATE INDEX IF NOT EXISTS ui_task_states_by_task ON task_states (run_id, task, map_index, id)",
        # The task graph of a run whose flow is not registered (`flowspec run FILE`): per task, the
        # tasks it waits for, as JSON [[upstream, kind], ...] (kinds as flowspec.graph.edges).
        "ALTER TABLE run_tasks ADD COLUMN upstream TEXT",
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
    [
        # The result stores runs kept results in (settings as JSON, flowspec.backend.result_stores):
        # what `flowspec results prune` and the deletion of runs and flows look through.
        "CREATE TABLE result_stores (store TEXT PRIMARY KEY, first_used {float} NOT NULL, last_used {float} NOT NULL)",
    ],
    [
        # A run's task runs counted by state (flowspec.backend.task_counts), kept by every writer of
        # task states in its own transaction; and the counts of the runs recorded before, summed
        # as a batch is (each task run's latest row, by MAX(id)).
        "CREATE TABLE task_counts (run_id TEXT NOT NULL REFERENCES flow_runs (id), task TEXT NOT NULL,"
        " kind INTEGER NOT NULL, state TEXT NOT NULL, n {bigint} NOT NULL, attempts {bigint} NOT NULL,"
        " last_time {float}, first_id {bigint}, latest_id {bigint}, PRIMARY KEY (run_id, task, kind, state))",
        "CREATE TABLE task_count_marks (run_id TEXT PRIMARY KEY REFERENCES flow_runs (id), counted {bigint} NOT NULL)",
        "INSERT INTO task_counts (run_id, task, kind, state, n, attempts, last_time, first_id, latest_id)"
        " SELECT t.run_id, t.task, CASE WHEN t.map_index IS NULL THEN 0 ELSE 1 END, t.state, COUNT(*), SUM(t.attempt),"
        " MAX(t.time), MIN(k.first_id), MAX(t.id)"
        " FROM (SELECT MAX(id) AS id, MIN(id) AS first_id FROM task_states GROUP BY run_id, task, map_index) k"
        " JOIN task_states t ON t.id = k.id"
        " GROUP BY t.run_id, t.task, CASE WHEN t.map_index IS NULL THEN 0 ELSE 1 END, t.state",
        "INSERT INTO task_count_marks (run_id, counted) SELECT run_id, MAX(id) FROM task_states GROUP BY run_id",
    ],
    [
        # A run a clock made has its first history entry in its own row (RunStore.run_history):
        # a scheduler pass writes one row per run, not two. Runs that no agent took are indexed
        # by agent no more (every Scheduled run a pass makes paid for that entry).
        "DELETE FROM run_states WHERE state = 'Scheduled' AND message = 'created by the flow''s schedule'"
        " AND run_id IN (SELECT id FROM flow_runs WHERE clock IS NOT NULL)",
        "DROP INDEX IF EXISTS ui_flow_runs_by_agent",
        "CREATE INDEX ui_flow_runs_by_agent ON flow_runs (agent, created, id) WHERE agent IS NOT NULL",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
