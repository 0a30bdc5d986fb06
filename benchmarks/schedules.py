"""A scheduler pass over many clocks: `python benchmarks/schedules.py [--clocks 10000] [--backend URL]`.

Registers N flows with one clock each (cron clocks in several zones, and intervals), then times
`flowspec scheduler --once`'s pass (Backend.scheduler_pass) three ways:
  first   every clock is due: each creates its runs of the horizon (1h: one run per clock)
  steady  the next pass, nothing new to create (what a running scheduler does most of the time)
  next    an hour later: every clock is due again
Target: a pass over 10 000 clocks under 1 s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ZONES = ("UTC", "America/Chicago", "Europe/Berlin", "Australia/Lord_Howe")


def clocks_for(i: int, distinct: bool = False):
    from flowspec.schedules import Clock

    if distinct:  # no two clocks alike: every minute of the hour in each of many zones
        return [Clock(cron=f"{i % 60} * * * *", timezone=_zones()[(i // 60) % len(_zones())])]
    if i % 4 == 3:
        return [Clock(interval=3600.0, start=float(i % 60) * 60)]
    return [Clock(cron=f"{i % 60} * * * *", timezone=ZONES[i % 3])]


def _zones() -> list[str]:
    global _ZONES
    if not _ZONES:
        from zoneinfo import available_timezones

        _ZONES = sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))
    return _ZONES


_ZONES: list[str] = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clocks", type=int, default=10_000)
    parser.add_argument("--backend", default=None, help="a backend URL (default: a fresh SQLite file)")
    parser.add_argument("--distinct", action="store_true", help="no two clocks alike (the worst case)")
    args = parser.parse_args()
    from flowspec.backend import open_backend
    from flowspec.schedules import parse_instant

    url = args.backend or os.path.join(tempfile.mkdtemp(prefix="flowspec-bench-"), "flowspec.db")
    now = parse_instant("2026-03-08T06:00:00Z")
    with open_backend(url) as backend:
        started = time.perf_counter()
        for i in range(args.clocks):
            flow, _ = backend.register_flow("bench", f"flow-{i}", [], {"type": "local"}, f"c{i}", "", {})
            backend.record_clocks(flow.id, clocks_for(i, args.distinct), False, now)
        print(f"registered {args.clocks} flows with one clock each in {time.perf_counter() - started:.1f}s")
        rows = []
        for label, at in (("first", now), ("steady", now + 10), ("next", now + 3600)):
            started = time.perf_counter()
            created = backend.scheduler_pass(at, 3600.0)
            rows.append((label, created, time.perf_counter() - started))
    worst = max(seconds for _, _, seconds in rows)
    for label, created, seconds in rows:
        print(f"  {label:<7} pass over {args.clocks} clocks: {seconds:.3f}s, {created} runs created")
    verdict = "PASS" if worst < 1.0 else "MISS"
    print(f"target: a pass over 10 000 clocks under 1 s: {verdict} (worst {worst:.3f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
