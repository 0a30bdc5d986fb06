"""Actions on a run (cancel, restart): POSTs to `/runs/RUN/NAME`, allowed only with `flowspec ui
--allow-actions`, each carrying the page's CSRF token, and refused when the browser says they
come from another origin.

An action is one `Action` in ACTIONS: its route, its button on the run's page (shown in the run
states it applies to) and its checks all come from that entry.

A restart is `flowspec runs restart` itself, started as a process of its own (detached: it
outlives the UI, and runs no user code in the UI's process). A run of a registered flow is
restarted as the command does it: a new run for the agents, the process ends at once. A run
of `flowspec run FILE` is restarted where the UI runs, as the command runs it: the spec file
it ran must be there, unchanged, and the process runs the flow to its end. Either way the
UI answers once the new run is in the backend (its page), or with the command's own error.
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

RESTART_WAIT_S = 30.0  # how long a restart may take to create its run before the UI gives up waiting


@dataclass(frozen=True)
class Action:
    name: str  # the route's last part, and the button's id (`NAME-run`)
    label: str  # the button's text
    states: frozenset[str]  # the run states it is offered in
    # (backend, run id, the posted form) → the JSON answer: the run's id and state, or with a
    # new run its id (the page then goes there)
    call: Callable[..., dict]
    fields: str | None = None  # a template of the form's own fields, beside the button


def _cancel(backend, run_id: str, form: dict) -> dict:
    return {"id": run_id, "state": backend.cancel_run(run_id)}


def _restart(backend, run_id: str, form: dict) -> dict:
    """`flowspec runs restart RUN [--from TASK]` in a detached process; the new run's id once
    the backend has it."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from flowspec.backend import flowspec_home
    from flowspec.ui.queries import restarts_of

    from flowspec.backend import NotFoundError

    if backend.get_run(run_id) is None:
        raise NotFoundError(f"no flow run has id {run_id}")
    from_task = (form.get("from") or [""])[0]
    argv = [sys.executable, "-m", "flowspec", "runs", "restart", run_id, "--quiet"]
    if from_task:
        argv += ["--from", from_task]
    folder = flowspec_home() / "ui-restarts"
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"{run_id}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    known = {r["run"] for r in restarts_of(backend, run_id)}
    # the backend's URL as given (with its password, which `backend.url` hides), by the
    # environment: never on a command line that other users can list
    env = {**os.environ, "FLOWSPEC_BACKEND": getattr(backend, "_raw_url", None) or backend.url}
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    threading.Thread(target=proc.wait, name=f"flowspec-ui-restart-{proc.pid}", daemon=True).start()  # no zombie
    deadline = time.monotonic() + RESTART_WAIT_S
    while time.monotonic() < deadline:
        new = [r["run"] for r in restarts_of(backend, run_id) if r["run"] not in known]
        if new:
            return {"id": new[-1], "restart_of": run_id}
        if proc.poll() is not None and proc.returncode != 0:
            said = output.read_text(errors="replace").strip().splitlines()
            raise HTTPException(409, "flowspec runs restart refused: " + " ".join(said[-3:]))
        time.sleep(0.1)
    raise HTTPException(504, f"the restart made no run within {RESTART_WAIT_S:g} s; its output is in {output}")


FINAL = frozenset({"Success", "Failed", "Cancelled", "TimedOut"})
ACTIONS: tuple[Action, ...] = (
    Action("cancel", "Cancel this run", frozenset({"Scheduled", "Queued", "Submitted", "Running"}), _cancel),
    Action("restart", "Restart this run", FINAL, _restart, "_restart_fields.html"),
)


def offered(state: str) -> list[Action]:
    """The actions a run in `state` offers."""
    return [action for action in ACTIONS if state in action.states]


async def _check(request: Request) -> dict:
    """The posted form, once the request is allowed."""
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
    return form


def handler(action: Action):
    """The route of `action`: checked, run off the event loop, answered as JSON or by going to
    the run's page."""
    async def endpoint(request: Request) -> Response:
        import anyio

        from flowspec.backend import NotFoundError

        form = await _check(request)
        run_id = request.path_params["run_id"]
        try:
            answer = await anyio.to_thread.run_sync(action.call, request.app.state.backend, run_id, form)
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
