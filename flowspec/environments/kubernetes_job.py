"""The `kubernetes-job` environment: each flow run runs as a Kubernetes Job from the flow's
docker storage image, watched to its end by the agent (or by `flowspec run FILE`)."""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from flowspec.environments.platform import FlowRunJob, Outcome, PlatformEnvironment, log
from flowspec.errors import FlowspecError
from flowspec.k8s import jobs
from flowspec.k8s import manifests as mf
from flowspec.k8s import watch
from flowspec.k8s.client import call, connect

CHECK_S = 0.5  # how often the Job and its pod are read while the run goes on
GONE_WAIT_S = 60.0
UNREACHABLE_S = 60.0  # how long the API server may be out of reach before the run is failed  # how long cleanup waits for the Job and its pods to be gone
OWN_VARIABLES = {"FLOWSPEC_RUN_ID", "FLOWSPEC_BACKEND", "FLOWSPEC_FLOW_LOCATION"}


@dataclass
class JobHandle:
    """A Job this run created, and what the watcher learnt about it so far."""

    name: str
    namespace: str
    uid: str
    run_id: str
    container: str
    trouble: watch.Trouble
    pod: str | None = None
    next_check: float = 0.0
    over: threading.Event = field(default_factory=threading.Event)
    stopped: bool = False
    unreachable_since: float | None = None
    outside: str | None = None  # why the pod went, when someone else deleted or evicted it


class KubernetesJobEnvironment(PlatformEnvironment):
    """Runs each flow run as a Kubernetes Job (one pod, never retried by Kubernetes).

    YAML keys (`environment:`): the common ones (`labels`, `env`, `on_start`, `on_exit`) and
    `namespace` (default `default`), `job_spec_file` (a Job manifest, relative to the spec,
    whose first container runs the flow), `image_pull_secret`, `service_account`,
    `delete_finished_jobs` (true (default), false, or `on_success`: failed Jobs are kept).

    Credentials: the kubeconfig (`$KUBECONFIG`, `~/.kube/config`, its current context) or the
    pod's service account. A pod in trouble (unschedulable, not created, its image not pulled)
    is reported in the run's history and fails the run after `$FLOWSPEC_K8S_PENDING_TIMEOUT`
    seconds (default 60). docs/kubernetes.md has the manifest rules, RBAC and cleanup.
    """

    platform = "Job"
    kind = "kubernetes-job"

    def __init__(self, spec, location=None) -> None:
        super().__init__(spec, location)
        self.options = jobs.resolved_options(spec.environment.options)
        self.templates = jobs.templates_of(spec.environment.options)
        self.backend = None
        self.sqlite_dir: str | None = None
        self._kube = None

    @property
    def kube(self):
        if self._kube is None:
            self._kube = connect(f"the {self.kind} environment")
        return self._kube

    # -- before the loop -------------------------------------------------------------------------
    def prepare(self, url: str | None = None) -> None:
        """For `flowspec run FILE`: the backend in the pod's reach, the manifests valid, the image built."""
        from flowspec.backend import backend_url
        from flowspec.k8s.checks import require_schemas
        from flowspec.storage import storage_for

        require_schemas()
        self.backend_url_inside(backend_url(url))
        self.kube  # noqa: B018  (credentials first: no image is built for a cluster we cannot use)
        if self.location is None:
            self.location = storage_for(self.spec.storage.type).build(self.spec)

    def execute(self, params: dict, observers=(), run_id: str | None = None, keep_results: bool = True):
        from flowspec.recorder import Recorder

        # The run's backend, for the agent's name (labels) and for reporting a pod in trouble.
        self.backend = next((o.backend for o in observers if isinstance(o, Recorder)), None)
        try:
            return super().execute(params, observers, run_id, keep_results)
        finally:
            if self._kube is not None:
                self._kube.close()

    def backend_url_inside(self, url: str) -> str:
        """PostgreSQL as it is; an SQLite file only on a cluster that runs on this machine (its API
        server on loopback), mounted into the pod at its own path (a hostPath volume)."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else "sqlite"
        if scheme in ("postgresql", "postgres"):
            return url
        path = os.path.abspath(url[len("sqlite://"):] if url.startswith("sqlite://") else url)
        if not mf.loopback_backend(self.kube.host):
            raise FlowspecError(
                f"the backend is the SQLite file {path}, which a pod of the cluster at {self.kube.host} cannot open:"
                " the flow run in the pod records its states and logs in the backend",
                hint="use a PostgreSQL backend the pods can reach (FLOWSPEC_BACKEND=postgresql://...)")
        self.sqlite_dir = os.path.dirname(path)  # the folder: SQLite writes its journal beside the file
        return f"sqlite://{path}"

    # -- the Job -----------------------------------------------------------------------------------
    def manifest(self, job: FlowRunJob) -> mf.Built:
        """The Job of this run, checked (a SpecError names the line of a mistake)."""
        from flowspec.k8s.checks import require_schemas

        require_schemas()
        run = self.backend.get_run(job.run_id) if self.backend is not None else None
        # environment.secrets: Kubernetes injects each as the variable the pod's flow reads first
        # (FLOWSPEC_SECRET_NAME), from a secretKeyRef: the value is never in the Job's manifest.
        env = {**self.job_env(job), **secret_refs(self.options.get("secrets") or {})}
        inputs = jobs.RunInputs(image=job.image, command=list(job.command), env=env, run_id=job.run_id,
                                agent=run.agent if run is not None else None,
                                backend_url=job.env.get("FLOWSPEC_BACKEND"), own=set(OWN_VARIABLES), name=job.name)
        built = jobs.build_job(self.kind, self.spec.name, self.spec.project, self.options, self.templates,
                               self.spec.environment.env, inputs, self.spec.document)
        if self.sqlite_dir:
            mf.mount_host_folder(built.manifest, "flowspec-backend", self.sqlite_dir)
        return built

    def job_env(self, job: FlowRunJob) -> dict:
        return dict(job.env)

    def start(self, job: FlowRunJob) -> JobHandle:
        built = self.manifest(job)
        for warning in built.warnings:
            log.warning("run %s: %s", job.run_id, warning)
        meta = built.manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        created = call(f"create Job {name} in namespace {namespace}", self.kube.batch.create_namespaced_job,
                       namespace, built.manifest, ok=(409,))
        if created is None:  # 409: this run's Job exists (a retried start); anyone else's is not ours
            created = call(f"read Job {name}", self.kube.batch.read_namespaced_job, name, namespace)
            if (created.metadata.labels or {}).get(mf.RUN_LABEL) != meta["labels"][mf.RUN_LABEL]:
                raise FlowspecError(f"a Job named {name} already exists in namespace {namespace} and is not this"
                                    f" run's", hint="delete it, or start a new run")
        if name != job.name:
            log.info("run %s: its Job is %s in namespace %s", job.run_id, name, namespace)
        first = built.manifest["spec"]["template"]["spec"]["containers"][0]["name"]
        return JobHandle(name, namespace, created.metadata.uid, job.run_id, first,
                         watch.Trouble(watch.pending_timeout()))

    def wait(self, handle: JobHandle, timeout: float) -> Outcome | None:
        now = time.monotonic()
        if now < handle.next_check:
            time.sleep(min(timeout, handle.next_check - now))
            return None
        handle.next_check = now + CHECK_S
        try:
            outcome = self.inspect(handle)
        except FlowspecError as exc:  # the API server out of reach for a moment: the Job goes on
            if handle.unreachable_since is None:
                handle.unreachable_since = now
                log.warning("run %s: %s (retrying)", handle.run_id, exc.message)
            if now - handle.unreachable_since < UNREACHABLE_S:
                return None
            outcome = Outcome(None, f"could not be watched for {UNREACHABLE_S:g}s: {exc.message}")
        else:
            handle.unreachable_since = None
        if outcome is not None:
            self.not_cancelled(handle, outcome)
            handle.over.set()
        return outcome

    def inspect(self, handle: JobHandle) -> Outcome | None:
        """One look at the Job and its pod: how it ended, or None while it goes on."""
        batch, core = self.kube.batch, self.kube.core
        job = call(f"read Job {handle.name}", batch.read_namespaced_job, handle.name, handle.namespace,
                   ok=(404, 410))
        if job is None or job.metadata.uid != handle.uid:
            gone = handle.outside or ("was deleted" + (" (cancelled)" if handle.stopped else
                                                       " from outside (its Job is gone)"))
            return Outcome(None, gone)
        pods = call(f"list the pods of Job {handle.name}", core.list_namespaced_pod, handle.namespace,
                    label_selector=f"controller-uid={handle.uid}").items
        problem = None
        for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
            if handle.pod is not None and pod.metadata.name != handle.pod:
                self.second_pod(handle, pod)
                continue
            handle.pod = pod.metadata.name
            if pod.metadata.deletion_timestamp is not None and not handle.stopped and handle.outside is None:
                self.deleted_outside(handle, pod)
            ended = watch.ended(pod, handle.container)
            if ended is not None:
                code, reason = ended
                return Outcome(code, f"{handle.outside} ({reason})" if handle.outside else reason)
            if pod.status is not None and pod.status.phase == "Pending":
                problem = watch.pod_problem(pod, handle.container) or self.event_problem(handle.namespace,
                                                                                      pod.metadata.uid, pending=pod)
        if not pods:
            if failed := watch.job_failed(job):
                return Outcome(None, f"failed: {failed}")
            problem = self.event_problem(handle.namespace, handle.uid)
        return self.judge(handle, problem)

    def deleted_outside(self, handle: JobHandle, pod) -> None:
        """Our pod is being deleted by someone else (an eviction, a drain, kubectl delete): say so,
        and delete the Job, or its controller would start the flow again in a new pod."""
        handle.outside = f"was evicted or deleted from outside flowspec (pod {pod.metadata.name})"
        log.warning("run %s: pod %s is being deleted from outside flowspec (an eviction or a delete)",
                    handle.run_id, pod.metadata.name)
        self.delete(handle, float(pod.metadata.deletion_grace_period_seconds or 30))  # not a cancel

    def second_pod(self, handle: JobHandle, pod) -> None:
        """The Job controller started another pod for the run (its first was deleted or evicted):
        deleted at once, with the Job, so that the flow run never runs twice."""
        if pod.metadata.deletion_timestamp is not None:
            return
        if handle.outside is None and not handle.stopped:  # the first pod vanished between two looks
            handle.outside = f"was evicted or deleted from outside flowspec (pod {handle.pod})"
            log.warning("run %s: pod %s is gone, deleted from outside flowspec", handle.run_id, handle.pod)
            self.delete(handle, 30.0)
        log.warning("run %s: the Job started another pod, %s: deleting it, the run never runs twice",
                    handle.run_id, pod.metadata.name)
        call(f"delete pod {pod.metadata.name}", self.kube.core.delete_namespaced_pod, pod.metadata.name,
             handle.namespace, grace_period_seconds=0, ok=(404,))

    def not_cancelled(self, handle: JobHandle, outcome: Outcome) -> None:
        """A pod evicted or deleted from outside got SIGTERM, which the run inside takes for a
        cancel: unless someone did cancel the run, it failed, for that reason."""
        if self.backend is None or not (handle.outside or outcome.reason.startswith("was evicted")):
            return
        run = self.backend.get_run(handle.run_id)
        if run is None or run.state != "Cancelled":
            return
        if any(e.state == "Cancelling" for e in self.backend.run_history(handle.run_id)):
            return
        message = f"the {self.platform}'s pod {outcome.reason}"
        if self.backend.set_run_state(handle.run_id, "Failed", message, expected_from={"Cancelled"}, exit_code=1):
            log.warning("run %s: Failed: %s", handle.run_id, message)

    def event_problem(self, namespace: str, uid: str, pending=None) -> str | None:
        """The last Warning event about an object (a Job's FailedCreate, a pod's FailedMount)."""
        if pending is not None and pending.metadata.creation_timestamp is not None:
            age = time.time() - pending.metadata.creation_timestamp.timestamp()
            if age < 5:  # a pod on its way: events are read only once it is slow to start
                return None
        events = call("read the events", self.kube.core.list_namespaced_event, namespace,
                      field_selector=f"involvedObject.uid={uid}")
        warnings = watch.warning_events(events)
        return warnings[-1] if warnings else None

    def judge(self, handle: JobHandle, problem: str | None) -> Outcome | None:
        new, too_long = handle.trouble.seen(problem, time.monotonic())
        if new:
            message = f"{self.platform} {handle.name}: pod not started: {problem}"
            log.warning("run %s: %s", handle.run_id, message)
            self.note(handle.run_id, f"Pending: {problem}")
        if too_long:
            return Outcome(None, f"never started: {problem} (for {handle.trouble.timeout:g}s,"
                                 f" ${watch.PENDING_TIMEOUT_VAR})")
        return None

    def note(self, run_id: str, message: str) -> None:
        """A line in the run's state history (it stays Running) saying why it waits."""
        if self.backend is None:
            return
        try:
            self.backend.set_run_state(run_id, "Running", message, expected_from={"Running"})
        except FlowspecError as exc:
            log.warning("run %s: %s", run_id, exc)

    # -- output, stopping, cleanup ---------------------------------------------------------------------
    def stream_logs(self, handle: JobHandle, write) -> None:
        from kubernetes import watch as kwatch

        while not handle.over.is_set():  # until the pod's container has started (or it all ended)
            if handle.pod is not None and self._started(handle):
                break
            handle.over.wait(0.2)
        if handle.pod is None:
            return
        stream, lines = kwatch.Watch(), _LogLines(self.backend, handle.run_id, f"pod {handle.pod}")
        try:
            for line in stream.stream(self.kube.core.read_namespaced_pod_log, handle.pod, handle.namespace,
                                      container=handle.container, follow=True):
                write(line + "\n")
                lines.add(line)
        except Exception as exc:  # the pod was deleted under the stream: its output ends there
            if not handle.over.is_set():
                raise FlowspecError(f"reading the output of pod {handle.pod}: {exc}") from None
        finally:
            lines.flush()

    def _started(self, handle: JobHandle) -> bool:
        pod = call(f"read pod {handle.pod}", self.kube.core.read_namespaced_pod, handle.pod, handle.namespace,
                   ok=(404,))
        status = watch.container_status(pod, handle.container) if pod is not None else None
        return status is not None and status.state is not None and (
            status.state.running is not None or status.state.terminated is not None)

    def stop(self, handle: JobHandle, grace_s: float) -> None:
        """flowspec stops the run (a cancel, the end of the run): its Job is deleted."""
        handle.stopped = True
        self.delete(handle, grace_s)

    def delete(self, handle: JobHandle, grace_s: float) -> None:
        """Delete the Job, Foreground: its pods go first (SIGTERM, then SIGKILL after the grace)."""
        from kubernetes import client

        body = client.V1DeleteOptions(propagation_policy="Foreground", grace_period_seconds=int(grace_s))
        call(f"delete Job {handle.name}", self.kube.batch.delete_namespaced_job, handle.name, handle.namespace,
             body=body, ok=(404, 409))
        # The garbage collector would give the pods their own grace period (30 s by default): this one.
        call("delete the Job's pods", self.kube.core.delete_collection_namespaced_pod, handle.namespace,
             label_selector=f"controller-uid={handle.uid}", grace_period_seconds=int(grace_s), ok=(404,))

    def keep(self, handle: JobHandle) -> bool:
        policy = self.options.get("delete_finished_jobs", True)
        if policy is False:
            return True
        if policy == "on_success" and self.backend is not None:
            run = self.backend.get_run(handle.run_id)
            return run is None or run.state != "Success"
        return False

    def cleanup(self, handle: JobHandle, outcome: Outcome | None) -> None:
        """Delete the finished Job and its pods (Foreground) unless `delete_finished_jobs` keeps it."""
        handle.over.set()
        if outcome is not None and self.keep(handle):
            log.info("run %s: Job %s kept (delete_finished_jobs: %s)", handle.run_id, handle.name,
                     self.options.get("delete_finished_jobs"))
            return
        # A job that ended (or whose pod never started) has nothing left to stop gracefully: its
        # pods go at once. Without an outcome (cleaning up after an error) they get the grace.
        self.stop(handle, 0.0 if outcome is not None else 30.0)
        deadline = time.monotonic() + GONE_WAIT_S
        while time.monotonic() < deadline:
            job = call(f"read Job {handle.name}", self.kube.batch.read_namespaced_job, handle.name, handle.namespace,
                       ok=(404, 410))
            if job is None or job.metadata.uid != handle.uid:
                return
            time.sleep(0.25)
        log.warning("run %s: Job %s is still being deleted after %gs", handle.run_id, handle.name, GONE_WAIT_S)


class _LogLines:
    """The pod's output into the run's logs, written by a thread of its own every EVERY_S.
    flowspec's own log lines are left out: the run inside records those itself."""

    FLOWSPEC_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL|TASK|RUN) ")
    EVERY_S = 0.2

    def __init__(self, backend, run_id: str, source: str) -> None:
        self.backend, self.run_id, self.source = backend, run_id, source
        self.buffer: list[tuple] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="pod-log-lines")
        if backend is not None:
            self.thread.start()

    def add(self, line: str) -> None:
        if not self.FLOWSPEC_LINE.match(line):
            with self.lock:
                self.buffer.append((time.time(), "INFO", self.source, line))

    def _loop(self) -> None:
        while not self.done.wait(self.EVERY_S):
            self._write()

    def flush(self) -> None:
        """The last lines, and the thread stopped."""
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        self._write()

    def _write(self) -> None:
        with self.lock:
            lines, self.buffer = self.buffer, []
        if self.backend is None or not lines:
            return
        try:
            self.backend.add_logs(self.run_id, lines)
        except FlowspecError as exc:
            log.warning("run %s: %d lines of the pod's output were not recorded: %s", self.run_id, len(lines),
                        exc.message)


def secret_refs(secrets: dict) -> dict:
    """environment.secrets ({NAME: "secret-name/key"}) as container env entries."""
    from flowspec.secrets import env_name

    out = {}
    for name, ref in secrets.items():
        secret, _, key = str(ref).partition("/")
        out[env_name(name)] = {"valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    return out
