"""The pages, each with its JSON twin (`.json`, or `Accept: application/json`)."""
from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse

from flowspec.ui import queries, views
from flowspec.ui.render import fragment, page, wants_json

PAGE_SIZE = 50
LOG_PAGE = 500
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _backend(request: Request):
    return request.app.state.backend


def _get_run(request: Request):
    """The run named in the path: its id, or as on the command line a unique prefix of it."""
    from flowspec.commands._backend import find_run
    from flowspec.errors import FlowspecError, UsageError

    try:
        return find_run(_backend(request), request.path_params["run_id"].removesuffix(".json"))
    except UsageError as exc:
        raise HTTPException(400, str(exc)) from None
    except FlowspecError as exc:
        raise HTTPException(404, exc.message) from None


def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=307)


def favicon(request: Request) -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=308)


# ------------------------------------------------------------------------------------ runs


def _time(text: str | None, name: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise HTTPException(400, f"{name}={text}: expected a time like 2026-01-31T12:00 or epoch seconds") from None


def run_filter(request: Request) -> queries.RunFilter:
    from flowspec.backend import RUN_STATES

    q = request.query_params
    by_case = {s.lower(): s for s in RUN_STATES}
    states = [s for value in q.getlist("state") for s in value.split(",") if s]
    unknown = [s for s in states if s.lower() not in by_case]
    if unknown:
        raise HTTPException(400, f"state={unknown[0]}: not a flow run state; states: {', '.join(RUN_STATES)}")
    flow_id = q.get("flow_id") or None
    if flow_id is not None and not flow_id.isdigit():
        raise HTTPException(400, f"flow_id={flow_id}: expected a number")
    return queries.RunFilter(flow=q.get("flow") or None, states=tuple(by_case[s.lower()] for s in states),
                             label=q.get("label") or None, agent=q.get("agent") or None,
                             flow_id=int(flow_id) if flow_id else None,
                             since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"))


def runs_list(request: Request) -> Response:
    flt = run_filter(request)
    after = request.query_params.get("after") or None
    size = _int(request.query_params.get("limit"), "limit", PAGE_SIZE)
    if not 1 <= size <= 500:
        raise HTTPException(400, f"limit={size}: expected 1 to 500 runs a page")
    try:
        result = queries.runs_page(_backend(request), flt, after, size)
    except ValueError:
        raise HTTPException(400, f"after={after}: not a page cursor; follow the 'next' link") from None
    base = [(k, v) for k, v in request.query_params.multi_items() if k not in ("after", "token")]
    next_url = f"{request.url.path}?{urlencode(base + [('after', result.next_cursor)])}" if result.next_cursor else None
    runs = [views.run_dict(r) for r in result.runs]
    headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else None
    if request.headers.get("hx-request") and after:
        return fragment(request, "_run_rows.html", runs=runs, next_url=next_url)
    if wants_json(request):
        return JSONResponse(runs, headers=headers)
    # the stream starts where this page was read; on the first page it also adds new runs
    live = [(k, v) for k, v in base if k != "limit"] + [("resume", repr(queries.latest_update(_backend(request))))]
    if not after:
        live.append(("newest", repr(result.runs[0].created) if result.runs else "0"))
    return fragment(request, "runs.html", headers=headers, runs=runs, next_url=next_url, filters=flt,
                    since=request.query_params.get("since", ""), until=request.query_params.get("until", ""),
                    states=_states(), live_query=urlencode(live), live_new=not after)


def _states() -> tuple[str, ...]:
    from flowspec.backend import RUN_STATES

    return RUN_STATES


# -------------------------------------------------------------------------------------- a run


def run_page(request: Request) -> Response:
    backend = _backend(request)
    run = _get_run(request)
    detail = views.run_detail(backend, run)
    if wants_json(request):
        return JSONResponse(detail)
    flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
    logs, more = queries.log_page(backend, run.id, queries.LogFilter(), before=2**62, size=LOG_PAGE)
    levels, log_tasks = LEVELS, [t["task"] for t in detail["tasks"]]
    tb = queries.failed_traceback(backend, run.id) if run.state == "Failed" else None
    mapped = [t["task"] for t in detail["tasks"] if t.get("children")]
    return fragment(request, "run.html", run=detail, flow=flow, graph=views.graph_of(flow, detail["tasks"]),
                    logs=[views.log_dict(r) for r in logs], logs_more=more,
                    levels=levels, log_tasks=log_tasks, traceback=views.log_dict(tb) if tb else None,
                    mapped=mapped, last_task=queries.last_task_state_id(backend, run.id), last_log=logs[-1][0] if logs else 0, log_filter=queries.LogFilter(),
                    final=run.state in ("Success", "Failed", "Cancelled"))


def gantt_data(backend, run_id: str) -> dict:
    spans = views.CACHE.get(backend, run_id, "spans", lambda: queries.task_spans(backend, run_id))
    if not spans:
        return {"rows": [], "start": 0, "span": 0}
    start = min(s[1] for s in spans)
    span = max(max(s[2] for s in spans) - start, 1e-3)
    return {"start": start, "span": span, "rows": [
        {"task": t, "left": (a - start) / span * 100, "width": max((b - a) / span * 100, 0.3), "seconds": b - a,
         "children": n} for t, a, b, n in spans]}


def run_gantt(request: Request) -> Response:
    """The timeline, loaded after the page: a map of many children is summed once more."""
    backend, run = _backend(request), _get_run(request)
    return fragment(request, "_gantt.html", gantt=gantt_data(backend, run.id), run={"id": run.id})


def run_gantt_children(request: Request) -> Response:
    backend, run = _backend(request), _get_run(request)
    task = request.path_params["task"]
    after = _int(request.query_params.get("after"), "after", -1)
    spans = queries.child_spans(backend, run.id, task, after)
    gantt = gantt_data(backend, run.id)
    rows = [{"index": i, "left": (a - gantt["start"]) / gantt["span"] * 100,
             "width": max((b - a) / gantt["span"] * 100, 0.3), "seconds": b - a, "state": s} for i, a, b, s in spans]
    more = f"/runs/{run.id}/gantt/{task}?after={spans[-1][0]}" if len(spans) == 200 else None
    return fragment(request, "_gantt_children.html", rows=rows, task=task, more=more)


def run_children(request: Request) -> Response:
    """A mapped task's children as compact data for the heatmap: a state legend and one
    character per child (its state's position in the legend)."""
    backend, run = _backend(request), _get_run(request)
    task = request.path_params["task"]
    rows = views.CACHE.get(backend, run.id, f"children {task}",
                           lambda: queries.children_states(backend, run.id, task))
    legend: dict[str, int] = {}
    codes = "".join(chr(48 + legend.setdefault(state, len(legend))) for _, state in rows)
    dense = all(index == k for k, (index, _) in enumerate(rows))
    return JSONResponse({"task": task, "states": list(legend), "codes": codes,
                         "indexes": None if dense else [index for index, _ in rows]})


def _int(text: str | None, name: str, default: int) -> int:
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise HTTPException(400, f"{name}={text}: expected a whole number") from None


def log_filter(request: Request) -> queries.LogFilter:
    q = request.query_params
    return queries.LogFilter(level=q.get("level") or None, task=q.get("task") or None, search=q.get("q") or None)


def run_logs(request: Request) -> Response:
    """Log lines matching the filter: after `after` (oldest first), or the newest before `before`."""
    backend, run = _backend(request), _get_run(request)
    flt = log_filter(request)
    q = request.query_params
    before = _int(q.get("before"), "before", 0) or None
    after = _int(q.get("after"), "after", 0)
    if before is None and not after and not flt.search:
        before = 2**62  # the tail: where a followed log goes on
    rows, more = queries.log_page(backend, run.id, flt, after=after, before=before, size=LOG_PAGE)
    lines = [views.log_dict(r) for r in rows]
    if wants_json(request):
        return JSONResponse(lines)
    return fragment(request, "_logs.html", run_id=run.id, logs=lines, logs_more=more, log_filter=flt,
                    last_log=rows[-1][0] if rows else after, final=run.state in ("Success", "Failed", "Cancelled"),
                    direction="back" if before else "forward")


def run_logs_download(request: Request) -> Response:
    """The whole log as text, streamed a batch at a time: memory stays flat however long it is."""
    backend, run = _backend(request), _get_run(request)
    from flowspec.ui.render import clock

    def lines():
        after = 0
        while True:
            batch = backend.logs(run.id, after, limit=5000)
            if not batch:
                return
            yield "".join(f"{clock(x.time)} {x.level:<7} {x.task or 'flow'} | {x.message}\n" for x in batch)
            after = batch[-1].id
    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="flowspec-run-{run.id}.log"'})


def run_traceback(request: Request) -> Response:
    backend, run = _backend(request), _get_run(request)
    row = queries.failed_traceback(backend, run.id)
    if row is None:
        raise HTTPException(404, f"run {run.id} logged no error")
    line = views.log_dict(row)
    return page(request, "traceback.html", line, run=views.run_dict(run), line=line)


# ------------------------------------------------------------------------------- flows, agents, limits


def flows_list(request: Request) -> Response:
    backend = _backend(request)
    flows = [views.flow_dict(f) for f in backend.list_flows()]
    counts = queries.run_counts_by_flow(backend)
    return page(request, "flows.html", flows, flows=flows, counts=counts)


def flow_page(request: Request) -> Response:
    backend = _backend(request)
    project, name = request.path_params["project"], request.path_params["name"].removesuffix(".json")
    versions = queries.flow_versions(backend, project, name)
    if not versions:
        raise HTTPException(404, f"no flow '{name}' is registered in project '{project}'")
    wanted = _int(request.query_params.get("version"), "version", versions[0]["version"])
    flow = backend.get_flow(name, project, wanted)
    if flow is None:
        raise HTTPException(404, f"flow '{name}' has no version {wanted}")
    other = _int(request.query_params.get("diff"), "diff", 0) or None
    diff = _diff(backend, flow, other) if other else None
    data = views.flow_dict(flow) | {"spec_text": views.masked_spec(flow.spec_text), "versions": versions}
    graph = views.graph_of(flow, [])
    return page(request, "flow.html", data, flow=data, graph=graph, diff=diff, other=other)


def _diff(backend, flow, other: int) -> list[str]:
    import difflib

    old = backend.get_flow(flow.name, flow.project, other)
    if old is None:
        raise HTTPException(404, f"flow '{flow.name}' has no version {other}")
    return list(difflib.unified_diff(views.masked_spec(old.spec_text).splitlines(),
                                     views.masked_spec(flow.spec_text).splitlines(),
                                     f"version {other}", f"version {flow.version}", lineterm=""))


def agents_list(request: Request) -> Response:
    backend = _backend(request)
    now, runs = time.time(), queries.runs_by_agent(backend)
    agents = [views.agent_dict(a, now, runs.get(a.name)) for a in backend.list_agents()]
    return page(request, "agents.html", agents, agents=agents)


def limits_list(request: Request) -> Response:
    backend = _backend(request)
    limits = backend.list_limits()
    waiting = queries.waiters(backend, [lim.label for lim in limits])
    data = [{"label": lim.label, "limit": lim.limit, "in_use": lim.in_use, "holders": list(lim.holders),
             "waiting": waiting.get(lim.label, [])} for lim in limits]
    return page(request, "limits.html", data, limits=data)


# ------------------------------------------------------------------------------------- errors


def _http_error(request: Request, exc: HTTPException) -> Response:
    if wants_json(request):
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)
    if request.headers.get("hx-request"):
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)
    return fragment(request, "error.html", status=exc.status_code, status_code=exc.status_code, detail=exc.detail)


def _backend_error(request: Request, exc: Exception) -> Response:
    """A backend that cannot be read (a database restarting): 503 with flowspec's message."""
    from flowspec.errors import FlowspecError

    text = str(exc) if isinstance(exc, FlowspecError) else "the backend cannot be read"
    return _http_error(request, HTTPException(503, text))


def _exception_handlers() -> dict:
    from flowspec.errors import FlowspecError

    return {HTTPException: _http_error, FlowspecError: _backend_error}


EXCEPTION_HANDLERS = _exception_handlers()
