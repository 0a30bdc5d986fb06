"""The manifests of one flow run, from the spec's options and templates, checked before use.

The same functions serve `flowspec validate` (placeholders for what only the run knows: the
image tag, the run id, the variables' values) and the drivers (the real values): a manifest
that validates is the manifest that is sent, up to those values, which are checked again.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flowspec.errors import SpecError
from flowspec.k8s import checks
from flowspec.k8s import manifests as mf

KINDS = ("kubernetes-job", "dask-kubernetes")
TEMPLATE_KIND = {"job_spec_file": "Job", "scheduler_spec_file": "Job", "worker_spec_file": "Pod"}
JOB_TEMPLATE = {"kubernetes-job": "job_spec_file", "dask-kubernetes": "scheduler_spec_file"}
PLACEHOLDER_RUN = "0" * 32


@dataclass
class RunInputs:
    """What a run adds to the spec: image, command, env (flowspec's own variables included,
    already merged over the spec's), and who runs it."""

    image: str
    command: list
    env: dict
    run_id: str = PLACEHOLDER_RUN
    agent: str | None = None
    backend_url: str | None = None
    own: set = field(default_factory=set)  # names of flowspec's own variables in env
    name: str | None = None  # the run's name on the platform, unless the template names the Job


def options_of(env_options: Mapping) -> dict:
    return {k: v for k, v in env_options.items() if k != mf.FILES_KEY}


def resolved_options(env_options: Mapping, environ: Mapping | None = None) -> dict:
    """The options with their `${{ env.NAME }}` references resolved (where the run starts)."""
    import os

    from flowspec import references as refs
    from flowspec.errors import FlowspecError

    try:
        return refs.resolve(refs.compile_value(options_of(env_options)), refs.env_lookup(
            os.environ if environ is None else environ))
    except refs.UnsetEnvError as exc:
        raise FlowspecError(f"environment: {exc}", hint="set it where the agent runs, or give a fallback") from None


def placeholders(options: Mapping) -> dict:
    """Options for a check at validate time: a value read from the environment is only known at
    run time (and checked then); a valid stand-in takes its place."""
    return {k: ("placeholder" if isinstance(v, str) and "${{" in v else v) for k, v in options.items()}


def templates_of(env_options: Mapping) -> dict[str, mf.Template]:
    return dict(env_options.get(mf.FILES_KEY) or {})


def pull_secret(kind: str, options: Mapping) -> tuple[str | None, tuple]:
    if kind == "dask-kubernetes":
        return (options.get("docker_secret") if options.get("private_registry") else None), \
            ("environment", "docker_secret")
    return options.get("image_pull_secret"), ("environment", "image_pull_secret")


def build_job(kind: str, flow_name: str, project: str, options: Mapping, templates: Mapping, flow_env: Mapping,
              inputs: RunInputs, flow_doc) -> mf.Built:
    """The run's Job (the first container runs the flow), checked: a SpecError when it would be refused."""
    key = JOB_TEMPLATE[kind]
    template = templates.get(key)
    template_doc = template.document() if template is not None else None
    data = template_doc.data if template_doc is not None else None
    problems = checks.template_problems(data, "Job") if template is not None else []
    if problems:
        raise SpecError([checks.locate(p, mf.Built({}), flow_doc, ("environment", key), template_doc)
                         for p in problems])
    base = (data.get("metadata") or {}).get("name") if isinstance(data, dict) and isinstance(
        data.get("metadata"), dict) else None
    labels = {**mf.run_labels(inputs.run_id, flow_name, project, inputs.agent), mf.ROLE_LABEL: "flow-run"}
    secret, secret_path = pull_secret(kind, options)
    name = mf.job_name(base, inputs.run_id) if isinstance(base, str) else inputs.name or \
        mf.job_name(f"flowspec-{flow_name}", inputs.run_id)
    built = mf.build(data, mf.default_job(), name=name,
                     namespace=options.get("namespace"), labels=labels, image=inputs.image, command=inputs.command,
                     env=inputs.env, env_origins={n: ("environment", "env", n) for n in flow_env if n not in inputs.own},
                     service_account=options.get("service_account"), pull_secret=secret,
                     host_network_default=mf.loopback_backend(inputs.backend_url),
                     option_paths={"namespace": ("environment", "namespace"),
                                   "service_account": ("environment", "service_account"),
                                   "pull_secret": secret_path})
    built.template = template
    written = mf.image_of(data) if kind == "dask-kubernetes" and isinstance(data, dict) else None
    if written and written != inputs.image:
        built.warnings.append(replaced(template, "scheduler", written, inputs.image))
    _raise_problems(built, flow_doc, ("environment", key if template is not None else "type"), template_doc)
    return built


def replaced(template: mf.Template, what: str, written: str, image: str) -> str:
    return (f"{template.written}: the {what} image {written} is replaced by the flow's image {image}: the"
            f" {what} must run the flow's code and flowspec")


def build_worker(flow_name: str, project: str, options: Mapping, templates: Mapping, inputs: RunInputs, flow_doc,
                 name: str, job_labels: Mapping) -> mf.Built:
    """A Dask worker pod of a dask-kubernetes run (its first container runs `inputs.command`)."""
    template = templates.get("worker_spec_file")
    template_doc = template.document() if template is not None else None
    data = template_doc.data if template_doc is not None else None
    if template is not None and (problems := checks.template_problems(data, "Pod")):
        raise SpecError([checks.locate(p, mf.Built({}), flow_doc, ("environment", "worker_spec_file"), template_doc)
                         for p in problems])
    labels = {**job_labels, mf.ROLE_LABEL: "dask-worker"}
    secret, secret_path = pull_secret("dask-kubernetes", options)
    built = mf.build(data, mf.default_pod(), name=name, namespace=options.get("namespace"), labels=labels,
                     image=inputs.image, command=inputs.command, env=inputs.env, env_origins={},
                     service_account=None, pull_secret=secret,
                     host_network_default=mf.loopback_backend(inputs.backend_url),
                     option_paths={"namespace": ("environment", "namespace"), "pull_secret": secret_path})
    built.template = template
    written = mf.image_of(data) if isinstance(data, dict) else None
    if written and written != inputs.image:
        built.warnings.append(replaced(template, "worker", written, inputs.image))
    _raise_problems(built, flow_doc, ("environment", "worker_spec_file" if template else "type"), template_doc)
    return built


def _raise_problems(built: mf.Built, flow_doc, fallback: tuple, template_doc) -> None:
    problems = checks.check(built.manifest, schemas=checks.have_schemas())
    if problems:
        raise SpecError([checks.locate(p, built, flow_doc, fallback, template_doc) for p in problems])


# -- at validate time ----------------------------------------------------------------------------
def check_environment(doc, base_dir: str, files: dict | None = None) -> tuple[list, dict]:
    """Compile-time check of a Kubernetes environment: its templates are read (and returned,
    so they travel with the stored flow) and its manifests built with placeholders and checked.
    `files` holds the templates' texts as registered, for a spec compiled away from its folder."""
    data = doc.data
    env = data.get("environment") if isinstance(data.get("environment"), dict) else {}
    kind = env.get("type")
    templates, diags = {}, []
    for key in TEMPLATE_KIND:
        kept = (files or {}).get(key)
        if isinstance(kept, dict) and isinstance(kept.get("text"), str):
            templates[key] = mf.Template(key, str(kept.get("written")), str(kept.get("written")), kept["text"])
        elif key in env:
            template, found = checks.read_template(doc, key, env[key], base_dir)
            diags += found
            if template is not None:
                templates[key] = template
    if diags:
        return diags, templates
    flow_env = env.get("env") if isinstance(env.get("env"), dict) else {}
    inputs = RunInputs(image="flowspec-check/image:tag", command=["flowspec"],
                       env={name: "" for name in flow_env}, agent="agent",
                       backend_url="postgresql://127.0.0.1/flowspec")
    name, project = str(data.get("name", "flow")), str(data.get("project", "default"))
    try:
        options = placeholders(env)
        built = build_job(kind, name, project, options, templates, flow_env, inputs, doc)
        if kind == "dask-kubernetes":
            build_worker(name, project, options, templates, inputs, doc, mf.job_name("fs-w", PLACEHOLDER_RUN) + "-0",
                         built.manifest["metadata"]["labels"])
    except SpecError as exc:
        diags += exc.diagnostics
    return diags, templates


def plan_warnings(spec) -> list[str]:
    """What `flowspec plan` says about a dask-kubernetes environment: template images it replaces."""
    if spec.environment.type != "dask-kubernetes":
        return []
    out = []
    for key, what in (("scheduler_spec_file", "scheduler"), ("worker_spec_file", "worker")):
        template = templates_of(spec.environment.options).get(key)
        data = template.document().data if template is not None else None
        if written := (mf.image_of(data) if isinstance(data, dict) else None):
            out.append(f"{template.written}: the {what} image {written} would be replaced by the flow's image"
                       f" (the {what} must run the flow's code and flowspec)")
    return out
