"""The web UI (`flowspec ui`): server-rendered pages over the backend, each with a JSON twin,
live updates over server-sent events. Needs the `ui` extra (Starlette, uvicorn, Jinja2)."""
