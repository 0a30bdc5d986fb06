"""Server-sent events: the runs list's state changes, a run's state, tasks and logs as they come.

Each stream polls the backend once a second with a few indexed reads (nothing when nothing
changed), and gives every event an id; a browser that reconnects sends it back as
`Last-Event-ID` and the stream resumes after it, so no log line is lost or shown twice.
"""
from __future__ import annotations

import time

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from flowspec.backend import FINAL_STATES
from flowspec.ui import queries, views
from flowspec.ui.render import render

POLL_S = 1.0
PING_S = 15.0
TASKS_EVERY_S = 2.0  # a map of many children is summed at most this often
FINAL = FINAL_STATES  # a run in one of these states changes no more: its stream ends


def sse(event: str, data: str, event_id: str | None = None) -> str:
    head = (f"id: {event_id}\n" if event_id is not None else "") + f"event: {event}\n"
    return head + "".join(f"data: {line}\n" for line in (data.splitlines() or [""])) + "\n"


def _stream(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _resume(request: Request, default: str) -> str:
    return request.headers.get("last-event-id") or request.query_params.get("resume") or default


# ------------------------------------------------------------------------------------- runs list


def runs_events(request: Request) -> StreamingResponse:
    """`run-ID` events carrying a changed run's new table row, and with `newest=CREATED` (the
    page shows the newest runs) `new-run` events with the row of each change of a run created
    after it that passes the page's filters (added at the top once, then replaced: see
    static/runs.js); id: the last `updated` time sent."""
    from flowspec.ui.routes import run_filter

    backend = request.app.state.backend
    try:
        since = float(_resume(request, "0"))
        newest = float(request.query_params.get("newest") or "inf")
    except ValueError:
        since, newest = 0.0, float("inf")
    flt = run_filter(request)

    def changes(since: float) -> tuple[list[str], float]:
        out = []
        for run in queries.runs_updated_since(backend, since):
            since = max(since, run.updated)
            row = render(request, "_run_row.html", r=views.run_dict(run), live=True)
            fresh = run.created > newest and queries.matches(
                flt, run, (backend.run_link(run.id) or {}).get("parent_run") if flt.parent else None)
            out.append(sse("new-run" if fresh else f"run-{run.id}", row, repr(since)))
        return out, since

    async def events():
        nonlocal since
        yield "retry: 2000\n\n"
        pinged = time.monotonic()
        while True:
            out, since = await anyio.to_thread.run_sync(changes, since)
            for event in out:
                yield event
            if time.monotonic() - pinged > PING_S:
                pinged = time.monotonic()
                yield ": ping\n\n"
            await anyio.sleep(POLL_S)
    return _stream(events())


# --------------------------------------------------------------------------------------- a run


class RunCursor:
    """Where a run's stream is: the last log id and task state id sent, and the run's update time."""

    def __init__(self, text: str) -> None:
        parts = (text.split("-") + ["0", "0", "0"])[:3]
        try:
            self.log, self.task, self.updated = int(parts[0]), int(parts[1]), float(parts[2])
        except ValueError:
            self.log, self.task, self.updated = 0, 0, 0.0
        self.tasks_at = 0.0
        self.reason: str | None = None
        self.mapped: tuple[str, ...] | None = None  # the mapped tasks the page shows heatmaps of

    def __str__(self) -> str:
        return f"{self.log}-{self.task}-{self.updated!r}"


def run_events(request: Request) -> StreamingResponse:
    """`state` and `history` (the run's header), `tasks`, `graph` and `gantt`, and `log` (new
    lines matching the page's filter) events; id: `LOG-TASK-UPDATED`. Once the run has ended
    and all of it was sent, a `done` event, and the stream ends (the page's `sse-close`)."""
    from flowspec.ui.run_routes import gantt_data, log_filter

    backend = request.app.state.backend
    run_id = request.path_params["run_id"]
    cursor = RunCursor(_resume(request, "0-0-0"))
    flt = log_filter(request)
    kinds = set((request.query_params.get("kinds") or "state,tasks,log").split(","))

    def tick() -> tuple[list[str], bool]:
        """The events of one poll, and whether the stream is over."""
        out: list[str] = []
        run = backend.get_run(run_id)
        if run is None:
            return [sse("gone", "")], True
        if "state" in kinds:
            out += _state(run)
        if "tasks" in kinds:
            out += _tasks(run)
        if "log" in kinds:
            out += _logs(run)
        ended = not out and run.state in FINAL and (
            "tasks" not in kinds or queries.last_task_state_id(backend, run_id) == cursor.task)
        if ended:  # everything the ended run will ever have was sent: the page closes the stream
            out.append(sse("done", "The run has ended.", str(cursor)))
        return out, ended

    def _state(run) -> list[str]:
        out = []
        reason = views.waiting_reason(backend, run) if run.state in ("Scheduled", "Queued") else None
        if run.updated != cursor.updated or reason != cursor.reason:
            cursor.updated, cursor.reason = run.updated, reason
            detail = views.run_dict(run) | {"waiting_reason": reason}
            if request.app.state.allow_actions:
                detail["restart_from"] = views.restart_from(backend, run)
            out.append(sse("state", render(request, "_run_head.html", run=detail), str(cursor)))
            out.append(sse("history", render(request, "_history.html", history=views.history(backend, run)),
                           str(cursor)))
        return out

    def _tasks(run) -> list[str]:
        out = []
        last_task = queries.last_task_state_id(backend, run_id)
        if last_task != cursor.task and time.monotonic() - cursor.tasks_at >= TASKS_EVERY_S:
            cursor.task, cursor.tasks_at = last_task, time.monotonic()
            tasks = views.task_rows(backend, run)
            flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
            graph = views.graph_of(flow, tasks, views.recorded_graph(backend, run_id, flow))
            mapped = tuple(t["task"] for t in tasks if t.get("children"))
            if mapped != cursor.mapped:  # a new mapped task: its heatmap (and the graph, the names) with it
                cursor.mapped = mapped
                html = render(request, "_run_tasks.html", tasks=tasks, graph=graph, mapped=mapped, run={"id": run_id})
                out.append(sse("tasks", html, str(cursor)))
            else:
                out.append(sse("tasks", render(request, "_tasks.html", tasks=tasks, run={"id": run_id}), str(cursor)))
                out.append(sse("graph", render(request, "_graph.html", graph=graph, run={"id": run_id}), str(cursor)))
            gantt = render(request, "_gantt.html", gantt=gantt_data(backend, run_id, tasks), run={"id": run_id})
            out.append(sse("gantt", gantt, str(cursor)))
            # a subflow task's child runs come and change state with its task states
            links = render(request, "_run_links.html", run={"id": run_id, "links": views.run_links(backend, run_id)})
            out.append(sse("links", links, str(cursor)))
        return out

    def _logs(run) -> list[str]:
        out = []
        rows, _ = queries.log_page(backend, run_id, flt, after=cursor.log, size=500)
        if rows:
            cursor.log = rows[-1][0]
            mask = views.text_mask(run)
            out.append(sse("log", render(request, "_log_rows.html", logs=[views.log_dict(r, mask) for r in rows],
                                         run_id=run_id), str(cursor)))
        return out

    async def events():
        yield "retry: 2000\n\n"
        pinged = time.monotonic()
        while True:
            out, over = await anyio.to_thread.run_sync(tick)
            for event in out:
                yield event
            if over:
                return
            if time.monotonic() - pinged > PING_S:
                pinged = time.monotonic()
                yield ": ping\n\n"
            await anyio.sleep(POLL_S)
    return _stream(events())
