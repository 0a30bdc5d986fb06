"""The times of many clocks in one scheduler pass, with the work they have in common done once.

`flowspec.schedules.times` walks one clock: it parses the cron expression, walks the wall clock
with cronsim and maps each wall time to its instant through `zoneinfo`, about 0.1 ms per clock.
A pass over 10 000 clocks pays that 10 000 times unless clocks share it. Here:
  - a cron expression's wall times are walked once, from the earliest wall time a clock of it
    starts from: every clock of that expression, in every zone, shares them;
  - a zone's UTC offsets over the pass are found once (its transitions, to the second), so a wall
    time becomes an instant by arithmetic, with the rules of `flowspec.schedules.instant`;
  - interval clocks are arithmetic already.
The times are the same as `times` gives (tests compare them); a clock planned from long before
the pass (a catchup after a long stop) takes `times` itself.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from datetime import datetime, timezone

from flowspec.schedules import Clock, times, zone

UTC = timezone.utc
_STEP = 3 * 3600.0  # offsets are sampled this far apart: no zone changes twice within 3 hours
_MARGIN = 2 * 86400.0  # zones are followed from this long before the pass


def _offset(t: float, tz) -> float:
    return datetime.fromtimestamp(t, tz).utcoffset().total_seconds()


class _Zone:
    """A zone's UTC offsets from `start` on, as pieces [starts[i], starts[i+1]) of one offset each;
    extended as later instants are asked for."""

    def __init__(self, tz, start: float) -> None:
        self.tz, self.start = tz, math.floor(start)
        self.starts, self.offsets, self.end = [self.start], [_offset(self.start, tz)], float(self.start)
        self.widest = self.narrowest = self.offsets[0]

    def _extend(self, until: float) -> None:
        while self.end <= until:
            later = self.end + _STEP
            offset = _offset(later, self.tz)
            if offset != self.offsets[-1]:
                lo, hi = int(self.end), int(later)  # the change falls on a whole second in (lo, hi]
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if _offset(mid, self.tz) == self.offsets[-1]:
                        lo = mid
                    else:
                        hi = mid
                self.starts.append(hi)
                self.offsets.append(offset)
                self.widest, self.narrowest = max(self.widest, offset), min(self.narrowest, offset)
            self.end = later

    def offset(self, t: float) -> float:
        if t < self.start:
            return _offset(t, self.tz)
        if t >= self.end:
            self._extend(t)
        return self.offsets[0] if len(self.offsets) == 1 else self.offsets[bisect_right(self.starts, t) - 1]

    def instant(self, wall: float) -> float | None:
        """The instant of a wall time (seconds as if the wall clock were UTC): its first occurrence,
        or the change that skips it; None when it lies before the pieces."""
        if wall - self.narrowest >= self.end:
            self._extend(wall - self.narrowest + 86400.0)  # a day at a time
        if len(self.offsets) == 1:  # no change in sight: most zones, most of the time
            t = wall - self.offsets[0]
            return t if t >= self.start else None
        i = max(bisect_right(self.starts, wall - self.widest) - 1, 0)
        last = len(self.starts) - 1
        while True:
            t = wall - self.offsets[i]
            if t < self.starts[i]:
                return None if i == 0 else float(self.starts[i])  # in the gap a change skipped
            if i == last or t < self.starts[i + 1]:
                return t
            i += 1


class _Walls:
    """A cron expression's wall times after `start`, as UTC-like seconds, walked on demand."""

    def __init__(self, expr: str, start: int) -> None:
        self.expr, self.start, self.walls, self.done = expr, start, [], False
        self._iter = self._walk(start)

    def _walk(self, start: int):
        from cronsim import CronSim

        return CronSim(self.expr, datetime.fromtimestamp(start, UTC).replace(tzinfo=None))

    def _more(self) -> bool:
        try:
            local = next(self._iter)
        except StopIteration:  # cronsim gives up after 50 years without a match
            self.done = True
            return False
        self.walls.append(local.replace(tzinfo=UTC).timestamp())
        return True

    def reach_back(self, start: int) -> None:
        """Walk from an earlier `start` too (the same matches follow any wall time)."""
        if start >= self.start:
            return
        earlier: list[float] = []
        for local in self._walk(start):
            wall = local.replace(tzinfo=UTC).timestamp()
            if wall > self.start:  # the first match after the old start: walked already, or next
                break
            earlier.append(wall)
        self.walls[:0], self.start = earlier, start

    def index_after(self, wall: int) -> int:
        """The index of the first wall time after `wall` (not before `start`)."""
        while not self.done and (not self.walls or self.walls[-1] <= wall):
            self._more()
        return bisect_right(self.walls, wall)

    def get(self, i: int) -> float | None:
        while i >= len(self.walls) and not self.done:
            self._more()
        return self.walls[i] if i < len(self.walls) else None


class Planner:
    """`times(clock, start, until)` for the clocks of one pass made at `now`."""

    def __init__(self, now: float, limit: int) -> None:
        self.now, self.limit = now, limit
        self._zones: dict[str, _Zone] = {}
        self._walls: dict[str, _Walls] = {}

    def times(self, clock: Clock, start: float, until: float) -> tuple[list[float], float]:
        """The clock's times from `start` to `until` (at most `limit`), and the next one after them."""
        if clock.cron is not None and start >= self.now - _MARGIN / 2:
            found = self._cron(clock, start - 1e-6, until)
            if found is not None:
                return found
        return self._slow(clock, start, until)

    def _slow(self, clock: Clock, start: float, until: float) -> tuple[list[float], float]:
        due: list[float] = []
        for t in times(clock, start - 1e-6):
            if t > until or len(due) >= self.limit:
                return due, t
            due.append(t)
        return due, math.inf

    def _zone(self, name: str) -> _Zone:
        if name not in self._zones:
            self._zones[name] = _Zone(zone(name), self.now - _MARGIN)
        return self._zones[name]

    def _cron(self, clock: Clock, after: float, until: float) -> tuple[list[float], float] | None:
        tz = self._zone(clock.timezone)
        # As `times` does: walk the wall clock from `after`'s wall time, or from 3 hours before it
        # just after a change (a fall back puts times still to come before it).
        here = tz.offset(after)
        begin = math.floor(after + here)  # cronsim starts from a whole second
        if tz.offset(after - 3 * 3600) != here:
            begin -= 3 * 3600
        walls = self._walls.get(clock.cron)
        if walls is None:
            walls = self._walls[clock.cron] = _Walls(clock.cron, begin)
        walls.reach_back(begin)
        due: list[float] = []
        last, i = None, walls.index_after(begin)
        while (wall := walls.get(i)) is not None:
            i += 1
            t = tz.instant(wall)
            if t is None:
                return None
            if t <= after or t == last:  # several wall times in one gap fall on one instant: once
                continue
            if t > until or len(due) >= self.limit:
                return due, t
            due.append(t)
            last = t
        return due, math.inf
