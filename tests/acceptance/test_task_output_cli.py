"""What a task writes and how it ends, as `flowspec run FILE` and an agent's run record it: its
print() and stderr as log lines of its task run (`runs logs`), tracebacks with the task file's
name and line wherever the task ran, a task's own KeyboardInterrupt or SystemExit as that task's
failure, and executor problems found before anything runs (nothing recorded)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, run_cli

TASKS = '''
import sys

from flowspec import context


def talk(item=None):
    print(f"printed by talk {item}")
    print(f"written to stderr by talk {item}", file=sys.stderr)
    print("a line in", end=" ")
    print("two writes")
    print("unfinished at the end", end="")
    return item


def fail():
    value = 1
    raise ValueError(f"broken {value}")


def interrupt():
    raise KeyboardInterrupt


def leave():
    sys.exit(3)
'''

EXECUTORS = {
    "local": "{type: local}",
    "threads": "{type: local-dask, scheduler: threads, workers: 2}",
    "processes": "{type: local-dask, scheduler: processes, workers: 2}",
    "dask": "{type: dask, workers: 1, threads: 2}",
}
FAIL_LINE = TASKS.splitlines().index('    raise ValueError(f"broken {value}")') + 1
LOG = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (\w+) +(\S+) \| (.*)$")


def _folder(tmp_path: Path, tasks: str, executor: str) -> Path:
    folder = tmp_path / "flow"
    folder.mkdir()
    (folder / "tasks.py").write_text(TASKS)
    (folder / "flow.yaml").write_text(
        f"version: 1\nname: output\ntasks:\n{tasks}executor: {executor}\n")
    return folder


def _env(tmp_path: Path) -> dict:
    return {"FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": f"sqlite://{tmp_path / 'flowspec.db'}"}


def _last_run(env: dict) -> str:
    listed = run_cli("runs", "list", "--format", "json", env=env)
    assert listed.rc == 0, listed.output
    return json.loads(listed.stdout)[0]["id"]


def _log_lines(text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for m in map(LOG.match, text.splitlines()) if m]


def _printed(label: str, item) -> set[tuple[str, str, str]]:
    """The log lines of one call of `talk`: (level, task label, text)."""
    return {("INFO", label, f"printed by talk {item}"), ("WARNING", label, f"written to stderr by talk {item}"),
            ("INFO", label, "a line in two writes"), ("INFO", label, "unfinished at the end")}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.integration) if k == "dask" else k
                                  for k in EXECUTORS])
def test_a_tasks_print_and_stderr_are_log_lines_of_its_task_run(tmp_path, kind):
    folder = _folder(tmp_path, '  talk: {run: "tasks:talk", map: {item: [0, 1]}}\n', EXECUTORS[kind])
    env = _env(tmp_path)
    ran = run_cli("run", folder / "flow.yaml", "--format", "json", env=env, timeout=120)
    assert ran.rc == 0, ran.output
    assert json.loads(ran.stdout)["state"] == "Success"  # stdout holds the report alone
    shown = set(_log_lines(ran.stderr))
    logged = run_cli("runs", "logs", _last_run(env), env=env)
    recorded = set(_log_lines(logged.stdout))
    for i in (0, 1):
        expected = _printed(f"talk[{i}]", i)
        assert expected <= shown, ran.stderr  # on the terminal of `flowspec run`, as log lines
        assert expected <= recorded, logged.stdout  # and in the run's logs
    assert "printed by" not in "".join(line for line in ran.stderr.splitlines() if not LOG.match(line))


@pytest.mark.parametrize("kind", ["local", "processes"])
def test_an_agents_run_keeps_prints_and_traceback_lines_in_runs_logs(tmp_path, kind):
    folder = _folder(tmp_path, '  talk: {run: "tasks:talk", with: {item: 7}}\n  boom: {run: "tasks:fail"}\n',
                     EXECUTORS[kind])
    env = _env(tmp_path)
    registered = run_cli("register", folder / "flow.yaml", env=env)
    assert registered.rc == 0, registered.output
    with _agent(tmp_path, env) as agent_log:
        watched = run_cli("run", "--name", "output", "--watch", env=env, timeout=120)
        assert watched.rc == 1, watched.output + agent_log.read_text()
    run_id = watched.stdout.splitlines()[0]
    logged = run_cli("runs", "logs", run_id, env=env).stdout
    assert _printed("talk", 7) <= set(_log_lines(logged)), logged
    assert f'tasks.py", line {FAIL_LINE}, in fail\n    raise ValueError(f"broken {{value}}")' in logged, logged
    assert "<dynamic-code>" not in logged


@contextlib.contextmanager
def _agent(tmp_path: Path, env: dict) -> Iterator[Path]:
    """An agent process on the test's backend, stopped (SIGTERM) at the end; yields its log file."""
    log = tmp_path / "agent.log"
    full = {**os.environ, **env}
    full.pop("PYTHONWARNINGS", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--poll-interval", "0.1"],
                                cwd=REPO, env=full, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("kind", ["processes", pytest.param("dask", marks=pytest.mark.integration)])
def test_a_traceback_from_another_process_names_the_tasks_file_and_line(tmp_path, kind):
    folder = _folder(tmp_path, '  boom: {run: "tasks:fail"}\n', EXECUTORS[kind])
    env = _env(tmp_path)
    ran = run_cli("run", folder / "flow.yaml", env=env, timeout=120)
    assert ran.rc == 1, ran.output
    where = f'File "{folder / "tasks.py"}", line {FAIL_LINE}, in fail\n    raise ValueError(f"broken {{value}}")'
    assert where in ran.stderr, ran.stderr
    logged = run_cli("runs", "logs", _last_run(env), env=env).stdout
    assert where in logged and "<dynamic-code>" not in logged, logged


@pytest.mark.parametrize("kind", ["local", "threads", "processes"])
def test_a_task_raising_keyboard_interrupt_or_system_exit_fails_alone(tmp_path, kind):
    folder = _folder(tmp_path, '  stop: {run: "tasks:interrupt"}\n  leave: {run: "tasks:leave"}\n'
                               '  after: {run: "tasks:talk", with: {item: 1}, after: [stop]}\n'
                               '  fine: {run: "tasks:talk", with: {item: 2}}\n', EXECUTORS[kind])
    env = _env(tmp_path)
    ran = run_cli("run", folder / "flow.yaml", "--format", "json", env=env, timeout=120)
    assert ran.rc == 1, ran.output  # Failed, not 130 as for a Ctrl-C
    report = json.loads(ran.stdout)
    assert report["state"] == "Failed"
    tasks = {name: (t["state"], t["message"]) for name, t in report["tasks"].items()}
    assert tasks["stop"] == ("Failed", "KeyboardInterrupt")
    assert tasks["leave"] == ("Failed", "SystemExit: 3")
    assert tasks["after"][0] == "TriggerFailed" and tasks["fine"] == ("Success", None)
    shown = run_cli("runs", "show", _last_run(env), "--format", "json", env=env)
    assert json.loads(shown.stdout)["state"] == "Failed", shown.output


@pytest.mark.integration
def test_an_unreachable_dask_scheduler_records_no_run(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = _folder(tmp_path, '  talk: {run: "tasks:talk"}\n', f'{{type: dask, address: "tcp://127.0.0.1:{port}"}}')
    env = _env(tmp_path)
    ran = run_cli("run", folder / "flow.yaml", env=env, timeout=60)
    assert ran.rc == 2, ran.output
    assert f"error: executor.address: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in ran.stderr
    assert "nothing was run" in ran.stderr
    listed = run_cli("runs", "list", "--format", "json", env=env)
    assert json.loads(listed.stdout) == [], listed.output


@pytest.mark.integration
def test_a_standard_module_twin_beside_a_dask_spec_is_reported_before_any_worker_starts(tmp_path):
    folder = _folder(tmp_path, '  talk: {run: "tasks:talk"}\n', EXECUTORS["dask"])
    (folder / "logging.py").write_text("x = 1\n")
    env = _env(tmp_path)
    spec = folder / "flow.yaml"
    message = (f"{spec}:5:18: error: executor.type: 'logging.py' beside the spec has the name of the standard "
               f"library module 'logging'")
    checked = run_cli("validate", spec, env=env)
    assert checked.rc == 1 and message in checked.stdout, checked.output
    ran = run_cli("run", spec, env=env, timeout=60)
    assert ran.rc == 2 and message in ran.stderr and "internal error" not in ran.stderr, ran.output


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P (no current folder on the import path) is 3.11+")
def test_pool_processes_started_in_the_specs_folder_get_the_standard_module(tmp_path):
    """A pool process is `python -c`, which puts the current folder first on its import path."""
    folder = _folder(tmp_path, '  talk: {run: "tasks:talk"}\n', EXECUTORS["processes"])
    (folder / "logging.py").write_text("x = 1\n")
    env = {**os.environ, **_env(tmp_path)}
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    ran = subprocess.run([sys.executable, "-P", "-m", "flowspec", "run", "flow.yaml"], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
