"""A run's pages: the run itself, its logs (a page, a search, the whole download), its
traceback, its children for the heatmap and its timeline; each with its JSON twin."""
from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from flowspec.backend import FINAL_STATES
from flowspec.ui import queries, views
from flowspec.ui.render import fragment, page, wants_json
from flowspec.ui.routes import _backend, _get_run, _int

LOG_PAGE = 500
GANTT_PAGE = 200  # a mapped task's children on the timeline, a page at a time
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FINAL = FINAL_STATES


def run_page(request: Request) -> Response:
    """The run: its header, history, parameters and the tail of its log. Its tasks, graph and
    heatmaps (run_tasks) and its timeline (run_gantt) come after: a map of 100 000 children is
    summed while the page already shows."""
    backend = _backend(request)
    run = _get_run(request)
    if wants_json(request):
        return JSONResponse(views.run_detail(backend, run))
    detail = views.run_detail(backend, run, tasks=False)
    if request.app.state.allow_actions:
        detail["restart_from"] = views.restart_from(backend, run)
    flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
    logs, more = queries.log_page(backend, run.id, queries.LogFilter(), before=2**62, size=LOG_PAGE)
    last_task = queries.last_task_state_id(backend, run.id)
    return fragment(request, "run.html", run=detail, flow=flow,
                    logs=[views.log_dict(r, views.text_mask(run)) for r in logs], logs_more=more, direction="back",
                    levels=LEVELS, last_task=last_task,
                    last_log=logs[-1][0] if logs else 0, log_filter=queries.LogFilter(), final=run.state in FINAL)


def run_tasks(request: Request) -> Response:
    """The run's task table, with its graph, heatmaps and task names swapped in beside it."""
    backend, run = _backend(request), _get_run(request)
    tasks = views.task_rows(backend, run)
    flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
    graph = views.graph_of(flow, tasks, views.recorded_graph(backend, run.id, flow))
    return fragment(request, "_run_tasks.html", tasks=tasks, graph=graph, run={"id": run.id},
                    mapped=[t["task"] for t in tasks if t.get("children")])


def run_child_runs(request: Request) -> Response:
    """The next page of a run's child flow runs (rows after the creation number `after`)."""
    backend, run = _backend(request), _get_run(request)
    links = views.run_links(backend, run.id, _int(request.query_params.get("after"), "after", 0))
    return fragment(request, "_child_rows.html", links=links, run={"id": run.id})


def gantt_data(backend, run_id: str, tasks: list[dict] | None = None) -> dict:
    """The timeline's rows; with the run's task rows (views.task_rows), each coloured by its task's state."""
    firsts = views.CACHE.get(backend, run_id, "firsts", lambda: queries.first_times(backend, run_id))
    spans = queries.task_spans(views.summary(backend, run_id), firsts)
    states = {t["task"]: t["state"] for t in tasks or ()}
    if not spans:
        return {"rows": [], "start": 0, "span": 0}
    start = min(s[1] for s in spans)
    span = max(max(s[2] for s in spans) - start, 1e-3)
    return {"start": start, "span": span, "rows": [
        {"task": t, "state": states.get(t), "left": (a - start) / span * 100, "width": max((b - a) / span * 100, 0.3), "seconds": b - a,
         "children": n} for t, a, b, n in spans]}


def run_gantt(request: Request) -> Response:
    """The timeline, loaded after the page: a map of many children is summed once more."""
    backend, run = _backend(request), _get_run(request)
    gantt = gantt_data(backend, run.id, views.task_rows(backend, run))
    return fragment(request, "_gantt.html", gantt=gantt, run={"id": run.id})


def run_gantt_children(request: Request) -> Response:
    """A mapped task's children on the timeline, 200 at a time after index `after`; with
    `name=TEXT` those whose `run_name` holds TEXT (any case). `rows=1`: the rows alone (the
    name filter's answer), else with the filter above them when the children have names."""
    backend, run = _backend(request), _get_run(request)
    task = request.path_params["task"]
    q = request.query_params
    after = _int(q.get("after"), "after", -1)
    named = views.CACHE.get(backend, run.id, f"names {task}", lambda: queries.child_names(backend, run.id, task))
    names = named if isinstance(named, list) else []
    wanted = (q.get("name") or "").strip().lower()
    if wanted:
        picked = [i for i in range(after + 1, len(names)) if names[i] is not None and wanted in names[i].lower()]
        spans = queries.child_spans(backend, run.id, task, indexes=picked[:GANTT_PAGE])
        more_after = picked[GANTT_PAGE - 1] if len(picked) > GANTT_PAGE else None
    else:
        spans = queries.child_spans(backend, run.id, task, after, size=GANTT_PAGE)
        more_after = spans[-1][0] if len(spans) == GANTT_PAGE else None
    gantt = gantt_data(backend, run.id)
    rows = [{"index": i, "name": names[i] if i < len(names) else None, "left": (a - gantt["start"]) / gantt["span"] * 100,
             "width": max((b - a) / gantt["span"] * 100, 0.3), "seconds": b - a, "state": s} for i, a, b, s in spans]
    base = f"/runs/{run.id}/gantt/{quote(task, safe='')}"
    more = f"{base}?{urlencode({'after': more_after, 'name': wanted, 'rows': 1})}" if more_after is not None else None
    return fragment(request, "_gantt_children.html", rows=rows, task=task, more=more, base=base,
                    filter=bool(names) and not q.get("rows"), name=q.get("name") or "")


def run_children(request: Request) -> Response:
    """A mapped task's children as compact data for the heatmap: a state legend and one
    character per child (its state's position in the legend), and with a `run_name` each
    child's name (`names`). `?name=TEXT` keeps the children whose name holds TEXT."""
    backend, run = _backend(request), _get_run(request)
    task = request.path_params["task"]
    heat = views.CACHE.get(backend, run.id, f"children {task}",
                           lambda: queries.heat_codes(queries.children_states(backend, run.id, task)))
    named = views.CACHE.get(backend, run.id, f"names {task}", lambda: queries.child_names(backend, run.id, task))
    indexes = heat["indexes"] or range(len(heat["codes"]))
    names = [named[i] if 0 <= i < len(named) else None for i in indexes] if isinstance(named, list) else None
    wanted = (request.query_params.get("name") or "").lower()
    if wanted:
        keep = [k for k, n in enumerate(names or ()) if n is not None and wanted in n.lower()]
        rows = [(indexes[k], heat["states"][ord(heat["codes"][k]) - 48]) for k in keep]
        heat, names = queries.heat_codes(rows), [names[k] for k in keep]
    return JSONResponse({"task": task, **heat, "names": names})


def log_filter(request: Request) -> queries.LogFilter:
    q = request.query_params
    return queries.LogFilter(level=q.get("level") or None, task=q.get("task") or None, search=q.get("q") or None)


def run_logs(request: Request) -> Response:
    """Log lines matching the filter: after `after` (oldest first), or the newest before `before`.

    The page shows the tail by default (where a followed log goes on); the JSON twin starts at
    the first line, as `flowspec runs logs --format json` does, a page at a time (`Link: rel=next`)."""
    backend, run = _backend(request), _get_run(request)
    flt = log_filter(request)
    q = request.query_params
    before = _int(q.get("before"), "before", 0) or None
    after = _int(q.get("after"), "after", 0)
    as_json = wants_json(request)
    if before is None and not after and not flt.search and not as_json:
        before = 2**62
    size = _int(q.get("limit"), "limit", LOG_PAGE) if as_json else LOG_PAGE
    if not 1 <= size <= 10_000:
        raise HTTPException(400, f"limit={size}: expected 1 to 10000 lines a page")
    rows, more = queries.log_page(backend, run.id, flt, after=after, before=before, size=size)
    mask = views.text_mask(run)
    lines = [views.log_dict(r, mask) for r in rows]
    if flt.search:  # matches inside a masked value are no matches: a search must not probe a secret
        lines = [line for line in lines if flt.search.lower() in line["message"].lower()]
    if as_json:
        keep = [(k, v) for k, v in q.multi_items() if k not in ("after", "before", "token")]
        link = {"Link": f'<{request.url.path}?{urlencode(keep + [("after", rows[-1][0])])}>; rel="next"'} \
            if more and not before else None
        return JSONResponse([{k: v for k, v in line.items() if k != "id"} for line in lines], headers=link)
    return fragment(request, "_logs.html", run_id=run.id, logs=lines, logs_more=more, log_filter=flt,
                    last_log=rows[-1][0] if rows else after, final=run.state in FINAL,
                    direction="back" if before else "forward")


def run_logs_download(request: Request) -> Response:
    """The whole log as text, streamed a batch at a time: memory stays flat however long it is."""
    from flowspec.ui.render import clock

    backend, run = _backend(request), _get_run(request)
    mask = views.text_mask(run)

    def lines():
        after = 0
        while True:
            batch = backend.logs(run.id, after, limit=5000)
            if not batch:
                return
            yield "".join(f"{clock(x.time)} {x.level:<7} {x.task or 'flow'} | {mask(x.message)}\n" for x in batch)
            after = batch[-1].id
    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="flowspec-run-{run.id}.log"'})


def run_traceback(request: Request) -> Response:
    backend, run = _backend(request), _get_run(request)
    row = queries.failed_traceback(backend, run.id)
    if row is None:
        raise HTTPException(404, f"run {run.id} logged no error")
    line = views.log_dict(row, views.text_mask(run))
    return page(request, "traceback.html", line, run=views.run_dict(run), line=line)
