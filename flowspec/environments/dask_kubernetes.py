"""The `dask-kubernetes` environment: a Job whose pod runs the flow with the `dask` executor on
a Dask cluster that lives for the run (scheduler in the Job's pod, workers in pods of their own)."""
from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from flowspec.environments.kubernetes_job import KubernetesJobEnvironment
from flowspec.environments.platform import FlowRunJob
from flowspec.k8s.dask import downward_env


class DaskKubernetesEnvironment(KubernetesJobEnvironment):
    """Runs each flow run as a Kubernetes Job whose pod starts a temporary Dask cluster.

    YAML keys (`environment:`): the common ones (`labels`, `env`, `on_start`, `on_exit`) and
    `namespace` (default `default`), `min_workers` (default 1) and `max_workers` (default 2)
    worker pods, scaled by Dask's adaptive scaling in between, `work_stealing` (default true),
    `scheduler_logs` (default false: true records the scheduler's log lines in the run's logs),
    `private_registry` with `docker_secret` (an existing registry Secret, used to pull the image
    for the Job's pod and the workers), `scheduler_spec_file` (a Job manifest; its first
    container runs the flow and the scheduler), `worker_spec_file` (a Pod manifest for the
    workers; its first container runs the worker, with the flow's image: a different image
    there is replaced, with a warning naming both).

    The Job's pod creates the worker pods, so its service account needs the Role in
    docs/kubernetes.md (pods: create, get, list, delete). The flow's image needs
    `dask[distributed]` and `kubernetes`: docker storage adds them (storage.docker.IMAGE_NEEDS)
    and its build check imports them. Worker pods are owned
    by the Job's pod, and the watcher deletes any left when the run ends; a death timeout ends
    any worker whose scheduler is gone.
    """

    kind = "dask-kubernetes"

    def job_env(self, job: FlowRunJob) -> dict:
        # The pod creates its workers through the API server: on a cluster whose API server the
        # watcher reaches on loopback (a one-machine cluster), so does the pod (host networking).
        host = urlsplit(self.kube.host).hostname or ""
        api = {"FLOWSPEC_K8S_API_SERVER": self.kube.host} if host.startswith("127.") or host == "localhost" else {}
        return {**api, **job.env, **downward_env()}

    def cleanup(self, handle, outcome) -> None:
        """The Job as for any kubernetes-job, then the run's worker pods. The Job's pod deletes
        them as it ends, and they are owned by it; but a pod deleted or evicted at once cannot,
        and the garbage collector can take minutes on a busy cluster to follow the ownership."""
        super().cleanup(handle, outcome)
        if outcome is not None and self.keep(handle):
            return  # kept with the Job, for a look
        from flowspec.k8s import manifests as mf
        from flowspec.k8s.client import call

        selector = f"{mf.RUN_LABEL}={mf.label_value(handle.run_id)},{mf.ROLE_LABEL}=dask-worker"
        call(f"delete the Dask worker pods of run {handle.run_id}", self.kube.core.delete_collection_namespaced_pod,
             handle.namespace, label_selector=selector, grace_period_seconds=0)

    @classmethod
    def run_inside(cls, spec, params: dict, observers, run_id: str, callables: dict):
        """In the Job's pod: start the run's Dask cluster, run the flow on it, close it."""
        from flowspec.environments.base import run_in_process
        from flowspec.k8s.dask import PodCluster
        from flowspec.spec import DriverSpec

        with PodCluster(spec, run_id) as cluster:
            on_cluster = dataclasses.replace(spec, executor=DriverSpec("dask", {"address": cluster.address}))
            return run_in_process(on_cluster, params, observers, run_id, callables, keep_results=False)
