"""The UI's Starlette application: routes, templates, the token gate and the security headers.

One backend object serves every request (its calls are serialized by its own lock); handlers
that read it are plain functions, which Starlette runs in its thread pool.
"""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent
TOKEN_COOKIE = "flowspec_ui_token"
# Only the app's own scripts, styles and connections: a log line that slipped through escaping
# still could not run a script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
LOST_CHECK_S = 10.0
WARM_AFTER_S = 2.0


def create_app(backend, *, allow_actions: bool = False, token: str | None = None) -> Starlette:
    from flowspec.ui import actions, live, routes, run_routes
    from flowspec.ui.render import make_templates

    app = Starlette(routes=[
        Route("/", routes.home), Route("/favicon.ico", routes.favicon),
        Route("/runs", routes.runs_list), Route("/runs.json", routes.runs_list),
        Route("/runs/events", live.runs_events),
        Route("/runs/{run_id}", run_routes.run_page), Route("/runs/{run_id}.json", run_routes.run_page),
        Route("/runs/{run_id}/events", live.run_events),
        Route("/runs/{run_id}/logs", run_routes.run_logs), Route("/runs/{run_id}/logs.json", run_routes.run_logs),
        Route("/runs/{run_id}/logs.txt", run_routes.run_logs_download),
        Route("/runs/{run_id}/traceback", run_routes.run_traceback),
        Route("/runs/{run_id}/children/{task}.json", run_routes.run_children),
        Route("/runs/{run_id}/tasks", run_routes.run_tasks),
        Route("/runs/{run_id}/child-runs", run_routes.run_child_runs),
        Route("/runs/{run_id}/gantt", run_routes.run_gantt),
        Route("/runs/{run_id}/gantt/{task}", run_routes.run_gantt_children),
        *actions.routes(),
        Route("/flows", routes.flows_list), Route("/flows.json", routes.flows_list),
        Route("/flows/{project}/{name}", routes.flow_page), Route("/flows/{project}/{name}.json", routes.flow_page),
        Route("/agents", routes.agents_list), Route("/agents.json", routes.agents_list),
        Route("/limits", routes.limits_list), Route("/limits.json", routes.limits_list),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ], exception_handlers=routes.EXCEPTION_HANDLERS)
    app.state.backend = backend
    app.state.allow_actions = allow_actions
    app.state.csrf = secrets.token_urlsafe(32)
    app.state.templates = make_templates(app)
    app.add_middleware(Guard, token=token)
    _watch_lost_runs(backend)
    return app


class Guard:
    """Security headers on every response; with a token, refuse requests that do not carry it.

    The token comes as `Authorization: Bearer T`, as the cookie set when a page was opened once
    with `?token=T` (then redirected to the same URL without it), or not at all: 401.
    """

    def __init__(self, app, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None:
            refusal = self._check(scope)
            if refusal is not None:
                return await refusal(scope, receive, send)

        started = time.perf_counter()

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                # how long the server took to start answering (benchmarks/ui.py reads it)
                took = (time.perf_counter() - started) * 1000
                headers += [(b"server-timing", f"app;dur={took:.1f}".encode()), (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
                message = {**message, "headers": headers}
            await send(message)
        await self.app(scope, receive, send_with_headers)

    def _check(self, scope):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer ") and self._same(auth[7:]):
            return None
        cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
        if self._same(cookies.get(TOKEN_COOKIE, "")):
            return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and self._same(given[0]) and scope["method"] == "GET":
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        return PlainTextResponse("401: this UI needs its token: open it once with ?token=T,"
                                 " or send 'Authorization: Bearer T'\n", status_code=401)

    def _same(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


def _watch_lost_runs(backend) -> None:
    """Whoever looks sees a run whose process is gone as Failed (as `flowspec runs list` does),
    judged off the request path: marking waits a grace period first."""
    import os
    import socket

    who = f"`flowspec ui` (pid {os.getpid()} on {socket.gethostname()})"

    def loop() -> None:
        from flowspec.ui.queries import any_lost

        stop = threading.Event()
        stop.wait(WARM_AFTER_S)  # the server's own start first: it answers sooner
        _warm()
        while not stop.wait(LOST_CHECK_S):
            try:
                if any_lost(backend, time.time()):
                    backend.mark_lost_runs(who)
            except Exception:  # a database down for a while, a read-only file: the UI still reads
                continue
    threading.Thread(target=loop, name="flowspec-ui-lost-runs", daemon=True).start()


def _warm() -> None:
    """Import what a run's first page needs (the runner's states, the compiler) off the request
    path, once the server is up: its first view does not pay for them."""
    import flowspec.commands.runs  # noqa: F401
    import flowspec.compile  # noqa: F401
    import flowspec.runner  # noqa: F401
