"""The reads the UI needs that the Backend has no method for, on SQLite and PostgreSQL alike.

Each function takes the backend and runs one read transaction through its `_transaction`, with
SQL written with `?` placeholders as the backend's own. Pages are keyset-paginated (never OFFSET,
never a full count): a page costs the same on the 50th page as on the first.

The indexes these reads need are the backend's (flowspec.backend.schema): the UI writes no
DDL, so a read-only UI leaves the database as it found it.
"""
from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from flowspec.backend import FlowRun

RUN_COLS = ("id, flow_id, flow_name, state, labels, parameters, agent, created, updated, heartbeat, exit_code,"
            " message, runner, heartbeat_timeout, scheduled_start")  # FlowRun's fields, in its order
LOG_COLS = "id, run_id, time, level, task, message"


def _is_postgres(backend) -> bool:
    return backend.url.split("://", 1)[0].lower() in ("postgresql", "postgres")


def _like(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def to_run(row: Sequence[Any]) -> FlowRun:
    fields = list(row)
    fields[4], fields[5] = tuple(json.loads(row[4])), json.loads(row[5])
    return FlowRun(*fields)


# ------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class RunFilter:
    """What the runs list is narrowed to; empty fields do not filter."""

    flow: str | None = None
    states: tuple[str, ...] = ()
    label: str | None = None
    agent: str | None = None
    flow_id: int | None = None
    since: float | None = None
    until: float | None = None
    parent: str | None = None  # the child flow runs of this run (`runs list --parent`)

    def where(self, scan: bool = False) -> tuple[list[str], list[Any]]:
        """The WHERE clauses and their parameters; `scan` (SQLite): walk the runs newest first and
        look each up in run_links, rather than gather the parent's children and sort them all."""
        where: list[str] = []
        params: list[Any] = []
        simple = (("flow_name = ?", self.flow), ("agent = ?", self.agent), ("flow_id = ?", self.flow_id),
                  ("created >= ?", self.since), ("created < ?", self.until))
        for clause, value in simple:
            if value is not None:
                where.append(clause)
                params.append(value)
        if self.states:
            where.append(f"state IN ({', '.join('?' for _ in self.states)})")
            params += self.states
        if self.parent is not None:
            where.append("EXISTS (SELECT 1 FROM run_links l WHERE l.run_id = flow_runs.id AND l.parent_run = ?)"
                         if scan else "id IN (SELECT run_id FROM run_links WHERE parent_run = ?)")
            params.append(self.parent)
        if self.label is not None:
            # labels are stored as a JSON list: match the label's own JSON string, quotes included
            where.append("labels LIKE ? ESCAPE '\\'")
            params.append(_like(json.dumps(self.label)))
        return where, params


def matches(flt: RunFilter, run: FlowRun, parent: str | None = None) -> bool:
    """Does `run` (whose parent run is `parent`) pass the filter? (For runs pushed live, read
    one at a time.)"""
    checks = ((flt.flow, run.flow_name), (flt.agent, run.agent), (flt.flow_id, run.flow_id), (flt.parent, parent))
    return (all(want is None or want == have for want, have in checks)
            and (not flt.states or run.state in flt.states)
            and (flt.label is None or flt.label in run.labels)
            and (flt.since is None or run.created >= flt.since)
            and (flt.until is None or run.created < flt.until))


@dataclass
class RunPage:
    runs: list[FlowRun]
    next_cursor: str | None = None
    extra: dict = field(default_factory=dict)


def encode_cursor(run: FlowRun) -> str:
    return f"{run.created!r}_{run.id}"


def decode_cursor(text: str) -> tuple[float, str]:
    """`created_id` back to its parts; ValueError for anything else."""
    created, _, run_id = text.partition("_")
    if not run_id:
        raise ValueError(text)
    return float(created), run_id


def runs_page(backend, flt: RunFilter, after: str | None = None, size: int = 50) -> RunPage:
    """Runs newest first (by created, then id), `size` of them after the cursor `after`."""
    cursor = decode_cursor(after) if after else None
    with backend._transaction(write=False) as tx:
        scan = flt.parent is not None and not _is_postgres(backend) and _many_children(tx, flt.parent)
        if len(flt.states) > 1:
            # One indexed walk per state, merged: `state IN (...)` would sort every match
            walks = [_page_rows(tx, replace(flt, states=(state,)), cursor, size + 1, scan) for state in flt.states]
            rows = list(heapq.merge(*walks, key=lambda r: (r[7], r[0]), reverse=True))[:size + 1]
        else:
            rows = _page_rows(tx, flt, cursor, size + 1, scan)
    runs = [to_run(row) for row in rows[:size]]
    return RunPage(runs, encode_cursor(runs[-1]) if len(rows) > size else None)


MANY_CHILDREN = 1000  # past this many child runs, a page of them is found by walking the runs in order


def _many_children(tx, parent: str) -> bool:
    """Has `parent` more than MANY_CHILDREN child runs? (Counted in run_links_by_parent, up to that.)"""
    return tx.one("SELECT COUNT(*) FROM (SELECT 1 FROM run_links WHERE parent_run = ? LIMIT ?) c",
                  parent, MANY_CHILDREN + 1)[0] > MANY_CHILDREN


def _page_rows(tx, flt: RunFilter, cursor: tuple[float, str] | None, limit: int, scan: bool = False) -> list[tuple]:
    where, params = flt.where(scan)
    if cursor:
        where.append("(created < ? OR (created = ? AND id < ?))")
        params += [cursor[0], cursor[0], cursor[1]]
    return tx.all(f"SELECT {RUN_COLS} FROM flow_runs WHERE {' AND '.join(where) or '1 = 1'}"
                  " ORDER BY created DESC, id DESC LIMIT ?", *params, limit)


def runs_updated_since(backend, since: float, limit: int = 500) -> list[FlowRun]:
    """Runs changed after `since` (their `updated` time), oldest change first."""
    with backend._transaction(write=False) as tx:
        rows = tx.all(f"SELECT {RUN_COLS} FROM flow_runs WHERE updated > ? ORDER BY updated LIMIT ?", since, limit)
    return [to_run(row) for row in rows]


def latest_update(backend) -> float:
    with backend._transaction(write=False) as tx:
        return (tx.one("SELECT MAX(updated) FROM flow_runs") or (None,))[0] or 0.0


def any_lost(backend, now: float) -> bool:
    """Might an active run be lost (no heartbeat for its timeout)? One indexed read, where
    Backend.mark_lost_runs reads every active run whole: the UI asks it only when this says so."""
    from flowspec.backend.runs import ACTIVE_STATES, HEARTBEAT_TIMEOUT_S

    states = sorted(ACTIVE_STATES)
    with backend._transaction(write=False) as tx:
        return tx.one(f"SELECT 1 FROM flow_runs WHERE state IN ({', '.join('?' for _ in states)})"
                      " AND COALESCE(heartbeat, updated) < ? - CASE WHEN heartbeat_timeout > 0 THEN heartbeat_timeout"
                      " ELSE ? END LIMIT 1", *states, now, HEARTBEAT_TIMEOUT_S) is not None


# ------------------------------------------------------------------------------ run links


CHILD_PAGE = 50


def child_runs_page(backend, run_id: str, after: int = 0, size: int = CHILD_PAGE) -> tuple[list[dict], int | None]:
    """The child flow runs of a run (its subflow tasks'), in creation order, `size` of them
    after the creation number `after` (keyset), and the number to ask after for the next page."""
    with backend._transaction(write=False) as tx:
        # Few children: gathered by run_links_by_parent and sorted; many (a map of thousands of
        # subflows): the runs walked in creation order from the page's start, each looked up
        # (SQLite takes CROSS JOIN's order as given; PostgreSQL plans either by its statistics)
        many = _many_children(tx, run_id)
        rows = tx.all("SELECT r.seq, r.id, l.parent_task, r.state, r.flow_name FROM "
                      + ("flow_runs r CROSS JOIN run_links l" if many else "run_links l CROSS JOIN flow_runs r")
                      + " WHERE r.id = l.run_id AND l.parent_run = ? AND r.seq > ? ORDER BY r.seq LIMIT ?",
                      run_id, after, size + 1)
    children = [{"run": r[1], "task": r[2], "state": r[3], "flow": r[4]} for r in rows[:size]]
    return children, (int(rows[size - 1][0]) if len(rows) > size else None)


def link_json(backend, run_id: str) -> dict:
    """Backend.run_link_json (what `runs show --format json` says of a run's links), with its
    child runs' states read in one join rather than a read per child (20 000 children: 2 s)."""
    link = backend.run_link(run_id) or {}
    with backend._transaction(write=False) as tx:
        rows = tx.all("SELECT l.run_id, l.parent_task, r.state FROM run_links l JOIN flow_runs r ON r.id = l.run_id"
                      " WHERE l.parent_run = ? ORDER BY r.seq", run_id)
    return {"spec_path": link.get("spec_path"), "restart_of": link.get("restart_of"), "restart": link.get("notes"),
            "parent_run": link.get("parent_run"), "parent_task": link.get("parent_task"),
            "children": [{"run": r[0], "task": r[1], "state": r[2]} for r in rows]}


def restart_choices(backend, run_id: str) -> tuple[list[str], str | None]:
    """A finished run's tasks in the order they first ran (each a `--from` of its restart), and
    the first that failed: from the run's counts and one indexed read, without summing its children."""
    tasks = [task for task, _ in backend.task_firsts(run_id)]
    with backend._transaction(write=False) as tx:
        failed = tx.one("SELECT task FROM task_states WHERE run_id = ? AND state IN ('Failed', 'TimedOut',"
                        " 'TriggerFailed') ORDER BY id LIMIT 1", run_id)
    return tasks, failed[0] if failed else None


def restarts_of(backend, run_id: str) -> list[dict]:
    """The runs that restart this one (`flowspec runs restart`), oldest first; not their child
    flow runs, which carry the same link. (run_links has no index by `restart_of`: this reads
    its rows, one per run that has links.)"""
    with backend._transaction(write=False) as tx:
        rows = tx.all("SELECT r.id, r.state FROM run_links l JOIN flow_runs r ON r.id = l.run_id"
                      " WHERE l.restart_of = ? AND l.parent_run IS NULL ORDER BY r.seq", run_id)
    return [{"run": r[0], "state": r[1]} for r in rows]


# ------------------------------------------------------------------------------------ flows


def flow_versions(backend, project: str, name: str) -> list[dict]:
    """Every version of a flow, newest first, with how many runs each had."""
    with backend._transaction(write=False) as tx:
        rows = tx.all("SELECT f.id, f.version, f.created, f.spec_checksum, f.labels,"
                      " (SELECT COUNT(*) FROM flow_runs r WHERE r.flow_id = f.id)"
                      " FROM flows f WHERE f.project = ? AND f.name = ? ORDER BY f.version DESC", project, name)
    return [{"id": r[0], "version": r[1], "registered": r[2], "checksum": r[3], "labels": json.loads(r[4]),
             "runs": int(r[5])} for r in rows]


def run_counts_by_flow(backend) -> dict[str, int]:
    with backend._transaction(write=False) as tx:
        return {name: int(n) for name, n in tx.all("SELECT flow_name, COUNT(*) FROM flow_runs GROUP BY flow_name")}


def runs_by_agent(backend) -> dict[str, dict[str, int]]:
    """Per agent, its runs counted by state."""
    out: dict[str, dict[str, int]] = {}
    with backend._transaction(write=False) as tx:
        for agent, state, n in tx.all("SELECT agent, state, COUNT(*) FROM flow_runs WHERE agent IS NOT NULL"
                                      " GROUP BY agent, state"):
            out.setdefault(agent, {})[state] = int(n)
    return out


def waiters(backend, labels: Iterable[str]) -> dict[str, list[str]]:
    """Per limited label, the waiting runs (Scheduled or Queued) that carry it, oldest first."""
    wanted = set(labels)
    out: dict[str, list[str]] = {label: [] for label in wanted}
    with backend._transaction(write=False) as tx:
        rows = tx.all("SELECT id, labels FROM flow_runs WHERE state IN ('Scheduled', 'Queued') ORDER BY seq")
    for run_id, text in rows:
        for label in set(json.loads(text)) & wanted:
            out[label].append(run_id)
    return out


# ------------------------------------------------------------------------------ task states


def last_task_state_id(backend, run_id: str) -> int:
    with backend._transaction(write=False) as tx:
        return (tx.one("SELECT MAX(id) FROM task_states WHERE run_id = ?", run_id) or (None,))[0] or 0


def children_states(backend, run_id: str, task: str) -> list[tuple[int, str]]:
    """(map_index, latest state) of each mapped child of `task`, by index."""
    with backend._transaction(write=False) as tx:
        return tx.all("SELECT t.map_index, t.state FROM task_states t JOIN (SELECT MAX(id) AS id FROM task_states"
                      " WHERE run_id = ? AND task = ? AND map_index IS NOT NULL GROUP BY map_index) l"
                      " ON t.id = l.id ORDER BY t.map_index", run_id, task)


def first_times(backend, run_id: str) -> dict[str, float]:
    """Per task, the time of its first recorded state (its id kept with the run's counts, then a
    row a task)."""
    ids = [first for _, first in backend.task_firsts(run_id)]
    if not ids:
        return {}
    with backend._transaction(write=False) as tx:
        return {task: float(at) for task, at in tx.all(
            f"SELECT task, time FROM task_states WHERE id IN ({', '.join('?' for _ in ids)})", *ids)}


def heat_codes(rows: list[tuple[int, str]]) -> dict:
    """(map_index, state) rows, by index, as the heatmap takes them: a legend of states, one
    character per child (its state's position in the legend) and the indexes unless 0..n-1."""
    legend: dict[str, int] = {}
    codes = "".join([chr(48 + legend.setdefault(state, len(legend))) for _, state in rows])
    dense = all(index == k for k, (index, _) in enumerate(rows))
    return {"states": list(legend), "codes": codes, "indexes": None if dense else [index for index, _ in rows]}


def task_spans(summary: list, firsts: dict[str, float]) -> list[tuple[str, float, float, int]]:
    """Per task of `summary` (Backend.task_summary), in its order: (task, first time, last time,
    mapped children), from the sums the task table made: no second pass over the children."""
    out = []
    for task, own, groups in summary:
        last = max([g[3] for g in groups] + ([own.time] if own is not None else []))
        out.append((task, firsts.get(task, last), float(last), sum(g[1] for g in groups)))
    return out


def child_names(backend, run_id: str, task: str) -> list | str | None:
    """The names of `task`'s runs (its `run_name`): a list by map index (None: not named) for
    a mapped task, a string for an unmapped one, None when it has no `run_name`. One row read,
    however many children (see Backend.add_run_names)."""
    with backend._transaction(write=False) as tx:
        row = tx.one("SELECT names FROM task_run_names WHERE run_id = ? AND task = ? LIMIT 1", run_id, task)
    return None if row is None else json.loads(row[0])


def child_spans(backend, run_id: str, task: str, after: int = -1, size: int = 200,
                indexes: list[int] | None = None) -> list[tuple[int, float, float, str]]:
    """Per mapped child of `task` with index > `after` (or, given `indexes`, each of those):
    (index, first time, last time, latest state)."""
    if indexes is not None and not indexes:
        return []
    which, params = ("map_index > ?", [after]) if indexes is None else \
        (f"map_index IN ({', '.join('?' for _ in indexes)})", list(indexes))
    with backend._transaction(write=False) as tx:
        rows = tx.all("SELECT map_index, MIN(time), MAX(time), MAX(id) FROM task_states WHERE run_id = ? AND task = ?"
                      f" AND {which} GROUP BY map_index ORDER BY map_index LIMIT ?", run_id, task, *params, size)
        ids = [r[3] for r in rows]
        states = dict(tx.all(f"SELECT id, state FROM task_states WHERE id IN ({', '.join('?' for _ in ids)})",
                             *ids)) if ids else {}
    return [(int(r[0]), float(r[1]), float(r[2]), states.get(r[3], "?")) for r in rows]


# ------------------------------------------------------------------------------------- logs


@dataclass(frozen=True)
class LogFilter:
    level: str | None = None
    task: str | None = None  # a task's own lines and its children's (`task[3]`), or one child's
    search: str | None = None

    def where(self, postgres: bool) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.level:
            where.append("level = ?")
            params.append(self.level.upper())
        if self.task:
            if "[" in self.task:
                where.append("task = ?")
                params.append(self.task)
            else:
                where.append("(task = ? OR task LIKE ? ESCAPE '\\')")
                params += [self.task, self.task.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "[%"]
        if self.search:
            # any case, of ASCII letters, on both: SQLite's LIKE, and PostgreSQL's ILIKE in the "C"
            # collation (twice as fast on a million lines as in the database's own locale)
            where.append(("message COLLATE \"C\" ILIKE" if postgres else "message LIKE") + " ? ESCAPE '\\'")
            params.append(_like(self.search))
        return where, params


def log_page(backend, run_id: str, flt: LogFilter, after: int = 0, before: int | None = None,
             size: int = 500) -> tuple[list[tuple], bool]:
    """Up to `size` log rows (id, run_id, time, level, task, message) matching `flt`: after id
    `after` oldest first, or with `before` the newest ones before it (then still oldest first).
    Also whether more match beyond the page."""
    where, params = flt.where(_is_postgres(backend))
    where = ["run_id = ?", *where]
    params = [run_id, *params]
    if before is not None:
        where.append("id < ?")
        params.append(before)
        order = "DESC"
    else:
        where.append("id > ?")
        params.append(after)
        order = "ASC"
    with backend._transaction(write=False) as tx:
        rows = tx.all(f"SELECT {LOG_COLS} FROM logs WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
                      *params, size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return (rows[::-1] if order == "DESC" else rows), more


def failed_traceback(backend, run_id: str) -> tuple | None:
    """The first ERROR log line that carries a traceback, else the first ERROR line."""
    with backend._transaction(write=False) as tx:
        row = tx.one(f"SELECT {LOG_COLS} FROM logs WHERE run_id = ? AND level = 'ERROR'"
                     " AND message LIKE '%Traceback (most recent call last)%' ORDER BY id LIMIT 1", run_id)
        return row or tx.one(f"SELECT {LOG_COLS} FROM logs WHERE run_id = ? AND level = 'ERROR' ORDER BY id LIMIT 1",
                             run_id)
