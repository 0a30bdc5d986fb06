"""Actions (cancel): POSTs, allowed only with `flowspec ui --allow-actions`, each carrying the
page's CSRF token, and refused when the browser says they come from another origin."""
from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from flowspec.ui.render import wants_json


async def _check(request: Request) -> None:
    if not request.app.state.allow_actions:
        raise HTTPException(403, "this UI is read-only: start it with `flowspec ui --allow-actions` to cancel runs")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"a request from another origin ({origin}) was refused")
    # The body is a small urlencoded form; read without Starlette's form parser (which needs
    # python-multipart)
    form = parse_qs((await request.body())[:4096].decode("latin-1"))
    given = request.headers.get("x-csrf-token") or (form.get("csrf") or [""])[0]
    if not hmac.compare_digest(given.encode(), request.app.state.csrf.encode()):
        raise HTTPException(403, "the CSRF token is missing or stale: reload the page and try again")


async def cancel(request: Request) -> Response:
    import anyio

    from flowspec.backend import NotFoundError

    await _check(request)
    run_id = request.path_params["run_id"]
    try:
        state = await anyio.to_thread.run_sync(request.app.state.backend.cancel_run, run_id)
    except NotFoundError:
        raise HTTPException(404, f"no flow run has id {run_id}") from None
    if wants_json(request):
        return JSONResponse({"id": run_id, "state": state})
    return RedirectResponse(f"/runs/{run_id}", status_code=303)
