"""`flowspec ui [--host H] [--port P] [--backend URL] [--allow-actions] [--token T]`: the web UI.

Loopback by default; any other address needs a token (`--token` or `$FLOWSPEC_UI_TOKEN`), since
the pages show every run's parameters and logs. Read-only unless `--allow-actions`.
"""
from __future__ import annotations

import ipaddress
import os
import sys

from flowspec.commands._backend import BACKEND_HELP

INSTALL = 'pip install "flowspec[ui]"'


def register(sub) -> None:
    p = sub.add_parser("ui", help="serve the web UI: runs, their graphs and logs, flows, agents, limits",
                       description="Serve the web UI over the backend (read-only unless --allow-actions).")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other one needs --token)")
    p.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787; 0: any free port)")
    p.add_argument("--backend", metavar="URL", default=None, help=BACKEND_HELP)
    p.add_argument("--allow-actions", action="store_true", help="allow cancelling and restarting runs from the UI")
    p.add_argument("--token", metavar="T", default=None,
                   help="a secret every request must carry (open /?token=T once, or send"
                        " 'Authorization: Bearer T'); default $FLOWSPEC_UI_TOKEN")
    p.set_defaults(func=main)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(args) -> int:
    from flowspec.errors import UsageError

    token = args.token or os.environ.get("FLOWSPEC_UI_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise UsageError(f"--host {args.host}: the UI would be open to the network without a token",
                         hint="pass --token T (or set FLOWSPEC_UI_TOKEN), or keep the default --host 127.0.0.1")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number", hint="give a port from 1 to 65535, or 0")
    try:
        import uvicorn

        from flowspec.ui.app import create_app
    except ImportError as exc:
        raise UsageError(f"`flowspec ui` needs the Python package '{exc.name}', which is not installed",
                         hint=INSTALL) from None
    from flowspec.backend import open_backend

    backend = open_backend(args.backend)
    try:
        app = create_app(backend, allow_actions=args.allow_actions, token=token)
        return _serve(uvicorn, app, args)
    finally:
        backend.close()


def _serve(uvicorn, app, args) -> int:
    from flowspec.errors import UsageError

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=1, loop="asyncio", http="h11", ws="none")
    server = uvicorn.Server(config)
    server.config.load()
    import socket

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # connections made from here on wait for the server instead of failing
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there: {exc.strerror}",
                         hint="choose another --port (0 picks a free one)") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"flowspec ui: serving http://{shown}:{port}/ (backend {app.state.backend.url};"
          f" {'actions allowed' if args.allow_actions else 'read-only'}; Ctrl-C stops)", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    print("flowspec ui: stopped", file=sys.stderr)
    return 0
