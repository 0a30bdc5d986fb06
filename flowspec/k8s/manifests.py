"""The manifests flowspec sends to Kubernetes, and where each of their parts came from.

A Job is built from the default manifest or from a user's template (`job_spec_file`,
`scheduler_spec_file`: a Job; `worker_spec_file`: a Pod). Flowspec then sets what it owns:

- the name: the template's `metadata.name` (or `fs-FLOW`) cut short, plus the run id's first
  12 characters, so that it is unique and at most 52 characters (its pods' names stay valid
  host names);
- labels on the Job and its pod template (run id, flow, project, agent: see `run_labels`);
- the first container's image (the storage image) and command (flowspec's; `args` removed);
- `restartPolicy: Never`, `backoffLimit: 0`: retries are flowspec's, so a run never executes
  twice by surprise (a template that says otherwise is refused by `checks`, not overridden);
- the first container's env, merged by name; later wins: the template's env, `agent start
  --env`, `environment.env`, flowspec's own variables;
- `namespace` and `service_account` from the spec, over the template's; `image_pull_secret`
  added to the template's `imagePullSecrets`;
- `hostNetwork: true` when the template does not say, and the backend is on this machine (a
  loopback address, or an SQLite file, mounted with a hostPath volume when the cluster runs
  here): the flow run in the pod must reach the backend, and a pod reaches the host's
  127.0.0.1 only with host networking.

`Built.origins` maps a manifest path to the flow.yaml path that set it, so that `checks` can
point a mistake at the line that made it: in flow.yaml, or in the template.
"""
from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LABEL_PREFIX = "flowspec.io/"
RUN_LABEL = LABEL_PREFIX + "run-id"
FLOW_LABEL = LABEL_PREFIX + "flow"
PROJECT_LABEL = LABEL_PREFIX + "project"
AGENT_LABEL = LABEL_PREFIX + "agent"
ROLE_LABEL = LABEL_PREFIX + "role"  # flow-run (the Job's pod) or dask-worker
FLOW_CONTAINER = "flow"
NAME_BASE_MAX = 39  # + "-" + 12 characters of the run id = 52; pods add 6, well inside 63
TEMPLATE_KEYS = ("job_spec_file", "scheduler_spec_file", "worker_spec_file")
# The key of the environment's options that carries the templates' text into the stored flow.
FILES_KEY = "_files"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """`text` as a valid label value (at most 63 characters of [A-Za-z0-9-_.], alphanumeric at
    both ends); a value that had to change gets a short hash of the original, to stay distinct."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:54].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


def dns_label(text: str, max_len: int = 63) -> str:
    """`text` as a DNS-1123 label: lower case letters, digits and '-', alphanumeric at both ends."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower())[:max_len].strip("-")
    return cleaned or "flow"


def job_name(base: str, run_id: str) -> str:
    return f"{dns_label(base, NAME_BASE_MAX)}-{dns_label(run_id, 12)}"


def run_labels(run_id: str, flow: str, project: str, agent: str | None) -> dict[str, str]:
    """The labels by which an agent finds its own Jobs and pods (and never another's)."""
    labels = {RUN_LABEL: label_value(run_id), FLOW_LABEL: label_value(flow), PROJECT_LABEL: label_value(project)}
    if agent:
        labels[AGENT_LABEL] = label_value(agent)
    return labels


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def loopback_backend(url: str | None) -> bool:
    """Is this URL on this machine: a loopback address (a pod reaches it only with host
    networking), or an SQLite file?"""
    if not url:
        return False
    if "://" not in url or url.startswith("sqlite://"):
        return True
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def mount_host_folder(manifest: dict, name: str, folder: str) -> None:
    """A folder of this machine at the same path in the first container (an SQLite backend)."""
    pod = get_path(manifest, pod_spec_path(manifest))
    pod["volumes"] = [*(pod.get("volumes") or []), {"name": name, "hostPath": {"path": folder, "type": "Directory"}}]
    first = pod["containers"][0]
    first["volumeMounts"] = [*(first.get("volumeMounts") or []), {"name": name, "mountPath": folder}]


@dataclass(frozen=True)
class Template:
    """A manifest file the spec names: its option key, path as written, path as diagnostics show it
    (see checks.shown_path) and text."""

    key: str
    written: str
    path: str
    text: str

    def document(self):
        from flowspec.loader import load_text

        return load_text(self.text, self.path)


@dataclass
class Built:
    """A manifest, and for the parts that the spec set, the flow.yaml path that set them."""

    manifest: dict
    origins: dict = field(default_factory=dict)  # manifest path → flow.yaml path
    template: Template | None = None
    warnings: list = field(default_factory=list)


def default_job() -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {},
            "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": FLOW_CONTAINER}]}}}}


def default_pod() -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": [{"name": "dask-worker"}]}}


def pod_spec_path(manifest: dict) -> tuple:
    return ("spec", "template", "spec") if manifest.get("kind") == "Job" else ("spec",)


def get_path(data, path: tuple):
    for part in path:
        data = data[part]
    return data


def _dict_at(data: dict, path: tuple) -> dict:
    """The mapping at `path`, made (or replaced, when it is not a mapping) on the way down."""
    for part in path:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    return data


def build(template: dict | None, fallback: dict, *, name: str, namespace: str | None, labels: dict,
          image: str, command: list[str], env: dict[str, object], env_origins: dict[str, tuple],
          service_account: str | None, pull_secret: str | None, host_network_default: bool,
          option_paths: dict[str, tuple]) -> Built:
    """The manifest of one run from `template` (or `fallback`): see the module doc.

    `env` values are strings, or `{"valueFrom": ...}` for flowspec's downward-API variables;
    `option_paths` names the flow.yaml path of `namespace`, `service_account`, `pull_secret`.
    """
    manifest = copy.deepcopy(template if template is not None else fallback)
    origins: dict = {}
    meta = _dict_at(manifest, ("metadata",))
    meta.pop("generateName", None)
    meta["name"] = name
    if namespace is not None:
        meta["namespace"] = namespace
        origins[("metadata", "namespace")] = option_paths["namespace"]
    meta.setdefault("namespace", "default")
    meta["labels"] = {**(meta.get("labels") if isinstance(meta.get("labels"), dict) else {}), **labels}
    pod_path = pod_spec_path(manifest)
    if manifest.get("kind") == "Job":
        spec = _dict_at(manifest, ("spec",))
        spec.setdefault("backoffLimit", 0)
        pod_meta = _dict_at(manifest, ("spec", "template", "metadata"))
        pod_meta["labels"] = {**(pod_meta.get("labels") if isinstance(pod_meta.get("labels"), dict) else {}),
                              **labels}
    pod = _dict_at(manifest, pod_path)
    pod.setdefault("restartPolicy", "Never")
    if host_network_default:
        pod.setdefault("hostNetwork", True)
    if service_account is not None:
        pod.pop("serviceAccount", None)  # the deprecated alias would contradict it
        pod["serviceAccountName"] = service_account
        origins[pod_path + ("serviceAccountName",)] = option_paths["service_account"]
    if pull_secret is not None:
        # Appended (the kubelet tries every secret), so the template's entries keep their positions.
        secrets = pod.get("imagePullSecrets") if isinstance(pod.get("imagePullSecrets"), list) else []
        if {"name": pull_secret} not in secrets:
            pod["imagePullSecrets"] = secrets = [*secrets, {"name": pull_secret}]
        origins[pod_path + ("imagePullSecrets", secrets.index({"name": pull_secret}))] = option_paths["pull_secret"]
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        pod["containers"] = containers = [dict(fallback_container(fallback))]
    first = containers[0]
    first.setdefault("name", FLOW_CONTAINER)
    first["image"] = image
    first["command"] = list(command)
    first.pop("args", None)  # they would be appended to flowspec's command
    first["env"] = merge_env(first.get("env"), env, env_origins, pod_path + ("containers", 0, "env"), origins)
    return Built(manifest, origins)


def fallback_container(fallback: dict) -> dict:
    return get_path(fallback, pod_spec_path(fallback) + ("containers", 0))


def merge_env(template_env, values: dict[str, object], env_origins: dict[str, tuple], base: tuple,
              origins: dict) -> list:
    """The template's env entries in place, each overridden by name; new names appended."""
    out = [dict(e) for e in template_env] if isinstance(template_env, list) and all(
        isinstance(e, dict) for e in template_env) else []
    index = {e.get("name"): i for i, e in enumerate(out)}
    for name, value in values.items():
        entry = {"name": name, **value} if isinstance(value, dict) else {"name": name, "value": value}
        i = index.get(name)
        if i is None:
            i = index[name] = len(out)
            out.append(entry)
        else:
            out[i] = entry
        if name in env_origins:
            origins[base + (i,)] = env_origins[name]
    return out


def image_of(manifest: dict) -> str | None:
    try:
        return get_path(manifest, pod_spec_path(manifest) + ("containers", 0, "image"))
    except (KeyError, IndexError, TypeError):
        return None
