"""Validated data → FlowSpec. Semantic checks that a schema cannot express, all reported at once."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from types import MappingProxyType

from flowspec import references as refs
from flowspec.diagnostics import Diagnostic
from flowspec.loader import Document, LoadError, gc_paused, load_file
from flowspec.params import DEFAULT_KINDS, reads_secrets, type_error
from flowspec.schema import check as schema_check
from flowspec.schema import did_you_mean
from flowspec.spec import (CacheSpec, DriverSpec, EnvironmentSpec, FlowSpec, HookSpec, LoopSpec, ParameterSpec,
                           SubflowSpec, TaskSpec, built)

NEEDS_DOCKER_STORAGE = ("docker", "kubernetes-job", "dask-kubernetes", "fargate-task")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 30 * 24 * 3600.0
MAX_SUGGESTED = 100  # unknown names that get a did-you-mean hint (see _Checker.suggest)
MAX_LISTED = 50  # known names listed in a hint
EMPTY_ARGS: dict = {}  # the `with` or `map` of a task that has none (read only, never changed)
TASK_HOOKS = ("on_success", "on_failure", "on_retry")
FLOW_HOOKS = ("on_success", "on_failure")
# Task keys beyond `run`/`with`/`map`/...: a task without any of them skips their checks.
_EXTRA_KEYS = frozenset(("if", "run_name", "loop", "cleanup", *TASK_HOOKS, "flow", "labels", "wait", "cache",
                         "target", "persist"))
# Keys this release validates (and `plan` shows) but whose run-time part is not built yet: `run`,
# `register` and `build` refuse a spec that uses one, rather than run it without. Entries leave
# this set as the runner implements them.
NOT_RUN_YET: set = set()  # "flow" here would refuse registered subflows (`flow: FILE` always runs)
_CYCLE = "subflows form a cycle:"
RESULT_KINDS = ("params", "args", "env")  # what `cache.key` and `target` may reference
# The TaskSpec fields of those keys for a task that has none of them.
_NO_EXTRAS = {"condition": None, "condition_upstream": (), "run_name": None, "loop": None, "cleanup": None,
              "on_success": None, "on_failure": None, "on_retry": None, "merge": (), "subflow": None, "cache": None,
              "target": None, "persist": None}
# What `with`, `map`, `if`, flow hooks and `outputs` may reference; kv and secrets are resolved
# where the flow runs, when it starts (flowspec.run_refs).
DATA_KINDS = ("params", "tasks", "env", "kv", "secrets")
OUTPUT_KINDS = ("params", "tasks", "env", "kv")  # outputs are stored with the run: never a secret
LOOP_KINDS = ("result", "context", "params", "env")  # what `loop.until` may reference
LOOP_CONTEXT = ("index", "previous")  # context.loop.KEY
# A reference of a kind the language knows, written where it is not allowed: (message, hint).
_ONLY_IN = {
    "args": ("is allowed only in run_name (the task run's own arguments)",
             "elsewhere, reference params., tasks. or env."),
    "result": ("is allowed only in loop.until (the result of the iteration)",
               "a task's result is ${{ tasks.NAME }}"),
    "context": ("is allowed only in loop.until (context.loop.index, context.loop.previous)", None),
}
# Keys and variable names that hold secrets: their values must come from ${{ env.NAME }}.
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret(_access)?_key|access_key(_id)?|api_?key|token|credential|private_key",
                         re.I)
# What a task's `with`/`map` (and environment.env, secrets only) may name besides params, tasks, env.
TASK_KINDS = refs.KINDS + ("kv", "secrets")
def _schedule(d: dict) -> tuple:
    if not d.get("schedule"):
        return ()
    from flowspec import schedules

    return schedules.build(d)


_SECRET_VAR = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@:]*:(?!\$\{\{)[^\s/@]+@", re.I)  # scheme://user:pw@


def parse_duration(value) -> float:
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # a huge YAML integer: reported as out of range, never a crash
            return math.inf
    m = _DURATION.match(value)
    return float(m.group(1)) * _UNITS[m.group(2)]


def compile_file(path: str, strict: bool = False) -> tuple[FlowSpec | None, list[Diagnostic]]:
    """Load, schema-check and compile one spec file. Returns the spec only when there is no error."""
    with gc_paused():
        try:
            doc = load_file(path)
        except LoadError as exc:
            return None, exc.diagnostics
        return compile_document(doc, strict=strict)


def compile_document(doc: Document, strict: bool = False, files: dict | None = None,
                     ) -> tuple[FlowSpec | None, list[Diagnostic]]:
    """`files`: the texts of files the spec names, kept at registration ({key: {written, text}}), for a
    spec compiled away from its folder."""
    if doc.data is None:
        return None, [doc.diag((), "the spec is empty", "a flow needs at least 'version: 1', 'name' and 'tasks'")]
    diags = schema_check(doc)
    if not isinstance(doc.data, dict):  # a list or a scalar at the top: the schema said so
        return None, sorted(diags, key=Diagnostic.sort_key)
    from flowspec.subflows import compiling

    checker = _Checker(doc)
    with compiling(os.path.abspath(doc.file)):
        checker.run()
    diags += checker.diags
    if not any(d.path.startswith("environment") for d in diags):  # once its shape is right
        diags += checker.check_manifests(files)
    if diags:
        return None, sorted(diags, key=Diagnostic.sort_key)
    spec = checker.build()
    if strict:
        from flowspec.callables import add_import_path

        add_import_path(spec.base_dir)
        diags = import_all(spec)[1] + import_children(spec)
    return (None if diags else spec), sorted(diags, key=Diagnostic.sort_key)


def import_children(spec: FlowSpec, seen: set | None = None) -> list[Diagnostic]:
    """`--strict` for the spec files of `flow: FILE` subflows, each once however many tasks or
    parents name it, nested ones too: their callables imported from their own folders, each
    problem at the child file's line and column."""
    from flowspec.callables import add_import_path

    seen = set() if seen is None else seen
    out: list[Diagnostic] = []
    for task in spec.tasks.values():
        sub = task.subflow
        if sub is None or sub.registered or sub.spec is None or sub.path in seen:
            continue
        seen.add(sub.path)
        add_import_path(sub.spec.base_dir)
        out += import_all(sub.spec)[1] + import_children(sub.spec, seen)
    return out


def import_all(spec: FlowSpec) -> tuple[dict, list[Diagnostic]]:
    """Import every callable the spec names and check that task arguments fit the signatures:
    (callables, diagnostics). Keys of the callables: a task's name for its `run`; (task name,
    key) for its `cleanup`, `on_success`, `on_failure`, `on_retry`; (None, key) for the flow's
    `on_success` / `on_failure`; `on_start` / `on_exit` for the environment's. Each target is
    imported and each signature checked once, however many tasks share them (a chain of 500
    `inc` tasks)."""
    from flowspec.callables import CallableError, hook_problem, load_callable, signature_problems

    doc: Document = spec.document
    callables: dict = {}
    out = []
    loaded: dict = {}  # target -> the callable, or the CallableError it gave
    checked: dict = {}  # (target, argument names) -> signature problems
    env = spec.environment
    hooks = [(k, v) for k, v in (("on_start", env.on_start), ("on_exit", env.on_exit)) if v]

    def load(target: str):
        if target not in loaded:
            try:
                loaded[target] = load_callable(target, spec.base_dir)
            except CallableError as exc:
                loaded[target] = exc
        return loaded[target]

    for task in spec.tasks.values():
        if task.subflow is not None:  # a subflow calls no function (a child spec is checked when compiled)
            continue
        fn = loaded.get(task.run) or load(task.run)
        if isinstance(fn, CallableError):
            out.append(doc.diag(("tasks", task.name, "run"), fn.message, fn.hint))
            continue
        callables[task.name] = fn
        key = (task.run, tuple(task.with_args), tuple(task.map_args))
        problems = checked.get(key)
        if problems is None:
            problems = checked[key] = signature_problems(fn, set(task.with_args) | set(task.map_args))
        for problem in problems:
            out.append(doc.diag(("tasks", task.name, "run"), f"{task.run}: {problem}",
                                "arguments come from 'with' and 'map'; they must match the function's parameters"))
    for owner, key, hook, path in _one_argument_callables(spec):
        fn = load(hook.run)
        if isinstance(fn, CallableError):
            out.append(doc.diag(path, fn.message, fn.hint))
            continue
        callables[(owner, key)] = fn
        problem = checked.get((hook.run, key == "cleanup", tuple(hook.with_args)), "unchecked")
        if problem == "unchecked":
            problem = checked[(hook.run, key == "cleanup", tuple(hook.with_args))] = one_argument_problem(
                fn, tuple(hook.with_args))
        if problem:
            what = "a cleanup is called with the task's result" if key == "cleanup" else \
                "a hook is called with one argument, a dict describing the run"
            more = " and the keyword arguments of its 'with'" if hook.with_args else ""
            first = "resource" if key == "cleanup" else "info"
            out.append(doc.diag(path, f"{hook.run}: {problem}",
                                f"{what}{more}: write it as def {key}({first}{', ...' if more else ''}): ..."))
    for key, target in hooks:
        fn = load(target)
        if isinstance(fn, CallableError):
            out.append(doc.diag(("environment", key), fn.message, fn.hint))
            continue
        callables[key] = fn
        if (problem := hook_problem(fn)):
            out.append(doc.diag(("environment", key), f"{target}: {problem}",
                                "write it as def hook(): ... or def hook(run): ... (run: the run's summary)"))
    return callables, out


def _one_argument_callables(spec: FlowSpec):
    """(owner, key, HookSpec, spec path) of each cleanup and hook: the callables that take one
    positional argument (a cleanup as a HookSpec without arguments)."""
    for task in spec.tasks.values():
        if task.cleanup is not None:
            yield task.name, "cleanup", HookSpec(task.cleanup), ("tasks", task.name, "cleanup")
        for key in TASK_HOOKS:
            hook = getattr(task, key)
            if hook is not None:
                yield task.name, key, hook, _hook_path(spec, ("tasks", task.name, key))
    for key in FLOW_HOOKS:
        hook = getattr(spec, key, None)
        if hook is not None:
            yield None, key, hook, _hook_path(spec, (key,))


def _hook_path(spec: FlowSpec, path: tuple) -> tuple:
    """Where a hook's callable is written: the key itself, or its `run` in the {run, with} form."""
    node = spec.document.data if spec.document is not None else None
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return path + ("run",) if isinstance(node, dict) else path


def one_argument_problem(fn, keywords: tuple = ()) -> str | None:
    """Why `fn(value, **keywords)` cannot be called, or None when it can."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins without a signature: nothing to check
    try:
        sig.bind(None, **dict.fromkeys(keywords))
    except TypeError as exc:
        more = f" and the keyword argument{'s' * (len(keywords) > 1)} {', '.join(keywords)}" if keywords else ""
        return f"it must take one positional argument{more}," \
               f" but its signature is {sig} ({exc})"
    return None


def not_run_yet(spec: FlowSpec, severity: str = "error") -> list[Diagnostic]:
    """A diagnostic for each use of a key in NOT_RUN_YET (the first use of each key): a spec that
    relies on a feature the runner does not have yet must not run without it. An error for the
    commands that go on to run the flow (run, register, build: commands/run.py's prepare), a
    warning for validate; plan shows the keys as they are."""
    doc = spec.document
    if doc is None or not NOT_RUN_YET:
        return []
    seen: dict[str, tuple] = {}
    if "results" in NOT_RUN_YET and spec.results is not None:
        seen["results"] = ("results",)
    for task in spec.tasks.values():
        for key, used in (("flow", task.subflow is not None and task.subflow.registered), ("cache", task.cache is not None),
                          ("target", task.target is not None), ("persist", task.persist is not None)):
            if used and key in NOT_RUN_YET and key not in seen:
                seen[key] = ("tasks", task.name, key)
    return [dataclasses.replace(doc.diag(path, f"this release validates `{key}` but does not run it yet",
                             "remove it to run the flow now; `flowspec validate` and `flowspec plan` accept it",
                             key=True), severity=severity)
            for key, path in seen.items()]


def unset_env(spec: FlowSpec, environ=None, given=(), severity: str = "error", storage: bool = True,
              ) -> list[Diagnostic]:
    """Each `${{ env.NAME }}` without a fallback whose variable is not set, at its line and column:
    in the flow's `name`, `project`, `description`, the descriptions of parameters and tasks,
    `environment.labels` and (with `storage`) the storage settings, which are resolved when the
    spec is compiled for a command (see resolve_env); in the executor's settings (read once
    `environment.env` is applied, so the flow's own variables count); and in the defaults of
    parameters not `given` (read before). For run, register, build and plan these are errors
    (nothing starts); `validate` warns, since the machine that validates is often not the one
    that runs. The environment's own settings and `environment.env` are read where the flow run
    starts (an agent's machine), and task arguments, conditions, hooks and outputs during the
    run: they are checked there."""
    environ = os.environ if environ is None else environ
    doc = spec.document
    out = []

    def check(path: tuple, value, provided=(), instead: str = "") -> None:
        for sub, ref in refs.iter_refs(refs.compile_value(value, DEFAULT_KINDS)):
            if ref.kind == "env" and ref.fallback is None and ref.name not in environ and ref.name not in provided:
                d = doc.diag(path + sub, f"environment variable {ref.name} is not set (read by {ref})",
                             f"set it ({ref.name}=...) before the command{instead}, or write"
                             f" ${{{{ env.{ref.name} || 'fallback' }}}}")
                out.append(Diagnostic(d.file, d.line, doc.column_of(path + sub, ref.offset), d.path, d.message,
                                      d.hint, severity))

    for path, value in _resolved_at_compile(doc.data, storage):
        check(path, value)
    for key, value in spec.executor.options.items():
        check(("executor", key), value, spec.environment.env)
    for name, p in spec.parameters.items():
        if not p.required and name not in given and isinstance(p.default, (str, list, dict)):
            check(("parameters", name, "default"), p.default, instead=f", give --param {name}=VALUE")
    return out


def _resolved_at_compile(data: dict, storage: bool = True):
    """(path, value) of each string of the spec that holds `${{` and is resolved when the spec is
    compiled for a command: the top-level texts, descriptions, labels and storage settings."""
    def texts(path: tuple, value):
        if isinstance(value, str):
            if "${{" in value:
                yield path, value
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from texts(path + (i,), v)
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from texts(path + (k,), v)

    if not isinstance(data, dict):
        return
    for key in ("name", "project", "description"):
        yield from texts((key,), data.get(key))
    for section in ("parameters", "tasks"):
        table = data.get(section)
        for name, item in table.items() if isinstance(table, dict) else ():
            if isinstance(item, dict):
                yield from texts((section, name, "description"), item.get("description"))
    env = data.get("environment")
    if isinstance(env, dict):
        yield from texts(("environment", "labels"), env.get("labels"))
    store = data.get("storage")
    if storage and isinstance(store, dict):
        # git storage's `auth` is a reference kept as written and resolved where git runs
        yield from texts(("storage",), {k: v for k, v in store.items()
                                        if k != "type" and not (k == "auth" and store.get("type") == "git")})


def resolve_env(spec: FlowSpec, environ=None, storage: bool = True) -> FlowSpec:
    """The spec with the `${{ env.NAME }}` references of its name, project, descriptions,
    labels and (with `storage`) storage settings replaced by their values, as run, register,
    build and plan use it (unset_env has reported an unset variable before: here one raises
    refs.UnsetEnvError). The same spec when there is nothing to resolve."""
    import dataclasses

    environ = os.environ if environ is None else environ
    found = list(_resolved_at_compile(spec.document.data if spec.document is not None else None, storage))
    if not found:
        return spec
    lookup = refs.env_lookup(environ)

    def value(v):
        return refs.resolve(refs.compile_value(v), lookup)

    sections = {path[0] for path, _ in found}
    changes: dict = {}
    for key in ("name", "project", "description"):
        if key in sections:
            changes[key] = _env_str(value(getattr(spec, key)))
    if "parameters" in sections:
        changes["parameters"] = MappingProxyType({
            n: dataclasses.replace(p, description=_env_str(value(p.description))) if "${{" in p.description else p
            for n, p in spec.parameters.items()})
    if "tasks" in sections:
        changes["tasks"] = MappingProxyType({
            n: built(TaskSpec, **{**t.__dict__, "description": _env_str(value(t.description))})
            if "${{" in t.description else t for n, t in spec.tasks.items()})
    if "environment" in sections:
        changes["environment"] = dataclasses.replace(
            spec.environment, labels=tuple(_env_str(value(label)) for label in spec.environment.labels))
    if "storage" in sections:
        changes["storage"] = DriverSpec(spec.storage.type, MappingProxyType(value(dict(spec.storage.options))))
    return dataclasses.replace(spec, **changes)


class _Checker:
    """Semantic checks over schema-shaped data; skips parts whose shape is already wrong."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.data: dict = doc.data
        self.diags: list[Diagnostic] = []
        self.tasks = self._mapping("tasks")
        self.params = self._mapping("parameters")
        self.compiled: dict = {}  # task name → {"with": ..., "map": ...} compiled values
        # task name → (data upstreams, all upstreams), in first-mention order, known tasks only:
        # gathered while its references are checked, then read by the cycle check and the build
        self._upstream: dict = {}
        self._data: list | None = None  # the task being checked: the tasks its references name so far
        self.uses_env = False  # does any task argument hold an env reference (checked before each run)
        self._order: list[str] | None = None  # the execution order, once the cycle check made it
        self._suggested: dict = {}  # unknown name → its did-you-mean hint
        self.extras: dict = {}  # task name → its TaskSpec fields from `if`, `run_name`, `loop`, `cleanup`, hooks
        self.flow_extras: dict = {}  # FlowSpec fields from `outputs`, `timeout` and the flow hooks

    def _mapping(self, key: str) -> dict:
        value = self.data.get(key)
        return {k: v for k, v in value.items() if isinstance(v, dict)} if isinstance(value, dict) else {}

    def suggest(self, word: str, table) -> str | None:
        """did_you_mean, once per unknown name, and for the first MAX_SUGGESTED names only: each
        compares the name with every known one, so a spec of 10 000 tasks that misspelled
        every reference would cost a hundred million comparisons."""
        if word not in self._suggested:
            if len(self._suggested) >= MAX_SUGGESTED:
                return None
            self._suggested[word] = did_you_mean(word, table)
        return self._suggested[word]

    def error(self, path: tuple, message: str, hint: str | None = None, key: bool = False) -> None:
        self.diags.append(self.doc.diag(path, message, hint, key=key))

    def run(self) -> None:
        self.check_parameters()
        for name, task in self.tasks.items():
            self.check_task(name, task)
        self.check_flow_keys()
        self.check_cycles()
        self.check_platform()
        if "schedule" in self.data:  # its own module: cron and zones are read only for a spec that has one
            from flowspec import schedules

            schedules.check(self.data, self.error, self.params)

    # -- parameters ---------------------------------------------------------------------------
    def check_parameters(self) -> None:
        for name, p in self.params.items():
            declared = p.get("type") if isinstance(p.get("type"), str) else None
            enum = p.get("enum") if isinstance(p.get("enum"), list) else None
            for i, choice in enumerate(enum or []):
                if (why := type_error(choice, declared)):
                    self.error(("parameters", name, "enum", i), f"enum value: {why}")
            if "default" not in p or self.default_reads_env(name, p["default"]):
                continue  # a default read from the environment is checked once it is resolved, at run time
            if (why := type_error(p["default"], declared, tuple(enum) if enum else None)):
                self.error(("parameters", name, "default"), f"default of parameter '{name}': {why}",
                           "quote it if it is meant as a string"
                           if declared == "string" and not isinstance(p["default"], str) else None)

    def default_reads_env(self, name: str, default) -> bool:
        """Does a parameter's default hold `${{ env.NAME }}` or `${{ secrets.NAME }}` references?
        Only those are allowed there (parameters and task results do not exist yet when defaults
        are resolved); a secret is resolved where the run runs, and the parameter is secret."""
        if not isinstance(default, (str, list, dict)) or isinstance(default, str) and "${{" not in default:
            return False
        path = ("parameters", name, "default")
        try:
            compiled = refs.compile_value(default, DEFAULT_KINDS)
        except refs.ReferenceError_:
            compiled = self._compile_each(path, default, DEFAULT_KINDS)
        reads = False
        for sub, ref in refs.iter_refs(compiled):
            if ref.kind in ("env", "secrets"):
                reads = True
            else:
                self.diags.append(self.ref_diag(path + sub, ref.offset, f"{ref}: only env and secrets references"
                                                " are allowed in a parameter default", "give the value at run time"
                                                f" with --param {name}=VALUE, or write ${{{{ env.NAME }}}}"))
        return reads

    # -- tasks ----------------------------------------------------------------------------------
    def check_task(self, name: str, task: dict) -> None:
        base = ("tasks", name)
        compiled = {}
        self._data = data = []
        for section in ("with", "map"):
            values = task.get(section)
            if isinstance(values, dict):
                compiled[section] = {k: self.compile_value(base + (section, k), v) for k, v in values.items()}
        self.compiled[name] = compiled
        self._data = None
        if "run" not in task and "flow" not in task:
            self.error(base, f"task '{name}' needs `run` (a callable, module:function) or `flow` (a subflow)",
                       "write run: module:function, or flow: other/flow.yaml", key=True)
        if not _EXTRA_KEYS.isdisjoint(task):
            data += self.check_task_keys(name, task, compiled)
        if groups := _merge_groups((compiled.get("with"), compiled.get("map"),
                                    self.extras[name].get("condition") if name in self.extras else None)):
            self.extras.setdefault(name, {})["merge"] = groups
        mapped = compiled.get("map")
        if mapped:
            for key in compiled.get("with", {}).keys() & mapped.keys():
                self.error(base + ("map", key), f"argument '{key}' is given in both 'with' and 'map'", key=True)
            for key, value in mapped.items():
                self.check_map_value(base + ("map", key), value)
            self.check_map_lengths(base, mapped)
        after = task.get("after")
        if len(data) > 1:  # each upstream once (a set only when there can be a repeat)
            data = list(dict.fromkeys(data))
        extra = []
        if isinstance(after, list):
            seen = set(data)
            for i, other in enumerate(after):
                if other == name:  # reported here, and left out of the upstreams: no second error
                    self.error(base + ("after", i), f"task '{name}' cannot wait for itself")
                elif isinstance(other, str) and other not in self.tasks:
                    self.error(base + ("after", i), f"unknown task '{other}' in after",
                               self.suggest(other, self.tasks) or _known("tasks", self.tasks))
                elif isinstance(other, str) and other not in seen:
                    seen.add(other)
                    extra.append(other)
        self._upstream[name] = (data, data + extra) if extra else (data, data)
        for key in ("timeout", "retry_delay"):
            self.check_duration(base + (key,), task.get(key))
        if "${{" in (task.get("description") or "") and isinstance(task["description"], str):
            self.check_env_refs_only(base + ("description",), task["description"])

    def check_duration(self, path: tuple, value) -> None:
        """A `timeout` (more than zero) or `retry_delay` whose shape the schema has checked."""
        if value is None or not _is_duration(value):
            return
        key = path[-1]
        seconds = parse_duration(value)
        if not math.isfinite(seconds) or seconds > MAX_DURATION:
            self.error(path, f"{key} must be a finite duration of at most 30 days")
        elif key == "timeout" and seconds <= 0:
            self.error(path, "timeout must be greater than zero", "remove it for no time limit")

    # -- the task keys of the expression language ---------------------------------------------------
    def check_task_keys(self, name: str, task: dict, compiled: dict) -> list[str]:
        """`if`, `run_name`, `loop`, `cleanup` and the hooks of one task: their fields for the
        TaskSpec go to self.extras; returns the tasks the condition references (data upstreams)."""
        base = ("tasks", name)
        extra: dict = {}
        cond: list[str] = []
        if "if" in task:
            self._data = cond
            extra["condition"] = self.compile_condition(base + ("if",), task["if"], DATA_KINDS, "if")
            self._data = None
            extra["condition_upstream"] = tuple(dict.fromkeys(cond))
        if isinstance(task.get("run_name"), str):
            args = [k for section in ("with", "map") if isinstance(task.get(section), dict) for k in task[section]]
            extra["run_name"] = self.compile_run_name(base + ("run_name",), task["run_name"], args)
        loop = task.get("loop")
        if isinstance(loop, dict) and "until" in loop:
            until = self.compile_condition(base + ("loop", "until"), loop["until"], LOOP_KINDS, "loop.until")
            limit = loop.get("max", 1000)
            if until is not None and isinstance(limit, int) and not isinstance(limit, bool):
                extra["loop"] = LoopSpec(until, limit)
        if isinstance(task.get("cleanup"), str):
            extra["cleanup"] = task["cleanup"]
        for key in TASK_HOOKS:
            if key in task:
                extra[key] = self.compile_hook(base + (key,), task[key], ("params", "env", "kv", "secrets"))
        if "flow" in task or "labels" in task or "wait" in task:
            extra["subflow"] = self.compile_subflow(name, task)
        if "cache" in task or "target" in task or "persist" in task:
            self.compile_result_keys(name, task, extra)
        self.extras[name] = extra
        return cond

    # -- subflows and results -----------------------------------------------------------------------
    def compile_subflow(self, name: str, task: dict) -> SubflowSpec | None:
        """A task's `flow:` (with `labels` and `wait` for a registered flow); the schema checked the shapes."""
        base = ("tasks", name)
        flow = task.get("flow")
        if flow is None:
            for key in ("labels", "wait"):
                if key in task:
                    self.error(base + (key,), f"'{key}' applies only to a registered subflow (flow: {{name: ...}})",
                               "remove it, or make the task run a registered flow", key=True)
            return None
        if "run" in task:
            self.error(base + ("flow",), f"task '{name}' has both `run` and `flow`: a task calls a function or runs"
                       " a flow, not both", "keep one; to call a function after the subflow, add a task", key=True)
            return None
        for key in ("loop", "cleanup"):
            if key in task:
                self.error(base + (key,), f"'{key}' cannot be used on a subflow task (flow:)", key=True)
        if isinstance(flow, dict):
            if not isinstance(flow.get("name"), str):
                return None
            labels = task.get("labels")
            return SubflowSpec(name=flow["name"], project=flow.get("project", "default"), version=flow.get("version"),
                               labels=tuple(labels) if isinstance(labels, list) else None,
                               wait=task.get("wait", True) is not False)
        if not isinstance(flow, str):
            return None
        for key in ("labels", "wait"):
            if key in task:
                self.error(base + (key,), f"'{key}' applies only to a registered subflow (flow: {{name: ...}}); a"
                           " subflow from a spec file runs in this flow run's process", key=True)
        return self.compile_child_file(name, task, flow)

    def compile_child_file(self, name: str, task: dict, written: str) -> SubflowSpec | None:
        from flowspec.subflows import child_path, compile_child, cycle_to, shown

        path = ("tasks", name, "flow")
        if "${{" in written:
            self.error(path, "flow: a spec file's path is written out, without ${{ }} references",
                       "to choose a flow at run time, use a registered flow: flow: {name: ..., version: ...}")
            return None
        target = child_path(self.doc.file, written)
        if (cycle := cycle_to(target)):
            self.error(path, _CYCLE + " " + " -> ".join(shown(p) for p in cycle),
                       "a flow cannot run itself, directly or through its subflows")
            return None
        if not os.path.isfile(target):
            self.error(path, f"no spec file {written} (looked for {target})",
                       "give the child spec's path relative to this file")
            return None
        spec, diags = compile_child(target)
        if spec is None:
            errors = [d for d in diags if d.severity == "error"]
            cycle = next((d for d in errors if d.message.startswith(_CYCLE)), None)
            if cycle is not None:  # said here too, at the parent's own `flow:`, with the chain from here
                self.error(path, cycle.message, f"{cycle.file}:{cycle.line}:{cycle.column} closes it; a flow cannot"
                           " run itself, directly or through its subflows")
                return None
            self.error(path, f"the subflow {written} does not validate ({len(errors)} error{'s' * (len(errors) != 1)})",
                       f"first: {errors[0].file}:{errors[0].line}:{errors[0].column}: {errors[0].message}"
                       if errors else None)
            return None
        self.check_child_parameters(name, task, spec, written)
        return SubflowSpec(path=target, spec=spec, name=spec.name, project=spec.project)

    def check_child_parameters(self, name: str, task: dict, child: FlowSpec, written: str) -> None:
        """The `with` and `map` keys of a subflow task are the child's parameters: each must exist,
        and every required one must be given."""
        given = []
        for section in ("with", "map"):
            values = task.get(section)
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                given.append(key)
                if key not in child.parameters:
                    self.error(("tasks", name, section, key), f"the subflow {written} has no parameter '{key}'",
                               did_you_mean(key, child.parameters) or _known("parameters", child.parameters), key=True)
                    continue
                self.check_child_value(("tasks", name, section, key), value, child.parameters[key], section, written)
        missing = [p for p, spec in child.parameters.items() if spec.required and p not in given]
        if missing:
            self.error(("tasks", name, "flow"), f"the subflow {written} needs the parameter"
                       f"{'s' * (len(missing) > 1)} {', '.join(missing)}, which the task does not give",
                       f"give {'them' if len(missing) > 1 else 'it'} in 'with' (or 'map'): "
                       + ", ".join(f"{m}: ..." for m in missing))

    def check_child_value(self, path: tuple, value, param: ParameterSpec, section: str, written: str) -> None:
        """A constant given to a child's parameter (each element, for `map`) has its type; values
        with references are checked when the child run starts."""
        if section == "map":
            if not isinstance(value, list):
                return
            items = list(enumerate(value))
        else:
            items = [(None, value)]
        for i, item in items:
            if isinstance(item, (str, list, dict)) and "${{" in str(item):
                continue
            why = type_error(item, param.type, param.enum)
            if why:
                self.error(path if i is None else path + (i,), f"parameter '{param.name}' of the subflow {written}: {why}")

    def compile_result_keys(self, name: str, task: dict, extra: dict) -> None:
        """`cache`, `target` and `persist` of one task, into `extra` (TaskSpec fields)."""
        base = ("tasks", name)
        args = [k for section in ("with", "map") if isinstance(task.get(section), dict) for k in task[section]]
        if "flow" in task:
            for key in ("cache", "target"):
                if key in task:
                    self.error(base + (key,), f"'{key}' is not available on a subflow task (flow:)",
                               "cache or target the tasks inside the child flow", key=True)
        cache = task.get("cache")
        if cache is True or isinstance(cache, dict):
            spec = CacheSpec()
            if isinstance(cache, dict):
                key = None
                if isinstance(cache.get("key"), str):
                    key = self.compile_result_text(base + ("cache", "key"), cache["key"], args, "cache.key")
                expires = cache.get("expires")
                seconds = None
                if expires is not None and _is_duration(expires):
                    seconds = parse_duration(expires)
                    if not math.isfinite(seconds) or seconds <= 0:
                        self.error(base + ("cache", "expires"), "expires must be a finite duration above zero",
                                   "remove it for results that never expire")
                        seconds = None
                spec = CacheSpec(key, seconds)
            extra["cache"] = spec
        if isinstance(task.get("target"), str):
            extra["target"] = self.compile_result_text(base + ("target",), task["target"], args, "target")
        if isinstance(task.get("persist"), bool):
            extra["persist"] = task["persist"]
            if task["persist"] is False and (task.get("cache") not in (None, False) or "target" in task):
                self.error(base + ("persist",), "persist: false keeps no result, but cache and target need the"
                           " task's result in the store", "remove persist: false, or the cache / target", key=True)

    def compile_result_text(self, path: tuple, value: str, args: list, where: str):
        """A `cache.key` or `target`: text with params, args and env references."""
        from flowspec.results import target_error

        try:
            compiled = refs.parse_string(value, refs.ALL_KINDS)
        except refs.ReferenceError_ as exc:
            self.diags.append(self.ref_diag(path, exc.offset, str(exc), exc.hint))
            return None
        found = [((), compiled)] if isinstance(compiled, refs.Ref) else refs.iter_refs(compiled)
        for sub, ref in found:
            if ref.kind not in RESULT_KINDS:
                hint = ("pass the value through 'with' and write ${{ args.NAME }}" if ref.kind == "tasks"
                        else None)
                self.diags.append(self.ref_diag(path + sub, self._kind_offset(path, ref),
                                                f"{ref}: {where} may reference only params., args. or env.", hint))
            elif ref.kind == "args" and ref.name not in args:
                hint = self.suggest(ref.name, args) or (f"its arguments: {', '.join(args)}" if args else
                                                        "the task has no arguments; give them in 'with' or 'map'")
                self.diags.append(self.ref_diag(path + sub, ref.offset, f"unknown argument '{ref.name}' in {ref}:"
                                                f" {where} may name only this task's arguments (from 'with' and 'map')",
                                                hint))
            elif ref.kind != "args":
                self.check_ref(path + sub, ref)
        if where == "target":
            # the constant parts must make a path inside the store, whatever the references give
            sample = value if isinstance(compiled, str) else re.sub(r"\$\{\{.*?\}\}", "x", value)
            if (why := target_error(sample)):
                self.error(path, f"target {value!r}: {why}")
        return compiled

    def compile_condition(self, path: tuple, value, allowed: tuple, where: str):
        """An `if` or a `loop.until`: a boolean, or exactly one `${{ expression }}` (a Ref or an Expr)."""
        if isinstance(value, bool) or not isinstance(value, str):
            return value if isinstance(value, bool) else None  # not a string: the schema said so
        try:
            compiled = refs.parse_string(value, refs.ALL_KINDS)
        except refs.ReferenceError_ as exc:
            self.diags.append(self.ref_diag(path, exc.offset, str(exc), exc.hint))
            return None
        if isinstance(compiled, str):
            self.error(path, f"{where} must be a ${{{{ expression }}}}, got the plain text {compiled!r}",
                       f"write {where.split('.')[-1]}: ${{{{ {compiled.strip()} }}}}" if compiled.strip()
                       else "write a condition such as ${{ params.full }}")
            return None
        if isinstance(compiled, refs.Template):
            self.error(path, f"{where} must be exactly one ${{{{ expression }}}} with nothing around it",
                       "put the whole condition inside one ${{ }}: and, or, not and comparisons go inside")
            return None
        self.check_refs(path, compiled, allowed, where)
        return compiled

    def compile_run_name(self, path: tuple, value: str, args: list | None):
        try:
            compiled = _args_template(value) or refs.parse_string(value, refs.ALL_KINDS)
        except refs.ReferenceError_ as exc:
            self.diags.append(self.ref_diag(path, exc.offset, str(exc), exc.hint))
            return None
        self.check_refs(path, compiled, ("args",), "run_name", args)
        return compiled

    def compile_hook(self, path: tuple, value, allowed: tuple) -> HookSpec | None:
        """A hook: `module:function` or {run: module:function, with: {...}} (the schema checked the shape)."""
        if isinstance(value, str):
            return HookSpec(value)
        if not isinstance(value, dict) or not isinstance(value.get("run"), str):
            return None
        args = value.get("with")
        compiled = {}
        if isinstance(args, dict):
            for key, v in args.items():
                compiled[key] = self.compile_value(path + ("with", key), v, allowed, f"the 'with' of {path[-1]}")
        return HookSpec(value["run"], MappingProxyType(compiled))

    def check_refs(self, path: tuple, compiled, allowed: tuple, where: str, args: list | None = None) -> None:
        """Each reference in `compiled`: of a kind `allowed` at `where`, naming what exists."""
        found = [((), compiled)] if isinstance(compiled, refs.Ref) else refs.iter_refs(compiled)
        for sub, ref in found:
            kind = ref.kind
            if kind not in allowed:
                self.misplaced(path + sub, ref, allowed, where)
            elif kind == "args":
                self.check_arg(path + sub, ref, args)
            elif kind == "context":
                self.check_context(path + sub, ref)
            elif kind != "result":
                self.check_ref(path + sub, ref)

    def misplaced(self, path: tuple, ref: refs.Ref, allowed: tuple, where: str) -> None:
        from flowspec.expressions import _kinds_text

        if ref.kind in _ONLY_IN and (where != "run_name" or ref.kind != "args"):
            message, hint = _ONLY_IN[ref.kind]
            if ref.kind in ("args", "result", "context"):
                message = f"{ref} {message}"
                hint = hint if where != "run_name" else f"{where} may reference only ${{{{ args.NAME }}}}"
            else:
                message = f"{ref}: {message}"
        else:
            message = f"{ref}: {where} may reference only {_kinds_text(allowed)}"
            hint = {"run_name": "run_name names each task run from its own arguments: ${{ args.NAME }}, NAME"
                                " given in 'with' or 'map'",
                    "loop.until": "pass a task's result through 'with'; until reads ${{ result }},"
                                  " ${{ context.loop.index }}, params and env"}.get(where)
        self.diags.append(self.ref_diag(path, self._kind_offset(path, ref), message, hint))

    def _kind_offset(self, path: tuple, ref: refs.Ref) -> int:
        """Where `ref`'s kind is written in the string at `path` (a plain reference's offset is its `${{`)."""
        node = self.data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else node[key] if isinstance(node, list) \
                and isinstance(key, int) and key < len(node) else None
        at = node.find(ref.kind, ref.offset) if isinstance(node, str) else -1
        return at if at >= 0 else ref.offset

    def check_arg(self, path: tuple, ref: refs.Ref, args: list | None) -> None:
        if args is None or ref.name in args:
            return
        hint = self.suggest(ref.name, args) or (f"its arguments: {', '.join(args)}" if args else
                                                "the task has no arguments; give them in 'with' or 'map'")
        self.diags.append(self.ref_diag(path, ref.offset, f"unknown argument '{ref.name}' in {ref}: run_name may"
                                        " name only this task's arguments (from 'with' and 'map')", hint))

    def check_context(self, path: tuple, ref: refs.Ref) -> None:
        if ref.name == "loop" and ref.accessors and ref.accessors[0] in LOOP_CONTEXT:
            return
        at = ref.spots[0] if ref.name == "loop" and ref.spots else ref.offset
        self.diags.append(self.ref_diag(path, at, f"{ref}: the context here is context.loop.index or"
                                        " context.loop.previous", "context.loop.index counts the iterations from 0;"
                                        " context.loop.previous is the previous iteration's result (None first)"))

    # -- flow keys: outputs, timeout, hooks -----------------------------------------------------------
    def check_flow_keys(self) -> None:
        d = self.data
        outputs = d.get("outputs")
        if isinstance(outputs, dict):
            self.flow_extras["outputs"] = MappingProxyType({
                key: self.compile_value(("outputs", key), value, OUTPUT_KINDS, "outputs")
                for key, value in outputs.items()})
        if "timeout" in d:
            self.check_duration(("timeout",), d["timeout"])
        for key in FLOW_HOOKS:
            if key in d:
                self.flow_extras[key] = self.compile_hook((key,), d[key], DATA_KINDS)

    def compile_value(self, path: tuple, value, allowed: tuple = DATA_KINDS, where: str = "a task argument"):
        """Compile references in a `with`/`map` value (or an output, a hook's argument), reporting
        bad syntax, kinds not `allowed` here and unknown names."""
        try:
            compiled = refs.compile_value(value, refs.ALL_KINDS)
        except refs.ReferenceError_:
            compiled = self._compile_each(path, value, refs.ALL_KINDS)
        if isinstance(compiled, refs.Ref):  # the common case, without walking it
            if compiled.kind in allowed:
                self.check_ref(path, compiled)
            else:
                self.misplaced(path, compiled, allowed, where)
        elif isinstance(compiled, (refs.Template, refs.Expr, list, dict)):
            for sub, ref in refs.iter_refs(compiled):
                if ref.kind in allowed:
                    self.check_ref(path + sub, ref)
                else:
                    self.misplaced(path + sub, ref, allowed, where)
        return compiled

    def _compile_each(self, path: tuple, value, kinds: tuple = refs.KINDS):
        """Slow path, only on error: find each bad string so that each is reported."""
        if isinstance(value, list):
            return [self._compile_each(path + (i,), v, kinds) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self._compile_each(path + (k,), v, kinds) for k, v in value.items()}
        if isinstance(value, str):
            try:
                return refs.parse_string(value, kinds)
            except refs.ReferenceError_ as exc:
                self.diags.append(self.ref_diag(path, exc.offset, str(exc), exc.hint))
        return value

    def ref_diag(self, path: tuple, offset: int, message: str, hint: str | None = None) -> Diagnostic:
        d = self.doc.diag(path, message, hint)
        return Diagnostic(d.file, d.line, self.doc.column_of(path, offset), d.path, d.message, d.hint)

    def check_ref(self, path: tuple, ref: refs.Ref) -> None:
        kind = ref.kind
        if ref.accessors:
            self.check_accessors(path, ref)
        if kind == "tasks":
            table = self.tasks
            if ref.name in table:
                if self._data is not None:
                    self._data.append(ref.name)
                return
        elif kind == "params":
            table = self.params
            if ref.name in table:
                return
        else:
            self.uses_env = True
            return
        noun = "parameter" if ref.kind == "params" else "task"
        hint = self.suggest(ref.name, table) or _known("parameters" if ref.kind == "params" else "tasks", table)
        self.diags.append(self.ref_diag(path, ref.offset, f"unknown {noun} '{ref.name}' in {ref}", hint))

    def check_accessors(self, path: tuple, ref: refs.Ref) -> None:
        """An accessor that cannot apply to what is known of the value now (see accessor_problem)."""
        from flowspec.expressions import accessor_problem

        if (problem := accessor_problem(ref, self._param_type(ref))):
            self.diags.append(self.ref_diag(path, problem[1], problem[0], problem[2]))

    def check_map_value(self, path: tuple, value) -> None:
        if isinstance(value, list) or isinstance(value, refs.Expr) or getattr(value, "accessors", None):
            return  # an expression, or a part of a value: its shape is known at run time
        if isinstance(value, refs.Ref):
            if ref_type := self._param_type(value):
                if ref_type != "array":
                    self.error(path, f"cannot map over {value}: parameter '{value.name}' is of type {ref_type}",
                               "map takes a list: declare the parameter 'type: array'")
                return
            if value.kind == "env":
                self.error(path, f"cannot map over {value}: environment variables are strings, not lists")
            return
        self.error(path, f"a map value must be a list or a reference to one, got {_shape(value)}",
                   "write a YAML list, or ${{ params.NAME }} / ${{ tasks.NAME }}")

    def check_map_lengths(self, base: tuple, mapped: dict) -> None:
        """Lists written in `map` are zipped: each must have as many items as the first one."""
        lists = [(key, len(value)) for key, value in mapped.items() if isinstance(value, list)]
        for key, n in lists[1:]:
            first, m = lists[0]
            if n != m:
                self.error(base + ("map", key), f"map argument '{key}' has {n} item{'s' * (n != 1)} but '{first}'"
                           f" has {m}; mapped arguments are zipped and must have the same length",
                           "give every list in 'map' the same number of items")

    def _param_type(self, ref: refs.Ref) -> str | None:
        if ref.kind != "params" or ref.name not in self.params:
            return None
        declared = self.params[ref.name].get("type")
        return declared if isinstance(declared, str) else None

    def upstream(self, name: str) -> tuple[list[str], list[str]]:
        """(data upstreams, all upstreams) of a task, in first-mention order, known tasks only
        (see check_task, which gathers them)."""
        return self._upstream[name]

    def check_cycles(self) -> None:
        """Name one cycle per group of tasks that depend on each other, and every task that
        references its own result. Iterative and linear: a 10 000-task cycle is named too."""
        graph = {name: ups for name, (_, ups) in self._upstream.items()}
        for name, ups in graph.items():
            if name in ups:  # only a data reference can be one: `after: [itself]` is left out above
                self.error(("tasks", name), f"task '{name}' references its own result", key=True)
        self._order = self.order()
        if self.acyclic:  # every task ordered: there is no cycle to name
            return
        position = {name: i for i, name in enumerate(graph)}
        for component in _strongly_connected(graph):
            if len(component) > 1:
                cycle = _cycle_through(min(component, key=position.__getitem__), set(component), graph)
                self.error(("tasks", cycle[0]), f"dependency cycle: {' -> '.join(cycle)}",
                           "a task cannot depend on its own results; remove one of these references", key=True)

    # -- executor, storage, environment ---------------------------------------------------------
    def check_platform(self) -> None:
        for key in ("name", "project", "description"):  # resolved from the environment when compiled for a command
            if isinstance(self.data.get(key), str) and "${{" in self.data[key]:
                self.check_env_refs_only((key,), self.data[key])
        for name, p in self.params.items():
            if isinstance(p.get("description"), str) and "${{" in p["description"]:
                self.check_env_refs_only(("parameters", name, "description"), p["description"])
        for section in ("executor", "storage", "environment", "results"):
            value = self.data.get(section)
            if section == "storage" and isinstance(value, dict) and value.get("type") == "git":
                value = {k: v for k, v in value.items() if k != "auth"}  # its own grammar: the schema's pattern
            if isinstance(value, dict):
                self.check_env_refs_only((section,), value)
                self.check_secrets((section,), value)
        if isinstance(self.data.get("results"), dict):
            self.check_results(self.data["results"])
        env = self.data.get("environment")
        storage = self.data.get("storage")
        if isinstance(env, dict) and env.get("type") in NEEDS_DOCKER_STORAGE:
            storage_type = storage.get("type", "local") if isinstance(storage, dict) else "local"
            if storage_type != "docker":
                self.error(("environment", "type"),
                           f"environment '{env['type']}' runs the flow from an image and needs docker storage,"
                           f" but storage is '{storage_type}'",
                           "add 'storage: {type: docker, image_name: ...}'")
        if isinstance(storage, dict) and storage.get("type") == "docker" and "base_image" in storage \
                and "dockerfile" in storage:
            self.error(("storage", "dockerfile"), "give either base_image or dockerfile, not both",
                       "a dockerfile names its own base image in its FROM line; drop base_image", key=True)
        if isinstance(storage, dict) and storage.get("type") == "docker" and storage.get("build") is False:
            missing = [k for k in ("image_name", "image_tag") if not storage.get(k)]
            if missing:
                self.error(("storage", "build"), f"without a build, storage needs {' and '.join(missing)}"
                           " to name the image to use", "add them, or build the image (build: true)")
        executor = self.data.get("executor")
        if isinstance(executor, dict) and executor.get("type") == "dask" and not executor.get("address"):
            from flowspec.callables import worker_twin_problem

            problem = worker_twin_problem(os.path.dirname(os.path.abspath(self.doc.file)))
            if problem:
                self.error(("executor", "type"), *problem)
        if isinstance(env, dict) and env.get("type") == "docker":
            from flowspec.environments.docker_options import option_problems

            for path, message, hint in option_problems(env):
                self.error(("environment",) + path, message, hint)
        text = self.doc.text
        # Skip the walk when no value can hold an access key id or a URL with a password.
        if not text or "AKIA" in text or "ASIA" in text or "@" in text or "\\" in text:
            self.check_aws_key_ids((), self.data)

    def check_results(self, results: dict) -> None:
        """What a written-out `results` value can be checked for now (values that read the
        environment are checked where the run starts)."""
        from flowspec.storage.s3 import _BUCKET

        def literal(key: str):
            value = results.get(key)
            return value if isinstance(value, str) and "${{" not in value else None

        if results.get("type") == "s3":
            if (bucket := literal("bucket")) and not _BUCKET.match(bucket):
                self.error(("results", "bucket"), f"'{bucket}' is not an S3 bucket name", "3 to 63 lowercase"
                           " letters, digits, '.' and '-', starting and ending with a letter or digit")
            url = literal("endpoint_url")
            if url and not url.startswith(("http://", "https://")):
                self.error(("results", "endpoint_url"), "endpoint_url must be an http:// or https:// URL",
                           "for example http://127.0.0.1:9000 for a local S3-compatible service")
            if (prefix := literal("prefix")) and (prefix.startswith("/") or ".." in prefix.split("/")):
                self.error(("results", "prefix"), f"'{prefix}' is not a key prefix",
                           "write it without a leading '/' and without '..', e.g. team-a/results/")
        elif (directory := literal("directory")) is not None and not directory.strip():
            self.error(("results", "directory"), "directory is blank", "name a folder, or remove the key")

    def check_manifests(self, files: dict | None = None) -> list[Diagnostic]:
        """Kubernetes environments: read their manifest templates (kept in the spec, so they travel
        with the stored flow) and check the manifests a run would send."""
        env = self.data.get("environment")
        if not isinstance(env, dict) or env.get("type") not in ("kubernetes-job", "dask-kubernetes"):
            return []
        from flowspec.k8s.jobs import check_environment

        diags, self.attached = check_environment(self.doc, os.path.dirname(os.path.abspath(self.doc.file)), files)
        return diags

    def check_env_refs_only(self, path: tuple, value) -> None:
        try:
            compiled = refs.compile_value(value, TASK_KINDS)
        except refs.ReferenceError_:
            compiled = self._compile_each(path, value)
        for sub, ref in refs.iter_refs(compiled):
            if ref.kind == "secrets" and path == ("environment",) and sub[:1] == ("env",):
                continue  # a flow's variable may carry a secret (resolved where the flow runs)
            if ref.kind != "env":
                where = path[0] if len(path) == 1 or path[0] not in ("tasks", "parameters") else ".".join(
                    str(p) for p in path)
                self.diags.append(self.ref_diag(path + sub, ref.offset,
                                                f"{ref}: only env references are allowed in '{where}'"))

    def check_secrets(self, path: tuple, value) -> None:
        if isinstance(value, dict):
            is_env = path[-1] in ("env", "env_vars", "environment") and len(path) >= 2
            if path == ("environment", "secrets"):
                return  # references to the platform's secrets (secret-name/key), not values
            for k, v in value.items():
                secret = _SECRET_VAR.search(k) if is_env else _SECRET_KEY.search(k)
                if secret and isinstance(v, str) and v and not _is_reference(v):
                    self.error(path + (k,), f"'{k}' looks like a credential written as a literal value",
                               f"credentials never go in a spec: write ${{{{ env.{k.upper() if is_env else 'NAME'} }}}} "
                               "and set it in the environment, or rely on the platform's credential chain")
                else:
                    self.check_secrets(path + (k,), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                # `[{name: AWS_SECRET_ACCESS_KEY, value: ...}]`: ECS and Kubernetes name/value pairs
                pair = isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("value"), str)
                if pair and _SECRET_VAR.search(v["name"]) and v["value"] \
                        and not _is_reference(v["value"]):
                    self.error(path + (i, "value"), f"'{v['name']}' looks like a credential written as a literal value",
                               f"credentials never go in a spec: write ${{{{ env.{v['name'].upper()} }}}} and set it"
                               " in the environment, or use the platform's secrets (ECS `secrets`, valueFrom)")
                else:
                    self.check_secrets(path + (i,), v)

    def check_aws_key_ids(self, path: tuple, value) -> None:
        if isinstance(value, str) and _AWS_KEY_ID.search(value):
            self.error(path, "this looks like an AWS access key id written into the spec",
                       "credentials come from the AWS credential chain or ${{ env.NAME }}")
        elif isinstance(value, str) and _URL_PASSWORD.search(value):
            self.error(path, "this URL carries a password written into the spec",
                       "credentials never go in a spec: write the password as ${{ env.NAME }}"
                       " (scheme://user:${{ env.NAME }}@host) or use the service's own credential files")
        elif isinstance(value, dict):
            for k, v in value.items():
                self.check_aws_key_ids(path + (k,), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.check_aws_key_ids(path + (i,), v)

    # -- build ----------------------------------------------------------------------------------
    def build(self) -> FlowSpec:
        import hashlib  # deferred: only needed once a spec is valid

        d = self.data
        params = {name: ParameterSpec(name=name, type=p.get("type"), default=p.get("default"),
                                      required="default" not in p, description=p.get("description", ""),
                                      enum=tuple(p["enum"]) if "enum" in p else None,
                                      secret=p.get("secret") is True or reads_secrets(p.get("default")))
                  for name, p in self.params.items()}
        tasks = {name: self.build_task(name) for name in self._order or self.order()}
        env = d.get("environment", {})
        env_own = {k: v for k, v in env.items() if k not in ("type", "labels", "env", "on_start", "on_exit")}
        if getattr(self, "attached", None):  # manifest templates a Kubernetes environment read
            env_own["_files"] = MappingProxyType(self.attached)
        environment = EnvironmentSpec(
            type=env.get("type", "local"), labels=tuple(env.get("labels", ())),
            env=MappingProxyType(refs.compile_value({k: _env_str(v) for k, v in env.get("env", {}).items()},
                                                    TASK_KINDS)),
            on_start=env.get("on_start"), on_exit=env.get("on_exit"), options=MappingProxyType(env_own))
        path = os.path.abspath(self.doc.file)
        return FlowSpec(
            name=d["name"], path=path, base_dir=os.path.dirname(path),
            checksum=hashlib.sha256(self.doc.text.encode()).hexdigest(), version=d["version"],
            description=d.get("description", ""), project=d.get("project", "default"),
            parameters=MappingProxyType(params), tasks=MappingProxyType(tasks),
            executor=_driver(d.get("executor")), storage=_driver(d.get("storage")),
            environment=environment, source=self.doc.text, document=self.doc, uses_env=self.uses_env,
            timeout=None if d.get("timeout") is None else parse_duration(d["timeout"]),
            results=_driver(d["results"]) if isinstance(d.get("results"), dict) else None, **self.flow_extras,
            schedule=_schedule(d), catchup=d.get("catchup") is True)

    def build_task(self, name: str) -> TaskSpec:
        t = self.tasks[name]
        compiled = self.compiled[name]
        data_up, all_up = self._upstream[name]
        map_args = compiled.get("map", EMPTY_ARGS)
        per_child = tuple(v.name for v in map_args.values()
                          if isinstance(v, refs.Ref) and v.kind == "tasks" and not v.accessors
                          and "map" in self.tasks[v.name]
                          ) if map_args else ()
        delay = t.get("retry_delay")
        timeout = t.get("timeout")
        return built(
            TaskSpec, name=name, run=t.get("run", ""), with_args=MappingProxyType(compiled.get("with", EMPTY_ARGS)),
            map_args=MappingProxyType(map_args), after=tuple(t.get("after", ())),
            retries=t.get("retries", 0), retry_delay=0.0 if delay is None else parse_duration(delay),
            timeout=None if timeout is None else parse_duration(timeout),
            trigger=t.get("trigger", "all_successful"), description=t.get("description", ""),
            upstream=tuple(all_up), data_upstream=tuple(data_up), per_child=per_child,
            **(_NO_EXTRAS if name not in self.extras else {**_NO_EXTRAS, **self.extras[name]}))

    def order(self) -> list[str]:
        """Topological order in rounds: each round takes, in declaration order, every task whose
        upstreams all ran in earlier rounds (a task's round is its longest path from a root).
        Kahn's algorithm with a counter per task, then one bucket per round: linear. Sets
        `acyclic`: whether every task was reached (tasks on a cycle never are)."""
        downstream: dict[str, list[str]] = {name: [] for name in self.tasks}
        waiting = {}
        for name, (_, ups) in self._upstream.items():
            waiting[name] = len(ups)
            for up in ups:
                downstream[up].append(name)
        depth = dict.fromkeys(self.tasks, 0)
        ready = [name for name, n in waiting.items() if n == 0]
        reached = len(ready)
        while ready:
            name = ready.pop()
            for down in downstream[name]:
                depth[down] = max(depth[down], depth[name] + 1)
                waiting[down] -= 1
                if waiting[down] == 0:
                    ready.append(down)
                    reached += 1
        self.acyclic = reached == len(self.tasks)
        rounds: list[list[str]] = [[] for _ in range(max(depth.values(), default=0) + 1)]
        for name in self.tasks:  # declaration order within each round
            rounds[depth[name]].append(name)
        return [name for names in rounds for name in names]


_ARG = re.compile(r"\$\{\{\s*args\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}")


def _args_template(text: str):
    """`text` compiled as parse_string would, without the expression parser, when each of its
    references is a plain `${{ args.NAME }}` (the common run_name); None otherwise."""
    parts: list = []
    pos = 0
    for m in _ARG.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append(refs.Ref("args", m.group(1), None, m.start()))
        pos = m.end()
    if not parts or "${{" in text[pos:] or any(isinstance(p, str) and "${{" in p for p in parts):
        return None
    if pos < len(text):
        parts.append(text[pos:])
    return parts[0] if len(parts) == 1 else refs.Template(tuple(parts))


def _merge_groups(values) -> tuple:
    """The groups of task names that `||` joins in these compiled values (Prefect's merge):
    `${{ tasks.small || tasks.big }}` gives (("small", "big"),). Only expressions are walked."""
    from flowspec.expressions import Coalesce, RefNode

    groups: list = []

    def node(n) -> None:
        if isinstance(n, Coalesce):
            names = [op.ref.name for op in n.operands if isinstance(op, RefNode) and op.ref.kind == "tasks"]
            if len(set(names)) > 1:
                groups.append(tuple(dict.fromkeys(names)))
        if isinstance(n, RefNode):
            return
        for child in (*getattr(n, "operands", ()), getattr(n, "operand", None), getattr(n, "left", None),
                      getattr(n, "right", None)):
            if child is not None:
                node(child)

    def value(v) -> None:
        if isinstance(v, refs.Expr):
            node(v.root)
        elif isinstance(v, refs.Template):
            for part in v.parts:
                value(part)
        elif isinstance(v, (list, tuple)):
            for item in v:
                value(item)
        elif isinstance(v, dict):
            for item in v.values():
                value(item)

    value(values)
    return tuple(dict.fromkeys(groups))


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, with an explicit stack (no recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, edges = work[-1]
            for up in edges:
                if up not in index:
                    index[up] = low[up] = len(index)
                    stack.append(up)
                    on_stack.add(up)
                    work.append((up, iter(graph[up])))
                    break
                if up in on_stack:
                    low[node] = min(low[node], index[up])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    out.append(component)
    return out


def _cycle_through(start: str, members: set[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest cycle from `start` back to it inside one strongly connected component (its
    `members`): breadth-first over the component's edges, linear in its size."""
    parent: dict[str, str] = {}
    queue, head = [start], 0
    while head < len(queue):
        node = queue[head]
        head += 1
        for up in graph[node]:
            if up == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if up in members and up not in parent:
                parent[up] = node
                queue.append(up)
    raise AssertionError("a strongly connected component without a cycle")  # cannot happen for size > 1


def _is_reference(text: str) -> bool:
    """Whether `text` is one reference or expression (a malformed one counts: it is reported as such)."""
    try:
        return isinstance(refs.parse_string(text), (refs.Ref, refs.Expr))
    except refs.ReferenceError_:
        return True


def _driver(value) -> DriverSpec:
    value = value or {}
    return DriverSpec(value.get("type", "local"),
                      MappingProxyType({k: v for k, v in value.items() if k != "type"}))


def _env_str(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_duration(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or (
        isinstance(value, str) and bool(_DURATION.match(value)))


def _shape(value) -> str:
    if isinstance(value, refs.Template):
        return "a string with references inside"
    return {dict: "a mapping", str: "a string", bool: "a boolean", type(None): "nothing", int: "an integer",
            float: "a number"}.get(type(value), f"a {type(value).__name__}")


def _known(noun: str, table) -> str:
    if len(table) > MAX_LISTED:  # a hint, not a listing of a 10 000-task flow under every error
        return f"the flow declares {len(table)} {noun}; see them with: flowspec plan FILE"
    return f"known {noun}: {', '.join(table)}" if table else f"the flow declares no {noun}"
