"""`flowspec scheduler [--horizon DURATION] [--interval DURATION] [--once] [--backend URL]`

Creates the Scheduled runs of every registered clock a horizon ahead. Any number may run at
once, on any number of machines: the database makes each flow, clock and time one run. A
backend that goes away (a database restart) is waited for, as agents do."""
from __future__ import annotations

import sys
import time

DEFAULT_HORIZON_S = 3600.0
DEFAULT_INTERVAL_S = 10.0


def register(sub) -> None:
    from flowspec.commands._backend import BACKEND_HELP

    p = sub.add_parser("scheduler", help="create the runs of registered schedules, a horizon ahead (foreground)",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--horizon", metavar="DURATION", default=None,
                   help="how far ahead runs are created (default 1h)")
    p.add_argument("--interval", metavar="DURATION", default=None, help="time between passes (default 10s)")
    p.add_argument("--once", action="store_true", help="make one pass and exit")
    p.add_argument("--backend", metavar="URL", default=None, help=BACKEND_HELP)
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: one object per pass")
    p.set_defaults(func=main)


def _duration(flag: str, text: str | None, default: float) -> float:
    from flowspec.compile import parse_duration
    from flowspec.errors import UsageError

    if text is None:
        return default
    try:  # a number of seconds, or 500ms, 5s, 2m, 1h
        value = float(text) if text.replace(".", "", 1).isdigit() else float(parse_duration(text))
    except (AttributeError, TypeError, ValueError):
        value = -1.0
    if not value > 0:
        raise UsageError(f"{flag}: expected a duration such as 30s, 15m or 2h, got '{text}'")
    return value


def main(args) -> int:
    import json

    from flowspec.backend import open_backend
    from flowspec.backend.outage import MAX_DELAY_S
    from flowspec.errors import BackendError
    from flowspec.schedules import iso, now

    horizon = _duration("--horizon", args.horizon, DEFAULT_HORIZON_S)
    interval = _duration("--interval", args.interval, DEFAULT_INTERVAL_S)
    backend, delay = open_backend(args.backend), 1.0
    try:
        while True:
            at = now()
            try:
                started, cpu = time.perf_counter(), time.process_time()
                created = backend.scheduler_pass(at, horizon)
                took, cpu = time.perf_counter() - started, time.process_time() - cpu
                delay = 1.0
            except BackendError as exc:
                if args.once:
                    raise
                print(f"flowspec scheduler: the backend is unavailable ({exc.message}); retrying in {delay:g}s",
                      file=sys.stderr, flush=True)
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            if args.format == "json":
                print(json.dumps({"now": at, "horizon": horizon, "created": created, "seconds": round(took, 4),
                                  "cpu_seconds": round(cpu, 4)}),
                      flush=True)
            elif created or args.once:
                print(f"{iso(at)}: {created} run{'s' if created != 1 else ''} scheduled up to"
                      f" {iso(at + horizon)} ({took:.3f}s)", flush=True)
            if args.once:
                return 0
            time.sleep(interval)
    finally:
        backend.close()
