"""A scheduler pass's shared planning (flowspec.schedules_pass) gives the times `flowspec.schedules.times`
gives, clock by clock: across real zone transitions, in zones of every offset, for crons that hit
a change's gap or its repeated hour, for sparse crons and with the per-pass limit."""
from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo, available_timezones

import pytest

from flowspec.schedules import Clock
from flowspec.schedules_pass import Planner


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


CRONS = ("30 2 * * *", "*/20 2 * * *", "15 2 * * *", "45 1 * * *", "0,30 * * * *", "*/7 1-3 * * *",
         "59 23 * * *", "0 0 29 2 *", "0 12 * * 1", "* * * * *", "13 7 1 * *", "0 3 * 3,10 0")


@pytest.mark.parametrize("now", [
    "2026-03-08T06:00:00+00:00",   # America/Chicago springs forward at 08:00 UTC
    "2026-11-01T05:30:00+00:00",   # and falls back at 07:00 UTC
    "2026-03-29T00:30:00+00:00",   # Europe/Berlin springs forward at 01:00 UTC
    "2026-10-03T15:00:00+00:00",   # Australia/Lord_Howe moves half an hour forward (15:00 UTC)
    "2026-04-04T14:45:00+00:00",   # and back (15:00 UTC)
    "2026-06-15T12:00:00+00:00",   # no change anywhere near
])
@pytest.mark.parametrize("horizon", [3600.0, 3 * 86400.0])
def test_shared_planning_gives_the_times_of_each_clock(now: str, horizon: float) -> None:
    at = _at(now)
    zones = ["UTC", "America/Chicago", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata",
             "Pacific/Chatham", "America/St_Johns", "Pacific/Kiritimati", "Etc/GMT+12"]
    zones += random.Random(now).sample(sorted(z for z in available_timezones() if "/" in z), 8)
    planner = Planner(at, 50)
    starts = [at, at - 5400.0, at + 0.5, at - 86400.0 * 3]  # the last is planned the slow way
    for tz in zones:
        ZoneInfo(tz)  # an unknown zone would fail here, not in the comparison
        for cron in CRONS:
            clock = Clock(cron=cron, timezone=tz)
            for start in starts:
                assert planner.times(clock, start, at + horizon) == planner._slow(clock, start, at + horizon), \
                    (tz, cron, start)
    for interval, anchor in ((3600.0, None), (420.0, 12.5), (86400.0, at - 7)):
        clock = Clock(interval=interval, start=anchor)
        assert planner.times(clock, at, at + horizon) == planner._slow(clock, at, at + horizon)
