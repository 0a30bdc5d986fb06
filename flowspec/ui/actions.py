"""Actions on a run (cancel): POSTs to `/runs/RUN/NAME`, allowed only with `flowspec ui
--allow-actions`, each carrying the page's CSRF token, and refused when the browser says they
come from another origin.

An action is one `Action` in ACTIONS: its route, its button on the run's page (shown in the run
states it applies to) and its checks all come from that entry.
"""
from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from flowspec.ui.render import wants_json


@dataclass(frozen=True)
class Action:
    name: str  # the route's last part, and the button's id (`NAME-run`)
    label: str  # the button's text
    states: frozenset[str]  # the run states it is offered in
    # (backend, run id) → the JSON answer: the run's id and state, or with a new run its id
    # (the page then goes there)
    call: Callable[..., dict]


def _cancel(backend, run_id: str) -> dict:
    return {"id": run_id, "state": backend.cancel_run(run_id)}


ACTIONS: tuple[Action, ...] = (
    Action("cancel", "Cancel this run", frozenset({"Scheduled", "Queued", "Submitted", "Running"}), _cancel),
)


def offered(state: str) -> list[Action]:
    """The actions a run in `state` offers."""
    return [action for action in ACTIONS if state in action.states]


async def _check(request: Request) -> None:
    if not request.app.state.allow_actions:
        raise HTTPException(403, "this UI is read-only: start it with `flowspec ui --allow-actions` to act on runs")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"a request from another origin ({origin}) was refused")
    # The body is a small urlencoded form; read without Starlette's form parser (which needs
    # python-multipart)
    form = parse_qs((await request.body())[:4096].decode("latin-1"))
    given = request.headers.get("x-csrf-token") or (form.get("csrf") or [""])[0]
    if not hmac.compare_digest(given.encode(), request.app.state.csrf.encode()):
        raise HTTPException(403, "the CSRF token is missing or stale: reload the page and try again")


def handler(action: Action):
    """The route of `action`: checked, run off the event loop, answered as JSON or by going to
    the run's page."""
    async def endpoint(request: Request) -> Response:
        import anyio

        from flowspec.backend import NotFoundError

        await _check(request)
        run_id = request.path_params["run_id"]
        try:
            answer = await anyio.to_thread.run_sync(action.call, request.app.state.backend, run_id)
        except NotFoundError:
            raise HTTPException(404, f"no flow run has id {run_id}") from None
        if wants_json(request):
            return JSONResponse(answer)
        return RedirectResponse(f"/runs/{answer.get('id', run_id)}", status_code=303)
    endpoint.__name__ = action.name
    return endpoint


def routes() -> list:
    from starlette.routing import Route

    return [Route(f"/runs/{{run_id}}/{action.name}", handler(action), methods=["POST"]) for action in ACTIONS]
