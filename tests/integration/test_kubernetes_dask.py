"""dask-kubernetes on a real cluster: the Job's pod runs the scheduler and the flow, tasks run in
worker pods owned by it (each task logs the pod it ran in, from the downward API), and no pod of
the run is left after success, failure or cancel."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.k8s, pytest.mark.integration, pytest.mark.slow]

TASKS = '''
import os, time
from flowspec import context

def where(i: int, mode: str = "ok"):
    if mode == "nap":
        context.logger.info("napping in pod %s", os.environ["FLOWSPEC_POD_NAME"])
        time.sleep(120)
    time.sleep(0.3)
    context.logger.info("task %d ran in pod %s", i, os.environ["FLOWSPEC_POD_NAME"])
    if mode == "fail" and i == 1:
        raise RuntimeError("failing on purpose")
    return os.environ["FLOWSPEC_POD_NAME"]

def report(pods: list):
    context.logger.info("report ran in pod %s; workers: %s", os.environ["FLOWSPEC_POD_NAME"], sorted(set(pods)))
    return pods
'''
FLOW_TASKS = """\
  where:
    run: tasks:where
    map: {i: [0, 1, 2, 3, 4, 5, 6, 7]}
    with: {mode: '${{ params.mode }}'}
  report:
    run: tasks:report
    with: {pods: '${{ tasks.where }}'}
"""
SCHEDULER = """\
apiVersion: batch/v1
kind: Job
metadata: {name: dask-run}
spec:
  template:
    spec:
      serviceAccountName: flowspec-dask
      containers: [{name: flow, image: x}]
"""
WORKER = """\
apiVersion: v1
kind: Pod
metadata:
  labels: {team: data}
spec:
  containers:
    - name: worker
      image: localhost/some-other-image:1
      resources:
        limits: {memory: 400Mi}
"""


@pytest.fixture(scope="module")
def dask_flows(kube_flows):
    ns, cluster = kube_flows.namespace, kube_flows.cluster
    cluster.kubectl("create", "serviceaccount", "flowspec-dask", "-n", ns)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    role = yaml.safe_load(re.search(r"<!-- dask-role -->\n```yaml\n(.*?)```", docs, re.S).group(1))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(role))  # the Role as documented
    cluster.kubectl("create", "rolebinding", "flowspec-dask", "--role=flowspec-dask",
                    f"--serviceaccount={ns}:flowspec-dask", "-n", ns)
    env = (f"  type: dask-kubernetes\n  namespace: {ns}\n  min_workers: 2\n  max_workers: 2\n  scheduler_logs: true\n"
           f"  scheduler_spec_file: scheduler.yaml\n  worker_spec_file: worker.yaml\n")
    # no python_dependencies: docker storage puts in what dask-kubernetes needs (dask, kubernetes)
    path = kube_flows.write("dask", FLOW_TASKS, env, TASKS, {"scheduler.yaml": SCHEDULER, "worker.yaml": WORKER},
                            top="parameters:\n  mode: {type: string, default: ok}\n")
    kube_flows.register(path)
    kube_flows.agent("--name", "dask-agent")
    return kube_flows


def pods_of(flows, run_id: str) -> list[str]:
    return flows.cluster.kubectl("get", "pods", "-n", flows.namespace, "-l", f"flowspec.io/run-id={run_id}",
                                 "-o", "name").stdout.split()


def test_tasks_run_in_worker_pods_and_no_pod_is_left(dask_flows):
    run_id = dask_flows.start_run("dask")
    run = dask_flows.wait_run(run_id, timeout=240)
    logs = dask_flows.logs(run_id)
    assert run.state == "Success", run.message + logs[-3000:]
    ran = dict(re.findall(r"task (\d) ran in pod (\S+)", logs))
    assert sorted(ran) == [str(i) for i in range(8)], logs[-3000:]
    workers = set(ran.values())
    assert len(workers) == 2, ran  # both worker pods ran tasks, and only worker pods did: the Job's
    # pod is dask-run-RUN-xxxxx (the Job controller's suffix), its workers dask-run-RUN-wN.
    assert all(re.fullmatch(rf"dask-run-{run_id[:12]}-w\d+", w) for w in workers), workers
    assert re.search(r"report ran in pod dask-run-\w+-w\d+;", logs)
    assert "Register worker" in logs  # scheduler_logs: the scheduler's own lines
    assert "replaced by the flow's image" in logs  # the worker template's image, named with the flow's
    assert dask_flows.left(run_id) == []


def test_a_failing_run_and_a_cancelled_run_leave_no_pod(dask_flows):
    failed = dask_flows.start_run("dask", "--param", "mode=fail")
    run = dask_flows.wait_run(failed, timeout=240)
    assert run.state == "Failed" and "where" in run.message
    assert dask_flows.left(failed) == []
    napping = dask_flows.start_run("dask", "--param", "mode=nap")
    deadline = time.monotonic() + 180
    while "napping in pod" not in dask_flows.logs(napping):
        assert time.monotonic() < deadline, dask_flows.agent_logs()[-3000:]
        time.sleep(0.5)
    workers = [p for p in pods_of(dask_flows, napping) if re.search(r"-w\d+$", p)]
    assert workers, "worker pods exist while the run goes on"
    owner = json.loads(dask_flows.cluster.kubectl("get", workers[0], "-n", dask_flows.namespace, "-o", "json").stdout)
    assert owner["metadata"]["ownerReferences"][0]["kind"] == "Pod"  # owned by the Job's pod
    assert dask_flows.cli("runs", "cancel", napping).returncode == 0
    assert dask_flows.wait_run(napping, timeout=90).state == "Cancelled"
    assert dask_flows.left(napping, timeout=90) == []


def test_killing_the_jobs_pod_takes_its_workers_with_it(dask_flows):
    run_id = dask_flows.start_run("dask", "--param", "mode=nap")
    deadline = time.monotonic() + 180
    while "napping in pod" not in dask_flows.logs(run_id):
        assert time.monotonic() < deadline, dask_flows.agent_logs()[-3000:]
        time.sleep(0.5)
    pods = pods_of(dask_flows, run_id)
    job_pod = next(p for p in pods if not re.search(r"-w\d+$", p))
    assert len(pods) == 3, pods  # the Job's pod and its two workers
    dask_flows.cluster.kubectl("delete", job_pod, "-n", dask_flows.namespace, "--grace-period=0", "--force")
    run = dask_flows.wait_run(run_id, ("Failed",), timeout=90)
    assert "deleted from outside" in run.message, run.message
    assert dask_flows.left(run_id, timeout=90) == []  # the workers went with the pod that owned them
