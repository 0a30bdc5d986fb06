"""What Fargate would run, run for real: `flowspec run FILE` with the fargate-task environment
builds the docker storage image on a real engine, sets up the task definition and runs the task
against the moto server; moto never starts a container, so this test plays Fargate's part with
the real Docker engine: it takes the flow container of the task definition that flowspec
registered and the overrides of the task that flowspec started, runs exactly that command with
exactly that environment from that image, and hands the container's output to CloudWatch as the
awslogs driver would. The flow records Success in the PostgreSQL backend from inside the
container, and `flowspec run` follows the task to STOPPED and exits with the run's code.

Host networking stands in for the task's VPC: it is how a container here reaches the backend
on 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowspec.backend import open_backend

pytestmark = [pytest.mark.aws, pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

TASKS = '''
import os
from flowspec import context

def greet(name):
    context.logger.info("%s, %s, from the flow container", os.environ["GREETING"], name)
    print("printed inside the task", flush=True)
    return name
'''


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL backend needs pip install 'flowspec[postgres]'")

    name = f"fargate_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_the_task_definitions_command_and_environment_run_the_flow_in_docker(
        tmp_path: Path, moto, docker_env, base_image, docker_host, pg_url):
    import docker

    ecs, logs = moto.client("ecs"), moto.client("logs")
    ecs.create_cluster(clusterName="default")
    logs.create_log_group(logGroupName="/flowspec")
    subnets, groups = moto.default_network()
    # moto: tasks stay RUNNING until this test, playing Fargate, lets them stop.
    moto.post("/moto-api/state-manager/set-transition",
              {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10 ** 9}})
    folder = tmp_path / "flow"
    folder.mkdir()
    (folder / "tasks.py").write_text(TASKS)
    spec = {
        "version": 1, "name": "fargate-for-real",
        "tasks": {"greet": {"run": "tasks:greet", "with": {"name": "Fargate"}}},
        "storage": {"type": "docker", "base_image": base_image},
        "environment": {
            "type": "fargate-task", "env": {"GREETING": "Hello"},
            "task_definition": {"containerDefinitions": [{
                "name": "flow", "memory": 512,  # moto gap: RunTask answers HTTP 500 without container memory
                "environment": [{"name": "FROM_DEFINITION", "value": "yes"}],
                "logConfiguration": {"logDriver": "awslogs", "options": {
                    "awslogs-group": "/flowspec", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "fs"}}}]},
            "run_task": {"networkConfiguration": {"awsvpcConfiguration": {
                "subnets": subnets, "securityGroups": groups}}},  # moto gap: 500 without securityGroups
        },
    }
    (folder / "flow.yaml").write_text(json.dumps(spec, indent=2))
    env = {**docker_env, "FLOWSPEC_BACKEND": pg_url}
    out_file, err_file = tmp_path / "run.out", tmp_path / "run.err"
    with open(out_file, "wb") as out, open(err_file, "wb") as err:  # files: a full pipe would block the build
        watcher = subprocess.Popen([sys.executable, "-m", "flowspec", "run", str(folder / "flow.yaml")], env=env,
                                   stdout=out, stderr=err)
    try:
        task = _wait_for_task(ecs, watcher, err_file)
        definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        container = definition["containerDefinitions"][0]
        override = next(o for o in task["overrides"]["containerOverrides"] if o["name"] == container["name"])
        # ECS's rules: an override's command replaces the definition's; its variables are added
        # to the definition's, an override winning over a definition variable of the same name.
        command = override.get("command") or container["command"]
        variables = {e["name"]: e["value"] for e in container.get("environment", [])}
        variables.update({e["name"]: e["value"] for e in override.get("environment", [])})
        run_id = variables["FLOWSPEC_RUN_ID"]
        assert command == [*container["command"], run_id]

        engine = docker.DockerClient(base_url=docker_host)
        try:
            box = engine.containers.run(container["image"], command=command, environment=variables,
                                        network_mode="host", detach=True)
            try:
                exit_code = box.wait(timeout=120)["StatusCode"]
                output = box.logs().decode()
            finally:
                box.remove(force=True)
        finally:
            engine.close()
        assert exit_code == 0, output
        # The awslogs driver's part: the container's output, line by line, into its stream.
        stream = f"fs/{container['name']}/{task['taskArn'].rsplit('/', 1)[1]}"
        logs.create_log_stream(logGroupName="/flowspec", logStreamName=stream)
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName="/flowspec", logStreamName=stream, logEvents=[
            {"timestamp": now + i, "message": line} for i, line in enumerate(output.splitlines()) if line])
        time.sleep(2.5)  # the watcher reads the stream while the task still runs
        moto.post("/moto-api/state-manager/set-transition",
                  {"model_name": "ecs::task", "transition": {"progression": "immediate"}})  # the task stops
        watcher.wait(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    out, err = out_file.read_text(), err_file.read_text()
    assert watcher.returncode == 0, out + err
    assert "Success" in out.splitlines()[-1]
    assert "printed inside the task" in err  # streamed from CloudWatch to the watcher's output
    with open_backend(pg_url) as backend:
        run = backend.get_run(run_id)
        assert run.state == "Success" and run.exit_code == 0
        assert {(s.task, s.state) for s in backend.task_states(run_id)} == {("greet", "Success")}
        lines = [(line.task, line.message) for line in backend.logs(run_id)]
        assert any("Hello, Fargate, from the flow container" in m for _, m in lines)  # recorded inside
        assert ("greet", "printed inside the task") in lines  # the task's print(): a log line of its task run
        assert any(task == "fargate" and "printed inside the task" in m for task, m in lines)  # and from CloudWatch
        assert "stopCode" in backend.run_history(run_id)[-1].message
    assert variables["FROM_DEFINITION"] == "yes" and variables["GREETING"] == "Hello"
    assert variables["FLOWSPEC_BACKEND"] == pg_url


def _wait_for_task(ecs, watcher: subprocess.Popen, err: Path, timeout: float = 600) -> dict:
    """The task `flowspec run` started (after building the image and setting up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watcher.poll() is not None:
            pytest.fail(f"flowspec run ended before starting a task (exit {watcher.returncode}):\n{err.read_text()}")
        arns = ecs.list_tasks(cluster="default")["taskArns"]
        if arns:
            return ecs.describe_tasks(cluster="default", tasks=arns)["tasks"][0]
        time.sleep(0.5)
    pytest.fail("no task was started")


def test_run_file_registers_reuses_and_refuses_drift_and_fails_a_task_that_never_reports(
        tmp_path: Path, moto, docker_env, base_image, pg_url):
    """Through `flowspec run FILE --backend URL` alone (the image is built once, then named with
    `build: false`).
    Nothing plays the container here: moto's task stops at once, without the run reaching a final
    state, which is what a crashed container looks like to the watcher."""
    moto.client("ecs").create_cluster(clusterName="default")
    subnets, groups = moto.default_network()
    folder = tmp_path / "flow"
    folder.mkdir()
    (folder / "tasks.py").write_text(TASKS)

    def run(cpu: str, on_drift: str = "register", build: bool = False) -> subprocess.CompletedProcess:
        storage = {"type": "docker", "image_name": "localhost/fargate-cli", "image_tag": "v1", "build": build}
        if build:
            storage["base_image"] = base_image
        spec = {"version": 1, "name": "fargate-cli", "tasks": {"greet": {"run": "tasks:greet", "with": {"name": "x"}}},
                "storage": storage,
                "environment": {"type": "fargate-task", "on_drift": on_drift, "env": {"GREETING": "Hi"},
                                "task_definition": {"cpu": cpu, "memory": "1024", "containerDefinitions": [
                                    {"name": "flow", "memory": 512}]},  # moto gap: 500 without container memory
                                "run_task": {"networkConfiguration": {"awsvpcConfiguration": {
                                    "subnets": subnets, "securityGroups": groups}}}}}
        (folder / "flow.yaml").write_text(json.dumps(spec, indent=2))
        return subprocess.run([sys.executable, "-m", "flowspec", "run", str(folder / "flow.yaml"), "--backend", pg_url],
                              env=docker_env, capture_output=True, text=True, timeout=600)

    first = run("256", build=True)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "task definition fargate-cli:1 registered (family 'fargate-cli' was new)" in first.stderr
    last = first.stdout.splitlines()[-1]
    assert "Failed" in last and "the Fargate task" in last and "without reporting a final state" in last
    assert "flow container exit code 0" in last
    again = run("256")
    assert "task definition fargate-cli:1 is identical in every field the spec sets: reusing it" in again.stderr
    changed = run("512")
    assert "task definition fargate-cli:2 registered (fields changed: cpu)" in changed.stderr
    refused = run("1024", on_drift="error")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "flow.yaml:" in refused.stderr and "environment.task_definition" in refused.stderr
    assert 'cpu: "1024" vs "512"' in refused.stderr and "Traceback" not in refused.stderr
    definitions = moto.client("ecs").list_task_definitions(familyPrefix="fargate-cli")["taskDefinitionArns"]
    assert len(definitions) == 2
