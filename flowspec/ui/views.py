"""What the pages show, as plain data: the same dicts feed the templates and the JSON twins.

The JSON of runs and of a run has the shapes of `flowspec runs list/show --format json`, and is
masked as they mask it (flowspec.masking): the values of parameters named like credentials,
and those values wherever they appear in messages and log lines.
"""
from __future__ import annotations

from typing import Any

from flowspec.masking import MASK


def masked(value: Any, secret: bool = False) -> Any:
    """Parameters with every value under a credential-like name replaced by MASK (nested
    mappings too: a flow's storage settings)."""
    from flowspec.masking import is_secret

    if secret:
        return MASK
    if isinstance(value, dict):
        return {k: masked(v, isinstance(k, str) and (is_secret(k) or is_secret(k, False))) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def masked_spec(text: str) -> str:
    """A registered spec's text with the values of credential-like keys (and the defaults of
    credential-like parameters) replaced by MASK wherever they occur."""
    import yaml

    from flowspec.masking import is_secret

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    values: set[str] = set()

    def walk(node: Any, secret: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, secret or (isinstance(k, str) and (is_secret(k) or is_secret(k, False))))
        elif isinstance(node, list):
            for v in node:
                walk(v, secret)
        elif secret and node is not None and len(str(node)) >= 3 and "${{" not in str(node):
            values.add(str(node))
    walk(data, False)
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def run_dict(run) -> dict:
    from flowspec.commands.runs import run_json

    data = run_json(run)
    data["parameters"] = masked(data["parameters"])
    return data


def text_mask(run):
    """A function masking a text of this run (a message, a log line) as `runs show` does."""
    from flowspec.masking import mask_text, secret_values

    values = secret_values(run.parameters)
    return lambda text: mask_text(text, values)


class RunCache:
    """Values computed from a run's task states, kept until a new task state is recorded: a
    finished run of many children is summed once, and a live page's stream re-sums only
    when something changed. Requests that want the same value at once (a page's tasks,
    timeline and heatmaps arrive together) wait for the one computing it."""

    def __init__(self, size: int = 64) -> None:
        import threading
        from collections import OrderedDict

        self._lock, self._size = threading.Lock(), size
        self._items: OrderedDict = OrderedDict()
        self._busy: dict = {}  # key → the lock held while it is computed

    def get(self, backend, run_id: str, kind: str, compute):
        import threading

        from flowspec.ui.queries import last_task_state_id

        version = last_task_state_id(backend, run_id)
        key = (run_id, kind)
        with self._lock:
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:
            with self._lock:
                hit = self._items.get(key)
                if hit is not None and hit[0] >= version:
                    self._items.move_to_end(key)
                    return hit[1]
            value = compute()
            with self._lock:
                self._items[key] = (version, value)
                while len(self._items) > self._size:
                    self._busy.pop(self._items.popitem(last=False)[0], None)
        return value


CACHE = RunCache()


def summary(backend, run_id: str) -> list:
    """Backend.task_summary of the run, read once until a new task state comes (the task
    table, the graph, the timeline and the live stream share it)."""
    return CACHE.get(backend, run_id, "summary", lambda: backend.task_summary(run_id))


def task_rows(backend, run) -> list[dict]:
    """`runs show`'s task rows: one per task, a mapped task's children counted by state."""
    rows = CACHE.get(backend, run.id, "tasks", lambda: _task_rows(backend, run.id))
    mask = text_mask(run)
    return [row | {"message": mask(row["message"])} if row["message"] else row for row in rows]


def _task_rows(backend, run_id: str) -> list[dict]:
    from flowspec.commands.runs import _summary

    rows = []
    names = backend.run_names(run_id)
    for t in _summary(summary(backend, run_id)):
        row = {"task": t.task, "map_index": t.map_index, "state": t.state, "attempt": t.attempt, "time": t.time,
               "message": t.message}
        if (t.task, t.map_index) in names:  # as `runs show --format json`
            row["run_name"] = names[t.task, t.map_index]
        if t.children:
            row["children"] = t.children
        rows.append(row)
    return rows


def restart_from(backend, run) -> dict | None:
    """For a finished run, what its restart form offers: its tasks (each a `--from` choice) and
    the first that failed (chosen to begin with); None for a run that has not finished."""
    from flowspec.ui.actions import FINAL
    from flowspec.ui.queries import restart_choices

    if run.state not in FINAL:
        return None
    tasks, failed = CACHE.get(backend, run.id, "restart", lambda: restart_choices(backend, run.id))
    if not tasks:  # it ended before any task ran (cancelled while it waited): its flow's tasks
        flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
        spec = _compiled(flow.id, flow.spec_text) if flow is not None and flow.spec_text else None
        recorded = recorded_graph(backend, run.id, flow)
        tasks = list(spec.tasks) if spec is not None else (recorded[0] if recorded else [])
    return {"tasks": tasks, "failed": failed}


def history(backend, run) -> list[dict]:
    mask = text_mask(run)
    return [{"time": e.time, "state": e.state, "message": mask(e.message)} for e in backend.run_history(run.id)]


def run_detail(backend, run, tasks: bool = True) -> dict:
    """The JSON of `flowspec runs show RUN --format json`; for the page (`tasks` False) without
    its tasks (None: they come after the page) and with its links as `run_links` shows them
    (children a page at a time)."""
    from flowspec.ui.queries import link_json

    flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
    return run_dict(run) | {
        "flow_version": flow.version if flow else None, "project": flow.project if flow else None,
        "waiting_reason": waiting_reason(backend, run), "outputs": backend.run_outputs(run.id),
        **(link_json(backend, run.id) if tasks else {"links": run_links(backend, run.id)}),
        "history": history(backend, run),
        "tasks": task_rows(backend, run) if tasks else None}


def waiting_reason(backend, run) -> str | None:
    """Why the run waits, as `runs show` says it: a Late run's says since when."""
    from flowspec.commands.runs import is_late, late_reason

    return late_reason(backend, run) if is_late(run) else backend.waiting_reason(run.id)


def listed(backend, run) -> dict:
    """A run as `runs list --format json` lists it: a Late run with its `late_reason`."""
    from flowspec.commands.runs import is_late, late_reason

    return run_dict(run) | ({"late_reason": late_reason(backend, run)} if is_late(run) else {})


def run_links(backend, run_id: str, after: int = 0) -> dict:
    """A run's parent (run and task), the run it restarts and what that reused or ran again,
    the runs that restart it, and a page of its child flow runs (`children_next`: the cursor of
    the next page)."""
    from flowspec.ui.queries import child_runs_page, restarts_of

    link = backend.run_link(run_id) or {}
    children, after = child_runs_page(backend, run_id, after)
    return {"parent_run": link.get("parent_run"), "parent_task": link.get("parent_task"),
            "restart_of": link.get("restart_of"), "restart": link.get("notes"),
            "restarted_as": restarts_of(backend, run_id),
            "children": children, "children_next": after}


def log_dict(row: tuple, mask) -> dict:
    """A log row as `flowspec runs logs --format json` shows it (`mask`: text_mask of its run),
    with its id."""
    return {"kind": "log", "id": row[0], "time": row[2], "level": row[3], "task": row[4], "message": mask(row[5])}


def agent_dict(agent, now: float, runs: dict[str, int] | None = None) -> dict:
    """As `flowspec agents list --format json`, with the agent's runs counted by state."""
    return {"name": agent.name, "labels": list(agent.labels), "started": agent.started, "last_seen": agent.last_seen,
            "stopped": agent.stopped, "stop_requested": agent.stop_requested, "alive": agent.alive(now),
            "status": agent.status, "runs": runs or {}}


def flow_dict(flow, upcoming: dict | None = None) -> dict:
    """As `flowspec flows list --format json` (`upcoming`: flowspec.commands.flows.next_runs)."""
    return {"id": flow.id, "project": flow.project, "name": flow.name, "version": flow.version,
            "labels": list(flow.labels), "storage": masked(flow.storage), "registered": flow.created,
            "next_run": (upcoming or {}).get((flow.project, flow.name))}


def graph_of(flow, tasks: list[dict], recorded: tuple | None = None) -> dict:
    """Nodes and edges of a run's task graph: from its registered spec when there is one, else
    the graph the run recorded when it started (Backend.run_graph), else its tasks alone (a run
    of an earlier release: no edges)."""
    from flowspec.ui import layout

    names, edges = [t["task"] for t in tasks], []
    if recorded is not None:
        known = set(recorded[0])
        names = recorded[0] + [n for n in names if n not in known]
        edges = recorded[1]
    elif flow is not None and flow.spec_text:
        spec = _compiled(flow.id, flow.spec_text)
        if spec is not None:
            names = list(spec.tasks) + [n for n in names if n not in spec.tasks]
            from flowspec.graph import edges as spec_edges

            edges = spec_edges(spec)
    placed, width, height = layout.place(names, [(u, d) for u, d, _ in edges])
    by_name = {t["task"]: t for t in tasks}
    nodes = [{"name": p.name, "x": p.x, "y": p.y, "w": layout.NODE_W, "h": layout.NODE_H, "layer": p.layer,
              "state": by_name.get(p.name, {}).get("state", "Pending"),
              "children": by_name.get(p.name, {}).get("children")} for p in placed]
    return {"nodes": nodes, "edges": layout.edge_paths(placed, edges), "width": width, "height": height,
            "edges_known": bool(edges) or flow is not None or recorded is not None}


def recorded_graph(backend, run_id: str, flow) -> tuple | None:
    """The graph a run of an unregistered spec recorded (None for a registered flow's run: its
    spec has it)."""
    if flow is not None:
        return None
    return CACHE.get(backend, run_id, "graph", lambda: backend.run_graph(run_id))


_SPECS: dict[int, Any] = {}


def _compiled(flow_id: int, text: str):
    """A registered version's spec, compiled once (versions never change)."""
    if flow_id not in _SPECS:
        from flowspec.compile import compile_document
        from flowspec.loader import load_text

        try:
            spec, _ = compile_document(load_text(text, "flow.yaml"))
        except Exception:  # a spec an older flowspec accepted: shown without edges
            spec = None
        _SPECS[flow_id] = spec
    return _SPECS[flow_id]
