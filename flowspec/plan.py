"""`flowspec plan`: what a run of a flow would do, worked out without running or importing anything.

The plan is plain data (the `--format json` output); `render_text` prints it for people.
Task code is never imported here: importing a module runs its top-level code, and a plan must be
safe to make for any spec.
"""
from __future__ import annotations

import json
import os

from flowspec import references as refs
from flowspec.drivers import TABLES
from flowspec.masking import MASK, is_secret
from flowspec.schema import load_schema

# What each driver kind does, in a few words, for the text plan.
ABOUT = {
    "executor": {"local": "tasks one after another in this process",
                 "local-dask": "a pool of threads or processes on this machine",
                 "dask": "a Dask distributed cluster (a temporary local one without `address`)"},
    "storage": {"local": "the compiled flow in a file under the flowspec home",
                "docker": "an image holding the flow and its code", "s3": "the compiled flow in an S3 object",
                "git": "the spec and code of one commit of a git repository, pinned at register"},
    "environment": {"local": "the flow runner runs in this process",
                    "remote": "the runner runs here, tasks go wherever the executor sends them",
                    "docker": "a container from the docker storage image, on the Docker engine",
                    "kubernetes-job": "a Kubernetes Job from the docker storage image",
                    "dask-kubernetes": "a Job with a temporary Dask cluster on Kubernetes",
                    "fargate-task": "an AWS ECS Fargate task"},
}


def build_plan(spec, params: dict, sources: dict, backend_url: str | None = None, environ=None) -> dict:
    """The plan of one run of `spec` with these resolved parameter values."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    spec = _resolved(spec, environ)
    plan = {
        "flow": spec.name, "project": spec.project, "file": spec.path, "description": spec.description,
        "parameters": [_parameter(p, params[name], sources.get(name, "default"))
                       for name, p in spec.parameters.items()],
        "tasks": _tasks(spec, params, warnings),
        "executor": _driver("executor", spec.executor.type, spec.executor.options, environ, warnings),
        "storage": _driver("storage", spec.storage.type, spec.storage.options, environ, warnings),
        "environment": _environment(spec, environ, warnings),
        "env_references": _env_references(spec, environ, warnings),
        "outputs": {name: written(value) for name, value in getattr(spec, "outputs", {}).items()},
        "timeout_s": getattr(spec, "timeout", None),
        "hooks": _hooks(spec, ("on_success", "on_failure")),
        "results": _results(spec, environ),
    }
    if spec.schedule:
        plan["schedule"] = _schedule(spec)
    plan["backend"] = backend_view(backend_url, spec.environment.labels, spec)
    plan["warnings"] = warnings + [_deadlock_text(d) for d in plan["backend"].get("subflow_deadlocks", ())]
    return plan


def _resolved(spec, environ):
    """The spec with its name, descriptions and labels read from the environment (see
    compile.resolve_env); storage settings are shown resolved by _driver."""
    from flowspec.compile import resolve_env

    try:
        return resolve_env(spec, environ, storage=False)
    except refs.ResolveError:  # unset: the command reported it before planning
        return spec


def _parameter(p, value, source: str) -> dict:
    secret = is_secret(p.name) or getattr(p, "secret", False) or source == "default" and _reads_secret(p.default)
    return {"name": p.name, "type": p.type or "any", "value": MASK if secret else value,
            "source": source, "masked": secret, "description": p.description}


def _reads_secret(value) -> bool:
    """Does a value read a variable whose name says it holds a credential (`${{ env.DB_PASSWORD }}`)?"""
    if not isinstance(value, (str, list, dict)):
        return False
    try:
        compiled = refs.compile_value(value)
    except refs.ReferenceError_:
        return False
    return any(ref.kind == "env" and is_secret(ref.name) for _, ref in refs.iter_refs(compiled))


# -- tasks ---------------------------------------------------------------------------------------
def _tasks(spec, params: dict, warnings: list[str]) -> list[dict]:
    runs: dict[str, int | None] = {}  # task → number of child runs, when it is known before the run
    out = []
    for task in spec.tasks.values():
        mapped = {arg: _map_source(value, params, runs, task.per_child) for arg, value in task.map_args.items()}
        runs[task.name] = _child_count(task.name, mapped, warnings) if task.mapped else None
        out.append({
            "name": task.name, "run": task.run, "description": task.description,
            "upstream": list(task.upstream), "data_upstream": list(task.data_upstream),
            "condition_upstream": list(task.condition_upstream),
            "after": list(task.after), "map": mapped or None, "children": runs[task.name],
            "retries": task.retries, "retry_delay_s": task.retry_delay, "timeout_s": task.timeout,
            "trigger": task.trigger,
            "if": None if task.condition is None else written(task.condition),
            "run_name": None if task.run_name is None else written(task.run_name),
            "loop": None if task.loop is None else {"until": written(task.loop.until), "max": task.loop.max},
            "cleanup": task.cleanup, "hooks": _hooks(task, ("on_success", "on_failure", "on_retry")),
            "merge": [list(group) for group in task.merge],
            **_result_keys(task),
        })
    return out


def _results(spec, environ) -> dict:
    """Where task results go (the default local store when the flow has no `results`)."""
    from flowspec.results import describe

    return describe(spec, environ)


def _result_keys(task) -> dict:
    """A task's subflow, cache, target and persist, as plain data."""
    sub = getattr(task, "subflow", None)
    subflow = None
    if sub is not None:
        subflow = ({"file": sub.path, "flow": sub.name, "project": sub.project,
                    "tasks": len(sub.spec.tasks) if sub.spec is not None else None} if not sub.registered else
                   {"flow": sub.name, "project": sub.project, "version": sub.version,
                    "labels": None if sub.labels is None else list(sub.labels), "wait": sub.wait})
    cache = getattr(task, "cache", None)
    return {
        "subflow": subflow,
        "cache": None if cache is None else {"key": None if cache.key is None else written(cache.key),
                                             "expires_s": cache.expires},
        "target": None if getattr(task, "target", None) is None else written(task.target),
        "persist": getattr(task, "persist", None),
    }


def written(value):
    """A compiled value as the spec writes it: references back to `${{ … }}` text."""
    if isinstance(value, (refs.Ref, refs.Expr)):
        return str(value)
    if isinstance(value, refs.Template):
        return "".join(p if isinstance(p, str) else str(p) for p in value.parts)
    if isinstance(value, list):
        return [written(v) for v in value]
    if isinstance(value, dict):
        return {k: written(v) for k, v in value.items()}
    return value


def _hooks(owner, keys: tuple) -> dict:
    """The hooks of a task or a flow: key → {run, with} (references as written)."""
    out = {}
    for key in keys:
        hook = getattr(owner, key, None)
        if hook is not None:
            out[key] = {"run": hook.run, "with": written(dict(hook.with_args))}
    return out


def _map_source(value, params: dict, runs: dict, per_child: tuple) -> dict:
    """What one mapped argument iterates over, and how many items, when that is known now."""
    if isinstance(value, refs.Ref) and value.accessors:  # a part of a value: its length is known at run time
        return {"over": value.path(), "items": None}
    if isinstance(value, refs.Ref) and value.kind == "params":
        items = params.get(value.name)
        return {"over": f"params.{value.name}", "items": len(items) if isinstance(items, list) else None}
    if isinstance(value, refs.Ref) and value.kind == "tasks":
        # Over a mapped task: child i feeds child i. Over a plain task: its result, a list of any length.
        child_to_child = value.name in per_child
        return {"over": f"tasks.{value.name}", "items": runs.get(value.name) if child_to_child else None,
                "per_child": child_to_child}
    if isinstance(value, list):
        return {"over": "a list in the spec", "items": len(value)}
    return {"over": str(value), "items": None}


def _child_count(name: str, mapped: dict, warnings: list[str]) -> int | None:
    counts = {arg: m["items"] for arg, m in mapped.items()}
    known = set(c for c in counts.values() if c is not None)
    if len(known) > 1:
        shown = ", ".join(f"{a}={n}" for a, n in counts.items() if n is not None)
        warnings.append(f"task '{name}': mapped arguments have different lengths ({shown}); the task would fail")
        return None
    return known.pop() if known and None not in counts.values() else None


# -- executor, storage, environment --------------------------------------------------------------
def _driver(table: str, kind: str, options, environ, warnings: list[str]) -> dict:
    available = TABLES[table].get(kind) is not None
    if not available:
        # `flowspec run` needs the environment and executor; storage matters to build and register.
        stops = "`flowspec register` could not store the flow" if table == "storage" else \
            "`flowspec run` would stop before any task runs"
        warnings.append(f"the {table} type '{kind}' is not available in this release of flowspec: {stops}")
    settings, defaults = {}, []
    for key, value in _schema_defaults(table, kind).items():
        if key not in options:
            settings[key] = value
            defaults.append(key)
    for key, value in options.items():
        if key.startswith("_"):  # what the compiler attached (a template's text), not a setting
            continue
        if (table, kind, key) == ("storage", "git", "auth"):  # a reference, shown as written (resolved where git runs)
            settings[key] = value
            continue
        settings[key] = _effective(value, environ, warnings, f"{table}.{key}", is_secret(key, env_var=False))
    return {"type": kind, "about": ABOUT[table].get(kind, ""), "available": available,
            "settings": settings, "defaults": defaults}


def _schema_defaults(table: str, kind: str) -> dict:
    """Defaults that the schema documents for this driver's own keys."""
    branch = load_schema()["$defs"].get(f"{table}_{kind.replace('-', '_')}", {})
    return {key: prop["default"] for key, prop in branch.get("properties", {}).items()
            if isinstance(prop, dict) and "default" in prop and key != "type"}


def _effective(value, environ, warnings: list[str], where: str, secret: bool = False):
    """A setting's value with `${{ env.NAME }}` references resolved against the environment;
    masked when its name, or a variable it reads, looks like a credential."""
    if isinstance(value, dict):  # mask key by key: `env_vars`, `task_definition`, ...
        return {k: _effective(v, environ, warnings, f"{where}.{k}", secret or is_secret(k) or is_secret(k, False))
                for k, v in value.items()}
    compiled = refs.compile_value(value, refs.KINDS + ("kv", "secrets"))
    secret = secret or any(ref.kind == "secrets" or ref.kind == "env" and is_secret(ref.name)
                           for _, ref in refs.iter_refs(compiled))
    if secret and any(ref.kind == "secrets" for _, ref in refs.iter_refs(compiled)):
        return MASK  # resolved only where the flow runs
    try:
        value = refs.resolve(compiled, refs.env_lookup(environ))
    except LookupError as exc:  # an unset variable without a fallback
        warnings.append(f"{where}: {exc}; the run would stop before any task runs")
    return MASK if secret else value


def _environment(spec, environ, warnings: list[str]) -> dict:
    env = spec.environment
    view = _driver("environment", env.type, env.options, environ, warnings)
    variables = {}
    for name, value in env.env.items():
        variables[name] = _effective(value, environ, warnings, f"environment.env.{name}", is_secret(name))
    view.update(labels=list(env.labels), env=variables, on_start=env.on_start, on_exit=env.on_exit)
    warnings.extend(_replaced_images(spec))
    if (setup := _setup_plan(spec)) is not None:
        view["setup"] = setup
    return view


def _replaced_images(spec) -> list[str]:
    """dask-kubernetes: a scheduler or worker template that names an image other than the flow's,
    which the run replaces (the pods must run the flow's code and flowspec). The flow's own image,
    written out, is no news."""
    if spec.environment.type != "dask-kubernetes":
        return []
    from flowspec.k8s.jobs import templates_of
    from flowspec.k8s.manifests import image_of

    own = _flow_image(spec)
    out = []
    for key, what in (("scheduler_spec_file", "scheduler"), ("worker_spec_file", "worker")):
        template = templates_of(spec.environment.options).get(key)
        data = template.document().data if template is not None else None
        written = image_of(data) if isinstance(data, dict) else None
        if written and written != own:
            out.append(f"{template.written}: the {what} image {written} would be replaced by the flow's image"
                       f"{' ' + own if own else ''} (the {what} must run the flow's code and flowspec)")
    return out


def _flow_image(spec) -> str | None:
    """The image docker storage would build, when its settings name it in full (name and tag)."""
    from flowspec.storage.docker import image_ref

    storage = dict(spec.storage.options)
    if spec.storage.type != "docker" or not storage.get("image_name") or not storage.get("image_tag"):
        return None
    return image_ref(storage, storage["image_tag"])


def _setup_plan(spec) -> dict | None:
    """What the environment's setup() would do on its platform, when its driver can say (a `plan`
    classmethod: fargate-task describes its task definition family)."""
    from flowspec.drivers import load_driver

    if TABLES["environment"].get(spec.environment.type) is None:
        return None
    try:
        driver = load_driver("environment", spec.environment.type)
    except ImportError:
        return None
    return driver.plan(spec) if hasattr(driver, "plan") else None


def _env_references(spec, environ, warnings: list[str]) -> list[dict]:
    """Every environment variable the tasks read through `${{ env.NAME }}`, and whether it is set."""
    seen: dict[str, dict] = {}
    provided = set(spec.environment.env)
    platform = _platform_provided(spec)
    for task in spec.tasks.values():
        for section in (task.with_args, task.map_args):
            for _, ref in refs.iter_refs(dict(section)):
                if ref.kind == "env" and ref.name not in seen:
                    by_platform = ref.name in platform and ref.name not in provided
                    is_set = ref.name in environ or ref.name in provided or by_platform
                    seen[ref.name] = {"name": ref.name, "task": task.name, "set": is_set,
                                      "fallback": ref.fallback if ref.fallback is not refs.UNSET
                                      else "(next operand of ||)"}
                    if by_platform:  # set in the container, not here
                        seen[ref.name]["set_by"] = "the task definition"
                    if not is_set and ref.fallback is None:
                        warnings.append(f"task '{task.name}' reads ${{{{ env.{ref.name} }}}}, which is not set: "
                                        "the run would stop before any task runs")
    return list(seen.values())


def _platform_provided(spec) -> set[str]:
    """Variables the platform sets in the flow's container: for fargate-task, the `environment`
    and `secrets` (valueFrom: Secrets Manager, SSM) of the task definition's container definitions."""
    if spec.environment.type != "fargate-task":
        return set()
    definition = spec.environment.options.get("task_definition")
    containers = definition.get("containerDefinitions") if isinstance(definition, dict) else None
    names = set()
    for container in containers if isinstance(containers, list) else ():
        for key in ("environment", "secrets"):
            pairs = container.get(key) if isinstance(container, dict) else None
            names.update(p["name"] for p in pairs or () if isinstance(p, dict) and isinstance(p.get("name"), str))
    return names


# -- backend -------------------------------------------------------------------------------------
def backend_view(url: str | None, labels, spec=None) -> dict:
    """Agents seen recently that could take this flow, the concurrency limits on its labels, and
    the registered subflows of `spec` that could start only in the slot this flow's run holds."""
    from flowspec.errors import FlowspecError

    try:
        from flowspec.backend import flowspec_home, labels_match, open_backend
        from flowspec.backend.base import AGENT_SEEN_WINDOW_S
    except ImportError as exc:
        return {"reachable": False, "url": url, "reason": f"backend support is not installed ({exc})"}
    url = url or os.environ.get("FLOWSPEC_BACKEND") or str(flowspec_home() / "flowspec.db")
    sqlite_path = _sqlite_path(url)
    if sqlite_path is not None and not os.path.exists(os.path.expanduser(sqlite_path)):
        # Opening it would create it, which a plan must not do.
        return {"reachable": False, "url": url, "reason": f"no backend database at {sqlite_path}"}
    try:
        with open_backend(url) as backend:
            agents = backend.list_agents(seen_within_s=AGENT_SEEN_WINDOW_S)
            limits = backend.list_limits()
            deadlocks = _subflow_deadlocks(backend, spec, labels, limits) if spec is not None else []
            shown_url = sqlite_path or backend.url  # backend.url hides a PostgreSQL password
    except FlowspecError as exc:
        return {"reachable": False, "url": url, "reason": exc.message}
    return {
        "reachable": True, "url": shown_url, "reason": None, "agents_seen_within_s": AGENT_SEEN_WINDOW_S,
        "agents": [{"name": a.name, "labels": list(a.labels), "can_run": labels_match(labels, a.labels)}
                   for a in agents],
        "limits": [{"label": lim.label, "limit": lim.limit, "in_use": lim.in_use}
                   for lim in limits if lim.label in labels],
        "subflow_deadlocks": deadlocks,
    }


def _subflow_deadlocks(backend, spec, labels, limits) -> list[dict]:
    """Registered subflows waited for (in this spec or its spec file children, which run in its
    process) whose child run would carry a label whose only slot this flow's run holds, when an
    agent runs it (a local `flowspec run` holds no slot): the child could never start."""
    full = {lim.label for lim in limits if lim.limit == 1} & set(labels)
    out: list[dict] = []
    if not full:
        return out
    for where, sub in _registered_waits(spec, "", set()):
        child_labels = sub.labels
        if not child_labels:  # the flow's own labels, as the child run gets them
            flow = backend.get_flow(sub.name, sub.project, sub.version)
            child_labels = flow.labels if flow is not None else ()
        out += [{"task": where, "flow": sub.name, "project": sub.project, "label": label, "limit": 1}
                for label in sorted(full & set(child_labels))]
    return out


def _registered_waits(spec, prefix: str, seen: set):
    """(task path, SubflowSpec) of each registered subflow with `wait`, spec file children too."""
    for task in spec.tasks.values():
        sub = getattr(task, "subflow", None)
        if sub is None:
            continue
        if sub.registered:
            if sub.wait:
                yield prefix + task.name, sub
        elif sub.spec is not None and sub.path not in seen:
            seen.add(sub.path)
            yield from _registered_waits(sub.spec, f"{prefix}{task.name} > ", seen)


def _deadlock_text(d: dict) -> str:
    return (f"task '{d['task']}': its child run needs a slot of label '{d['label']}', whose limit of {d['limit']}"
            f" this flow's own run holds while it waits for the child: run by an agent, the child could never"
            f" start (it would be Queued with that reason); raise the limit (`flowspec concurrency-limit set"
            f" {d['label']} 2`) or give the task other `labels`")


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite backend URL (`sqlite:///PATH` or a plain path); None for other URLs."""
    if "://" in url and not url.startswith("sqlite://"):
        return None
    return url[len("sqlite://"):] if url.startswith("sqlite://") else url


# -- text ----------------------------------------------------------------------------------------
def render_text(plan: dict) -> str:
    """The plan for people: one section per part of the run."""
    lines = [f"Plan for flow '{plan['flow']}' (project {plan['project']}); nothing has been run.", ""]
    lines += _text_parameters(plan["parameters"])
    lines += _text_tasks(plan["tasks"])
    lines += _text_flow(plan)
    lines += _text_platform(plan)
    lines += _text_schedule(plan.get("schedule"))
    lines += _text_backend(plan["backend"])
    if plan["warnings"]:
        lines += ["", "Warnings"] + [f"  ! {w}" for w in plan["warnings"]]
    return "\n".join(lines)


def _schedule(spec) -> dict:
    """The clocks and the next five times (by the scheduler's clock, flowspec.schedules.now)."""
    from flowspec import schedules

    upcoming = schedules.next_times(spec.schedule, schedules.now(), 5)
    return {"catchup": spec.catchup,
            "clocks": [c.to_json() | {"describe": c.describe()} for c in spec.schedule],
            "next": [{"time": schedules.iso(t, spec.schedule[i].timezone), "clock": i} for t, i in upcoming]}


def _text_schedule(schedule: dict | None) -> list[str]:
    if not schedule:
        return []
    lines = ["", f"Schedule     {len(schedule['clocks'])} clock(s), catchup {'on' if schedule['catchup'] else 'off'}"]
    lines += [f"  {i}. {c['describe']}" + (f"  parameters {json.dumps(c['parameters'])}" if c["parameters"] else "")
              + (f"  labels {', '.join(c['labels'])}" if c["labels"] is not None else "")
              for i, c in enumerate(schedule["clocks"])]
    lines += ["  next runs:"] + [f"    {n['time']}  (clock {n['clock']})" for n in schedule["next"]] + [""]
    return lines


def _show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _text_parameters(params: list[dict]) -> list[str]:
    if not params:
        return ["Parameters: none", ""]
    width = max(len(p["name"]) for p in params)
    rows = [f"  {p['name']:<{width}}  {p['type']:<7}  {_show(p['value'])}  ({p['source']})" for p in params]
    return ["Parameters"] + rows + [""]


def _text_tasks(tasks: list[dict]) -> list[str]:
    lines = ["Tasks, in execution order"]
    for i, t in enumerate(tasks, 1):
        lines.append(f"  {i}. {t['name']}  ({_what(t)})")
        if t["upstream"]:
            data = set(t["data_upstream"])  # a set: a task may wait for thousands
            cond = set(t.get("condition_upstream") or ())
            kinds = [f"{u} ({'if' if u in cond else 'data' if u in data else 'after'})" for u in t["upstream"]]
            lines.append(f"       waits for: {', '.join(kinds)}")
        for arg, m in (t["map"] or {}).items():
            count = f", {m['items']} items" if m["items"] is not None else ""
            how = "child by child" if m.get("per_child") else ""
            lines.append(f"       maps {arg} over {m['over']}{count}{' ' + how if how else ''}")
        if t["map"]:
            lines.append(f"       child runs: {t['children'] if t['children'] is not None else 'known at run time'}")
        extras = [f"retries {t['retries']}" if t["retries"] else "",
                  f"retry delay {t['retry_delay_s']:g}s" if t["retry_delay_s"] else "",
                  f"timeout {t['timeout_s']:g}s" if t["timeout_s"] else "",
                  f"trigger {t['trigger']}" if t["trigger"] != "all_successful" else ""]
        if any(extras):
            lines.append("       " + ", ".join(e for e in extras if e))
        lines += _text_task_keys(t)
    return lines + [""]


def _what(t: dict) -> str:
    """What a task runs: its callable, or its subflow."""
    sub = t.get("subflow")
    if not sub:
        return t["run"]
    if "file" in sub:
        return f"subflow {sub['flow']} from {sub['file']}"
    version = f" version {sub['version']}" if sub["version"] is not None else " (latest version)"
    return f"subflow {sub['project']}/{sub['flow']}{version}, registered"


def _text_results(t: dict) -> list[str]:
    lines = []
    sub = t.get("subflow")
    if sub and "file" in sub and sub.get("tasks") is not None:
        lines.append(f"       child flow run{'s' if t['map'] else ''} of {sub['tasks']} task{'s' * (sub['tasks'] != 1)},"
                     " in this run's process")
    if sub and "file" not in sub:
        labels = "the flow's own" if sub["labels"] is None else ", ".join(sub["labels"]) or "none"
        lines.append(f"       child run for the agents, labels: {labels}; "
                     + ("waits for it" if sub["wait"] else "does not wait (result: the child run's id)"))
    if t.get("cache"):
        key = t["cache"]["key"] or "digest of the code and the arguments"
        expires = f", expires after {t['cache']['expires_s']:g}s" if t["cache"]["expires_s"] else ""
        lines.append(f"       cache: key {key}{expires} (a stored result: Cached, not called)")
    if t.get("target"):
        lines.append(f"       target: {t['target']} (exists: Cached from it; else written there)")
    if t.get("persist") is not None:
        lines.append(f"       persist: {'kept in the result store' if t['persist'] else 'not kept'}")
    return lines


def _text_task_keys(t: dict) -> list[str]:
    """The lines of a task's if, run_name, loop, cleanup, hooks and merges (absent: none)."""
    lines = []
    if t.get("if") is not None:
        lines.append(f"       if: {_show(t['if'])} (false: Skipped)")
    for group in t.get("merge") or ():
        lines.append(f"       merges {' || '.join(group)}: runs when at least one of them succeeded")
    if t.get("run_name") is not None:
        lines.append(f"       run name: {t['run_name']}")
    if t.get("loop"):
        lines.append(f"       loops until {_show(t['loop']['until'])}, at most {t['loop']['max']} iterations")
    if t.get("cleanup"):
        lines.append(f"       cleanup: {t['cleanup']} (with the result, once its consumers have finished)")
    lines += _text_hooks(t.get("hooks") or {}, "       ")
    return lines + _text_results(t)


def _text_hooks(hooks: dict, indent: str) -> list[str]:
    out = []
    for key, hook in hooks.items():
        args = ", ".join(f"{k}={_show(v)}" for k, v in hook["with"].items())
        out.append(f"{indent}{key}: {hook['run']}{f' with {args}' if args else ''}")
    return out


def _text_flow(plan: dict) -> list[str]:
    """The flow's outputs, timeout and hooks (nothing when it has none)."""
    lines = []
    if plan.get("timeout_s") is not None:
        lines.append(f"  timeout: {plan['timeout_s']:g}s for the whole run (then TimedOut)")
    lines += [f"  output {name}: {_show(value)}" for name, value in (plan.get("outputs") or {}).items()]
    lines += _text_hooks(plan.get("hooks") or {}, "  ")
    r = plan.get("results")
    if r and (r["given"] or any(t.get("cache") or t.get("target") or t.get("persist") for t in plan["tasks"])):
        lines.append(f"  results: {r['type']}, {r['location']}" + ("" if r["given"] else " (the default store)"))
    return ["Flow run"] + lines + [""] if lines else []


def _text_platform(plan: dict) -> list[str]:
    lines = []
    for table in ("executor", "storage", "environment"):
        d = plan[table]
        note = "" if d["available"] else "  (not available in this release)"
        lines.append(f"{table.capitalize():<12} {d['type']}: {d['about']}{note}")
        for key, value in d["settings"].items():
            lines.append(f"  {key}: {_show(value)}{' (default)' if key in d['defaults'] else ''}")
    env = plan["environment"]
    lines.append(f"  labels: {', '.join(env['labels']) or '(none)'}")
    lines += [f"  env {name}={value}" for name, value in env["env"].items()]
    lines += [f"  {hook}: {env[hook]}" for hook in ("on_start", "on_exit") if env[hook]]
    for ref in plan["env_references"]:
        if ref["set"]:
            state = f"set by {ref['set_by']}" if ref.get("set_by") else "set"
        else:
            state = f"unset, fallback '{ref['fallback']}'" if ref["fallback"] is not None else "NOT SET"
        lines.append(f"  reads ${{{{ env.{ref['name']} }}}} in task {ref['task']} ({state})")
    if env.get("setup"):
        lines += _text_setup(env["setup"])
    return lines + [""]


def _text_setup(setup: dict) -> list[str]:
    verb = {"reuse": "reuse", "register": "register a new revision of", "refuse": "refuse to run with"}
    what = verb.get(setup["action"])
    lines = [f"  setup: would {what} task definition family '{setup.get('family')}' ({setup['reason']})" if what
             else f"  setup: cannot tell what it would do ({setup['reason']})"]
    lines += [f"    {d}" for d in setup.get("differences", [])]
    if setup.get("task_definition") and setup["action"] in ("register", "refuse", "unknown"):
        lines.append(f"  task definition: {_show(setup['task_definition'])}")
    return lines


def _text_backend(b: dict) -> list[str]:
    if not b["reachable"]:
        return [f"Backend      not reachable ({b['reason']})"]
    lines = [f"Backend      {b['url']}"]
    if not b["agents"]:
        lines.append(f"  no agent seen in the last {b['agents_seen_within_s']:g}s")
    for a in b["agents"]:
        verdict = "could run it" if a["can_run"] else "cannot run it (labels do not cover the flow's)"
        lines.append(f"  agent {a['name']} [{', '.join(a['labels'])}]: {verdict}")
    for lim in b["limits"]:
        lines.append(f"  concurrency limit on label '{lim['label']}': {lim['in_use']}/{lim['limit']} in use")
    if not b["limits"]:
        lines.append("  no concurrency limit applies to its labels")
    return lines
