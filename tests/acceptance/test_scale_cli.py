"""The user's own path at scale, through the CLI: long chains and cycles, large maps to a pipe
and on a pseudo-terminal, `runs show` of a large map, and what a terminal shows of a run."""
from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

TASKS = '''\
import sys
import time


def numbers(n):
    return list(range(n))


def inc(x):
    return x + 1


def total(values):
    return sum(values)


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


def halves(i):
    # One line written in two calls, as print() does (text, then its newline), with a pause
    # between them in which the other threads write theirs.
    sys.stdout.write(f"line {i} first half,")
    time.sleep(0.05)
    sys.stdout.write(f" line {i} second half\\n")
    return i


def broken_start():
    raise RuntimeError("cluster unreachable")
'''

MAP = '''\
version: 1
name: scale
parameters:
  n: {type: integer, default: 10}
tasks:
  numbers: {run: "steps:numbers", with: {n: "${{ params.n }}"}}
  inc: {run: "steps:inc", map: {x: "${{ tasks.numbers }}"}}
  sum: {run: "steps:total", with: {values: "${{ tasks.inc }}"}}
'''


def chain(length: int, cycle: bool = False) -> str:
    """`length` tasks, each taking the previous one's result, written last task first."""
    lines = ["version: 1", "name: chain", "tasks:"]
    for i in reversed(range(length)):
        prev = length - 1 if i == 0 and cycle else i - 1
        arg = f'"${{{{ tasks.t{prev} }}}}"' if prev >= 0 else "0"
        lines.append(f'  t{i}: {{run: "steps:inc", with: {{x: {arg}}}}}')
    return "\n".join(lines) + "\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(TASKS)
    (tmp_path / "map.yaml").write_text(MAP)
    return tmp_path


def _env(folder: Path) -> dict:
    return {"FLOWSPEC_HOME": str(folder / "home"), "FLOWSPEC_BACKEND": ""}


def on_terminal(args: list[str], cwd: Path, env: dict, columns: int = 60, stdout=None) -> tuple[int, str, float]:
    """Run `python -m flowspec ARGS` with its stderr (and stdout, unless given) on a new
    pseudo-terminal of `columns` columns; (exit code, what the terminal got, seconds)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    full = dict(os.environ, TERM="xterm", **env)
    full.pop("COLUMNS", None)
    full.pop("PYTHONWARNINGS", None)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "flowspec", *args], cwd=cwd, env=full, stdin=follower,
                            stdout=stdout if stdout is not None else follower, stderr=follower, start_new_session=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: no writer left
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    rc = proc.wait(timeout=60)
    return rc, b"".join(chunks).decode(errors="replace"), time.monotonic() - start


# -- compiling ------------------------------------------------------------------------------------
def test_a_long_chain_declared_last_first_validates_plans_and_graphs(cli, folder):
    (folder / "chain.yaml").write_text(chain(10_000))
    validated = cli("validate", "chain.yaml", cwd=folder, env=_env(folder))
    assert (validated.rc, validated.stdout.strip()) == (0, "no errors in 1 file"), validated.output
    planned = cli("plan", "chain.yaml", "--format", "json", cwd=folder, env=_env(folder))
    assert planned.rc == 0, planned.output
    assert [t["name"] for t in json.loads(planned.stdout)["tasks"]][:3] == ["t0", "t1", "t2"]
    drawn = cli("graph", "chain.yaml", cwd=folder, env=_env(folder))
    assert drawn.rc == 0 and drawn.stdout.count(" --> ") == 9_999, drawn.stderr


def test_a_long_cycle_is_named_not_a_crash(cli, folder):
    (folder / "cycle.yaml").write_text(chain(10_000, cycle=True))
    result = cli("validate", "cycle.yaml", cwd=folder, env=_env(folder))
    assert result.rc == 1 and "internal error" not in result.output
    names = " -> ".join(f"t{i}" for i in [*range(9_999, -1, -1), 9_999])
    assert result.stdout.startswith(f"cycle.yaml:4:3: error: tasks.t9999: dependency cycle: {names}\n")


def test_validate_refuses_literal_map_lists_of_different_lengths(cli, folder):
    (folder / "pairs.yaml").write_text('version: 1\nname: pairs\ntasks:\n  pair:\n    run: "steps:inc"\n'
                                       "    map:\n      x: [1, 2, 3]\n      y: [1, 2]\n")
    result = cli("validate", "pairs.yaml", cwd=folder, env=_env(folder))
    assert result.rc == 1
    assert result.stdout.startswith("pairs.yaml:8:10: error: tasks.pair.map.y: map argument 'y' has 2 items but"
                                    " 'x' has 3; mapped arguments are zipped and must have the same length")


# -- running a large map --------------------------------------------------------------------------
def test_twice_the_children_take_about_twice_the_time_to_a_pipe(cli, folder):
    """The progress display recounted every child on every change: 20 000 children took 35 s.
    Two sizes, measured side by side; the bound is generous (a shared machine)."""
    def seconds(n: int) -> float:
        result = cli("run", "map.yaml", "--param", f"n={n}", cwd=folder, env=_env(folder), timeout=60)
        assert result.rc == 0, result.output
        # Plain lines name each task and each finished map, never each child.
        assert len(result.stderr.splitlines()) <= 6, result.stderr
        return result.seconds

    seconds(1_000)  # warm up
    small, large = seconds(20_000), seconds(40_000)
    assert large < 2.6 * small, (small, large)


def test_on_a_terminal_the_line_is_redrawn_a_few_times_a_second_and_fits_it(folder):
    # stdout goes to a file: the status line must be as wide as the terminal on stderr, not 80.
    with open(folder / "stdout.txt", "w") as stdout:
        rc, shown, seconds = on_terminal(["run", "map.yaml", "--param", "n=30000"], folder, _env(folder), 50,
                                         stdout=stdout)
    assert rc == 0, shown
    draws = [d.split("\r")[0] for d in shown.split("\x1b[K")[1:] if d.startswith("flowspec: ")]
    assert draws, shown
    assert len(draws) <= 5 * seconds + 5, (len(draws), seconds)
    assert max(len(d) for d in draws) <= 49, draws
    assert "Success" in (folder / "stdout.txt").read_text()


def test_concurrent_prints_reach_the_terminal_as_whole_lines(folder):
    (folder / "threads.yaml").write_text(
        'version: 1\nname: threads\ntasks:\n  half: {run: "steps:halves", map: {i: [0, 1, 2, 3]}}\n'
        "executor: {type: local-dask, scheduler: threads, workers: 4}\n")
    rc, shown, _ = on_terminal(["run", "threads.yaml"], folder, _env(folder), 200)
    assert rc == 0, shown
    text = re.sub(r"\r\x1b\[K(flowspec: [^\r\n]*)?", "", shown).replace("\r\n", "\n")
    printed = [line.split(" | ", 1) for line in text.splitlines() if " | line " in line]  # log lines of the task runs
    assert sorted((label.split()[-1], line) for label, line in printed) == [
        (f"half[{i}]", f"line {i} first half, line {i} second half") for i in range(4)], text


# -- what a run shows afterwards ------------------------------------------------------------------
def test_runs_show_counts_a_maps_children_by_state_and_lists_them_with_children(cli, folder):
    (folder / "some.yaml").write_text(
        'version: 1\nname: some\ntasks:\n'
        '  pick: {run: "steps:fail_on", map: {x: [0, 1, 2, 3, 4]}, with: {bad: 3}}\n'
        '  after: {run: "steps:inc", with: {x: 1}, trigger: all_finished, after: [pick]}\n')
    ran = cli("run", "some.yaml", cwd=folder, env=_env(folder))
    assert ran.rc == 1, ran.output
    run_id = json.loads(cli("runs", "list", "--format", "json", env=_env(folder)).stdout)[0]["id"]
    shown = cli("runs", "show", run_id, env=_env(folder)).stdout
    rows = shown[shown.index("\ntasks:\n"):].splitlines()[2:]
    assert re.match(r"^  TASK +STATE +ATTEMPT +CHILDREN +MESSAGE$", rows[0]), shown
    assert re.match(r"^  pick +Failed +5 +5 \(1 Failed, 4 Success\)", rows[1]), shown
    assert re.match(r"^  after +Success +1 +-", rows[2]), shown
    assert "pick[" not in shown
    tasks = json.loads(cli("runs", "show", run_id, "--format", "json", env=_env(folder)).stdout)["tasks"]
    assert [(t["task"], t["map_index"], t["state"], t.get("children")) for t in tasks] == [
        ("pick", None, "Failed", {"Failed": 1, "Success": 4}), ("after", None, "Success", None)]
    listed = cli("runs", "show", run_id, "--children", env=_env(folder)).stdout
    assert [line.split()[0] for line in listed[listed.index("\ntasks:\n"):].splitlines()[3:]] == [
        "pick[0]", "pick[1]", "pick[2]", "pick[3]", "pick[4]", "after"]
    detailed = json.loads(cli("runs", "show", run_id, "--children", "--format", "json", env=_env(folder)).stdout)
    assert [(t["task"], t["map_index"]) for t in detailed["tasks"]][:2] == [("pick", 0), ("pick", 1)]


def test_a_failed_on_start_says_that_no_task_ran(cli, folder):
    (folder / "hooked.yaml").write_text('version: 1\nname: hooked\ntasks:\n  a: {run: "steps:inc", with: {x: 1}}\n'
                                        '  b: {run: "steps:inc", with: {x: "${{ tasks.a }}"}}\n'
                                        'environment: {on_start: "steps:broken_start"}\n')
    result = cli("run", "hooked.yaml", cwd=folder, env=_env(folder))
    assert result.rc == 1
    table = result.stdout.strip().splitlines()
    assert [line.split()[:2] for line in table[1:3]] == [["a", "Cancelled"], ["b", "Cancelled"]], result.stdout
    assert table[-1].endswith("on_start hook steps:broken_start failed: RuntimeError: cluster unreachable;"
                              " no task ran"), result.stdout
