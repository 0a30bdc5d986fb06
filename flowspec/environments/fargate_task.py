"""The `fargate-task` environment: each flow run as an AWS ECS task (Fargate), from the docker
storage image, on the shared platform loop (flowspec/environments/platform.py)."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowspec import references as refs
from flowspec.environments.platform import (
    AGENT_ENV_NAMES, FINAL, OWN_VARIABLES, FlowRunJob, Outcome, PlatformEnvironment, image_command,
    registered_location)
from flowspec.errors import FlowspecError, SpecError
from flowspec.masking import MASK

log = logging.getLogger("flowspec.fargate")

FAMILY = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
DIGEST_TAG = "flowspec-definition-sha256"  # on each revision flowspec registers: what it was made from
FLOW_CONTAINER = "flow"
NOT_COMPARED = ("tags",)  # kept by ECS beside the definition, not in it


@dataclass
class Task:
    """A started task, as the platform loop's handle."""

    arn: str
    cluster: str
    run_id: str
    container: str
    logs: tuple[str, str] | None  # (group, stream) of the flow container's awslogs output
    started: float = field(default_factory=time.monotonic)
    running: bool = False
    described: float = 0.0
    stop_asked: float | None = None
    failing: float | None = None  # since when DescribeTasks fails
    stopped: threading.Event = field(default_factory=threading.Event)
    stopped_at: float = 0.0
    last: dict = field(default_factory=dict)  # the last DescribeTasks answer for it

    @property
    def id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]


class FargateTaskEnvironment(PlatformEnvironment):
    """Runs each flow run as an ECS task from the docker storage image. YAML keys, besides the
    common ones: `region`, `profile` (credentials come from the standard AWS chain only),
    `cluster` (default `default`), `family` (default: the flow's name), `task_definition`
    (RegisterTaskDefinition arguments; the first container runs the flow: flowspec sets its
    `image` and `command`), `run_task` (RunTask arguments: `networkConfiguration`,
    `launchType` or `capacityProviderStrategy`, `overrides`, `platformVersion`, ...), `on_drift`
    (`register`, the default: a new revision when the active one differs from the spec in a
    field the spec sets; `error`: refuse, listing the differences).

    setup() describes the family and reuses, registers or refuses (see `decide`); agents racing
    to register the same change keep one revision, the lowest, and deregister their duplicates
    (see `register`). Each revision flowspec registers carries the sha256 of what it was made
    from in the tag `flowspec-definition-sha256`. execute() runs the task with the run's id, the
    backend URL and `environment.env` in the container overrides, streams the flow container's
    CloudWatch log events into the run's logs, and records stopCode, stoppedReason and the exit
    code in the run's history.
    """

    platform = "Fargate task"
    start_timeout_s = 600.0  # PROVISIONING/PENDING → RUNNING (image pull, ENI)
    stop_timeout_s = 180.0  # stop_task → STOPPED (ECS sends SIGTERM, then SIGKILL after stopTimeout)
    describe_every_s = 1.0  # DescribeTasks at most this often (AWS throttles it)
    describe_patience_s = 120.0  # how long DescribeTasks may fail before the watcher gives up
    log_poll_s = 1.0
    log_settle_s = 2.0  # how long output is still read after the task stopped

    def __init__(self, spec, location: Mapping[str, Any] | None = None) -> None:
        super().__init__(spec, location)
        self.opts = options(spec)
        self.revision: dict | None = None  # the task definition runs use, once setup() chose it
        self.decision: dict | None = None
        self._backend = None
        from flowspec.aws import Session

        self.session = Session("environment", self.opts["profile"], self.opts["region"])

    # -- setup: the task definition ----------------------------------------------------------------
    def definition(self, location: Mapping[str, Any] | None = None) -> dict:
        """The RegisterTaskDefinition arguments the spec asks for, with the flow container's image
        and command (the command without a run id: each run's override adds it)."""
        location = location or self.location
        if location is None or not location.get("image"):
            raise FlowspecError("the fargate-task environment needs the image that docker storage built",
                                hint="register the flow (flowspec register FILE) or run it with flowspec run FILE")
        return desired_definition(self.opts, location["image"], flow_command(location))

    def setup(self) -> None:
        """Describe the family; reuse the active revision, register a new one, or refuse (on_drift)."""
        if self.revision is not None:
            return
        desired = self.definition()
        ecs = self.session.client("ecs")
        active = describe_family(ecs, self.opts["family"])
        decision = scrub(decide(desired, active, self.opts["on_drift"]), secret_values(self.spec))
        if decision["action"] == "refuse":
            raise SpecError([self.spec.document.diag(("environment", "task_definition"), refusal(decision),
                                                     "register the new revision yourself, set on_drift: register,"
                                                     " or change task_definition to match the active revision")])
        if decision["action"] == "reuse":
            self.revision = active = first_of_change(ecs, desired, active)
            log.info("task definition %s:%d is identical in every field the spec sets: reusing it",
                     self.opts["family"], active["revision"])
        else:
            base = active["revision"] if active else 0
            self.revision = register(ecs, desired, base)
            changed = ", ".join(d["field"] for d in decision["differences"])
            log.info("task definition %s:%d registered (%s)", self.opts["family"], self.revision["revision"],
                     f"fields changed: {changed}" if changed else f"family '{self.opts['family']}' was new")
        self.decision = decision

    def prepare(self, url: str | None = None) -> None:
        """For `flowspec run FILE`: the backend in the task's reach, the image built, setup() done."""
        from flowspec.backend import backend_url
        from flowspec.storage import storage_for

        self.backend_url = backend_url(url)  # the run's, also when given with --backend
        self.backend_url_inside(self.backend_url)
        if self.location is None:
            describe_family(self.session.client("ecs"), self.opts["family"])  # credentials, endpoint: before a build
            self.location = storage_for(self.spec.storage.type).build(self.spec)
        self.setup()

    # -- execute: on the shared loop ---------------------------------------------------------------
    def execute(self, params: dict, observers=(), run_id: str | None = None, keep_results: bool = True):
        from flowspec.recorder import Recorder

        recorder = next((o for o in observers if isinstance(o, Recorder)), None)
        if recorder is not None:
            self._backend = recorder.backend
            if self.location is None and run_id is not None:
                self.location = registered_location(recorder.backend, run_id)
        if recorder is not None and run_id is not None:
            self.setup()  # the seam checks the rest (a run id and a backend) before anything starts
        return super().execute(params, observers, run_id, keep_results)

    def backend_url_inside(self, url: str) -> str:
        if not re.match(r"^postgres(ql)?://", url):
            raise FlowspecError(f"a Fargate task cannot reach this backend ({url}): it runs on AWS, not here",
                                hint="use a PostgreSQL backend that the task's subnets reach"
                                     " (--backend postgresql://... or FLOWSPEC_BACKEND)")
        return url

    def start(self, job: FlowRunJob) -> Task:
        ecs = self.session.client("ecs")
        args = run_task_args(self.opts, self.revision, job, self.task_env(job))
        from flowspec.aws import translated

        missing = {"ClusterNotFoundException": (f"ClusterNotFoundException: the cluster '{self.opts['cluster']}'"
                                                f" does not exist", "create it, or set environment.cluster")}
        with translated(f"starting the Fargate task of run {job.run_id} on cluster {self.opts['cluster']}",
                        "ecs:RunTask and ecs:TagResource (and iam:PassRole for the task's roles)", missing=missing):
            answer = ecs.run_task(**args)
        failures = answer.get("failures") or []
        if failures or not answer.get("tasks"):
            said = "; ".join(f"{f.get('reason', '?')}" + (f" ({f['detail']})" if f.get("detail") else "")
                             + (f" for {f['arn']}" if f.get("arn") else "") for f in failures) or "no task, no failure"
            raise FlowspecError(f"ECS did not start the task of run {job.run_id}: {said}",
                                hint="see 'API failure reasons' in the Amazon ECS guide; check the cluster,"
                                     " its capacity providers, the subnets and the task's cpu and memory")
        arn = answer["tasks"][0]["taskArn"]
        container = self.revision["containerDefinitions"][0]
        task = Task(arn, self.opts["cluster"], job.run_id, container["name"], log_stream(container, arn))
        if task.logs is not None:
            self.session.client("logs")  # made here: boto3 sessions are not for making clients in threads
        log.info("run %s: task %s started on cluster %s from %s:%d", job.run_id, task.id, task.cluster,
                 self.revision["family"], self.revision["revision"])
        return task

    def task_env(self, job: FlowRunJob) -> dict[str, str]:
        """What the container gets: environment.env, the agent's --env values and flowspec's own.
        Not the rest of the watcher's environment (its AWS credentials above all: the task has its
        own role), and RunTask overrides are limited to 8 KiB."""
        keep = set(self.spec.environment.env) | set(OWN_VARIABLES) | {"PYTHONUNBUFFERED"}
        keep |= {n for n in os.environ.get(AGENT_ENV_NAMES, "").split(",") if n}
        return {k: v for k, v in job.env.items() if k in keep}

    def wait(self, handle: Task, timeout: float) -> Outcome | None:
        due = handle.described + self.describe_every_s - time.monotonic()
        if due > 0:
            time.sleep(min(timeout, due))
            return None
        handle.described = time.monotonic()
        try:
            task = self._describe(handle)
        except FlowspecError as exc:  # throttled, a timeout: the task runs on; give up only when it lasts
            handle.failing = handle.failing or time.monotonic()
            if time.monotonic() - handle.failing > self.describe_patience_s:
                raise
            log.warning("run %s: %s (retrying)", handle.run_id, exc.message)
            return None
        handle.failing = None
        if task is None:
            return Outcome(None, f"{handle.id} is not known to cluster {handle.cluster} any more (MISSING)")
        status = task.get("lastStatus")
        if status == "STOPPED":
            handle.stopped_at = time.monotonic()
            handle.stopped.set()
            return stop_outcome(handle, task)
        if status in ("RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING") and not handle.running:
            handle.running = True
            log.info("run %s: task %s is RUNNING", handle.run_id, handle.id)
        now = time.monotonic()
        if not handle.running and handle.stop_asked is None and now - handle.started > self.start_timeout_s:
            self._stop(handle, f"flowspec: the task did not reach RUNNING within {self.start_timeout_s:g}s")
        if handle.stop_asked is not None and now - handle.stop_asked > self.stop_timeout_s:
            handle.stopped.set()
            return Outcome(None, f"{handle.id} did not stop within {self.stop_timeout_s:g}s of StopTask"
                                 f" (last status {status})")
        return None

    def _describe(self, handle: Task) -> dict | None:
        from flowspec.aws import translated

        with translated(f"watching task {handle.id}", "ecs:DescribeTasks"):
            answer = self.session.client("ecs").describe_tasks(cluster=handle.cluster, tasks=[handle.arn])
        if answer.get("tasks"):
            handle.last = answer["tasks"][0]
            return handle.last
        return None

    def stream_logs(self, handle: Task, write: Callable[[str], None]) -> None:
        """Follow the flow container's CloudWatch stream (`prefix/container/task-id`) until the task
        stopped and the stream has nothing more; each event goes to `write` and to the run's logs."""
        if handle.logs is None:
            log.warning("run %s: the flow container has no awslogs logConfiguration: its output is not"
                        " streamed (see the AWS guide of flowspec)", handle.run_id)
            handle.stopped.wait()
            return
        from flowspec.aws import translated

        client = self.session.client("logs")
        group, stream = handle.logs
        token = None
        while True:
            stopped = handle.stopped.is_set()  # read before the fetch: one more fetch after the stop
            args = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            with translated(f"reading the log stream {group}/{stream}", "logs:GetLogEvents"):
                try:
                    answer = client.get_log_events(**args, **({"nextToken": token} if token else {}))
                except Exception as exc:
                    if getattr(exc, "response", {}).get("Error", {}).get("Code") != "ResourceNotFoundException":
                        raise
                    answer = {"events": [], "nextForwardToken": token}  # the container has not written yet
            events = answer.get("events", [])
            if events:
                self._record(handle, events, write)
            new_token = answer.get("nextForwardToken")
            # After the stop, events still arriving (awslogs delivers with a delay) are read for a
            # moment; the platform loop waits 5 s for this thread.
            if stopped and (not events or new_token == token) \
                    and time.monotonic() - handle.stopped_at >= self.log_settle_s:
                return
            token = new_token
            if events:
                continue
            if stopped:
                time.sleep(0.5)
            else:
                handle.stopped.wait(self.log_poll_s)

    def _record(self, handle: Task, events: list, write: Callable[[str], None]) -> None:
        lines = []
        for event in events:
            text = event.get("message", "").rstrip("\n")
            write(text + "\n")
            lines.append((event.get("timestamp", time.time() * 1000) / 1000.0, "INFO", "fargate", text))
        if self._backend is not None:
            try:
                self._backend.add_logs(handle.run_id, lines)
            except FlowspecError as exc:  # the lines still went to the watcher's output
                log.warning("run %s: log lines of the task not recorded: %s", handle.run_id, exc)

    def stop(self, handle: Task, grace_s: float) -> None:
        """StopTask: ECS sends SIGTERM (the run inside ends Cancelled), then SIGKILL after the
        container's stopTimeout; grace_s cannot shorten that."""
        self._stop(handle, "flowspec: the flow run was cancelled" if self._cancelling(handle)
                   else "flowspec: its watcher stopped it (interrupted, or the agent that ran it died)")

    def _cancelling(self, handle: Task) -> bool:
        try:
            run = self._backend.get_run(handle.run_id) if self._backend is not None else None
        except FlowspecError:
            return False
        return run is not None and run.state in ("Cancelling", "Cancelled")

    def _stop(self, handle: Task, reason: str) -> None:
        from flowspec.aws import translated

        with translated(f"stopping task {handle.id}", "ecs:StopTask"):
            self.session.client("ecs").stop_task(cluster=handle.cluster, task=handle.arn, reason=reason[:255])
        handle.stop_asked = handle.stop_asked or time.monotonic()
        log.info("run %s: task %s asked to stop (%s)", handle.run_id, handle.id, reason)

    def cleanup(self, handle: Task, outcome: Outcome | None) -> None:
        """The task definition stays (later runs use it); a task left running by an error is stopped."""
        if outcome is None and not handle.stopped.is_set() and handle.stop_asked is None:
            self._stop(handle, "flowspec: its watcher ended before the task did")

    def settle(self, backend, run_id: str, params: dict, outcome: Outcome, cancelled: bool, tail):
        """Record how the task stopped in the run's history, also when the run set its final state."""
        run = backend.get_run(run_id)
        if run is not None and run.state in FINAL:
            note = f"the {self.platform} {outcome.reason}"
            backend.set_run_state(run_id, run.state, f"{run.message}; {note}" if run.message else note,
                                  expected_from={run.state})
        return super().settle(backend, run_id, params, outcome, cancelled, tail)

    # -- plan ----------------------------------------------------------------------------------------
    @classmethod
    def plan(cls, spec, environ: Mapping[str, str] | None = None) -> dict:
        """For `flowspec plan`: the task definition setup() would register, and whether it would reuse
        the active revision, register a new one, or refuse. Describes the family (one read)."""
        try:
            env = cls(spec)
        except SpecError as exc:
            return {"action": "invalid", "reason": "; ".join(d.message for d in exc.diagnostics)}
        image = planned_image(spec)
        desired = desired_definition(env.opts, image or "(the image docker storage builds)", flow_command({}))
        # Shown as written (references unresolved, secret-looking names masked); compared resolved.
        written = {**env.opts, "task_definition": dict(spec.environment.options).get("task_definition") or {}}
        shown = desired_definition(written, desired["containerDefinitions"][0]["image"], flow_command({}))
        view = {"family": env.opts["family"], "cluster": env.opts["cluster"], "on_drift": env.opts["on_drift"],
                "task_definition": mask(shown)}
        try:
            active = describe_family(env.session.client("ecs"), env.opts["family"])
        except FlowspecError as exc:
            return {**view, "action": "unknown", "reason": f"cannot describe the family: {exc.message}"}
        if active is not None and image is None:  # the image is known once built: compare the rest
            desired["containerDefinitions"][0]["image"] = active["containerDefinitions"][0].get("image")
        decision = scrub(decide(desired, active, env.opts["on_drift"]), secret_values(spec))
        reasons = {"reuse": f"revision {active and active['revision']} is identical in every field the spec sets",
                   "register": "the family does not exist yet" if active is None
                   else f"revision {active['revision']} differs", "refuse": "on_drift is 'error'"}
        return {**view, "action": decision["action"], "active_revision": active and active["revision"],
                "differences": [f"{d['field']}: {d['spec']} vs {d['active']}" for d in decision["differences"]],
                "reason": reasons[decision["action"]]
                + ("" if image else "; the image is compared once docker storage has built it")}


# -- the spec's keys ---------------------------------------------------------------------------------
def options(spec) -> dict[str, Any]:
    """The environment's own keys, `${{ env.NAME }}` resolved, checked before any AWS call."""
    raw = dict(spec.environment.options)
    doc = spec.document
    diags: list = []
    lookup = refs.env_lookup(os.environ)

    def value(key: str, default=None):
        try:
            resolved = refs.resolve(refs.compile_value(copy.deepcopy(raw.get(key, default))), lookup)
        except refs.UnsetEnvError as exc:
            diags.append(doc.diag(("environment", key), str(exc), "export it before the run"))
            return default
        return resolved

    opts = {"region": value("region") or None, "profile": value("profile") or None,
            "cluster": value("cluster") or "default", "family": value("family") or spec.name,
            "task_definition": value("task_definition", {}) or {}, "run_task": value("run_task", {}) or {},
            "on_drift": raw.get("on_drift", "register"), "secrets": dict(raw.get("secrets") or {})}
    if not FAMILY.match(opts["family"]):
        where = ("environment", "family") if "family" in raw else ("name",)
        diags.append(doc.diag(where, f"'{opts['family']}' is not a task definition family name",
                              "up to 255 letters, digits, '-' and '_': set environment.family"))
    diags += check_definition(doc, opts)
    diags += check_run_task(doc, opts)
    if diags:
        raise SpecError(diags)
    return opts


def check_definition(doc, opts: dict) -> list:
    td, base = opts["task_definition"], ("environment", "task_definition")
    out = []
    if "family" in td and td["family"] != opts["family"]:
        out.append(doc.diag(base + ("family",), f"task_definition.family '{td['family']}' is not the environment's"
                                                f" family '{opts['family']}'", "set environment.family only"))
    containers = td.get("containerDefinitions")
    if containers is None:
        return out
    if not isinstance(containers, list) or not containers or not all(isinstance(c, dict) for c in containers):
        return out + [doc.diag(base + ("containerDefinitions",), "containerDefinitions must be a list of"
                               " container definitions (mappings)", "the first one runs the flow")]
    for key in ("image", "command"):
        if key in containers[0]:
            out.append(doc.diag(base + ("containerDefinitions", 0, key), f"the flow container's {key} is"
                                f" flowspec's to set (the docker storage image and the command that runs a flow run)",
                                f"remove {key}: the first container definition runs the flow"))
    logging_ = containers[0].get("logConfiguration")
    if isinstance(logging_, dict) and logging_.get("logDriver") == "awslogs":
        given = logging_.get("options") or {}
        for key in ("awslogs-group", "awslogs-stream-prefix"):
            if not given.get(key):
                out.append(doc.diag(base + ("containerDefinitions", 0, "logConfiguration"),
                                    f"the awslogs log driver of a Fargate task needs the option {key}",
                                    "e.g. options: {awslogs-group: /flowspec, awslogs-region: REGION,"
                                    " awslogs-stream-prefix: flowspec}"))
    return out


def check_run_task(doc, opts: dict) -> list:
    rt, base = opts["run_task"], ("environment", "run_task")
    out = []
    for key, why in (("taskDefinition", "setup() chooses the revision (family, on_drift)"),
                     ("cluster", "set environment.cluster")):
        if key in rt:
            out.append(doc.diag(base + (key,), f"run_task.{key} is flowspec's to set: {why}", f"remove {key}",
                                key=True))
    if rt.get("count", 1) != 1:
        out.append(doc.diag(base + ("count",), "a flow run is one task: count must be 1", "remove count"))
    if "launchType" in rt and "capacityProviderStrategy" in rt:
        out.append(doc.diag(base + ("capacityProviderStrategy",), "give launchType or capacityProviderStrategy,"
                            " not both (ECS refuses both)", "remove launchType to use capacity providers", key=True))
    mode = opts["task_definition"].get("networkMode", "awsvpc")
    vpc = ((rt.get("networkConfiguration") or {}).get("awsvpcConfiguration") or {}) \
        if isinstance(rt.get("networkConfiguration"), dict) else {}
    if mode == "awsvpc" and not (isinstance(vpc, dict) and vpc.get("subnets")):
        where = base + ("networkConfiguration", "awsvpcConfiguration") if "run_task" in doc_env(doc) else \
            ("environment", "type")
        out.append(doc.diag(where, "a task in awsvpc network mode (every Fargate task) needs subnets",
                            "set run_task: {networkConfiguration: {awsvpcConfiguration: {subnets: [subnet-...],"
                            " securityGroups: [sg-...]}}}"))
    return out


def doc_env(doc) -> dict:
    data = doc.data if isinstance(doc.data, dict) else {}
    return data.get("environment") or {}


def flow_command(location: Mapping[str, Any]) -> list[str]:
    """flowspec's command in the task definition: the image's command for a run, but the run id,
    which each run's container override adds."""
    return list(image_command(location, "RUN_ID")[:-1])


def desired_definition(opts: dict, image: str, command: list[str]) -> dict:
    """RegisterTaskDefinition arguments: the spec's, the family, Fargate's defaults, the flow container."""
    td = copy.deepcopy(opts["task_definition"])
    td["family"] = opts["family"]
    td.setdefault("requiresCompatibilities", ["FARGATE"])
    td.setdefault("networkMode", "awsvpc")
    if "FARGATE" in td["requiresCompatibilities"]:  # Fargate needs task-level sizes: its smallest
        td.setdefault("cpu", "256")
        td.setdefault("memory", "512")
    containers = td.setdefault("containerDefinitions", [{}])
    flow = containers[0]
    flow.setdefault("name", FLOW_CONTAINER)
    flow.setdefault("essential", True)
    flow["image"], flow["command"] = image, list(command)
    if opts.get("secrets"):  # ECS injects each as the variable `${{ secrets.NAME }}` reads first
        from flowspec.secrets import env_name

        given = [s for s in flow.get("secrets") or [] if s.get("name") not in {env_name(n) for n in opts["secrets"]}]
        flow["secrets"] = given + [{"name": env_name(name), "valueFrom": ref}
                                   for name, ref in sorted(opts["secrets"].items())]
    return td


def digest_of(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


# -- describe, compare, register -----------------------------------------------------------------------
def describe_family(ecs, family: str) -> dict | None:
    """The family's latest ACTIVE revision (with its tags), or None when the family has none."""
    from flowspec.aws import AWSError, translated

    try:
        with translated(f"describing task definition family '{family}'", "ecs:DescribeTaskDefinition"):
            answer = ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
    except AWSError as exc:
        if exc.code == "ClientException" and "Unable to describe task definition" in exc.message:
            return None  # AWS's answer for a family without an active revision
        raise
    if answer["taskDefinition"].get("status", "ACTIVE") != "ACTIVE":
        # AWS answers the latest ACTIVE revision; one deregistered a moment ago (a race's duplicate)
        # may still be seen (and moto answers the latest of any status): ask for the ACTIVE ones.
        with translated(f"listing task definition family '{family}'", "ecs:ListTaskDefinitions"):
            arns = ecs.list_task_definitions(familyPrefix=family, status="ACTIVE", sort="DESC")["taskDefinitionArns"]
        arns = [a for a in arns if a.rsplit("/", 1)[-1].rsplit(":", 1)[0] == family]
        if not arns:
            return None
        with translated(f"describing {arns[0]}", "ecs:DescribeTaskDefinition"):
            answer = ecs.describe_task_definition(taskDefinition=arns[0], include=["TAGS"])
    return {**answer["taskDefinition"], "tags": answer.get("tags") or []}


def decide(desired: dict, active: dict | None, on_drift: str) -> dict:
    """reuse (identical in every field the spec sets), register, or refuse (on_drift: error)."""
    if active is None:
        return {"action": "register", "differences": []}
    found = differences(desired, active)
    if not found:
        return {"action": "reuse", "differences": []}
    return {"action": "refuse" if on_drift == "error" else "register", "differences": found}


def differences(desired, active, path: str = "") -> list[dict]:
    """Where the active definition differs from the desired one, in the fields the desired one sets.
    Lists of named items (containers, environment pairs) are compared by name."""
    if isinstance(desired, dict):
        out = []
        for key, want in desired.items():
            if path == "" and key in NOT_COMPARED:
                continue
            out += differences(want, active.get(key) if isinstance(active, dict) else None,
                               f"{path}.{key}" if path else key)
        return out
    if isinstance(desired, list) and _named(desired) and isinstance(active, list) and _named(active):
        have = {item["name"]: item for item in active}
        out = [d for item in desired for d in differences(item, have.get(item["name"]), f"{path}[{item['name']}]")]
        extra = [item["name"] for item in active if item["name"] not in {i["name"] for i in desired}]
        return out + [_diff(f"{path}[{name}]", None, have[name], path) for name in extra]
    if isinstance(desired, list):
        if not isinstance(active, list) or len(active) != len(desired):
            return [_diff(path, desired, active, path)]
        return [d for i, (w, h) in enumerate(zip(desired, active)) for d in differences(w, h, f"{path}[{i}]")]
    if desired == active or (active is not None and not isinstance(active, (dict, list))
                             and str(desired) == str(active)):
        return []
    return [_diff(path, desired, active, path)]


def _named(items: list) -> bool:
    return bool(items) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items)


def _diff(field_: str, want, have, path: str) -> dict:
    secret = _secret_path(field_)
    show = (lambda v: MASK if v is not None else "(absent)") if secret else _show
    return {"field": field_, "spec": show(want), "active": show(have)}


def _show(value) -> str:
    return "(absent)" if value is None else json.dumps(value, sort_keys=True, default=str)


def _secret_path(field_: str) -> bool:
    from flowspec.plan import is_secret

    return any(is_secret(name) for name in re.findall(r"\[([^\]]+)\]", field_))


def secret_values(spec) -> set[str]:
    """Values of the secret-looking variables that the environment's keys read (`${{ env.DB_PASSWORD }}`):
    never shown, whatever field they end up in."""
    from flowspec.plan import is_secret

    compiled = refs.compile_value(dict(spec.environment.options))
    names = {ref.name for _, ref in refs.iter_refs(compiled) if ref.kind == "env" and is_secret(ref.name)}
    return {os.environ[n] for n in names if len(os.environ.get(n, "")) >= 4}


def scrub(decision: dict, secrets: set[str]) -> dict:
    """The decision with every shown value that holds a secret masked."""
    def clean(text: str) -> str:
        return MASK if any(secret in text for secret in secrets) else text

    found = [{**d, "spec": clean(d["spec"]), "active": clean(d["active"])} for d in decision["differences"]]
    return {**decision, "differences": found}


def refusal(decision: dict) -> str:
    lines = [f"  {d['field']}: {d['spec']} vs {d['active']}" for d in decision["differences"]]
    return ("the active task definition differs from the spec in the fields below (spec value vs active"
            " value) and on_drift is 'error':\n" + "\n".join(lines))


def register(ecs, desired: dict, base: int) -> dict:
    """Register `desired` as a new revision; if agents raced to register the same change, keep the
    lowest revision since `base` that is identical in every field `desired` sets, and deregister
    ours. Correct on AWS: revision numbers are given in order, so of two racing registrations the
    later one always finds the earlier below its own number, and the earlier one keeps itself."""
    from flowspec.aws import translated

    digest = digest_of(desired)
    tags = [*desired.get("tags", []), {"key": DIGEST_TAG, "value": digest}]
    family = desired["family"]
    with translated(f"registering a revision of task definition family '{family}'",
                    "ecs:RegisterTaskDefinition and ecs:TagResource (and iam:PassRole for its roles)"):
        answer = ecs.register_task_definition(**{**desired, "tags": tags})
    mine = {**answer["taskDefinition"], "tags": answer.get("tags") or tags}
    for revision in range(base + 1, mine["revision"]):
        other = _revision(ecs, family, revision)
        # The same change: judged on the fields, as reuse is (tags may reach describe later than the definition)
        if other is not None and other.get("status") == "ACTIVE" and not differences(desired, other):
            with translated(f"deregistering the duplicate revision {family}:{mine['revision']}",
                            "ecs:DeregisterTaskDefinition"):
                ecs.deregister_task_definition(taskDefinition=mine["taskDefinitionArn"])
            log.info("task definition %s:%d registered the same change first: using it, %s:%d deregistered",
                     family, revision, family, mine["revision"])
            return other
    return mine


def first_of_change(ecs, desired: dict, active: dict, lookback: int = 10) -> dict:
    """The lowest ACTIVE revision identical to `active` just below it, else `active` itself.

    A racing agent may still be about to deregister `active` as the duplicate of a lower one (see
    `register`); reusing it would run on a revision that is gone a moment later. Every agent that
    reuses or registers the same change thus converges on the first revision that made it."""
    from flowspec.aws import translated

    family = desired["family"]
    with translated(f"listing task definition family '{family}'", "ecs:ListTaskDefinitions"):
        arns = ecs.list_task_definitions(familyPrefix=family, status="ACTIVE", sort="DESC")["taskDefinitionArns"]
    lower = sorted((int(a.rsplit(":", 1)[1]) for a in arns if a.rsplit("/", 1)[-1].rsplit(":", 1)[0] == family
                    and int(a.rsplit(":", 1)[1]) < active["revision"]), reverse=True)
    chosen = active
    for revision in lower[:lookback]:
        other = _revision(ecs, family, revision)
        if other is None or other.get("status") != "ACTIVE" or differences(desired, other):
            break
        chosen = other
    return chosen


def _revision(ecs, family: str, revision: int, attempts: int = 3) -> dict | None:
    """One revision with its tags; retried briefly, as a revision just registered elsewhere may not
    be visible yet (ECS is eventually consistent)."""
    from flowspec.aws import AWSError, translated

    for attempt in range(attempts):
        try:
            with translated(f"describing {family}:{revision}", "ecs:DescribeTaskDefinition"):
                answer = ecs.describe_task_definition(taskDefinition=f"{family}:{revision}", include=["TAGS"])
            return {**answer["taskDefinition"], "tags": answer.get("tags") or []}
        except AWSError as exc:
            if exc.code != "ClientException" or attempt == attempts - 1:
                return None
            time.sleep(0.5)
    return None


# -- run_task ---------------------------------------------------------------------------------------
def run_task_args(opts: dict, revision: dict, job: FlowRunJob, env: Mapping[str, str]) -> dict:
    """RunTask arguments: the spec's, the revision, and an override of the flow container carrying
    the run's command and environment (the spec's override values first, flowspec's win)."""
    args = copy.deepcopy(opts["run_task"])
    overrides = args.setdefault("overrides", {})
    containers = overrides.setdefault("containerOverrides", [])
    name = revision["containerDefinitions"][0]["name"]
    flow = next((c for c in containers if c.get("name") == name), None)
    if flow is None:
        flow = {"name": name}
        containers.insert(0, flow)
    variables = {e["name"]: e.get("value", "") for e in flow.get("environment", [])}
    variables.update(env)
    flow["environment"] = [{"name": k, "value": v} for k, v in variables.items()]
    flow["command"] = list(job.command)
    if "launchType" not in args and "capacityProviderStrategy" not in args:
        args["launchType"] = "FARGATE"
    tags = [t for t in args.get("tags", []) if t.get("key") not in ("flowspec.run-id", "flowspec.flow")]
    args.update(cluster=opts["cluster"], taskDefinition=revision["taskDefinitionArn"], count=1,
                startedBy="flowspec", tags=tags + [{"key": k, "value": v} for k, v in job.labels.items()])
    return args


def log_stream(container: dict, task_arn: str) -> tuple[str, str] | None:
    """(group, stream) where awslogs puts the container's output: `prefix/container-name/task-id`."""
    config = container.get("logConfiguration") or {}
    given = config.get("options") or {}
    if config.get("logDriver") != "awslogs" or not given.get("awslogs-group"):
        return None
    stream = f"{given.get('awslogs-stream-prefix', '')}/{container['name']}/{task_arn.rsplit('/', 1)[-1]}"
    return given["awslogs-group"], stream


def stop_outcome(handle: Task, task: dict) -> Outcome:
    """How a STOPPED task ended: stopCode, stoppedReason and the flow container's exit code."""
    container = next((c for c in task.get("containers", []) if c.get("name") == handle.container), {})
    code = container.get("exitCode")
    parts = [f"stopCode {task.get('stopCode') or '(none)'}",
             f"stoppedReason: {task.get('stoppedReason') or '(none)'}",
             f"{handle.container} container exit code {code if code is not None else '(none)'}"]
    if container.get("reason"):
        parts.append(f"container reason: {container['reason']}")
    return Outcome(code, f"{handle.id} stopped ({'; '.join(parts)})")


def planned_image(spec) -> str | None:
    """The image docker storage would build, when its options name it without building."""
    from flowspec.storage.docker import image_ref

    storage = dict(spec.storage.options)
    if not storage.get("image_name") or not storage.get("image_tag"):
        return None
    return image_ref(storage, storage["image_tag"])


def mask(value, secret: bool = False):
    """A definition for display: values of credential-looking names and pairs masked."""
    from flowspec.plan import is_secret

    if isinstance(value, dict):
        pair_secret = isinstance(value.get("name"), str) and is_secret(value["name"])
        return {k: mask(v, secret or (k == "value" and pair_secret) or is_secret(k, env_var=False))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, secret) for v in value]
    return MASK if secret and value not in (None, "") else value
