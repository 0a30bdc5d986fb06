"""Schedules: `python benchmarks/schedules.py [--part pass,simulated,realtime] [--postgres | --backend URL]`.

pass       `flowspec scheduler --once` as users run it, against a backend holding N flows with one
           clock each (cron clocks in several zones, and intervals); three passes:
             first   every clock is due: each creates its runs of the horizon (1h)
             steady  10 s later, nothing new to create (what a running scheduler does most of the time)
             next    an hour later: every clock is due again
           The pass's own time (`--format json`'s `seconds`), its CPU time in the scheduler
           (`cpu_seconds`; the database's own work is not in it) and the whole process's time.
           Target: a pass over 10 000 clocks under 1 s.
simulated  3 schedulers on PostgreSQL, 200 flows on a 1-minute cron, 30 minutes of a clock this
           script controls (FLOWSPEC_NOW): at each step all schedulers make a pass at once
           (`flowspec scheduler --once`, each with its own skew). Target: 0 duplicates, 0 missed
           runs, each run planned before its time.
realtime   3 schedulers (`flowspec scheduler`) and 3 agents (`flowspec agent start`) on
           PostgreSQL in real time, at a smaller scale (20 flows on a 1-minute cron, 3 minutes):
           every run made once, run once, and started (Submitted) within one poll interval of its time.

PostgreSQL: `--postgres` starts a throwaway server as the integration tests do (initdb, pg_ctl);
`--backend URL` uses yours (an empty database). The pass part also runs on a fresh SQLite file.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FLOWSPEC = os.path.join(os.path.dirname(sys.executable), "flowspec")  # the console script, as users run it
ZONES = ("UTC", "America/Chicago", "Europe/Berlin", "Australia/Lord_Howe")
T0 = datetime(2026, 3, 8, 6, 0, tzinfo=timezone.utc).timestamp()  # Chicago springs forward at 08:00 UTC


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


# -- backends -------------------------------------------------------------------------------------
class Postgres:
    """A throwaway PostgreSQL server (the integration tests' own), or the one at --backend."""

    def __init__(self, url: str | None) -> None:
        self.server = None
        if url is None:
            sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
            from conftest import PostgresServer, _pg_bindir

            bindir = _pg_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) not found: install them, or give --backend")
            self.server = PostgresServer(bindir)
            self.server.start()
            url = self.server.url
        self.url, self.count = url, 0

    def database(self) -> str:
        """A new empty database on the server (the given URL itself when it is not ours)."""
        if self.server is None:
            return self.url
        import psycopg

        self.count += 1
        name = f"bench_{os.getpid()}_{self.count}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        if self.server is not None:
            self.server.destroy()


def _env(home: str, backend: str, now: float | None = None) -> dict:
    env = {**os.environ, "FLOWSPEC_HOME": home, "FLOWSPEC_BACKEND": backend, "PYTHONPATH": ROOT}
    env.pop("FLOWSPEC_NOW", None)
    if now is not None:
        env["FLOWSPEC_NOW"] = repr(now)
    return env


def _scheduler_once(env: dict, horizon: str) -> subprocess.Popen:
    return subprocess.Popen([FLOWSPEC, "scheduler", "--once", "--horizon", horizon, "--format", "json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"flowspec scheduler --once failed: {err.strip()}")
    return json.loads(out)


def _register_clocks(url: str, count: int, clocks) -> None:
    """`count` flows with the clocks `clocks(i)`, recorded as `flowspec register` records them
    (straight through the backend: `register` itself would take a process per flow)."""
    from flowspec.backend import open_backend

    with open_backend(url) as backend:
        for i in range(count):
            flow, _ = backend.register_flow("bench", f"flow-{i}", [], {"type": "local"}, f"c{i}", "", {})
            backend.record_clocks(flow.id, clocks(i), False, T0)


# -- pass -----------------------------------------------------------------------------------------
def part_pass(args, postgres: Postgres | None) -> list[str]:
    targets = [("SQLite", f"sqlite://{os.path.join(tempfile.mkdtemp(prefix='flowspec-bench-'), 'flowspec.db')}")]
    if postgres is not None:
        targets.append(("PostgreSQL", postgres.database()))
    lines, worst = [], 0.0
    for label, url in targets:
        started = time.perf_counter()
        _register_clocks(url, args.clocks, lambda i: clocks_for(i, args.distinct))
        print(f"{label}: registered {args.clocks} flows with one clock each in {time.perf_counter() - started:.1f}s",
              flush=True)
        home = tempfile.mkdtemp(prefix="flowspec-bench-home-")
        for step, at in (("first", T0), ("steady", T0 + 10), ("next", T0 + 3600)):
            started = time.perf_counter()
            done = _finish(_scheduler_once(_env(home, url, at), "1h"))
            whole = time.perf_counter() - started
            worst = max(worst, done["seconds"])
            lines.append(f"| {label} | {step} | {done['created']} | {done['seconds']:.3f} s |"
                         f" {done['cpu_seconds']:.3f} s | {whole:.2f} s |")
            print(lines[-1], flush=True)
    verdict = "PASS" if worst < 1.0 else "MISS"
    lines.append(f"target: a pass over 10 000 clocks under 1 s: {verdict} (worst {worst:.3f} s over {args.clocks} clocks)")
    return ["| backend | pass | runs created | pass time | its CPU time (scheduler) | `flowspec scheduler --once` process |",
            "| --- | --- | --- | --- | --- | --- |", *lines]


# -- simulated ------------------------------------------------------------------------------------
def _runs(url: str) -> list[tuple]:
    """(id, flow, clock, scheduled_start, created, state) of every run a clock made."""
    from flowspec.backend import open_backend

    with open_backend(url) as backend, backend._transaction(write=False) as tx:
        return tx.all("SELECT id, flow_name, clock, scheduled_start, created, state FROM flow_runs"
                      " WHERE clock IS NOT NULL")


def _tally(runs: list[tuple], flows: list[str], boundaries: list[float]) -> tuple[int, int]:
    """(duplicates, missed): runs beyond the first for a clock and time; (flow, time) without a run."""
    seen: dict[tuple, int] = {}
    for _, _, clock, start, *_ in runs:
        seen[clock, start] = seen.get((clock, start), 0) + 1
    duplicates = sum(n - 1 for n in seen.values())
    have = {(run[1], run[3]) for run in runs}
    missed = sum(1 for flow in flows for t in boundaries if (flow, t) not in have)
    return duplicates, missed


def part_simulated(args, postgres: Postgres) -> list[str]:
    from flowspec.schedules import Clock

    url, flows = postgres.database(), [f"flow-{i}" for i in range(args.flows)]
    _register_clocks(url, args.flows, lambda i: [Clock(cron="* * * * *")])
    home = tempfile.mkdtemp(prefix="flowspec-bench-home-")
    steps = range(0, args.minutes * 60, args.step)
    passes: list[float] = []
    started = time.perf_counter()
    for offset in steps:
        # The schedulers' clocks are a few seconds apart, as on several machines.
        procs = [_scheduler_once(_env(home, url, T0 + offset + 7 * k), "2m") for k in range(args.schedulers)]
        passes += [_finish(proc)["seconds"] for proc in procs]
    took = time.perf_counter() - started
    runs = _runs(url)
    boundaries = [T0 + 60 * m for m in range(1, args.minutes + 1)]
    in_window = [r for r in runs if r[3] <= boundaries[-1]]
    duplicates, missed = _tally(in_window, flows, boundaries)
    lead = min(r[3] - r[4] for r in in_window)
    ok = duplicates == 0 and missed == 0 and lead > 0
    return [f"{args.schedulers} schedulers, {args.flows} flows on `* * * * *`, {args.minutes} simulated minutes in"
            f" steps of {args.step} s ({len(steps) * args.schedulers} `flowspec scheduler --once` processes, {took:.0f} s):",
            f"runs in the window: {len(in_window)} (expected {len(flows) * len(boundaries)}); duplicates: {duplicates};"
            f" missed: {missed}; each planned at least {lead:.0f} s before its time;"
            f" pass time median {statistics.median(passes) * 1000:.0f} ms, max {max(passes) * 1000:.0f} ms",
            f"target: 0 duplicates, 0 missed, every run planned before its time: {'PASS' if ok else 'MISS'}"]


# -- realtime -------------------------------------------------------------------------------------
TASKS = "def tick() -> None:\n    print('tick')\n"


def _spec(name: str, schedule: str) -> str:
    return f"version: 1\nname: {name}\nschedule:\n{schedule}tasks:\n  tick: {{run: \"ticks:tick\"}}\n"


def register_specs(folder: str, env: dict, names: list[str], schedule: str) -> None:
    """Register one flow per name, through `flowspec register`."""
    with open(os.path.join(folder, "ticks.py"), "w") as fh:
        fh.write(TASKS)
    for name in names:
        path = os.path.join(folder, f"{name}.yaml")
        with open(path, "w") as fh:
            fh.write(_spec(name, schedule))
        done = subprocess.run([FLOWSPEC, "register", path], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"flowspec register failed: {done.stderr.strip()}")


def start_processes(env: dict, schedulers: int, agents: int, poll: float, max_runs: int, pass_every: str,
                    horizon: str, logs: str) -> list[subprocess.Popen]:
    procs = []
    for k in range(schedulers):
        procs.append(subprocess.Popen([FLOWSPEC, "scheduler", "--interval", pass_every, "--horizon", horizon],
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(logs, f"scheduler-{k}.log"), "w")))
    for k in range(agents):
        procs.append(subprocess.Popen([FLOWSPEC, "agent", "start", "--name", f"agent-{k}", "--poll-interval", f"{poll:g}",
                                       "--max-runs", str(max_runs)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(logs, f"agent-{k}.log"), "w")))
    return procs


def submitted_times(url: str) -> dict[str, list[float]]:
    """run id → the times it was Submitted (claimed by an agent)."""
    from flowspec.backend import open_backend

    with open_backend(url) as backend, backend._transaction(write=False) as tx:
        rows = tx.all("SELECT run_id, time FROM run_states WHERE state = 'Submitted'")
    found: dict[str, list[float]] = {}
    for run_id, at in rows:
        found.setdefault(run_id, []).append(at)
    return found


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def part_realtime(args, postgres: Postgres) -> list[str]:
    from flowspec.backend.runs import FINAL_STATES

    url, folder = postgres.database(), tempfile.mkdtemp(prefix="flowspec-bench-rt-")
    env = _env(os.path.join(folder, "home"), url)
    names = [f"tick-{i}" for i in range(args.rt_flows)]
    register_specs(folder, env, names, '  - cron: "* * * * *"\n')
    began = time.time()
    procs = start_processes(env, args.schedulers, args.agents, args.poll, args.max_runs, "5s", "2m", folder)
    try:
        boundaries = [60.0 * m for m in range(int(began // 60) + 1, int((began + 60 * args.rt_minutes) // 60) + 1)]
        time.sleep(max(0.0, boundaries[-1] - time.time()))
        deadline = time.time() + 300
        while time.time() < deadline:  # every run of the window ended
            window = [r for r in _runs(url) if r[3] <= boundaries[-1]]
            if len(window) >= len(names) * len(boundaries) and all(r[5] in FINAL_STATES for r in window):
                break
            time.sleep(2)
    finally:
        stop(procs)
    runs = [r for r in _runs(url) if r[3] <= boundaries[-1]]
    duplicates, missed = _tally(runs, names, boundaries)
    claims = submitted_times(url)
    failed = sum(1 for r in runs if r[5] != "Success")
    twice = sum(1 for r in runs if len(claims.get(r[0], ())) > 1)
    lateness = sorted(claims[r[0]][0] - r[3] for r in runs if r[0] in claims)
    early = sum(1 for late in lateness if late < 0)
    within = sum(1 for late in lateness if 0 <= late <= args.poll)
    ok = duplicates == 0 and missed == 0 and failed == 0 and twice == 0 and early == 0 and within == len(runs)
    p95 = lateness[max(0, -(-len(lateness) * 95 // 100) - 1)]  # nearest rank
    return [f"{args.schedulers} schedulers (`--interval 5s --horizon 2m`), {args.agents} agents (`--poll-interval"
            f" {args.poll:g} --max-runs {args.max_runs}`), {len(names)} flows on `* * * * *`, {len(boundaries)} minutes"
            " of real time:",
            f"runs: {len(runs)} (expected {len(names) * len(boundaries)}); duplicates: {duplicates}; missed: {missed};"
            f" not Success: {failed}; claimed twice: {twice}; started before their time: {early}",
            f"start after its time (Submitted - scheduled): median {statistics.median(lateness):.2f} s, p95 {p95:.2f} s,"
            f" max {lateness[-1]:.2f} s; within one poll interval ({args.poll:g} s): {within} of {len(runs)}",
            f"target: 0 duplicates, 0 missed, every run started within one poll interval: {'PASS' if ok else 'MISS'}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="pass", help="pass, simulated, realtime, or several with commas")
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL server")
    parser.add_argument("--backend", default=None, help="a PostgreSQL URL (an empty database) instead of --postgres")
    parser.add_argument("--clocks", type=int, default=10_000, help="pass: flows with one clock each")
    parser.add_argument("--distinct", action="store_true", help="pass: no two clocks alike (the worst case)")
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--flows", type=int, default=200, help="simulated: flows on a 1-minute cron")
    parser.add_argument("--minutes", type=int, default=30, help="simulated: minutes of the simulated clock")
    parser.add_argument("--step", type=int, default=60, help="simulated: seconds of simulated time between passes")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rt-flows", type=int, default=20, help="realtime: flows on a 1-minute cron")
    parser.add_argument("--rt-minutes", type=int, default=3, help="realtime: minutes of real time")
    parser.add_argument("--poll", type=float, default=2.0, help="realtime: the agents' poll interval (s)")
    parser.add_argument("--max-runs", type=int, default=10, help="realtime: each agent's --max-runs")
    args = parser.parse_args()
    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    if unknown := set(parts) - {"pass", "simulated", "realtime"}:
        parser.error(f"--part: unknown {', '.join(sorted(unknown))}; expected pass, simulated, realtime")
    if not os.path.exists(FLOWSPEC):
        raise SystemExit(f"no flowspec console script at {FLOWSPEC}: pip install -e . in this environment")
    needs_pg = args.postgres or args.backend or {"simulated", "realtime"} & set(parts)
    postgres = Postgres(args.backend) if needs_pg else None
    try:
        for part in parts:
            print(f"\n## {part}", flush=True)
            lines = {"pass": part_pass, "simulated": part_simulated, "realtime": part_realtime}[part](args, postgres)
            print("\n".join(lines), flush=True)
    finally:
        if postgres is not None:
            postgres.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
