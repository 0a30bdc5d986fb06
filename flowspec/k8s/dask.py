"""The Dask cluster of one dask-kubernetes flow run, inside the Job's pod.

The scheduler runs in this process (the Job's pod); workers are pods of their own, created
here with the kubernetes client and scaled between `min_workers` and `max_workers` by Dask's
adaptive scaling. Each worker pod is owned by the Job's pod (ownerReferences), so Kubernetes
removes the workers with it whatever happens to this process; `close()` deletes them on every
exit path of the run first, and `--death-timeout` ends a worker whose scheduler is gone.

Workers are built from `worker_spec_file` (a Pod) or a default pod, with the flow's image, the
same environment declarations as the Job's first container (downward-API values resolve per
pod: each worker sees its own FLOWSPEC_POD_NAME) and its host networking. They connect to the
scheduler at the pod's IP (with host networking, the node's: 127.0.0.1 on a one-machine cluster).

dask-kubernetes is not needed: its classic pod cluster no longer exists, and its operator needs
CRDs and Services that not every cluster has. This is the small pod cluster, on SpecCluster.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from flowspec.errors import FlowspecError, require
from flowspec.k8s import jobs
from flowspec.k8s import manifests as mf
from flowspec.k8s.client import call, connect

WORKER_GRACE_S = 5  # a worker pod being deleted may close its connections cleanly
DEATH_TIMEOUT_S = 60  # a worker whose scheduler is gone that long exits (its pod ends)
POD_VARS = {"FLOWSPEC_POD_NAME": "metadata.name", "FLOWSPEC_POD_UID": "metadata.uid",
            "FLOWSPEC_POD_NAMESPACE": "metadata.namespace", "FLOWSPEC_POD_IP": "status.podIP"}
log = logging.getLogger("flowspec.dask-kubernetes")


def downward_env() -> dict:
    """The pod's own identity, for the Job's container (and the workers', resolved per pod)."""
    return {name: {"valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in POD_VARS.items()}


def worker_command(scheduler: str, name: str) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--name", str(name), "--no-nanny",
            "--no-dashboard", "--death-timeout", str(DEATH_TIMEOUT_S), "--host", "$(FLOWSPEC_POD_IP)"]


class PodCluster:
    """A SpecCluster whose workers are pods owned by this pod; a context manager."""

    def __init__(self, spec, run_id: str) -> None:
        require("distributed", "dask", "the dask-kubernetes environment (in the flow's image)")
        require("kubernetes", "k8s", "the dask-kubernetes environment (in the flow's image)")
        missing = [v for v in POD_VARS if not os.environ.get(v)]
        if missing:
            raise FlowspecError(f"the dask-kubernetes run is not in its Job's pod ({', '.join(missing)} unset)",
                                hint="flowspec sets these in the Job it creates; run the flow through it")
        self.spec, self.run_id = spec, run_id
        self.options = jobs.resolved_options(spec.environment.options)
        self.templates = jobs.templates_of(spec.environment.options)
        self.kube = connect("the dask-kubernetes environment")
        self.namespace = os.environ["FLOWSPEC_POD_NAMESPACE"]
        self.me = call("read this run's own pod", self.kube.core.read_namespaced_pod,
                       os.environ["FLOWSPEC_POD_NAME"], self.namespace)
        self.cluster = None

    # -- the worker pods ---------------------------------------------------------------------------------
    def worker_manifest(self, scheduler: str, name: str) -> dict:
        first = self.me.spec.containers[0]
        env = {}
        for entry in self.kube.api.sanitize_for_serialization(first.env or []):
            env[entry["name"]] = {k: v for k, v in entry.items() if k != "name"} if "valueFrom" in entry \
                else entry.get("value", "")
        base = (self.me.metadata.labels or {}).get("job-name") or self.me.metadata.name
        labels = {k: v for k, v in (self.me.metadata.labels or {}).items() if k.startswith(mf.LABEL_PREFIX)}
        inputs = jobs.RunInputs(image=first.image, command=worker_command(scheduler, name), env=env,
                                run_id=self.run_id, backend_url=os.environ.get("FLOWSPEC_BACKEND"))
        built = jobs.build_worker(self.spec.name, self.spec.project, {**self.options, "namespace": self.namespace},
                                  self.templates, inputs, self.spec.document, f"{base[:52]}-w{name}", labels)
        for warning in built.warnings:
            log.warning("%s", warning)
        pod = built.manifest
        pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": self.me.metadata.name,
                                               "uid": self.me.metadata.uid}]
        spec = pod["spec"]
        spec["restartPolicy"] = "Never"  # a dead worker is replaced by the cluster, not restarted
        if self.me.spec.host_network and "hostNetwork" not in (self._worker_template() or {}).get("spec", {}):
            spec["hostNetwork"] = True
        return pod

    def _worker_template(self) -> dict | None:
        template = self.templates.get("worker_spec_file")
        data = template.document().data if template is not None else None
        return data if isinstance(data, dict) else None

    def create_pod(self, manifest: Mapping) -> None:
        call(f"create the Dask worker pod {manifest['metadata']['name']}", self.kube.core.create_namespaced_pod,
             self.namespace, manifest)

    def delete_pod(self, name: str) -> None:
        call(f"delete the Dask worker pod {name}", self.kube.core.delete_namespaced_pod, name, self.namespace,
             grace_period_seconds=WORKER_GRACE_S, ok=(404,))

    # -- the cluster ------------------------------------------------------------------------------------
    def __enter__(self) -> PodCluster:
        import dask
        from distributed import Scheduler, SpecCluster

        host = os.environ["FLOWSPEC_POD_IP"]
        dask.config.set({"distributed.scheduler.work-stealing": bool(self.options.get("work_stealing", True))})
        if self.options.get("scheduler_logs"):
            forward_scheduler_logs()
        worker = {"cls": WorkerPod, "options": {"owner": self}}
        # Random ports on the pod's address: with host networking, runs side by side share the node's.
        self.cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {
                                       "host": host, "port": 0, "dashboard": False,
                                       "dashboard_address": f"{host}:0"}},
                                   worker=worker, asynchronous=False, silence_logs=False,
                                   name=f"flowspec-{self.run_id[:12]}")
        low, high = int(self.options.get("min_workers", 1)), int(self.options.get("max_workers", 2))
        self.cluster.adapt(minimum=low, maximum=max(low, high))
        log.info("Dask scheduler at %s; %d to %d worker pods", self.address, low, max(low, high))
        return self

    @property
    def address(self) -> str:
        return self.cluster.scheduler_address

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the cluster (its worker pods deleted), and delete any worker pod left over."""
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=30)
            except Exception as exc:  # its pods are deleted below and owned by this pod anyway
                log.warning("closing the Dask cluster: %s: %s", type(exc).__name__, exc)
            self.cluster = None
        left = call("list the Dask worker pods", self.kube.core.list_namespaced_pod, self.namespace,
                    label_selector=f"{mf.RUN_LABEL}={mf.label_value(self.run_id)},{mf.ROLE_LABEL}=dask-worker")
        for pod in left.items:
            self.delete_pod(pod.metadata.name)
        self.kube.close()


def worker_pods_class():
    from distributed.deploy.spec import ProcessInterface

    class _WorkerPod(ProcessInterface):
        """One Dask worker in a pod of its own (distributed's ProcessInterface)."""

        def __init__(self, scheduler: str, name, owner: PodCluster) -> None:
            super().__init__(scheduler, name)
            self.owner, self.pod = owner, owner.worker_manifest(scheduler, str(name))

        async def start(self) -> None:
            await asyncio.to_thread(self.owner.create_pod, self.pod)
            await super().start()

        async def close(self) -> None:
            await asyncio.to_thread(self.owner.delete_pod, self.pod["metadata"]["name"])
            await super().close()

    return _WorkerPod


class _Lazy:
    """WorkerPod as a name that imports distributed only when a cluster is made."""

    _cls = None

    def __call__(self, *args, **kwargs):
        if _Lazy._cls is None:
            _Lazy._cls = worker_pods_class()
        return _Lazy._cls(*args, **kwargs)


WorkerPod = _Lazy()


def forward_scheduler_logs() -> None:
    """The scheduler's log records into flowspec's logger, so the run records them."""
    target = logging.getLogger("flowspec.dask-scheduler")

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            target.log(record.levelno, "%s", record.getMessage(), extra={"task": "dask-scheduler"})

    source = logging.getLogger("distributed.scheduler")
    source.addHandler(Forward(logging.INFO))
    source.setLevel(logging.INFO)
