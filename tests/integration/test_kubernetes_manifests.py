"""Manifests refused before they are sent: `flowspec validate` and `plan` on Kubernetes specs, with
positions in flow.yaml or in the template; names and labels a cluster accepts. No cluster is
needed: these run the CLI and the manifest code only (the runs that send them are in
test_kubernetes_job.py, where a run-time refusal is shown to create no Job)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowspec.k8s import checks
from flowspec.k8s import manifests as mf

pytest.importorskip("kubernetes_validate", reason="the manifest schemas need `pip install kubernetes-validate`")

FLOW = """\
version: 1
name: checked
tasks:
  hi:
    run: tasks:hi
storage:
  type: docker
  image_name: checked
  registry_url: 127.0.0.1:5055
environment:
{environment}"""


def write(tmp_path: Path, environment: str, files: dict | None = None) -> Path:
    (tmp_path / "tasks.py").write_text("def hi():\n    return 1\n")
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW.format(environment=textwrap.indent(textwrap.dedent(environment), "  ")))
    return path


def flowspec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowspec", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_template_mistakes_are_positioned_in_the_template(tmp_path):
    path = write(tmp_path, """\
          type: kubernetes-job
          job_spec_file: job.yaml
        """, {"job.yaml": """\
        apiVersion: batch/v1
        kind: Job
        metadata:
          labels: {team: "a b"}
        spec:
          template:
            spec:
              containers:
                - name: Main_Container
                  image: x
                  imagePullPolicy: Sometimes
                  resources:
                    limits: {memory: 12x, cpu: 1}
                    requests: {cpu: "2"}
                  volumeMounts:
                    - {name: data, mountPath: /data}
                  bogus: 1
        """})
    done = flowspec("validate", str(path), cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    out = done.stdout
    job = str(tmp_path / "job.yaml")
    expected = [
        f"{job}:4:18: error: metadata.labels.team: label value 'a b' is not valid",
        f"{job}:9:17: error: spec.template.spec.containers[0].name: container name 'Main_Container' is not a valid"
        " DNS-1123 label",
        f"{job}:11:28: error: spec.template.spec.containers[0].imagePullPolicy:",
        f"{job}:13:30: error: spec.template.spec.containers[0].resources.limits.memory: '12x' is not a valid"
        " resource quantity",
        f"{job}:14:29: error: spec.template.spec.containers[0].resources.requests.cpu: the cpu request (2) is more"
        " than its limit (1)",
        f"{job}:16:22: error: spec.template.spec.containers[0].volumeMounts[0].name: volume 'data' is mounted but"
        " not declared",
        f"{job}:17:11: error: spec.template.spec.containers[0].bogus: unknown field 'bogus'",
    ]
    for line in expected:
        assert line in out, f"{line}\n--- got:\n{out}"


def test_what_the_spec_sets_is_positioned_in_flow_yaml(tmp_path):
    path = write(tmp_path, """\
          type: kubernetes-job
          namespace: Bad_NS
          service_account: Not/Valid
          env:
            1BAD: x
        """)
    done = flowspec("validate", str(path), "--format", "json", cwd=tmp_path)
    assert done.returncode == 1
    found = {(d["line"], d["column"], d["path"]): d["message"] for d in json.loads(done.stdout)}
    assert "not a valid DNS-1123 label" in found[(12, 14, "environment.namespace")]
    assert "service account 'Not/Valid'" in found[(13, 20, "environment.service_account")]
    assert "environment variable name '1BAD'" in found[(15, 11, "environment.env.1BAD")]


def test_a_template_that_would_run_a_flow_twice_is_refused(tmp_path):
    path = write(tmp_path, """\
          type: kubernetes-job
          job_spec_file: job.yaml
        """, {"job.yaml": """\
        apiVersion: batch/v1
        kind: Job
        spec:
          backoffLimit: 3
          parallelism: 2
          template:
            spec:
              restartPolicy: OnFailure
              containers: [{name: c, image: x}]
        """})
    out = flowspec("validate", str(path), cwd=tmp_path).stdout
    job = str(tmp_path / "job.yaml")
    assert f"{job}:4:17: error: spec.backoffLimit: backoffLimit must be 0" in out
    assert f"{job}:5:16: error: spec.parallelism: parallelism must be 1" in out
    assert f"{job}:8:22: error: spec.template.spec.restartPolicy: restartPolicy must be Never" in out


def test_missing_and_wrong_kind_templates(tmp_path):
    path = write(tmp_path, """\
          type: dask-kubernetes
          scheduler_spec_file: missing.yaml
          worker_spec_file: worker.yaml
        """, {"worker.yaml": "apiVersion: batch/v1\nkind: Job\nspec: {}\n"})
    out = flowspec("validate", str(path), cwd=tmp_path).stdout
    assert "flow.yaml:12:24: error: environment.scheduler_spec_file: cannot read missing.yaml" in out
    path = write(tmp_path, """\
          type: dask-kubernetes
          worker_spec_file: worker.yaml
        """)
    out = flowspec("validate", str(path), cwd=tmp_path).stdout
    assert f"{tmp_path / 'worker.yaml'}:2:7: error: kind: this template must be a Pod" in out


def test_template_paths_are_printed_as_the_spec_path_was_given(tmp_path):
    # flow.yaml errors name the spec as the user wrote it; its templates' errors must too, not
    # as an absolute path the user never typed
    folder = tmp_path / "flows" / "k8s"
    folder.mkdir(parents=True)
    write(folder, """\
          type: dask-kubernetes
          scheduler_spec_file: sched.yaml
          worker_spec_file: ../worker.yaml
        """, {"sched.yaml": "apiVersion: batch/v1\nkind: Job\nspec: [\n",
              "../worker.yaml": "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n"
                                "    - {name: w, imagePullPolicy: Sometimes}\n"})
    done = flowspec("validate", "flows/k8s/flow.yaml", cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    assert "flows/k8s/sched.yaml:4:1: error: (root): invalid YAML" in done.stdout.splitlines()[0]
    (folder / "sched.yaml").write_text("apiVersion: batch/v1\nkind: Job\nspec:\n  backoffLimit: 2\n"
                                       "  template: {spec: {containers: [{name: c}]}}\n")
    done = flowspec("validate", "k8s/flow.yaml", "--format", "json", cwd=tmp_path / "flows")
    files = {(d["file"], d["line"], d["column"]) for d in json.loads(done.stdout)}
    assert files == {("k8s/sched.yaml", 4, 17)}, done.stdout
    (folder / "sched.yaml").write_text("apiVersion: batch/v1\nkind: Job\nspec:\n"
                                       "  template: {spec: {containers: [{name: c}]}}\n")
    done = flowspec("validate", "flow.yaml", cwd=folder)
    assert done.stdout.startswith("../worker.yaml:5:34: error: spec.containers[0].imagePullPolicy:"), done.stdout
    assert str(tmp_path) not in done.stdout
    (folder / "sched.yaml").unlink()
    done = flowspec("validate", "flows/k8s/flow.yaml", cwd=tmp_path)
    assert "flows/k8s/flow.yaml:12:24: error: environment.scheduler_spec_file: cannot read sched.yaml" \
           " (No such file or directory; looked for flows/k8s/sched.yaml)" in done.stdout, done.stdout
    spec = folder / "flow.yaml"
    spec.write_text(spec.read_text().replace("scheduler_spec_file: sched.yaml", 'scheduler_spec_file: "s\\0.yaml"'))
    done = flowspec("validate", "flows/k8s/flow.yaml", cwd=tmp_path)  # a NUL in the path: no crash
    assert done.returncode == 1 and "environment.scheduler_spec_file: cannot read s\\x00.yaml (embedded null byte" \
        in done.stdout, done.stdout + done.stderr


def test_validate_imports_no_kubernetes_client(tmp_path):
    path = write(tmp_path, """\
          type: dask-kubernetes
          worker_spec_file: worker.yaml
        """, {"worker.yaml": "apiVersion: v1\nkind: Pod\nspec:\n  containers: [{name: w, image: localhost/w:1}]\n"})
    code = ("import sys; from flowspec.cli import main; rc = main(['validate', sys.argv[1]]);"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'dask', 'distributed', 'docker')];"
            "print('IMPORTED', bad); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "IMPORTED []" in done.stdout


def test_plan_warns_that_a_worker_image_is_replaced(tmp_path):
    path = write(tmp_path, """\
          type: dask-kubernetes
          worker_spec_file: worker.yaml
        """, {"worker.yaml": "apiVersion: v1\nkind: Pod\nspec:\n  containers: [{name: w, image: localhost/w:1}]\n"})
    plan = json.loads(flowspec("plan", str(path), "--format", "json", cwd=tmp_path).stdout)
    assert any("localhost/w:1" in w and "replaced" in w for w in plan["warnings"]), plan["warnings"]
    assert "_files" not in plan["environment"]["settings"]


def test_names_and_labels_are_valid_for_any_flow_name():
    for flow in ("x" * 300, "Données & co / ÉTÉ", "-", "a.b_c"):
        name = mf.job_name(f"flowspec-{flow}", "0123456789abcdef" * 2)
        assert len(name) <= 52 and checks._DNS_LABEL.match(name), name
        labels = mf.run_labels("0123456789abcdef" * 2, flow, flow, flow)
        assert checks._label_problems((), labels) == [], labels
    assert mf.label_value("x" * 64) != mf.label_value("x" * 65)  # cleaned values stay distinct
    assert checks.quantity("1Gi") == 2 ** 30 and checks.quantity("500m") * 2 == 1 and checks.quantity("1e3") == 1000
    assert checks.quantity("12x") is None and checks.quantity(True) is None


def _templates(**texts: str) -> dict:
    return {key: mf.Template(key, f"{key}.yaml", f"/spec/{key}.yaml", textwrap.dedent(text))
            for key, text in texts.items()}


def _flow_doc():
    from flowspec.loader import load_text

    return load_text("version: 1\nname: f\ntasks: {a: {run: 'm:f'}}\nenvironment: {type: kubernetes-job}\n", "flow.yaml")


def test_the_spec_wins_over_the_template_and_flowspec_owns_what_runs():
    from flowspec.k8s import jobs

    templates = _templates(job_spec_file="""\
        apiVersion: batch/v1
        kind: Job
        metadata: {name: my-job, namespace: theirs, labels: {team: data}}
        spec:
          template:
            spec:
              serviceAccount: old-sa
              imagePullSecrets: [{name: their-secret}]
              containers:
                - name: main
                  image: theirs
                  args: [x]
                  env: [{name: A, value: template}, {name: B, value: template}]
                - {name: sidecar, image: localhost/side:1}
        """)
    inputs = jobs.RunInputs(image="127.0.0.1:5055/f:tag", command=["python", "-m", "flowspec.inside", "r" * 32],
                            env={"B": "spec", "C": "agent", "FLOWSPEC_RUN_ID": "r" * 32}, run_id="r" * 32, agent="ag",
                            backend_url="postgresql://u@db.example.com/flows", own={"FLOWSPEC_RUN_ID"})
    options = {"namespace": "ours", "service_account": "runner", "image_pull_secret": "our-secret"}
    job = jobs.build_job("kubernetes-job", "f", "p", options, templates, {"B": "spec"}, inputs, _flow_doc()).manifest
    assert job["metadata"]["namespace"] == "ours" and job["metadata"]["name"] == "my-job-rrrrrrrrrrrr"
    assert job["metadata"]["labels"]["team"] == "data" and job["metadata"]["labels"][mf.AGENT_LABEL] == "ag"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and "hostNetwork" not in pod  # the backend is not on this machine
    assert pod["serviceAccountName"] == "runner" and "serviceAccount" not in pod
    assert pod["imagePullSecrets"] == [{"name": "their-secret"}, {"name": "our-secret"}]
    first, sidecar = pod["containers"]
    assert first["image"] == inputs.image and first["command"] == inputs.command and "args" not in first
    assert first["env"] == [{"name": "A", "value": "template"}, {"name": "B", "value": "spec"},
                            {"name": "C", "value": "agent"}, {"name": "FLOWSPEC_RUN_ID", "value": "r" * 32}]
    assert sidecar == {"name": "sidecar", "image": "localhost/side:1"}


def test_dask_kubernetes_pulls_with_its_secret_and_names_replaced_images():
    from flowspec.k8s import jobs

    templates = _templates(scheduler_spec_file="""\
        apiVersion: batch/v1
        kind: Job
        spec: {template: {spec: {containers: [{name: flow, image: localhost/mine:1}]}}}
        """, worker_spec_file="""\
        apiVersion: v1
        kind: Pod
        spec: {containers: [{name: w, image: localhost/mine:2}]}
        """)
    inputs = jobs.RunInputs(image="127.0.0.1:5055/f:tag", command=["x"], env={}, run_id="r" * 32,
                            backend_url="postgresql://u@127.0.0.1/flows")
    options = {"private_registry": True, "docker_secret": "regcred"}
    built = jobs.build_job("dask-kubernetes", "f", "p", options, templates, {}, inputs, _flow_doc())
    pod = built.manifest["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["hostNetwork"] is True  # backend on loopback
    assert any("localhost/mine:1" in w and "127.0.0.1:5055/f:tag" in w for w in built.warnings), built.warnings
    worker = jobs.build_worker("f", "p", options, templates, inputs, _flow_doc(), "w-0", {mf.RUN_LABEL: "r"})
    assert worker.manifest["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert worker.manifest["metadata"]["labels"][mf.ROLE_LABEL] == "dask-worker"
    assert any("localhost/mine:2" in w for w in worker.warnings)
