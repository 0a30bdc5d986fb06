"""`schedule:` and `catchup:` as `flowspec validate` and `plan` see them: each mistake at its line and
column, and the next five times in the plan (FLOWSPEC_NOW sets the scheduler's now)."""
from __future__ import annotations

import json
from pathlib import Path

BAD = """\
version: 1
name: sched
parameters:
  full: {type: boolean, default: true}
schedule:
  - cron: "61 7 * * *"
    timezone: Mars/Base
    parameters: {fulll: false, full: "yes"}
  - interval: 0s
  - {cron: "* * * * *", interval: 1m}
  - interval: 1h
    timezone: Europe/Berlin
  - interval: 1d
catchup: maybe
tasks:
  t: {run: "m:g"}
"""
GOOD = """\
version: 1
name: sched
parameters:
  full: {type: boolean, default: true}
schedule:
  - cron: "30 2 * * *"
    timezone: America/Chicago
    parameters: {full: false}
    labels: [prod]
  - interval: 12h
    start: 2026-01-01T06:00:00Z
catchup: true
tasks:
  t: {run: "m:g"}
"""


def test_schedule_mistakes_are_each_at_their_place(cli, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    done = cli("validate", tmp_path / "bad.yaml")
    assert done.rc == 1 and "Traceback" not in done.output
    at = f"{tmp_path / 'bad.yaml'}"
    for where in ("6:11: error: schedule[0].cron: invalid cron expression '61 7 * * *'",
                  "7:15: error: schedule[0].timezone: unknown time zone 'Mars/Base'",
                  "8:25: error: schedule[0].parameters.fulll: unknown parameter 'fulll'",
                  "8:38: error: schedule[0].parameters.full: parameter 'full' of this clock: expected boolean",
                  "9:15: error: schedule[1].interval: an interval must be at least 1s",
                  "10:5: error: schedule[2]: a clock has exactly one of `cron` and `interval`",
                  "12:15: error: schedule[3].timezone: an interval is absolute time",
                  "13:15: error: schedule[4].interval: '1d': expected a duration such as 500ms, 5s, 2m or 1h",
                  "14:10: error: catchup: expected boolean"):
        assert f"{at}:{where}" in done.stdout, done.stdout


def test_plan_shows_the_next_five_times_across_a_zone_change(cli, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def g() -> None:\n    pass\n")
    (tmp_path / "flow.yaml").write_text(GOOD)
    assert cli("validate", tmp_path / "flow.yaml").rc == 0
    env = {"FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_NOW": "2026-03-07T00:00:00-06:00"}
    plan = json.loads(cli("plan", tmp_path / "flow.yaml", "--format", "json", env=env).stdout)
    assert plan["schedule"]["catchup"] is True
    assert [n["time"] for n in plan["schedule"]["next"]] == [
        "2026-03-07T02:30:00-06:00", "2026-03-07T18:00:00+00:00", "2026-03-08T06:00:00+00:00",
        "2026-03-08T03:00:00-05:00", "2026-03-08T18:00:00+00:00"]  # now (06:00Z) itself is not next
    text = cli("plan", tmp_path / "flow.yaml", env=env).stdout
    assert "cron '30 2 * * *' (America/Chicago)" in text and "2026-03-08T03:00:00-05:00  (clock 0)" in text
