"""The `fargate-task` environment against the moto server as the AWS endpoint (real boto3, real
HTTP on loopback), a real PostgreSQL backend and real agent processes.

moto never runs a container. Where a test needs what the flow container would do, the test plays
its part and says so: it records the run's final state in the backend (what `flowspec.inside`
does in the task), or writes the container's output into its CloudWatch stream (what the awslogs
driver does). test_fargate_docker.py runs the exact command and environment of the task in a real
Docker engine. Where moto differs from AWS (../shared/INFRA.md), the driver follows AWS and the
test names the moto gap it works around.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowspec.backend import open_backend
from flowspec.compile import compile_file
from flowspec.errors import FlowspecError, SpecError

pytestmark = [pytest.mark.aws, pytest.mark.integration]

SECRET = "moto-dummy-secret-Kp4vT9"  # the agent's AWS secret: it must reach no task, backend or log
IMAGE = "localhost/fg-flow:v1"
LOG_GROUP = "/flowspec"
TASKS = "def hello(x):\n    return x\n"


def spec_data(name: str = "fg-flow", *, cpu: str = "256", image_tag: str = "v1", on_drift: str | None = None,
              env: dict | None = None, run_task: dict | None = None, network=None) -> dict:
    """A fargate-task flow; `network` is (subnets, security groups)."""
    subnets, groups = network or (["subnet-1"], ["sg-1"])
    environment = {
        "type": "fargate-task", "env": env or {"GREETING": "hello"},
        "task_definition": {
            "cpu": cpu, "memory": "512",
            # moto gap: RunTask answers HTTP 500 for a container without its own `memory`; AWS takes
            # the task's. The driver adds nothing: the spec gives it, as it may on AWS.
            "containerDefinitions": [{"name": "flow", "memory": 512, "logConfiguration": {
                "logDriver": "awslogs", "options": {"awslogs-group": LOG_GROUP, "awslogs-region": "us-east-1",
                                                    "awslogs-stream-prefix": "fs"}}}]},
        # moto gap: RunTask answers HTTP 500 without securityGroups (AWS takes the VPC's default).
        "run_task": run_task or {"networkConfiguration": {"awsvpcConfiguration": {
            "subnets": subnets, "securityGroups": groups, "assignPublicIp": "DISABLED"}}},
    }
    if on_drift:
        environment["on_drift"] = on_drift
    return {"version": 1, "name": name, "tasks": {"only": {"run": "tasks_fg:hello", "with": {"x": 1}}},
            "storage": {"type": "docker", "image_name": "localhost/fg-flow", "image_tag": image_tag, "build": False},
            "environment": environment}


def location(data: dict) -> dict:
    """The docker storage location of an image that moto will never pull (nothing runs there)."""
    storage = data["storage"]
    return {"type": "docker", "image": f"{storage['image_name']}:{storage['image_tag']}",
            "python": "/opt/venv/bin/python", "payload": "/flowspec/flow/payload.flow",
            "sha256": "0" * 64, "fingerprint": "f" * 64, "path": f"{storage['image_name']}:{storage['image_tag']}"}


def write_spec(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tasks_fg.py").write_text(TASKS)
    path = folder / "flow.yaml"
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML
    return path


def environment_of(folder: Path, data: dict):
    from flowspec.environments.fargate_task import FargateTaskEnvironment

    spec, diags = compile_file(str(write_spec(folder, data)))
    assert not diags, [d.text() for d in diags]
    return FargateTaskEnvironment(spec, location(data))


def revisions(ecs, family: str, status: str = "ACTIVE") -> list[str]:
    return ecs.list_task_definitions(familyPrefix=family, status=status)["taskDefinitionArns"]


def wait_for(what: Callable[[], object], timeout: float, why: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s {why()}")


# -- setup: registration, reuse, drift ---------------------------------------------------------------
def test_first_setup_registers_and_the_next_reuses(tmp_path, moto):
    ecs = moto.client("ecs")
    env = environment_of(tmp_path / "a", spec_data())
    env.setup()
    assert env.decision["action"] == "register" and env.revision["revision"] == 1
    definition = ecs.describe_task_definition(taskDefinition="fg-flow:1", include=["TAGS"])
    flow = definition["taskDefinition"]["containerDefinitions"][0]
    assert flow["name"] == "flow" and flow["image"] == IMAGE
    assert flow["command"] == ["/opt/venv/bin/python", "-m", "flowspec.inside"]  # each run's override adds its id
    assert definition["taskDefinition"]["requiresCompatibilities"] == ["FARGATE"]
    assert definition["taskDefinition"]["networkMode"] == "awsvpc"
    assert [t["key"] for t in definition["tags"]] == ["flowspec-definition-sha256"]
    again = environment_of(tmp_path / "b", spec_data())
    again.setup()
    assert again.decision["action"] == "reuse" and again.revision["revision"] == 1
    assert len(revisions(ecs, "fg-flow")) == 1


def test_a_revision_with_more_fields_than_the_spec_sets_is_reused(tmp_path, moto):
    """Identity is judged on the fields the spec sets: a revision registered by hand with extra
    settings (a role, an environment variable) is the spec's definition all the same."""
    ecs = moto.client("ecs")
    env = environment_of(tmp_path, spec_data())
    desired = env.definition()
    desired["taskRoleArn"] = "arn:aws:iam::123456789012:role/flow"
    desired["containerDefinitions"][0]["environment"] = [{"name": "EXTRA", "value": "1"}]
    ecs.register_task_definition(**desired)
    env.setup()
    assert env.decision["action"] == "reuse" and env.revision["revision"] == 1
    assert len(revisions(ecs, "fg-flow")) == 1


def test_drift_registers_one_new_revision_and_says_which_fields_changed(tmp_path, moto, caplog):
    ecs = moto.client("ecs")
    environment_of(tmp_path / "a", spec_data()).setup()
    changed = environment_of(tmp_path / "b", spec_data(cpu="512", image_tag="v2"))
    with caplog.at_level(logging.INFO, logger="flowspec.fargate"):
        changed.setup()
    assert changed.decision["action"] == "register" and changed.revision["revision"] == 2
    fields = {d["field"]: (d["spec"], d["active"]) for d in changed.decision["differences"]}
    assert fields == {"cpu": ('"512"', '"256"'),
                      "containerDefinitions[flow].image": ('"localhost/fg-flow:v2"', f'"{IMAGE}"')}
    assert "task definition fg-flow:2 registered (fields changed: cpu, containerDefinitions[flow].image)" \
        in caplog.text
    reused = environment_of(tmp_path / "c", spec_data(cpu="512", image_tag="v2"))
    reused.setup()
    assert reused.decision["action"] == "reuse" and len(revisions(ecs, "fg-flow")) == 2


def test_drift_with_on_drift_error_is_refused_listing_each_difference(tmp_path, moto):
    ecs = moto.client("ecs")
    environment_of(tmp_path / "a", spec_data()).setup()
    refused = environment_of(tmp_path / "b", spec_data(cpu="1024", on_drift="error"))
    with pytest.raises(SpecError) as caught:
        refused.setup()
    [diag] = caught.value.diagnostics
    assert diag.path == "environment.task_definition" and diag.line > 1
    assert "on_drift is 'error'" in diag.message
    assert '  cpu: "1024" vs "256"' in diag.message
    assert len(revisions(ecs, "fg-flow")) == 1
    # The same through the CLI: plan says it would refuse, and lists the difference.
    done = subprocess.run([sys.executable, "-m", "flowspec", "plan", str(tmp_path / "b" / "flow.yaml")],
                          env=moto.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "setup: would refuse to run with task definition family 'fg-flow' (on_drift is 'error')" in done.stdout
    assert 'cpu: "1024" vs "256"' in done.stdout


def test_plan_shows_the_definition_it_would_register_and_whether_it_would_reuse(tmp_path, moto):
    path = write_spec(tmp_path, spec_data())

    def plan() -> dict:
        done = subprocess.run([sys.executable, "-m", "flowspec", "plan", str(path), "--format", "json"],
                              env=moto.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["environment"]["setup"]

    first = plan()
    assert first["action"] == "register" and first["reason"] == "the family does not exist yet"
    assert first["task_definition"]["containerDefinitions"][0]["image"] == IMAGE
    assert revisions(moto.client("ecs"), "fg-flow") == []  # a plan registers nothing
    environment_of(tmp_path / "x", spec_data()).setup()
    assert plan()["action"] == "reuse"


# -- concurrent agents -------------------------------------------------------------------------------
SETUP_AT_ONCE = """
import json, sys, time
from pathlib import Path
from flowspec.compile import compile_file
from flowspec.environments.fargate_task import FargateTaskEnvironment
spec, _ = compile_file(sys.argv[1])
env = FargateTaskEnvironment(spec, json.loads(sys.argv[2]))
env.session.client("ecs")
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
env.setup()
print(env.revision["revision"])
"""


def test_concurrent_setups_register_one_revision_for_one_change(tmp_path, moto, monkeypatch):
    # moto gap: moto's server answers requests on several threads and registers task definitions
    # without a lock, so two racing registrations of a new family may both get revision 1, which
    # AWS never does. Its register is made atomic here; everything else is moto's. (moto also
    # answers DescribeTaskDefinition of a family with its latest revision of any status, AWS with
    # the latest ACTIVE one: the driver checks the status of what it is given either way.)
    import threading

    from moto.ecs.models import EC2ContainerServiceBackend

    lock, plain = threading.Lock(), EC2ContainerServiceBackend.register_task_definition

    def atomic(self, *args, **kwargs):
        with lock:
            return plain(self, *args, **kwargs)

    monkeypatch.setattr(EC2ContainerServiceBackend, "register_task_definition", atomic)
    ecs = moto.client("ecs")
    data = spec_data()
    path = write_spec(tmp_path, data)
    for round_, cpu in enumerate(("256", "512")):  # a new family, then a change of it
        data = spec_data(cpu=cpu)
        path.write_text(json.dumps(data))
        go = tmp_path / f"go-{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", SETUP_AT_ONCE, str(path), json.dumps(location(data)), str(go)],
                                  env=moto.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        time.sleep(2.0)  # all of them imported and waiting
        go.touch()
        chosen = set()
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            chosen.add(int(out.strip()))
        active = revisions(ecs, "fg-flow")
        assert len(chosen) == 1, chosen  # every agent runs on the same revision...
        assert len(active) == round_ + 1, active  # ...and one change made one active revision
        assert active[-1].endswith(f":{chosen.pop()}")


def test_a_registration_that_lost_the_race_is_deregistered(tmp_path, moto):
    """Deterministic form of the race above: another agent registered the same change between
    this agent's describe and its register (here: by hand, identical in every field)."""
    from flowspec.environments.fargate_task import register

    ecs = moto.client("ecs")
    env = environment_of(tmp_path, spec_data())
    desired = env.definition()
    ecs.register_task_definition(**desired)  # the other agent's registration
    chosen = register(ecs, desired, base=0)  # this agent described the family before revision 1 existed
    assert chosen["revision"] == 1
    assert revisions(ecs, "fg-flow") == [chosen["taskDefinitionArn"]]
    assert [a.rsplit(":", 1)[1] for a in revisions(ecs, "fg-flow", "INACTIVE")] == ["2"]


# -- errors before and at setup ------------------------------------------------------------------------
def test_what_can_be_checked_before_any_call_is_a_positioned_error(tmp_path, moto):
    from flowspec.environments.fargate_task import FargateTaskEnvironment

    data = spec_data(run_task={"launchType": "FARGATE", "capacityProviderStrategy": [{"capacityProvider": "FARGATE"}],
                               "taskDefinition": "other:3", "networkConfiguration": {"awsvpcConfiguration": {}}})
    data["environment"]["task_definition"]["containerDefinitions"][0]["image"] = "localhost/mine:1"
    data["environment"]["family"] = "no spaces allowed"
    del data["environment"]["task_definition"]["containerDefinitions"][0]["logConfiguration"]["options"][
        "awslogs-stream-prefix"]
    spec, diags = compile_file(str(write_spec(tmp_path, data)))
    assert not diags
    with pytest.raises(SpecError) as caught:
        FargateTaskEnvironment(spec, location(data))
    found = {d.path: d.message for d in caught.value.diagnostics}
    assert all(d.line > 1 for d in caught.value.diagnostics)
    assert "needs subnets" in found["environment.run_task.networkConfiguration.awsvpcConfiguration"]
    assert "not both" in found["environment.run_task.capacityProviderStrategy"]
    assert "flowspec's to set" in found["environment.run_task.taskDefinition"]
    assert "image is flowspec's to set" in found["environment.task_definition.containerDefinitions[0].image"]
    assert "not a task definition family name" in found["environment.family"]
    assert "awslogs-stream-prefix" in found["environment.task_definition.containerDefinitions[0].logConfiguration"]
    assert moto.client("ecs").list_task_definitions()["taskDefinitionArns"] == []


def test_missing_credentials_and_an_unreachable_endpoint_are_said_with_the_next_step(tmp_path, moto, monkeypatch):
    env = environment_of(tmp_path, spec_data())
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(FlowspecError) as caught:
        env.setup()
    assert "describing task definition family 'fg-flow': no usable AWS credentials" in caught.value.message
    assert "AWS_ACCESS_KEY_ID" in caught.value.hint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    env = environment_of(tmp_path / "b", spec_data())
    with pytest.raises(FlowspecError) as caught:
        env.setup()
    assert "cannot reach the AWS endpoint http://127.0.0.1:9" in caught.value.message


def test_a_literal_credential_in_a_fargate_spec_is_refused(tmp_path, moto):
    data = spec_data(env={"AWS_SECRET_ACCESS_KEY": "literal", "DATABASE_URL": "postgresql://app:hunter2@db/flows"})
    data["environment"]["task_definition"]["containerDefinitions"][0]["environment"] = [
        {"name": "DB_PASSWORD", "value": "hunter2"}]
    data["environment"]["task_definition"]["executionRoleArn"] = "AKIAABCDEFGHIJKLMNOP"
    done = subprocess.run([sys.executable, "-m", "flowspec", "validate", str(write_spec(tmp_path, data))],
                          env=moto.env, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 1
    assert "environment.env.AWS_SECRET_ACCESS_KEY: 'AWS_SECRET_ACCESS_KEY' looks like a credential" in out
    assert "containerDefinitions[0].environment[0].value: 'DB_PASSWORD' looks like a credential" in out
    assert "executionRoleArn: this looks like an AWS access key id" in out
    assert "environment.env.DATABASE_URL: this URL carries a password written into the spec" in out


# -- runs through an agent ---------------------------------------------------------------------------------
class Cluster:
    """A PostgreSQL backend, flows registered in it, an agent process, moto's ECS and logs."""

    def __init__(self, root: Path, moto, url: str) -> None:
        self.root, self.moto, self.url = root, moto, url
        self.ecs, self.logs = moto.client("ecs"), moto.client("logs")
        self.ecs.create_cluster(clusterName="default")
        self.logs.create_log_group(logGroupName=LOG_GROUP)
        self.network = moto.default_network()
        self.env = {**moto.env, "FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": url,
                    "AWS_SECRET_ACCESS_KEY": SECRET}
        self.env.pop("PYTHONWARNINGS", None)
        self.backend = open_backend(url)
        self.agent_proc: subprocess.Popen | None = None

    def transition(self, progression: dict) -> None:
        self.moto.post("/moto-api/state-manager/set-transition",
                       {"model_name": "ecs::task", "transition": progression})

    def hold_tasks(self) -> None:
        """Tasks stay RUNNING until release_tasks() (moto: a transition that never comes)."""
        self.transition({"progression": "manual", "times": 10 ** 9})

    def release_tasks(self) -> None:
        self.transition({"progression": "immediate"})

    def register(self, data: dict) -> None:
        path = write_spec(self.root / data["name"], data)
        self.backend.register_flow("default", data["name"], [], location(data), uuid.uuid4().hex,
                                   path.read_text(), data["environment"])

    def agent(self) -> None:
        with open(self.root / "agent.log", "wb") as out:
            self.agent_proc = subprocess.Popen(
                [sys.executable, "-m", "flowspec", "agent", "start", "--name", "fg-agent", "--poll-interval", "0.1"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowspec", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start_run(self, name: str) -> str:
        done = self.cli("run", "--name", name)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split()[-1]

    def task_of(self, run_id: str) -> dict:
        def find():
            arns = self.ecs.list_tasks(cluster="default")["taskArns"]
            tasks = self.ecs.describe_tasks(cluster="default", tasks=arns, include=["TAGS"])["tasks"] if arns else []
            return next((t for t in tasks if {"key": "flowspec.run-id", "value": run_id} in t.get("tags", [])), None)
        return wait_for(find, 30, self.output)

    def final(self, run_id: str, timeout: float = 30):
        return wait_for(lambda: (r := self.backend.get_run(run_id)) and r.state in ("Success", "Failed", "Cancelled")
                        and r, timeout, self.output)

    def output(self) -> str:
        return (self.root / "agent.log").read_text() if (self.root / "agent.log").exists() else ""

    def close(self) -> None:
        if self.agent_proc is not None and self.agent_proc.poll() is None:
            self.agent_proc.terminate()
            try:
                self.agent_proc.wait(20)
            except subprocess.TimeoutExpired:
                self.agent_proc.kill()
                self.agent_proc.wait()
        self.backend.close()


def backend_dump(url: str) -> str:
    """Every row of every table of a PostgreSQL backend, as text."""
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return "\n".join(str(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL backend needs pip install 'flowspec[postgres]'")

    name = f"fargate_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def cluster(tmp_path, moto, pg_url) -> Iterator[Cluster]:
    made = Cluster(tmp_path, moto, pg_url)
    yield made
    made.close()


@pytest.mark.slow
def test_a_run_goes_to_fargate_with_its_overrides_logs_and_stop_report(cluster):
    """The agent registers the definition, runs the task with the run's command and environment,
    streams the task's CloudWatch events into the run's logs while it runs, and records how the
    task stopped. The test plays the container: it writes its output into the awslogs stream
    (moto makes no task logs) and records the final state in the backend as flowspec.inside would."""
    data = spec_data(env={"GREETING": "hello", "FLOWSPEC_RUN_ID": "not-the-run"}, network=cluster.network)
    cluster.register(data)
    cluster.hold_tasks()
    cluster.agent()
    run_id = cluster.start_run("fg-flow")
    task = cluster.task_of(run_id)
    [override] = task["overrides"]["containerOverrides"]
    assert override["name"] == "flow"
    assert override["command"] == ["/opt/venv/bin/python", "-m", "flowspec.inside", run_id]
    env = {e["name"]: e["value"] for e in override["environment"]}
    assert env["FLOWSPEC_RUN_ID"] == run_id  # flowspec's own variables win over environment.env
    assert env["FLOWSPEC_BACKEND"] == cluster.url and env["GREETING"] == "hello"
    assert json.loads(env["FLOWSPEC_FLOW_LOCATION"])["image"] == IMAGE
    assert SECRET not in json.dumps(task)  # the agent's credentials stay with the agent
    assert task["taskDefinitionArn"].endswith("task-definition/fg-flow:1") and task["launchType"] == "FARGATE"
    assert task["startedBy"] == "flowspec"

    stream = f"fs/flow/{task['taskArn'].rsplit('/', 1)[1]}"  # awslogs: prefix/container/task-id
    cluster.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    now = int(time.time() * 1000)
    cluster.logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[
        {"timestamp": now, "message": "hello from the container"}, {"timestamp": now + 1, "message": "second line"}])
    wait_for(lambda: [line for line in cluster.backend.logs(run_id) if line.message == "second line"], 20,
             cluster.output)  # in the run's logs while the task still runs
    assert cluster.backend.get_run(run_id).state == "Running"
    cluster.backend.set_run_state(run_id, "Success", None, expected_from={"Running"}, exit_code=0)  # as inside would
    cluster.release_tasks()
    wait_for(lambda: any("stopCode" in (e.message or "") for e in cluster.backend.run_history(run_id)), 30,
             cluster.output)
    run = cluster.backend.get_run(run_id)
    assert run.state == "Success" and run.exit_code == 0
    note = cluster.backend.run_history(run_id)[-1].message
    assert f"the Fargate task {task['taskArn'].rsplit('/', 1)[1]} stopped (stopCode" in note
    assert "flow container exit code 0" in note
    lines = [(line.task, line.message) for line in cluster.backend.logs(run_id)]
    assert ("fargate", "hello from the container") in lines
    shown = cluster.cli("runs", "show", run_id)
    assert shown.returncode == 0 and "stopCode" in shown.stdout and "flow container exit code 0" in shown.stdout
    logged = cluster.cli("runs", "logs", run_id)
    assert "hello from the container" in logged.stdout and "task definition fg-flow:1 registered" in logged.stdout
    dump = backend_dump(cluster.url)
    assert "hello from the container" in dump and SECRET not in cluster.output() + dump
    # A second run reuses the revision: no new one for an unchanged spec.
    second = cluster.start_run("fg-flow")
    cluster.task_of(second)
    assert revisions(cluster.ecs, "fg-flow") == [task["taskDefinitionArn"]]


@pytest.mark.slow
def test_a_task_that_stops_without_a_final_state_fails_its_run_with_the_reason(cluster):
    data = spec_data(network=cluster.network)
    cluster.register(data)
    cluster.hold_tasks()
    cluster.agent()
    run_id = cluster.start_run("fg-flow")
    task = cluster.task_of(run_id)
    # moto gap: a container's exit code is always 0 through the API; set it in moto's model
    # (the server runs in this process), as a flow container that crashed would leave it.
    model = next(t for t in cluster.moto.ecs_backend().tasks["default"].values() if t.task_arn == task["taskArn"])
    model.containers[0].exitCode = 3
    cluster.ecs.stop_task(cluster="default", task=task["taskArn"], reason="Essential container in task exited")
    run = cluster.final(run_id)
    assert run.state == "Failed" and run.exit_code == 3
    assert "the Fargate task" in run.message and "without reporting a final state" in run.message
    assert "stoppedReason: Essential container in task exited" in run.message
    assert "flow container exit code 3" in run.message
    cluster.release_tasks()
    done = cluster.cli("run", "--name", "fg-flow", "--watch")  # followed to the end: exit code = the run's
    assert done.returncode == 1, done.stdout + done.stderr


@pytest.mark.slow
def test_runs_cancel_stops_the_task(cluster):
    cluster.register(spec_data(network=cluster.network))
    cluster.hold_tasks()
    cluster.agent()
    run_id = cluster.start_run("fg-flow")
    task = cluster.task_of(run_id)
    done = cluster.cli("runs", "cancel", run_id)
    assert done.returncode == 0, done.stderr
    run = cluster.final(run_id)
    assert run.state == "Cancelled", (run, cluster.output())
    stopped = cluster.ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]])["tasks"][0]
    assert stopped["lastStatus"] == "STOPPED"
    assert stopped["stoppedReason"] == "flowspec: the flow run was cancelled"
    assert "stoppedReason: flowspec: the flow run was cancelled" in run.message


@pytest.mark.slow
def test_failures_in_the_run_task_answer_fail_the_run(cluster, monkeypatch):
    """moto gap: RunTask's `failures` is always empty. The server runs in this process, so this
    test makes moto's RunTask answer what AWS answers when no capacity is left (no task, one
    failure); everything else is real."""
    from moto.core.responses import ActionResult
    from moto.ecs.responses import EC2ContainerServiceResponse

    def no_capacity(self):
        return ActionResult({"tasks": [], "failures": [
            {"arn": "arn:aws:ecs:us-east-1:123456789012:cluster/default", "reason": "RESOURCE:MEMORY",
             "detail": "no Fargate capacity is left in this zone"}]})

    monkeypatch.setattr(EC2ContainerServiceResponse, "run_task", no_capacity)
    cluster.register(spec_data(network=cluster.network))
    cluster.agent()
    run_id = cluster.start_run("fg-flow")
    run = cluster.final(run_id)
    assert run.state == "Failed"
    assert "ECS did not start the task of run" in run.message
    assert "RESOURCE:MEMORY (no Fargate capacity is left in this zone) for arn:aws:ecs" in run.message


@pytest.mark.slow
def test_platform_errors_fail_the_run_in_words(cluster):
    missing_cluster = spec_data(name="no-cluster", network=cluster.network)
    missing_cluster["environment"]["cluster"] = "nowhere"
    cluster.register(missing_cluster)
    refused = spec_data(name="refused", cpu="1024", on_drift="error", network=cluster.network)
    cluster.ecs.register_task_definition(**environment_of(cluster.root / "r", spec_data(name="refused")).definition())
    cluster.register(refused)
    cluster.agent()
    run = cluster.final(cluster.start_run("no-cluster"))
    assert run.state == "Failed" and "ClusterNotFoundException" in run.message and "Traceback" not in run.message
    run = cluster.final(cluster.start_run("refused"))
    assert run.state == "Failed" and 'cpu: "1024" vs "256"' in run.message and "on_drift is 'error'" in run.message


def test_a_sqlite_backend_is_refused_for_fargate(tmp_path, moto):
    env = environment_of(tmp_path, spec_data())
    with pytest.raises(FlowspecError) as caught:
        env.backend_url_inside(f"sqlite://{tmp_path / 'fs.db'}")
    assert "a Fargate task cannot reach this backend" in caught.value.message and "PostgreSQL" in caught.value.hint


@pytest.mark.slow
def test_a_lost_agent_fails_its_fargate_runs(cluster):
    cluster.register(spec_data(network=cluster.network))
    cluster.hold_tasks()
    cluster.agent()
    run_id = cluster.start_run("fg-flow")
    task = cluster.task_of(run_id)
    cluster.agent_proc.send_signal(signal.SIGKILL)
    cluster.agent_proc.wait()
    run = cluster.final(run_id)
    assert run.state == "Failed" and "agent" in run.message and "died" in run.message, run.message
    # Its watcher stopped the task on the way out: nobody would follow it any more.
    stopped = wait_for(lambda: (t := cluster.ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]])["tasks"][0])
                       ["lastStatus"] == "STOPPED" and t, 10)
    assert stopped["stoppedReason"] == "flowspec: its watcher stopped it (interrupted, or the agent that ran it died)"


def test_the_agents_environment_is_never_forwarded_to_the_task(tmp_path, moto, monkeypatch):
    """Only environment.env, the agent's --env values and flowspec's own variables go in the
    overrides (RunTask allows 8 KiB of them; the task has its own role for AWS)."""
    from flowspec.environments.platform import make_job

    env = environment_of(tmp_path, spec_data(env={"GREETING": "${{ env.FROM_AGENT }}"}))
    monkeypatch.setenv("FROM_AGENT", "hi")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("ONLY_HERE", "x")
    monkeypatch.setenv("GIVEN_WITH_ENV", "y")
    monkeypatch.setenv("FLOWSPEC_AGENT_ENV", "GIVEN_WITH_ENV")
    job = make_job(env.spec, env.location, "run-1", "postgresql://db/x")
    given = env.task_env(job)
    assert set(given) == {"GREETING", "GIVEN_WITH_ENV", "FLOWSPEC_RUN_ID", "FLOWSPEC_BACKEND",
                          "FLOWSPEC_FLOW_LOCATION", "PYTHONUNBUFFERED"}
    assert given["GREETING"] == "hi" and SECRET not in json.dumps(given)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET


@pytest.mark.slow
def test_a_task_that_never_reaches_running_is_stopped_after_the_start_timeout(tmp_path, moto, pg_url, monkeypatch):
    """In this process: the watcher's loop with a 1-second start timeout. moto gap: moto's tasks
    start RUNNING (AWS's start PROVISIONING, then PENDING); its RunTask is made to leave the new
    task PROVISIONING, as a task whose image cannot be pulled stays on AWS."""
    from moto.ecs.models import EC2ContainerServiceBackend

    from flowspec.recorder import Recorder

    plain = EC2ContainerServiceBackend.run_task

    def provisioning(self, *args, **kwargs):
        tasks = plain(self, *args, **kwargs)
        for task in tasks:
            task.status = "PROVISIONING"
        return tasks

    monkeypatch.setattr(EC2ContainerServiceBackend, "run_task", provisioning)
    moto.post("/moto-api/state-manager/set-transition",
              {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10 ** 9}})
    ecs = moto.client("ecs")
    ecs.create_cluster(clusterName="default")
    monkeypatch.setenv("FLOWSPEC_BACKEND", pg_url)
    env = environment_of(tmp_path, spec_data(network=moto.default_network()))
    env.start_timeout_s = 1.0
    with open_backend(pg_url) as backend:
        run = backend.create_flow_run(None, {}, (), "Running", flow_name="fg-flow")
        recorder = Recorder(backend, run.id).start()
        try:
            result = env.execute({}, (recorder,), run.id, keep_results=False)
        finally:
            recorder.finish("Failed", "the test ended", 1)
        assert result.state == "Failed"
        assert "stoppedReason: flowspec: the task did not reach RUNNING within 1s" in result.message
        [arn] = ecs.list_tasks(cluster="default", desiredStatus="STOPPED")["taskArns"]
        assert arn.rsplit("/", 1)[1] in result.message


def test_access_denied_names_the_ecs_permission(tmp_path, moto, monkeypatch):
    iam = moto.client("iam")
    iam.create_user(UserName="looker")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ecs:DescribeTaskDefinition"], "Resource": "*"}]}
    iam.put_user_policy(UserName="looker", PolicyName="look-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="looker")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    env = environment_of(tmp_path, spec_data())
    moto.post("/moto-api/reset-auth", b"0")  # from now on moto checks IAM policies, as AWS does
    with pytest.raises(FlowspecError) as caught:
        env.setup()
    moto.post("/moto-api/reset-auth", b"inf")
    assert "registering a revision of task definition family 'fg-flow': access denied" in caught.value.message
    assert "ecs:RegisterTaskDefinition" in caught.value.hint


def test_a_secret_read_from_the_environment_is_never_shown_in_differences(tmp_path, moto, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "s3cr3t-from-env")
    ecs = moto.client("ecs")
    old = spec_data()
    old["environment"]["task_definition"]["containerDefinitions"][0]["environment"] = [
        {"name": "CONN", "value": "old"}]
    environment_of(tmp_path / "a", old).setup()
    new = spec_data(on_drift="error")
    new["environment"]["task_definition"]["containerDefinitions"][0]["environment"] = [
        {"name": "CONN", "value": "postgresql://u:${{ env.DB_PASSWORD }}@db/x"}]
    refused = environment_of(tmp_path / "b", new)
    with pytest.raises(SpecError) as caught:
        refused.setup()
    message = caught.value.diagnostics[0].message
    assert 'containerDefinitions[flow].environment[CONN].value: *** vs "old"' in message
    assert "s3cr3t-from-env" not in message
    done = subprocess.run([sys.executable, "-m", "flowspec", "plan", str(tmp_path / "b" / "flow.yaml"), "--format",
                           "json"], env={**moto.env, "DB_PASSWORD": "s3cr3t-from-env"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "s3cr3t-from-env" not in done.stdout, done.stdout + done.stderr
    assert len(revisions(ecs, "fg-flow")) == 1


def test_run_task_arguments_keep_the_specs_and_give_flowspecs_the_last_word():
    """RunTask's arguments as built for a run (no call made): the spec's own overrides kept, the
    run's command and variables on the flow container, capacity providers instead of a launch type."""
    from flowspec.environments.fargate_task import run_task_args
    from flowspec.environments.platform import FlowRunJob

    opts = {"cluster": "flows", "run_task": {
        "capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
        "overrides": {"cpu": "1024", "containerOverrides": [
            {"name": "sidecar", "environment": [{"name": "A", "value": "1"}]},
            {"name": "runner", "environment": [{"name": "KEEP", "value": "k"}, {"name": "FLOWSPEC_RUN_ID", "value": "x"}]}]},
        "tags": [{"key": "team", "value": "data"}]}}
    revision = {"taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/etl:4",
                "containerDefinitions": [{"name": "runner"}, {"name": "sidecar"}]}
    job = FlowRunJob("run-9", "localhost/etl:v1", ("/opt/venv/bin/python", "-m", "flowspec.inside", "run-9"), {},
                     "flowspec-etl-run9", {"flowspec.run-id": "run-9", "flowspec.flow": "etl"})
    args = run_task_args(opts, revision, job, {"FLOWSPEC_RUN_ID": "run-9", "GREETING": "hi"})
    assert "launchType" not in args and args["capacityProviderStrategy"][0]["capacityProvider"] == "FARGATE_SPOT"
    assert args["cluster"] == "flows" and args["taskDefinition"].endswith(":4") and args["count"] == 1
    assert args["overrides"]["cpu"] == "1024"
    sidecar, runner = args["overrides"]["containerOverrides"]
    assert sidecar == {"name": "sidecar", "environment": [{"name": "A", "value": "1"}]}
    assert runner["command"] == list(job.command)
    assert {e["name"]: e["value"] for e in runner["environment"]} == {
        "KEEP": "k", "FLOWSPEC_RUN_ID": "run-9", "GREETING": "hi"}
    assert args["tags"] == [{"key": "team", "value": "data"}, {"key": "flowspec.run-id", "value": "run-9"},
                            {"key": "flowspec.flow", "value": "etl"}]
    assert opts["run_task"]["overrides"]["containerOverrides"][1]["environment"][1]["value"] == "x"  # spec untouched


def test_environment_secrets_go_to_the_task_definition_as_secrets_never_as_values(tmp_path, moto):
    ecs = moto.client("ecs")
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:warehouse-Ab12Cd"
    data = spec_data("fg-secrets")
    data["environment"]["secrets"] = {"WAREHOUSE_PASSWORD": arn, "API_TOKEN": "api-token"}
    data["environment"]["env"] = {"DSN": "db://u:${{ secrets.WAREHOUSE_PASSWORD }}@wh"}
    env = environment_of(tmp_path / "a", data)
    env.setup()
    flow = ecs.describe_task_definition(taskDefinition="fg-secrets:1")["taskDefinition"]["containerDefinitions"][0]
    assert flow["secrets"] == [{"name": "FLOWSPEC_SECRET_API_TOKEN", "valueFrom": "api-token"},
                               {"name": "FLOWSPEC_SECRET_WAREHOUSE_PASSWORD", "valueFrom": arn}]
    assert all(not e["name"].startswith("FLOWSPEC_SECRET") for e in flow.get("environment", []))
    again = environment_of(tmp_path / "b", data)
    again.setup()
    assert again.decision["action"] == "reuse"


@pytest.mark.slow
def test_a_run_with_environment_secrets_gives_the_task_no_secret_value(cluster):
    """Secrets Manager holds the value; the agent's machine has it too (FLOWSPEC_SECRET_API_TOKEN)
    and environment.env reads it: the task definition names the secret (`secrets`, valueFrom),
    and neither it, the run's overrides, the agent's output nor the backend holds the value."""
    planted = "fargate-PLANTED-token"
    arn = cluster.moto.client("secretsmanager").create_secret(Name="api-token", SecretString=planted)["ARN"]
    data = spec_data("fg-secret", env={"DSN": "db://u:${{ secrets.API_TOKEN }}@db"}, network=cluster.network)
    data["environment"]["secrets"] = {"API_TOKEN": arn}
    cluster.register(data)
    cluster.env["FLOWSPEC_SECRET_API_TOKEN"] = planted
    cluster.hold_tasks()
    cluster.agent()
    run_id = cluster.start_run("fg-secret")
    task = cluster.task_of(run_id)
    [override] = task["overrides"]["containerOverrides"]
    names = {e["name"] for e in override.get("environment", [])}
    assert "DSN" not in names and "FLOWSPEC_SECRET_API_TOKEN" not in names  # resolved inside, from `secrets`
    definition = cluster.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    [flow] = [c for c in definition["containerDefinitions"] if c["name"] == "flow"]
    assert flow["secrets"] == [{"name": "FLOWSPEC_SECRET_API_TOKEN", "valueFrom": arn}]
    assert all(e["name"] != "DSN" for e in flow.get("environment", []))
    cluster.backend.set_run_state(run_id, "Success", None, expected_from={"Running"}, exit_code=0)
    cluster.release_tasks()
    cluster.final(run_id)
    shown = cluster.cli("runs", "show", run_id, "--format", "json").stdout + cluster.cli("runs", "logs", run_id).stdout
    everything = json.dumps([task, definition], default=str) + shown + cluster.output() + backend_dump(cluster.url)
    assert planted not in everything
