"""The docker environment on a real engine (Debian's dockerd on a private socket): `flowspec run
FILE` and agents run flows in containers built by docker storage from a local Debian base image.
The containers record states, logs and heartbeats in a SQLite backend bind-mounted from the
test's folder (or in a real PostgreSQL server, with host networking)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

HELLO = "  hello:\n    run: tasks:hello\n    with: {name: Docker}\n"


def run_id_of(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[0]


def _run_until_a_task_runs(docker_flows, spec) -> tuple[subprocess.Popen, str]:
    """`flowspec run FILE` in the background, handed back once a task of its run is Running."""
    proc = subprocess.Popen([sys.executable, "-m", "flowspec", "run", str(spec)], env=docker_flows.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    try:
        with docker_flows.backend() as backend:
            while not (runs := backend.list_runs()) or not any(s.state == "Running"
                                                               for s in backend.task_states(runs[0].id)):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
    except BaseException:
        proc.kill()
        raise
    return proc, runs[0].id


def _ends_cancelled(proc: subprocess.Popen, stop) -> str:
    """stop() the background `flowspec run`, which then ends Cancelled (exit 130); its stderr."""
    try:
        stop()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Cancelled" in out.splitlines()[-1]
    return err


def test_run_file_streams_logs_prints_the_summary_and_removes_the_container(docker_flows):
    spec = docker_flows.write("hello", HELLO)
    proc = docker_flows.cli("run", str(spec))
    assert proc.returncode == 0, proc.stderr
    assert "hello Docker from the container" in proc.stderr  # the task's log line, from the container
    assert "printed by hello for Docker" in proc.stderr  # and its print()
    assert "flowspec 0.1.0: the wheel flowspec-0.1.0-py3-none-any.whl from $FLOWSPEC_WHEELHOUSE" in proc.stderr
    assert "hello  Success" in proc.stdout and "Success in" in proc.stdout.splitlines()[-1]
    assert docker_flows.containers() == []
    with docker_flows.backend() as backend:
        (run,) = backend.list_runs()
        assert run.state == "Success"
        assert any("hello Docker from the container" in line.message for line in backend.logs(run.id))


def test_run_file_failing_task_exits_1_with_the_error(docker_flows):
    spec = docker_flows.write("failing", "  boom:\n    run: tasks:fail\n    with: {message: kaboom}\n")
    proc = docker_flows.cli("run", str(spec), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["state"] == "Failed" and result["tasks"]["boom"]["state"] == "Failed"
    assert "kaboom" in proc.stderr


MAPPED_CODE = """
from flowspec import context

def inc(x):
    if x == 3:
        raise ValueError("three")
    return x + 1

def hook(summary=None):
    context.logger.info("on_exit saw %s", summary["state"])
"""


def test_run_file_mapped_task_and_hook_summary_as_a_local_run_shows_it(docker_flows):
    spec = docker_flows.write("mapped", "  inc:\n    run: tasks:inc\n    map: {x: [1, 2, 3, 4]}\n",
                              environment="  on_exit: tasks:hook\n", code=MAPPED_CODE)
    proc = docker_flows.cli("run", str(spec), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    inc = json.loads(proc.stdout)["tasks"]["inc"]
    assert inc["state"] == "Failed" and inc["children"] == {"Success": 3, "Failed": 1} and inc["attempts"] == 4
    assert "on_exit saw Failed" in proc.stderr


def test_agent_runs_the_flow_in_a_container_with_logs_in_runs_logs(docker_flows):
    spec = docker_flows.write("agented", HELLO)
    reg = docker_flows.cli("register", str(spec))
    assert reg.returncode == 0, reg.stderr
    docker_flows.agent()
    proc = docker_flows.cli("run", "--name", "agented", "--watch", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr + docker_flows.agent_log()
    run_id = proc.stdout.splitlines()[0]
    logs = docker_flows.cli("runs", "logs", run_id)
    assert "hello Docker from the container" in logs.stdout
    assert "container flowspec-agented-" in logs.stdout  # the watcher's own line: which container ran it
    assert "INFO    hello | printed by hello for Docker" in logs.stdout  # the task's print(): a task log line
    assert _gone(docker_flows, run_id)


def test_agent_failing_task_fails_the_run(docker_flows):
    spec = docker_flows.write("agent-fail", "  boom:\n    run: tasks:fail\n")
    assert docker_flows.cli("register", str(spec)).returncode == 0
    docker_flows.agent()
    run_id = run_id_of(docker_flows.cli("run", "--name", "agent-fail"))
    run = docker_flows.wait_run(run_id, ("Success", "Failed", "Cancelled"))
    assert run.state == "Failed" and "boom" in (run.message or "")
    with docker_flows.backend() as backend:
        states = {(s.task, s.state) for s in backend.task_states(run_id)}
    assert ("boom", "Failed") in states


def test_out_of_memory_container_fails_the_run_as_oomkilled(docker_flows):
    spec = docker_flows.write("hungry", "  eat:\n    run: tasks:hog\n    with: {megabytes: 400}\n",
                              environment="  mem_limit: 64m\n")
    assert docker_flows.cli("register", str(spec)).returncode == 0
    docker_flows.agent()
    run_id = run_id_of(docker_flows.cli("run", "--name", "hungry"))
    run = docker_flows.wait_run(run_id, ("Success", "Failed", "Cancelled"), timeout=90)
    assert run.state == "Failed", run.message
    assert "OOMKilled" in run.message and "137" in run.message
    assert "allocating 400 MB" in run.message  # its last output lines
    assert _gone(docker_flows, run_id)


def _gone(flows, run_id: str, timeout: float = 15) -> bool:
    """Whether the run's container is removed within `timeout`: the watcher removes it after the
    run's final state is recorded (inside the container, or by the watcher), so a loaded machine
    may show the state a moment before the container goes."""
    deadline = time.monotonic() + timeout
    while flows.containers(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return flows.containers(run_id) == []


def _wait_task_running(flows, run_id: str, task: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with flows.backend() as backend:
        while not any(s.task == task and s.state == "Running" for s in backend.task_states(run_id)):
            assert time.monotonic() < deadline, flows.agent_log()
            time.sleep(0.1)


def test_runs_cancel_stops_the_container(docker_flows):
    spec = docker_flows.write("sleepy", "  rest:\n    run: tasks:nap\n    with: {seconds: 120}\n")
    assert docker_flows.cli("register", str(spec)).returncode == 0
    docker_flows.agent()
    run_id = run_id_of(docker_flows.cli("run", "--name", "sleepy"))
    _wait_task_running(docker_flows, run_id, "rest")
    started = time.monotonic()
    assert docker_flows.cli("runs", "cancel", run_id).returncode == 0
    run = docker_flows.wait_run(run_id, ("Success", "Failed", "Cancelled"), timeout=30)
    assert run.state == "Cancelled", run.message
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 10
    while docker_flows.containers(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert docker_flows.containers(run_id) == []


def test_container_killed_from_outside_fails_the_run_with_its_exit_code(docker_flows):
    spec = docker_flows.write("victim", "  rest:\n    run: tasks:nap\n    with: {seconds: 120}\n")
    assert docker_flows.cli("register", str(spec)).returncode == 0
    docker_flows.agent()
    run_id = run_id_of(docker_flows.cli("run", "--name", "victim"))
    _wait_task_running(docker_flows, run_id, "rest")
    (container,) = docker_flows.containers(run_id)
    container.kill()  # as `docker kill` would: SIGKILL, nothing inside gets to record anything
    run = docker_flows.wait_run(run_id, ("Success", "Failed", "Cancelled"), timeout=30)
    assert run.state == "Failed"
    assert "killed" in run.message and "137" in run.message and "without reporting a final state" in run.message
    assert "napping for 120s" in run.message


def test_agent_killed_fails_the_run_and_its_container_goes(docker_flows):
    spec = docker_flows.write("orphan", "  rest:\n    run: tasks:nap\n    with: {seconds: 120}\n")
    assert docker_flows.cli("register", str(spec)).returncode == 0
    agent = docker_flows.agent()
    run_id = run_id_of(docker_flows.cli("run", "--name", "orphan"))
    _wait_task_running(docker_flows, run_id, "rest")
    agent.kill()  # SIGKILL: the agent cannot stop anything; its flow run process notices it is gone
    run = docker_flows.wait_run(run_id, ("Success", "Failed", "Cancelled"), timeout=30)
    assert run.state == "Failed" and "died during the run" in run.message
    deadline = time.monotonic() + 15
    while docker_flows.containers(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert docker_flows.containers(run_id) == []


def test_environment_precedence_agent_env_then_flag_then_spec_then_flowspec(docker_flows):
    names = ["FROM_AGENT", "AGENT_AND_FLAG", "FLAG_AND_SPEC", "FROM_SPEC", "FLOWSPEC_RUN_ID", "FLOWSPEC_BACKEND",
             "HOME", "PATH"]
    spec = docker_flows.write(
        "envs", f"  show:\n    run: tasks:show_env\n    with: {{names: {json.dumps(names)}}}\n",
        environment="  env:\n    FLAG_AND_SPEC: spec\n    FROM_SPEC: ${{ env.FROM_AGENT }}-too\n"
                    "    FLOWSPEC_RUN_ID: not-allowed\n")
    assert docker_flows.cli("register", str(spec)).returncode == 0
    docker_flows.agent("--env", "AGENT_AND_FLAG=flag", "--env", "FLAG_AND_SPEC=flag",
                       env={**docker_flows.env, "FROM_AGENT": "agent", "AGENT_AND_FLAG": "agent"})
    run_id = run_id_of(docker_flows.cli("run", "--name", "envs"))
    run = docker_flows.wait_run(run_id, ("Success", "Failed", "Cancelled"))
    assert run.state == "Success", run.message
    with docker_flows.backend() as backend:
        (line,) = [x.message for x in backend.logs(run_id) if x.message.startswith("env ")]
    seen = json.loads(line[len("env "):])
    assert seen["FROM_AGENT"] == "agent"
    assert seen["AGENT_AND_FLAG"] == "flag"
    assert seen["FLAG_AND_SPEC"] == "spec"
    assert seen["FROM_SPEC"] == "agent-too"  # environment.env resolved where the agent's values are
    assert seen["FLOWSPEC_RUN_ID"] == run_id  # flowspec's own: no user value overrides it
    assert seen["FLOWSPEC_BACKEND"] == docker_flows.url
    assert seen["HOME"] != docker_flows.env.get("HOME") or seen["HOME"] == "/root"  # the image's, not ours
    assert "/opt/venv/bin" in seen["PATH"] and "/work" not in seen["PATH"]


def test_keep_container_keeps_it(docker_flows):
    spec = docker_flows.write("kept", HELLO, environment="  keep_container: true\n")
    proc = docker_flows.cli("run", str(spec))
    assert proc.returncode == 0, proc.stderr
    with docker_flows.backend() as backend:
        (run,) = backend.list_runs()
    (container,) = docker_flows.containers(run.id)
    assert container.status == "exited"
    container.remove()


def test_sigint_cancels_the_container_run_cleanly(docker_flows):
    spec = docker_flows.write("interrupted", "  rest:\n    run: tasks:nap\n    with: {seconds: 120}\n")
    assert docker_flows.cli("build", str(spec)).returncode == 0  # so that the run below starts at once
    proc, _ = _run_until_a_task_runs(docker_flows, spec)
    err = _ends_cancelled(proc, lambda: proc.send_signal(signal.SIGINT))
    with docker_flows.backend() as backend:
        (run,) = backend.list_runs()
        assert run.state == "Cancelled"
    left = docker_flows.containers()
    assert left == [], [(c.name, c.status, c.labels) for c in left] + [err]


def test_runs_cancel_of_a_run_file_stops_its_container(docker_flows):
    spec = docker_flows.write("cancel-file", "  rest:\n    run: tasks:nap\n    with: {seconds: 120}\n")
    assert docker_flows.cli("build", str(spec)).returncode == 0
    proc, run_id = _run_until_a_task_runs(docker_flows, spec)

    def cancel() -> None:
        assert docker_flows.cli("runs", "cancel", run_id).returncode == 0

    _ends_cancelled(proc, cancel)
    with docker_flows.backend() as backend:
        run = backend.get_run(run_id)
    assert run.state == "Cancelled", run.message
    assert docker_flows.containers() == []


def test_postgres_backend_on_loopback_needs_host_networking(docker_flows, postgres_url):
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    env = {**docker_flows.env, "FLOWSPEC_BACKEND": url}
    bridged = docker_flows.write("pg-bridged", HELLO)
    proc = docker_flows.cli("run", str(bridged), env=env)
    assert proc.returncode == 1
    assert "network_mode: host" in proc.stderr and "building image" not in proc.stderr  # refused before a build
    hosted = docker_flows.write("pg-host", HELLO, environment="  network_mode: host\n")
    proc = docker_flows.cli("run", str(hosted), env=env)
    assert proc.returncode == 0, proc.stderr
    from flowspec.backend import open_backend

    with open_backend(url) as backend:
        (run,) = backend.list_runs()
        assert run.state == "Success"
        assert any("hello Docker" in line.message for line in backend.logs(run.id))


def test_secrets_resolve_inside_the_container_and_are_masked(docker_flows):
    planted = "d0cker-PLANTED-token"
    spec = docker_flows.write(
        "secret-env", "  hello:\n    run: tasks:hello\n    with: {name: \"${{ secrets.DOCKER_TOKEN }}\"}\n"
                      "  show:\n    run: tasks:show_env\n    with: {names: [SECRET_URL]}\n",
        environment="  keep_container: true\n  env:\n    SECRET_URL: \"db://u:${{ secrets.DOCKER_TOKEN }}@db\"\n")
    assert docker_flows.cli("register", str(spec)).returncode == 0
    docker_flows.agent(env={**docker_flows.env, "FLOWSPEC_SECRET_DOCKER_TOKEN": planted})
    run_id = run_id_of(docker_flows.cli("run", "--name", "secret-env"))
    run = docker_flows.wait_run(run_id, ("Success", "Failed", "Cancelled"))
    assert run.state == "Success", run.message
    with docker_flows.backend() as backend:
        logs = "\n".join(x.message for x in backend.logs(run_id))
    assert "hello *** from the container" in logs and '"SECRET_URL": "db://u:***@db"' in logs
    shown = docker_flows.cli("runs", "logs", run_id).stdout + docker_flows.agent_logs()
    assert planted not in logs + shown
    assert planted.encode() not in (docker_flows.root / "backend.db").read_bytes()
    # The container's configuration: environment.env is resolved inside, never passed resolved.
    # The Docker Engine has no secret store outside swarm mode: the agent's provider variable is
    # the one way in, and the only place the value is.
    (container,) = docker_flows.containers(run_id)
    config = container.attrs["Config"]
    env = dict(entry.split("=", 1) for entry in config["Env"])
    assert "SECRET_URL" not in env
    assert [name for name, value in env.items() if planted in value] in ([], ["FLOWSPEC_SECRET_DOCKER_TOKEN"])
    del config["Env"]
    assert planted not in json.dumps(config) + json.dumps(container.attrs["HostConfig"])
    container.remove()


@pytest.fixture(scope="session")
def secrets_wheels() -> Path:
    """A cached folder of the wheels of flowspec's `secrets` extra, for offline installs in images."""
    from engine_fixtures import IMAGE_PYTHON, cache_dir

    folder = cache_dir() / f"wheels-secrets-py{IMAGE_PYTHON}"
    if (folder / ".complete").is_file():
        return folder
    folder.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--dest", str(folder),
                           "cryptography>=41"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot download the `secrets` extra's wheels (needs PyPI): {proc.stderr[-2000:]}")
    (folder / ".complete").write_text("cryptography>=41\n")
    return folder


def test_a_secret_parameter_of_run_file_reaches_the_container_encrypted(docker_flows, secrets_wheels, tmp_path):
    """`flowspec run FILE` of a docker flow stores a `secret: true` parameter encrypted, as for an
    agent's run (refused without FLOWSPEC_SECRETS_KEY), and the container decrypts it: the image
    gets the `secrets` extra's cryptography unasked."""
    from cryptography.fernet import Fernet

    wheels = tmp_path / "wheels"  # the session's wheelhouse and the extra's wheels
    wheels.mkdir()
    for folder in (Path(docker_flows.env["FLOWSPEC_WHEELHOUSE"]), secrets_wheels):
        for wheel in folder.glob("*.whl"):
            (wheels / wheel.name).symlink_to(wheel.resolve())
    planted = "d0cker-PARAM-pw"
    spec = docker_flows.write("secret-param",
                              '  hello:\n    run: tasks:hello\n    with: {name: "${{ params.password }}"}\n',
                              storage=f"  base_image: {docker_flows.base}\n")
    spec.write_text(spec.read_text().replace(
        "tasks:\n", "parameters:\n  password: {type: string, secret: true}\ntasks:\n", 1))
    env = {**docker_flows.env, "FLOWSPEC_WHEELHOUSE": str(wheels)}
    refused = docker_flows.cli("run", str(spec), "--param", f"password={planted}", env=env)
    assert refused.returncode == 2 and "FLOWSPEC_SECRETS_KEY" in refused.stderr, refused.stderr
    env["FLOWSPEC_SECRETS_KEY"] = Fernet.generate_key().decode()
    done = docker_flows.cli("run", str(spec), "--param", f"password={planted}", env=env)
    assert done.returncode == 0, done.stderr
    assert "hello *** from the container" in done.stderr and "printed by hello for ***" in done.stderr
    shown = "".join(docker_flows.cli(*args, env=env).stdout for args in (("runs", "list", "--format", "json"),))
    run_id = json.loads(shown)[-1]["id"]
    shown += docker_flows.cli("runs", "show", run_id, env=env).stdout + docker_flows.cli("runs", "logs", run_id).stdout
    assert planted not in done.stdout + done.stderr + shown
    assert planted.encode() not in (docker_flows.root / "backend.db").read_bytes()
