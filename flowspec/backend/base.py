"""The backend: flows, flow runs with their state history, task states, logs, agents and
per-label concurrency limits, in one SQL database.

`Backend` is one part per concern, each in a module of its own with its rows, rules and SQL:
flowspec.backend.flows, .runs, .tasks, .logs, .agents, .limits, .claims and .retention, standing on .core
(transactions, migrations) and .schema (the tables). A new concern is a new module: a `Store`
subclass added to `Backend`'s bases, and an entry appended to the schema's migrations.
Everything is re-exported here, so `from flowspec.backend.base import ...` names any of it.

SQLite and PostgreSQL run the same SQL (written with `?` placeholders); a dialect supplies only
a connection, transactions, column types and a way to make one critical section run one caller
at a time (`_serialize`). Every public method is one transaction, committed before it returns:
a client killed with `kill -9` loses nothing it was told was stored. Times are UTC epoch
seconds (floats).
"""
from __future__ import annotations

from flowspec.backend.agents import AGENT_SEEN_WINDOW_S, Agent, AgentStore, _agent, agent_reason
from flowspec.backend.claims import ClaimStore, SlotBlock, _HELD_BY, plan_claims, same_gist, slot_blocks
from flowspec.backend.core import NotFoundError, Store, Tx, _marks, labels_match, normalize_labels, redact_url
from flowspec.backend.flows import _FLOW_COLS, Flow, FlowStore, _flow
from flowspec.backend.kv import KVStore
from flowspec.backend.limits import ConcurrencyLimit, LimitStore
from flowspec.backend.logs import _LOG_COLS, LogLine, LogStore
from flowspec.backend.result_stores import ResultStoreRegistry
from flowspec.backend.retention import ActiveRunsError, FlowDeletion, RetentionStore
from flowspec.backend.runs import (
    ACTIVE_STATES, CANCELLED, CANCELLING, FAILED, FINAL_STATES, HEARTBEAT_TIMEOUT_S, LOST_GRACE_S, QUEUED, RUN_STATES,
    RUNNING, SCHEDULED, SUBMITTED, SUCCESS, WAITING_STATES, _RUN_COLS, FlowRun, RunStore, StateEvent, _run,
    check_state, lost_after)
from flowspec.backend.schedules import ScheduleStore
from flowspec.backend.secret_store import SecretStore
from flowspec.backend.schema import MIGRATIONS, SCHEMA_VERSION
from flowspec.backend.tasks import _TASK_COLS, TASK_FINAL_STATES, TaskRunState, TaskStore


class Backend(FlowStore, RunStore, ClaimStore, TaskStore, LogStore, AgentStore, LimitStore, RetentionStore,
              KVStore, SecretStore, ScheduleStore, ResultStoreRegistry):
    """Flows, flow runs, states, logs, agents and concurrency limits, in one SQL database.

    Subclasses supply the dialect: `types` for the schema, `_transaction`, `_serialize` and
    `close`. Use as a context manager or call `close()`.
    """


__all__ = [
    "ACTIVE_STATES", "AGENT_SEEN_WINDOW_S", "ActiveRunsError", "Agent", "FlowDeletion", "TASK_FINAL_STATES",
    "HEARTBEAT_TIMEOUT_S", "Backend", "CANCELLED", "CANCELLING",
    "ConcurrencyLimit", "FAILED", "FINAL_STATES", "Flow", "FlowRun", "LogLine", "NotFoundError",
    "QUEUED", "RUNNING", "RUN_STATES", "SCHEDULED", "SUBMITTED", "SUCCESS", "StateEvent",
    "TaskRunState", "WAITING_STATES", "agent_reason", "labels_match", "plan_claims", "redact_url",
]
# Also importable from here, as before the split: the schema, the rows' SQL columns and
# converters, and the rules the parts share.
_REEXPORTED = (
    _HELD_BY, _FLOW_COLS, _LOG_COLS, _RUN_COLS, _TASK_COLS, _agent, _flow, _marks, _run, LOST_GRACE_S, MIGRATIONS,
    SCHEMA_VERSION, SlotBlock, Store, Tx, check_state, lost_after, normalize_labels, same_gist, slot_blocks,
    AgentStore, ClaimStore, FlowStore, KVStore, LimitStore, LogStore, RetentionStore, RunStore, ScheduleStore, SecretStore,
    TaskStore,
)
