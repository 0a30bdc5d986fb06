"""SIGTERM and SIGHUP to `flowspec run FILE` end the run as Ctrl-C does, on every executor.

The flow and the way it is run are those of the Ctrl-C tests in test_executors.py: two sleepers
run (one on `local`) when the signal is sent to the `flowspec run` process alone, as `kill PID`
or a service manager does. The run must cancel what has not finished, call `on_exit`, print its
JSON report, record the run Cancelled in its backend and exit 128 + the signal's number.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import pytest
from test_executors import (
    CANCEL_FLOW, CANCEL_TASKS, EXECUTORS, Run, executor_yaml, finish_run, read_until, start_run, write_flow)

from flowspec.backend import open_backend

# SIGTERM on every executor; SIGHUP on one executor in the process and one out of it (the
# handling is the command's, not the executor's).
CASES = [pytest.param((p.values[0], signal.SIGTERM), id=f"{p.id}-SIGTERM", marks=p.marks) for p in EXECUTORS] + [
    pytest.param(("local", signal.SIGHUP), id="local-SIGHUP"),
    pytest.param(("processes", signal.SIGHUP), id="local-dask-processes-SIGHUP"),
]


@dataclass
class Stopped:
    kind: str
    signum: int
    run: Run
    seconds: float


@pytest.fixture(scope="module", params=CASES)
def stopped(request, tmp_path_factory) -> Stopped:
    kind, signum = request.param
    folder = tmp_path_factory.mktemp(f"stop-{kind}-{signum}")
    write_flow(folder, CANCEL_FLOW, CANCEL_TASKS, executor_yaml(kind, request))
    proc = start_run(folder)
    try:
        needles = ["sleeper | going to sleep"] + ([] if kind == "local" else ["sibling | going to sleep"])
        seen = read_until(proc, needles, timeout=60)
        proc.send_signal(signum)
        start = time.monotonic()
        run = finish_run(proc, folder, timeout=60, seen=seen)
        seconds = time.monotonic() - start
    finally:
        (folder / "release").touch()  # a sleeper that still runs somewhere ends now
    return Stopped(kind, signum, run, seconds)


def test_a_stop_signal_cancels_the_run_as_ctrl_c_does_and_exits_128_plus_its_number(stopped: Stopped) -> None:
    run = stopped.run
    assert run.rc == 128 + stopped.signum, run.stderr
    report = run.report  # the JSON object is still printed, alone on stdout
    name = signal.Signals(stopped.signum).name
    assert (report["state"], report["message"]) == ("Cancelled", f"interrupted by {name}")
    states = {task: (t["state"], t["message"]) for task, t in report["tasks"].items()}
    assert states == {"first": ("Success", None), **{
        task: ("Cancelled", "the flow run was cancelled") for task in ("sleeper", "sibling", "later", "later_mapped")}}
    assert (run.folder / "on_exit.txt").read_text() == "Cancelled"
    assert not list(run.folder.glob("*.ran"))
    assert stopped.seconds < 15
    assert "Traceback" not in run.stderr, run.stderr


def test_a_stop_signal_records_the_run_cancelled_in_the_backend(stopped: Stopped) -> None:
    with open_backend(f"sqlite://{stopped.run.folder / '.flowspec' / 'flowspec.db'}") as backend:
        recorded = backend.get_run(stopped.run.report["run_id"])
        assert (recorded.state, recorded.exit_code) == ("Cancelled", 128 + stopped.signum)
        assert recorded.message == f"interrupted by {signal.Signals(stopped.signum).name}"
        latest = {t.task: t.state for t in backend.task_states(recorded.id)}
        assert latest == {"first": "Success", "sleeper": "Cancelled", "sibling": "Cancelled", "later": "Cancelled",
                          "later_mapped": "Cancelled"}
