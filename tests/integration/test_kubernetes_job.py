"""kubernetes-job on a real cluster (kube_fixtures): flows registered with docker storage, runs
through an agent and `flowspec run FILE`, watched Jobs, cleanup, RBAC. Every run ends with no
Job or pod of it left, unless the test keeps it on purpose (delete_finished_jobs)."""
from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.k8s, pytest.mark.integration, pytest.mark.slow]

TASKS = '''
import json, os, time
from flowspec import context

NAMES = ["FROM_TEMPLATE", "AGENT_ONLY", "SHARED", "FLOWSPEC_RUN_ID"]

def work(mode: str = "ok"):
    if mode == "ok":
        with open("/scratch/note", "w") as fh:  # an emptyDir volume from the Job template
            fh.write("written in the pod")
        print("env " + json.dumps({n: os.environ.get(n) for n in NAMES}, sort_keys=True), flush=True)
        context.logger.info("volume says: %s", open("/scratch/note").read())
        return "ok"
    if mode == "fail":
        raise RuntimeError("failing on purpose")
    if mode == "oom":
        blocks = []
        while True:
            blocks.append(bytearray(32 * 1024 * 1024))
    if mode == "exit":
        print("exiting with 3", flush=True)
        os._exit(3)
    if mode == "nap":
        context.logger.info("napping")
        time.sleep(120)
'''
TEMPLATE = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: cases
  labels: {team: data}
spec:
  template:
    spec:
      containers:
        - name: runner
          image: replaced-by-the-flow-image
          args: [replaced]
          env:
            - {name: FROM_TEMPLATE, value: template}
            - {name: AGENT_ONLY, value: template}
            - {name: SHARED, value: template}
          resources:
            limits: {memory: 160Mi}
          volumeMounts:
            - {name: scratch, mountPath: /scratch}
      volumes:
        - name: scratch
          emptyDir: {}
"""
MODE = "parameters:\n  mode: {type: string, default: ok}\n"
WORK = "  work:\n    run: tasks:work\n    with: {mode: '${{ params.mode }}'}\n"


def environment(namespace: str, extra: str = "") -> str:
    return (f"  type: kubernetes-job\n  namespace: {namespace}\n  labels: [main]\n  job_spec_file: job.yaml\n"
            f"  env:\n    SHARED: spec\n    FLOWSPEC_RUN_ID: not-the-run-id\n{extra}")


@pytest.fixture(scope="module")
def cases(kube_flows):
    """The `cases` flow registered, and an agent (label main) that fails pods in trouble after 5 s."""
    path = kube_flows.write("cases", WORK, environment(kube_flows.namespace), TASKS, {"job.yaml": TEMPLATE}, top=MODE)
    kube_flows.register(path)
    kube_flows.agent("--label", "main", "--name", "main-agent", "--env", "AGENT_ONLY=agent", "--env", "SHARED=agent",
                     "--env", "FLOWSPEC_K8S_PENDING_TIMEOUT=5")
    return kube_flows


def run_case(flows, mode: str, name: str = "cases"):
    run_id = flows.start_run(name, "--label", "main", "--param", f"mode={mode}")
    return run_id, flows.wait_run(run_id, timeout=180)


def test_success_through_an_agent_with_logs_merge_precedence_and_volumes(cases):
    run_id, run = run_case(cases, "ok")
    assert run.state == "Success", run.message
    logs = cases.wait_logs(run_id, "env {")
    # In the real pod: template < agent --env < environment.env < flowspec's own variables.
    env = json.loads(re.search(r"env (\{.*\})", logs).group(1))
    assert env == {"FROM_TEMPLATE": "template", "AGENT_ONLY": "agent", "SHARED": "spec", "FLOWSPEC_RUN_ID": run_id}
    assert "volume says: written in the pod" in logs  # the template's emptyDir, mounted
    assert "started from image" in logs
    assert cases.left(run_id) == []  # delete_finished_jobs defaults to true


def test_failing_task_fails_the_run_and_the_job_is_deleted(cases):
    run_id, run = run_case(cases, "fail")
    assert run.state == "Failed"
    assert "work (Failed)" in run.message
    assert "failing on purpose" in cases.wait_logs(run_id, "failing on purpose")
    assert cases.left(run_id) == []


def test_out_of_memory_is_reported_as_oomkilled(cases):
    run_id, run = run_case(cases, "oom")
    assert run.state == "Failed"
    assert "OOMKilled" in run.message and "137" in run.message, run.message
    assert cases.left(run_id) == []


def test_a_pod_that_exits_without_a_final_state_fails_with_its_exit_code(cases):
    run_id, run = run_case(cases, "exit")
    assert run.state == "Failed"
    assert "exited with code 3" in run.message and "exiting with 3" in run.message, run.message
    assert cases.left(run_id) == []


def test_cancel_mid_run_deletes_the_job_with_its_pod(cases):
    run_id = cases.start_run("cases", "--label", "main", "--param", "mode=nap")
    deadline = time.monotonic() + 120
    while "napping" not in cases.logs(run_id):
        assert time.monotonic() < deadline, cases.agent_logs()[-3000:]
        time.sleep(0.3)
    assert cases.cluster.kubectl("get", "pods", "-n", cases.namespace, "-l", f"flowspec.io/run-id={run_id}",
                                 "-o", "name").stdout.strip()
    done = cases.cli("runs", "cancel", run_id)
    assert done.returncode == 0, done.stderr
    run = cases.wait_run(run_id, timeout=60)
    assert run.state == "Cancelled"
    assert cases.left(run_id, timeout=30) == []


def test_run_file_follows_the_job_to_its_end(cases):
    path = cases.root / "cases" / "flow.yaml"
    done = cases.cli("run", str(path), "--param", "mode=fail")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "work  Failed" in done.stdout
    assert "failing on purpose" in done.stderr  # the pod's output, streamed
    done = cases.cli("run", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert cases.cluster.kubectl("get", "jobs", "-n", cases.namespace, "-l", "flowspec.io/flow=cases",
                                 "-o", "name").stdout.strip() == ""


def test_kept_failed_jobs_carry_the_run_labels_and_other_jobs_are_never_touched(cases):
    ns = cases.namespace
    # A Job of someone else (another agent's labels, another run id), running all along.
    foreign = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "foreign", "labels": {"flowspec.io/agent": "other-agent",
                                                          "flowspec.io/run-id": "not-ours", "flowspec.io/flow": "cases"}},
               "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "hostNetwork": True,
                                                                 "containers": [{"name": "p", "image": "localhost/pause:3.2",
                                                                                 "imagePullPolicy": "Never"}]}}}}
    cases.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(foreign))
    path = cases.write("kept", WORK, environment(ns, "  delete_finished_jobs: on_success\n"), TASKS,
                       {"job.yaml": TEMPLATE}, top=MODE)
    cases.register(path)
    failed, run = run_case(cases, "fail", "kept")
    assert run.state == "Failed"
    ok, run = run_case(cases, "ok", "kept")
    assert run.state == "Success"
    assert cases.left(ok) == []  # on_success: a successful run's Job is deleted
    kept = cases.cluster.get_json("jobs", "-n", ns, "-l", f"flowspec.io/run-id={failed}")["items"]
    assert len(kept) == 1, "on_success keeps a failed run's Job"
    labels = kept[0]["metadata"]["labels"]
    assert labels["flowspec.io/run-id"] == failed and labels["flowspec.io/flow"] == "kept"
    assert labels["flowspec.io/project"] == "default" and labels["flowspec.io/agent"] == "main-agent"
    assert labels["team"] == "data"  # the template's own labels stay
    pod_labels = kept[0]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["flowspec.io/run-id"] == failed
    name = kept[0]["metadata"]["name"]
    assert name.startswith("cases-") and len(name) <= 63
    spec = kept[0]["spec"]
    assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
    other = cases.cluster.get_json("jobs", "foreign", "-n", ns)
    assert other["metadata"].get("deletionTimestamp") is None
    cases.cluster.kubectl("delete", "job", "foreign", "-n", ns, "--cascade=foreground", "--wait=false")
    cases.cluster.kubectl("delete", "jobs", "-n", ns, "-l", f"flowspec.io/run-id={failed}", "--cascade=foreground",
                          "--wait=false")


def _delete_image(flows, image: str) -> None:
    """The image gone from the registry and from the node's engine: nothing can pull it."""
    repo, tag = image.split("/", 1)[1].rsplit(":", 1)
    base = f"http://{flows.registry}/v2/{repo}/manifests"
    head = urllib.request.Request(f"{base}/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(head, timeout=10) as resp:
        digest = resp.headers["Docker-Content-Digest"]
    urllib.request.urlopen(urllib.request.Request(f"{base}/{digest}", method="DELETE"), timeout=10).close()
    import docker

    for host in {flows.env["DOCKER_HOST"], flows.cluster.docker_host} - {None}:
        client = docker.DockerClient(base_url=host)
        try:
            client.images.remove(image, force=True)
        except docker.errors.ImageNotFound:
            pass
        finally:
            client.close()


def test_an_image_that_cannot_be_pulled_fails_the_run_with_the_reason(cases):
    path = cases.write("unpullable", WORK, environment(cases.namespace), TASKS, {"job.yaml": TEMPLATE}, top=MODE)
    cases.register(path)
    with cases.backend() as backend:
        image = backend.get_flow("unpullable").storage["image"]
    _delete_image(cases, image)
    run_id, run = run_case(cases, "ok", "unpullable")
    assert run.state == "Failed"
    assert re.search(r"never started: (ErrImagePull|ImagePullBackOff)", run.message), run.message
    notes = [e.message for e in cases.history(run_id) if e.state == "Running" and e.message]
    assert any("ErrImagePull" in n or "ImagePullBackOff" in n for n in notes), notes  # reported while it waited
    assert cases.left(run_id) == []


def test_a_quota_that_blocks_pod_creation_fails_the_run_with_the_reason(cases, kube_namespace):
    ns = kube_namespace.name
    # This cluster runs no quota controller, which fills a quota's status: the test fills it, and
    # the API server's quota admission then refuses the pod for real.
    from kubernetes import client

    core = cases.cluster.core()
    core.create_namespaced_resource_quota(ns, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    core.replace_namespaced_resource_quota_status("no-pods", ns, client.V1ResourceQuota(
        metadata=core.read_namespaced_resource_quota("no-pods", ns).metadata,
        spec=client.V1ResourceQuotaSpec(hard={"pods": "0"}),
        status=client.V1ResourceQuotaStatus(hard={"pods": "0"}, used={"pods": "0"})))
    path = cases.write("quota", WORK, environment(ns), TASKS, {"job.yaml": TEMPLATE}, top=MODE)
    cases.register(path)
    run_id = cases.start_run("quota", "--label", "main")
    run = cases.wait_run(run_id, timeout=120)
    assert run.state == "Failed"
    assert "FailedCreate" in run.message and "exceeded quota" in run.message, run.message
    assert cases.cluster.wait_gone("jobs,pods", ns, f"flowspec.io/run-id={run_id}", 60) == []


def test_a_manifest_wrong_only_at_run_time_is_refused_before_it_is_sent(cases):
    """The namespace comes from the agent's environment: checked when the run starts, no Job sent."""
    env = "  type: kubernetes-job\n  namespace: '${{ env.TARGET_NS }}'\n  labels: [odd]\n  job_spec_file: job.yaml\n"
    path = cases.write("late", WORK, env, TASKS, {"job.yaml": TEMPLATE}, top=MODE)
    assert cases.cli("validate", str(path)).returncode == 0
    cases.register(path)
    cases.agent("--label", "odd", "--env", "TARGET_NS=Not_A_Namespace")
    run_id = cases.start_run("late", "--label", "odd")
    run = cases.wait_run(run_id, timeout=60)
    assert run.state == "Failed"
    assert re.search(r"late \(registered version 1\):\d+:\d+: error: environment.namespace: metadata.namespace: "
                     r"namespace 'Not_A_Namespace' is not a valid DNS-1123 label", run.message), run.message
    jobs = cases.cluster.kubectl("get", "jobs", "-A", "-l", f"flowspec.io/run-id={run_id}", "-o", "name").stdout
    assert jobs.strip() == ""


def _role_from_docs() -> list[dict]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    block = re.search(r"<!-- agent-role -->\n```yaml\n(.*?)```", text, re.S).group(1)
    return [doc for doc in yaml.safe_load_all(block) if doc]


def test_the_agent_runs_with_exactly_the_role_in_the_docs(cases, kube_namespace, tmp_path):
    ns, cluster = kube_namespace.name, cases.cluster
    for doc in _role_from_docs():  # ServiceAccount, Role, RoleBinding, as documented
        doc["metadata"]["namespace"] = ns
        for subject in doc.get("subjects", []):
            subject["namespace"] = ns
        cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    secret = ""
    deadline = time.monotonic() + 30
    while not secret:
        assert time.monotonic() < deadline, "no token for the service account"
        sa = cluster.get_json("serviceaccount", "flowspec-agent", "-n", ns)
        secret = (sa.get("secrets") or [{}])[0].get("name", "")
        time.sleep(0.2)
    token = cluster.kubectl("get", "secret", secret, "-n", ns, "-o", "jsonpath={.data.token}").stdout
    import base64

    server_config = yaml.safe_load(Path(cluster.kubeconfig).read_text())["clusters"][0]["cluster"]
    kubeconfig = tmp_path / "agent-kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "agent",
        "clusters": [{"name": "c", "cluster": server_config}],
        "users": [{"name": "agent", "user": {"token": base64.b64decode(token).decode()}}],
        "contexts": [{"name": "agent", "context": {"cluster": "c", "user": "agent", "namespace": ns}}]}))
    assert cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "pods", "-n", "default",
                           check=False).returncode != 0  # really restricted: nothing outside its namespace
    path = cases.write("rbac", WORK, environment(ns).replace("labels: [main]", "labels: [rbac]"), TASKS,
                       {"job.yaml": TEMPLATE}, top=MODE)
    cases.register(path)
    cases.agent("--label", "rbac", env={**cases.env, "KUBECONFIG": str(kubeconfig)})
    run_id = cases.start_run("rbac", "--label", "rbac")
    run = cases.wait_run(run_id, timeout=120)
    assert run.state == "Success", run.message + cases.agent_logs()[-3000:]
    assert "env {" in cases.wait_logs(run_id, "env {")  # pod logs: read with the Role's pods/log
    assert cluster.wait_gone("jobs,pods", ns, f"flowspec.io/run-id={run_id}", 60) == []  # deleted by the agent
    failed = cases.start_run("rbac", "--label", "rbac", "--param", "mode=oom")
    assert "OOMKilled" in cases.wait_run(failed, timeout=120).message  # watching needs no more than the Role


def test_an_evicted_pod_fails_the_run_with_the_reason_and_is_never_rerun(cases):
    """Evicted through the Eviction API, as a node drain does (this cluster's kubelet evicts
    nothing by itself): the pod gets SIGTERM, which the run inside takes for a cancel; the run
    must end Failed, naming the eviction, and the Job must not start the flow again."""
    run_id = cases.start_run("cases", "--label", "main", "--param", "mode=nap")
    deadline = time.monotonic() + 120
    while "napping" not in cases.logs(run_id):
        assert time.monotonic() < deadline, cases.agent_logs()[-3000:]
        time.sleep(0.3)
    pod = cases.cluster.kubectl("get", "pods", "-n", cases.namespace, "-l", f"flowspec.io/run-id={run_id}",
                                "-o", "jsonpath={.items[0].metadata.name}").stdout
    eviction = {"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": pod, "namespace": cases.namespace}}
    cases.cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{cases.namespace}/pods/{pod}/eviction", "-f", "-",
                          input=json.dumps(eviction))
    # The run inside ends Cancelled on SIGTERM; its watcher then fails it, naming the eviction.
    run = cases.wait_run(run_id, ("Failed",), timeout=90)
    assert "evicted or deleted from outside" in run.message and pod in run.message, run.message
    assert cases.left(run_id, timeout=60) == []
    assert cases.logs(run_id).count("napping") == 1  # the pod the Job made next never ran the flow


def test_an_sqlite_backend_is_mounted_into_the_pod_on_a_cluster_of_this_machine(cases, tmp_path):
    """The API server is on loopback: the cluster runs here, and the pod opens the same file."""
    env = {**cases.env, "FLOWSPEC_BACKEND": f"sqlite://{tmp_path / 'backend.db'}"}
    done = cases.cli("register", str(cases.root / "cases" / "flow.yaml"), env=env)
    assert done.returncode == 0, done.stderr
    cases.agent("--label", "main", env=env)
    started = cases.cli("run", "--name", "cases", "--label", "main", "--watch", env=env, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    logs = cases.cli("runs", "logs", started.stdout.split()[0], env=env).stdout
    assert "volume says: written in the pod" in logs


SECRET_TASKS = '''
from flowspec import context

def use(token: str):
    import os

    print("token", token, flush=True)
    context.logger.info("using %s", token)
    print("dsn", os.environ["DSN"], flush=True)
'''


def test_environment_secrets_reach_the_pod_through_a_secret_key_ref(kube_flows):
    planted = "k8s-PLANTED-token"
    kube_flows.cluster.kubectl("create", "secret", "generic", "app-secrets", f"--from-literal=token={planted}",
                               "-n", kube_flows.namespace)
    env = (f"  type: kubernetes-job\n  namespace: {kube_flows.namespace}\n  labels: [sec]\n"
           "  delete_finished_jobs: false\n  secrets: {API_TOKEN: app-secrets/token}\n"
           "  env: {DSN: 'db://u:${{ secrets.API_TOKEN }}@db'}\n")
    agent_side = "agent-SIDE-token"  # the agent's machine has a value too: it stays there
    path = kube_flows.write("secretive", "  use:\n    run: tasks:use\n    with: {token: '${{ secrets.API_TOKEN }}'}\n",
                            env, SECRET_TASKS)
    kube_flows.register(path)
    kube_flows.agent("--label", "sec", "--name", "sec-agent",
                     env={**kube_flows.env, "FLOWSPEC_SECRET_API_TOKEN": agent_side})
    run_id = kube_flows.start_run("secretive", "--label", "sec")
    run = kube_flows.wait_run(run_id, timeout=180)
    assert run.state == "Success", run.message
    logs = kube_flows.wait_logs(run_id, "dsn db://u:***@db")
    assert "token ***" in logs and "using ***" in logs and "dsn db://u:***@db" in logs and planted not in logs
    jobs = kube_flows.cluster.get_json("jobs", "-n", kube_flows.namespace, "-l", f"flowspec.io/run-id={run_id}")
    container = jobs["items"][0]["spec"]["template"]["spec"]["containers"][0]
    (entry,) = [e for e in container["env"] if e["name"] == "FLOWSPEC_SECRET_API_TOKEN"]
    assert entry["valueFrom"] == {"secretKeyRef": {"name": "app-secrets", "key": "token"}}
    assert all(e["name"] != "DSN" for e in container["env"])  # resolved in the pod, not in the Job
    assert planted not in json.dumps(jobs) and agent_side not in json.dumps(jobs)
    assert agent_side not in kube_flows.agent_logs() + kube_flows.logs(run_id)
