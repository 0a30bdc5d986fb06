"""Schedules: the `schedule:` clocks of a spec (cron with a time zone, or an interval with an
optional anchor), checked when a spec is compiled, and the times each clock gives.

Cron expressions are read by `cronsim` (small, maintained, no dependencies, ~20 ms to import);
time zones by `zoneinfo` (with `tzdata` where the system has no zone database). Both come with
the `schedules` extra and are imported only when a spec has a schedule.

Cron times follow the zone's wall clock: a wall time that does not exist (spring forward) runs
once, at the first valid instant after it (the transition); a wall time that occurs twice (fall
back) runs once, at its first occurrence. Interval times are absolute: anchor + k * interval,
the anchor being `start` or, without it, 1970-01-01T00:00:00Z (so `1h` falls on the hour).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

UTC = timezone.utc
NOW_VAR = "FLOWSPEC_NOW"  # a testing aid: the scheduler's notion of now (epoch seconds or ISO 8601)


@dataclass(frozen=True)
class Clock:
    """One clock of a flow's schedule."""

    cron: str | None = None
    interval: float | None = None  # seconds
    start: float | None = None  # the interval's anchor (epoch seconds)
    timezone: str = "UTC"
    parameters: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    labels: tuple | None = None  # None: the flow's labels

    def to_json(self) -> dict:
        return {"cron": self.cron, "interval": self.interval, "start": self.start, "timezone": self.timezone,
                "parameters": dict(self.parameters), "labels": list(self.labels) if self.labels is not None else None}

    @classmethod
    def from_json(cls, data: dict) -> Clock:
        labels = data.get("labels")
        return cls(data.get("cron"), data.get("interval"), data.get("start"), data.get("timezone") or "UTC",
                   MappingProxyType(dict(data.get("parameters") or {})), tuple(labels) if labels is not None else None)

    @property
    def key(self) -> str:
        """What makes two clocks the same clock: when they fire (parameters and labels aside)."""
        what = json.dumps([self.cron, self.interval, self.start, self.timezone])
        return hashlib.sha256(what.encode()).hexdigest()[:16]

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron '{self.cron}' ({self.timezone})"
        return f"every {_seconds_text(self.interval)}" + (f" from {iso(self.start)}" if self.start is not None else "")


def _seconds_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def iso(stamp: float, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(stamp, zone(tz)).isoformat()


def zone(name: str):
    if name == "UTC":
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def now() -> float:
    """The scheduler's now: `$FLOWSPEC_NOW` when set (a testing aid), else the system clock."""
    given = os.environ.get(NOW_VAR)
    if not given:
        return time.time()
    try:
        return float(given)
    except ValueError:
        return parse_instant(given)


def parse_instant(text: str) -> float:
    """An ISO 8601 date-time (a zone offset or Z; none means UTC) as epoch seconds."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# -- checking and building a spec's schedule ------------------------------------------------------
def check(data: dict, error, params=()) -> None:
    """Report each problem of the spec's `schedule` with `error(path, message, hint=None)`;
    `params`: the declared parameter names (a clock's parameters must be among them)."""
    clocks = data.get("schedule")
    if not isinstance(clocks, list):
        return  # the JSON Schema said what is wrong with it
    for i, clock in enumerate(clocks):
        if isinstance(clock, dict):
            _check_clock(("schedule", i), clock, error)
            given = clock.get("parameters") if isinstance(clock.get("parameters"), dict) else {}
            for name, value in given.items():
                _check_param(("schedule", i, "parameters", name), name, value, params, error)


def _check_param(path: tuple, name: str, value, params, error) -> None:
    from flowspec.params import type_error
    from flowspec.schema import did_you_mean

    if name not in params:
        error(path, f"unknown parameter '{name}'", did_you_mean(name, list(params)) or "declare it under `parameters`")
        return
    declared = params[name] if isinstance(params, dict) and isinstance(params[name], dict) else {}
    kind = declared.get("type") if isinstance(declared.get("type"), str) else None
    enum = tuple(declared["enum"]) if isinstance(declared.get("enum"), list) else None
    if (why := type_error(value, kind, enum)):
        error(path, f"parameter '{name}' of this clock: {why}")


def _check_clock(path: tuple, clock: dict, error) -> None:
    from flowspec.compile import parse_duration

    has_cron, has_interval = "cron" in clock, "interval" in clock
    if has_cron == has_interval:
        error(path, "a clock has exactly one of `cron` and `interval`",
              "write `cron: \"13 7 * * *\"` (with an optional timezone) or `interval: 15m`")
        return
    if has_cron:
        if "start" in clock:
            error(path + ("start",), "`start` anchors an interval; a cron clock has none", "remove it")
        if isinstance(clock["cron"], str):
            problem = cron_problem(clock["cron"])
            if problem:
                error(path + ("cron",), f"invalid cron expression '{clock['cron']}': {problem}",
                      "five fields: minute hour day-of-month month day-of-week, e.g. \"13 7 * * *\"")
    else:
        try:
            seconds = parse_duration(clock["interval"])
        except (AttributeError, TypeError, ValueError):  # no match, not text, not a number
            seconds = None  # the JSON Schema reports a malformed duration
        if seconds is not None and not (math.isfinite(seconds) and seconds >= 1):
            error(path + ("interval",), "an interval must be at least 1s")
        if "timezone" in clock and "start" not in clock:
            error(path + ("timezone",), "an interval is absolute time: a timezone changes nothing without `start`",
                  "remove it, or give `start` (a local time in that zone)")
        if isinstance(clock.get("start"), str):
            try:
                _start(clock["start"], clock.get("timezone") or "UTC")
            except ValueError as exc:
                error(path + ("start",), f"invalid start '{clock['start']}': {exc}",
                      "an ISO 8601 date-time, e.g. 2026-01-01T00:00:00Z")
    if isinstance(clock.get("timezone"), str) and (why := zone_problem(clock["timezone"])):
        error(path + ("timezone",), why, "an IANA zone name such as America/Chicago or Europe/Berlin")


def cron_problem(expr: str) -> str | None:
    from cronsim import CronSim, CronSimError

    if len(expr.split()) != 5:
        return f"expected 5 fields, got {len(expr.split())}"
    try:
        CronSim(expr, datetime(2026, 1, 1))
    except CronSimError as exc:
        return str(exc).lower() or "invalid"
    return None


def zone_problem(name: str) -> str | None:
    try:
        zone(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError for malformed keys
        return f"unknown time zone '{name}'"
    return None


def _start(text, tz: str) -> float:
    if isinstance(text, datetime):
        text = text.isoformat()
    value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone(tz))
    return value.timestamp()


def build(data: dict) -> tuple[Clock, ...]:
    """The compiled clocks of a spec that `check` found valid."""
    from flowspec.compile import parse_duration

    clocks = []
    for clock in data.get("schedule") or ():
        tz = clock.get("timezone") or "UTC"
        labels = clock.get("labels")
        clocks.append(Clock(
            cron=clock.get("cron"), timezone=tz,
            interval=float(parse_duration(clock["interval"])) if "interval" in clock else None,
            start=_start(clock["start"], tz) if clock.get("start") is not None else None,
            parameters=MappingProxyType(dict(clock.get("parameters") or {})),
            labels=tuple(labels) if labels is not None else None))
    return tuple(clocks)


# -- times ---------------------------------------------------------------------------------------
def times(clock: Clock, after: float, until: float = math.inf) -> Iterator[float]:
    """The clock's instants t with after < t <= until, ascending, each once."""
    if clock.interval is not None:
        anchor = clock.start or 0.0
        k = math.floor((after - anchor) / clock.interval) + 1
        while (t := anchor + k * clock.interval) <= until:
            if t > after:
                yield t
            k += 1
        return
    yield from _cron_times(clock, after, until)


def _cron_times(clock: Clock, after: float, until: float) -> Iterator[float]:
    from cronsim import CronSim

    tz = zone(clock.timezone)
    # Walk the wall clock (naive local times), then map each to its instant. Just after a fall
    # back, the wall time of `after` is past times still to come: start from before the change.
    here = datetime.fromtimestamp(after, tz)
    wall = here.replace(tzinfo=None)
    if tz is not UTC and datetime.fromtimestamp(after - 3 * 3600, tz).utcoffset() != here.utcoffset():
        wall -= timedelta(hours=3)
    last = None
    for local in CronSim(clock.cron, wall):
        t = instant(local, tz)
        if t > until:
            return
        if t > after and t != last:  # several wall times in one gap fall on one instant: once
            last = t
            yield t


def instant(local: datetime, tz) -> float:
    """The instant of a wall time in `tz`: its first occurrence when it occurs twice, the first
    valid instant after it (the transition) when it does not exist."""
    first = local.replace(tzinfo=tz, fold=0)
    t = first.timestamp()
    if tz is UTC or datetime.fromtimestamp(t, tz).replace(tzinfo=None) == local:
        return t
    # A gap: fold=1 reads it with the offset after the change, an earlier instant; the change
    # lies between the two. Transitions fall on whole seconds.
    lo, hi = math.floor(local.replace(tzinfo=tz, fold=1).timestamp()), math.ceil(t)
    before = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return float(hi)


def next_times(clocks, after: float, count: int = 5) -> list[tuple[float, int]]:
    """The next `count` (instant, clock index) of all `clocks` after `after`, merged."""
    found: list[tuple[float, int]] = []
    for i, clock in enumerate(clocks):
        span = 86400.0
        mine: list[float] = []
        while len(mine) < count and span < 86400.0 * 366 * 8:
            mine = list(_take(times(clock, after, after + span), count))
            span *= 8
        found += [(t, i) for t in mine]
    return sorted(found)[:count]


def _take(it: Iterator[float], n: int) -> Iterator[float]:
    for i, t in enumerate(it):
        if i >= n:
            return
        yield t
