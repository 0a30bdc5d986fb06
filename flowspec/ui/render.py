"""Jinja2 templates (autoescaped) and the choice between a page and its JSON twin."""
from __future__ import annotations

import json
import time
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from flowspec.ui.app import HERE

STATE_CLASS = {"Success": "ok", "Cached": "ok", "Failed": "bad", "TriggerFailed": "bad", "Cancelled": "off", "Cancelling": "off",
               "Skipped": "off", "Running": "run", "Submitted": "run", "Retrying": "run", "Scheduled": "wait",
               "Queued": "wait", "Pending": "wait"}


def when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"


def make_templates(app) -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, clock=clock, state_class=lambda s: STATE_CLASS.get(s, "other"),
                       tojson_compact=lambda v: json.dumps(v, separators=(",", ":")))
    env.globals.update(allow_actions=app.state.allow_actions, csrf=app.state.csrf)
    return env


def wants_json(request: Request) -> bool:
    if request.url.path.endswith(".json"):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def page(request: Request, template: str, data: Any, status: int = 200, headers: dict | None = None,
         **context: Any) -> Response:
    """The page rendered from `template`, or `data` as JSON when the request asks for it."""
    if wants_json(request):
        return JSONResponse(data, status_code=status, headers=headers)
    return fragment(request, template, status=status, headers=headers, **context)


def fragment(request: Request, template: str, status: int = 200, headers: dict | None = None,
             **context: Any) -> HTMLResponse:
    env = request.app.state.templates
    html = env.get_template(template).render(request=request, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers=headers)


def render(request: Request, template: str, **context: Any) -> str:
    return request.app.state.templates.get_template(template).render(request=request, **context)
