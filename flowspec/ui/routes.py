"""The pages (runs, flows, agents, limits; a run's own are in run_routes), each with its JSON
twin (`.json`, or `Accept: application/json`), and the error pages."""
from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from flowspec.ui import queries, views
from flowspec.ui.render import fragment, page, wants_json

PAGE_SIZE = 50


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
                             since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"),
                             parent=_parent(request, q.get("parent") or None))


def _parent(request: Request, ref: str | None) -> str | None:
    """`parent=RUN`: a run id or a unique prefix of it, as `runs list --parent RUN` takes it."""
    from flowspec.commands._backend import find_run
    from flowspec.errors import FlowspecError, UsageError

    if ref is None:
        return None
    try:
        return find_run(_backend(request), ref).id
    except UsageError as exc:
        raise HTTPException(400, f"parent={ref}: {exc.message}") from None
    except FlowspecError as exc:
        raise HTTPException(404, f"parent={ref}: {exc.message}") from None


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
    runs = [views.listed(_backend(request), r) for r in result.runs]
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


def _int(text: str | None, name: str, default: int) -> int:
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise HTTPException(400, f"{name}={text}: expected a whole number") from None


# ------------------------------------------------------------------------------- flows, agents, limits


def flows_list(request: Request) -> Response:
    from flowspec.commands.flows import next_runs

    backend = _backend(request)
    upcoming = next_runs(backend)
    flows = [views.flow_dict(f, upcoming) for f in backend.list_flows()]
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
