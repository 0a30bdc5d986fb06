"""Every manifest flowspec sends is checked first, so a mistake is a positioned error at
`validate`, `plan` or `run` time and never a 422 after the run was registered.

Two layers: the API server's own rules that the OpenAPI schemas miss (names, label values,
quantities, enums, restart policy; `api_rules`), then the official schemas, strict (unknown
fields are errors), through `kubernetes-validate` (`schema_problems`). Neither imports the
kubernetes client, so `flowspec validate` runs both when kubernetes-validate is installed, and
the rules alone otherwise; `plan` and `run` need it (`require_schemas`).

A problem is a manifest path and a message; `locate` turns it into a Diagnostic in flow.yaml
(for what the spec set) or in the template file (for what the template holds).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from flowspec.diagnostics import Diagnostic
from flowspec.k8s import manifests as mf

SCHEMA_VERSION = "1.25.0"  # the oldest kubernetes-validate ships; closest to the clusters in use
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SCALE = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
RESTART_POLICIES = {"Job": ("Never", "OnFailure"), "Pod": ("Always", "OnFailure", "Never")}
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass(frozen=True)
class Problem:
    path: tuple
    message: str
    hint: str | None = None
    key: bool = False  # point at the key (an unknown field) rather than its value


# -- the API server's rules -----------------------------------------------------------------------
def quantity(value) -> Decimal | None:
    """A resource quantity's value ('500m', '1Gi', 2), or None when the API server would refuse it."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value)
    m = _QUANTITY.match(text)
    if not m:
        return None
    number, suffix = Decimal(text[:m.start(2)] if m.group(2) else text), m.group(2) or ""
    try:
        if suffix in _BINARY:
            return number * (2 ** _BINARY[suffix])
        if suffix[:1] in ("e", "E"):
            return number.scaleb(int(suffix[1:]))
        return number.scaleb(_SCALE[suffix])
    except InvalidOperation:
        return None


def _name_problems(path: tuple, value, what: str, pattern: re.Pattern, max_len: int) -> list[Problem]:
    if not isinstance(value, str):
        return []  # the schema reports the type
    if len(value) > max_len or not pattern.match(value):
        kind = "DNS-1123 label" if pattern is _DNS_LABEL else "DNS-1123 subdomain"
        return [Problem(path, f"{what} {value!r} is not a valid {kind}: at most {max_len} characters of lower case "
                              "letters, digits and '-'" + (" and '.'" if pattern is _DNS_SUBDOMAIN else "")
                              + ", starting and ending with a letter or digit")]
    return []


def _label_problems(path: tuple, labels, what: str = "label") -> list[Problem]:
    out = []
    if not isinstance(labels, dict):
        return out
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or len(name) > 63 \
                or not _QUALIFIED.match(name):
            out.append(Problem(path + (key,), f"{what} key {key!r} is not valid: an optional DNS prefix and '/', "
                                              "then at most 63 characters of letters, digits, '-', '_' and '.'",
                               key=True))
        if what == "label" and isinstance(value, str) and (len(value) > 63 or (value and not _QUALIFIED.match(value))):
            out.append(Problem(path + (key,), f"label value {value!r} is not valid: at most 63 characters of letters, "
                                              "digits, '-', '_' and '.', starting and ending with a letter or digit"))
        elif what == "label" and not isinstance(value, str):
            out.append(Problem(path + (key,), f"label value {value!r} must be a string", "quote it"))
    return out


def _meta_problems(path: tuple, meta, kind: str) -> list[Problem]:
    if not isinstance(meta, dict):
        return []
    # A Job's name becomes its pods' `job-name` label: at most 63 characters.
    limit = 63 if kind == "Job" else 253
    out = _name_problems(path + ("name",), meta.get("name"), f"{kind} name", _DNS_SUBDOMAIN, limit) \
        if "name" in meta else []
    if "namespace" in meta:
        out += _name_problems(path + ("namespace",), meta["namespace"], "namespace", _DNS_LABEL, 63)
    return out + _label_problems(path + ("labels",), meta.get("labels")) + \
        _label_problems(path + ("annotations",), meta.get("annotations"), "annotation")


def _resources_problems(path: tuple, resources) -> list[Problem]:
    if not isinstance(resources, dict):
        return []
    out, parsed = [], {}
    for section in ("limits", "requests"):
        values = resources.get(section)
        for name, value in (values.items() if isinstance(values, dict) else ()):
            amount = quantity(value)
            if amount is None or amount < 0:
                out.append(Problem(path + (section, name), f"{value!r} is not a valid resource quantity",
                                   "write e.g. 500m or 1 for cpu, 128Mi or 1Gi for memory"))
            else:
                parsed[section, name] = amount
    for (section, name), amount in parsed.items():
        limit = parsed.get(("limits", name))
        if section == "requests" and limit is not None and amount > limit:
            out.append(Problem(path + ("requests", name), f"the {name} request ({resources['requests'][name]}) is"
                                                          f" more than its limit ({resources['limits'][name]})"))
    return out


def _container_problems(path: tuple, container, volumes: set) -> list[Problem]:
    if not isinstance(container, dict):
        return []
    out = _name_problems(path + ("name",), container.get("name"), "container name", _DNS_LABEL, 63)
    if "name" not in container:
        out.append(Problem(path, "a container needs a name"))
    if not container.get("image") and "image" in container:
        out.append(Problem(path + ("image",), "a container needs an image"))
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in PULL_POLICIES:
        out.append(Problem(path + ("imagePullPolicy",), f"imagePullPolicy {policy!r} is not one of "
                                                         f"{', '.join(PULL_POLICIES)}"))
    for i, entry in enumerate(container.get("env") or [] if isinstance(container.get("env"), list) else []):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and not _ENV_NAME.match(name):
            out.append(Problem(path + ("env", i, "name"), f"environment variable name {name!r} is not valid: "
                                                          "letters, digits, '_', '-' and '.', not starting with a digit"))
    for i, port in enumerate(container.get("ports") or [] if isinstance(container.get("ports"), list) else []):
        number = port.get("containerPort") if isinstance(port, dict) else None
        if isinstance(number, int) and not 1 <= number <= 65535:
            out.append(Problem(path + ("ports", i, "containerPort"), f"port {number} is not between 1 and 65535"))
    for i, mount in enumerate(container.get("volumeMounts") or [] if isinstance(container.get("volumeMounts"), list)
                              else []):
        name = mount.get("name") if isinstance(mount, dict) else None
        if isinstance(name, str) and name not in volumes:
            out.append(Problem(path + ("volumeMounts", i, "name"), f"volume {name!r} is mounted but not declared",
                               "add it under the pod's volumes"))
    return out + _resources_problems(path + ("resources",), container.get("resources"))


def _pod_problems(path: tuple, pod, kind: str) -> list[Problem]:
    if not isinstance(pod, dict):
        return []
    out = []
    volumes = set()
    for i, volume in enumerate(pod.get("volumes") or [] if isinstance(pod.get("volumes"), list) else []):
        name = volume.get("name") if isinstance(volume, dict) else None
        out += _name_problems(path + ("volumes", i, "name"), name, "volume name", _DNS_LABEL, 63)
        if isinstance(name, str):
            if name in volumes:
                out.append(Problem(path + ("volumes", i, "name"), f"volume {name!r} is declared twice"))
            volumes.add(name)
    seen = set()
    for section in ("initContainers", "containers"):
        items = pod.get(section)
        if section == "containers" and not items:
            out.append(Problem(path, "the pod needs at least one container"))
        for i, container in enumerate(items if isinstance(items, list) else []):
            out += _container_problems(path + (section, i), container, volumes)
            name = container.get("name") if isinstance(container, dict) else None
            if name in seen:
                out.append(Problem(path + (section, i, "name"), f"container name {name!r} is used twice"))
            seen.add(name)
    policy = pod.get("restartPolicy")
    allowed = RESTART_POLICIES[kind]
    if policy is not None and policy not in allowed:
        out.append(Problem(path + ("restartPolicy",), f"restartPolicy {policy!r} is not allowed in a {kind}'s pod: "
                                                      f"one of {', '.join(allowed)}"))
    for key in ("serviceAccountName", "serviceAccount"):
        if key in pod:
            out += _name_problems(path + (key,), pod[key], "service account", _DNS_SUBDOMAIN, 253)
    for i, secret in enumerate(pod.get("imagePullSecrets") or [] if isinstance(pod.get("imagePullSecrets"), list)
                               else []):
        if isinstance(secret, dict) and "name" in secret:
            out += _name_problems(path + ("imagePullSecrets", i, "name"), secret["name"], "image pull secret",
                                  _DNS_SUBDOMAIN, 253)
    return out


def api_rules(manifest: dict) -> list[Problem]:
    """What the API server refuses that the OpenAPI schemas let through."""
    kind = manifest.get("kind")
    out = _meta_problems(("metadata",), manifest.get("metadata"), kind or "object")
    if kind == "Job":
        template = (manifest.get("spec") or {}).get("template") if isinstance(manifest.get("spec"), dict) else None
        if isinstance(template, dict):
            out += _meta_problems(("spec", "template", "metadata"), template.get("metadata"), "Pod")
            out += _pod_problems(("spec", "template", "spec"), template.get("spec"), "Job")
    elif kind == "Pod":
        out += _pod_problems(("spec",), manifest.get("spec"), "Pod")
    return out


def template_problems(data, kind: str) -> list[Problem]:
    """What a template may not say, before flowspec fills it in: it is a `kind`, and it never
    makes a run execute twice (restartPolicy Never, backoffLimit 0, one pod at a time)."""
    if not isinstance(data, dict):
        return [Problem((), f"a {kind} manifest must be a mapping")]
    api = {"Job": "batch/v1", "Pod": "v1"}[kind]
    out = []
    if data.get("kind") != kind:
        out.append(Problem(("kind",) if "kind" in data else (), f"this template must be a {kind} (kind: {kind}),"
                                                                f" not {data.get('kind')!r}"))
    if data.get("apiVersion") != api:
        out.append(Problem(("apiVersion",) if "apiVersion" in data else (),
                           f"a {kind} template needs apiVersion: {api}, not {data.get('apiVersion')!r}"))
    if kind != "Job" or not isinstance(data.get("spec"), dict):
        return out
    spec = data["spec"]
    once = "flowspec retries tasks itself; a flow run must never run twice by surprise"
    if spec.get("backoffLimit", 0) != 0:
        out.append(Problem(("spec", "backoffLimit"), "backoffLimit must be 0 (or left out)", once))
    for key in ("parallelism", "completions"):
        if spec.get(key, 1) != 1:
            out.append(Problem(("spec", key), f"{key} must be 1 (or left out): one pod runs the flow", once))
    pod = (spec.get("template") or {}).get("spec") if isinstance(spec.get("template"), dict) else None
    if isinstance(pod, dict) and pod.get("restartPolicy", "Never") != "Never":
        out.append(Problem(("spec", "template", "spec", "restartPolicy"),
                           f"restartPolicy must be Never (or left out), not {pod['restartPolicy']!r}", once))
    return out


# -- the official schemas -------------------------------------------------------------------------
def have_schemas() -> bool:
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        return False
    return True


def require_schemas() -> None:
    from flowspec.errors import require

    require("kubernetes_validate", "k8s", "checking Kubernetes manifests before they are sent")


@functools.lru_cache(maxsize=8)
def _validator(kind: str, api: str):
    """The strict schema's validator of one kind (None: no schema); read once per process."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{SCHEMA_VERSION}-local-strict"
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{api}.json", SCHEMA_VERSION)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(utils.schema_contents(f"{folder}/_definitions.json", SCHEMA_VERSION)) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def warm_up() -> None:
    """Read the schemas a run checks (an agent's waiting child calls this: a claimed run does not)."""
    if have_schemas():
        _validator("Job", "batch-v1")
        _validator("Pod", "v1")


def schema_problems(manifest: dict) -> list[Problem]:
    """Every error the strict OpenAPI schema of the manifest's kind finds (not just the first)."""
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(manifest.get("apiVersion")))
    validator = _validator(str(manifest.get("kind")), api)
    if validator is None:
        return [Problem(("kind",), f"no schema for kind {manifest.get('kind')!r} of {manifest.get('apiVersion')!r}")]
    out = []
    for error in validator.iter_errors(manifest):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            for key in [k for k in error.instance if k not in known]:
                out.append(Problem(path + (key,), f"unknown field {key!r} (Kubernetes {SCHEMA_VERSION[:4]} schema)",
                                   _did_you_mean(key, known), key=True))
            continue
        out.append(Problem(path, _schema_message(error)))
    return out


def _schema_message(error) -> str:
    if error.validator == "oneOf" and isinstance(error.instance, (dict, list, bool)):
        return f"{error.instance!r} is not a valid value here"
    return error.message.replace(", 'null'", "").replace("['string']", "'string'")


def _did_you_mean(key: str, known) -> str | None:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def check(manifest: dict, schemas: bool = True) -> list[Problem]:
    out = api_rules(manifest)
    return out + (schema_problems(manifest) if schemas else [])


# -- positions --------------------------------------------------------------------------------------
def locate(problem: Problem, built: mf.Built, flow_doc, fallback: tuple, template_doc=None) -> Diagnostic:
    """A problem at a manifest path → a diagnostic in flow.yaml (what the spec set) or in the
    template (what it holds); anything else (flowspec's own parts) at `fallback` in flow.yaml."""
    from flowspec.loader import format_path

    path = problem.path
    set_by_spec = next((len(path) - i for i in range(len(path) + 1) if path[:len(path) - i] in built.origins), None)
    in_template = None
    if template_doc is not None:
        in_template = next((len(path) - i for i in range(len(path) + 1)
                            if path[:len(path) - i] in template_doc.values), None)
    if set_by_spec is not None and (in_template is None or set_by_spec >= in_template):
        d = flow_doc.diag(built.origins[path[:set_by_spec]], problem.message, problem.hint)
    elif template_doc is not None:
        d = template_doc.diag(path, problem.message, problem.hint, key=problem.key)
    else:
        d = flow_doc.diag(fallback, problem.message, problem.hint)
    return Diagnostic(d.file, d.line, d.column, format_path(path) if d.file != flow_doc.file else d.path,
                      d.message if d.file != flow_doc.file else f"{format_path(path)}: {d.message}", d.hint)


def read_template(doc, key: str, written, base_dir: str) -> tuple[mf.Template | None, list[Diagnostic]]:
    """The template a spec names (relative to the spec), or the diagnostics saying why not."""
    from flowspec.loader import LoadError, read_text

    if not isinstance(written, str):
        return None, []  # the schema said so
    path = os.path.normpath(os.path.join(base_dir, written))
    shown = shown_path(doc.file, written)
    try:
        text = read_text(path)
    except LoadError as exc:
        return None, [dataclasses.replace(d, file=shown) for d in exc.diagnostics]
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, or bytes that are not UTF-8
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, [doc.diag(("environment", key), f"cannot read {written} ({why}; looked for {shown})",
                               "the path is relative to the spec's folder")]
    template = mf.Template(key, written, shown, text)
    try:
        template.document()
    except LoadError as exc:
        return None, exc.diagnostics
    return template, []


def shown_path(spec_file: str, written: str) -> str:
    """A template's path as diagnostics print it: the way the spec's own path was given (relative
    to the working folder when the spec's is, absolute when it is), never made absolute."""
    if os.path.isabs(written):
        return os.path.normpath(written)
    return os.path.normpath(os.path.join(os.path.dirname(spec_file), written))
