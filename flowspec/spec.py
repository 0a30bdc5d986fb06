"""The compiled flow: frozen dataclasses that drivers and the runner read (never YAML)."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

EMPTY = MappingProxyType({})


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: str | None = None  # None: any type
    default: object = None
    required: bool = True
    description: str = ""
    enum: tuple | None = None
    secret: bool = False  # its value reads MASK wherever it would be shown or stored


def built(cls, **fields):
    """An instance of the frozen dataclass `cls` from a value for each of its fields, made
    without its __init__, which sets each field through object.__setattr__: for a task that
    is a third of what building it costs, in a flow of 10 000 tasks."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


@dataclass(frozen=True)
class HookSpec:
    """A state hook (`on_success`, `on_failure`, `on_retry` of a task; `on_success`, `on_failure`
    of the flow): `run` is the callable as written (`module:function` or `file.py:function`),
    `with_args` its keyword arguments as compiled values (constants, Ref, Template, Expr: task
    hooks may reference params and env, flow hooks params, env and tasks). The runtime calls
    `fn(info, **resolved with_args)`, `info` being the JSON-serializable dict of SPEC "Hooks"."""

    run: str
    with_args: MappingProxyType = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class LoopSpec:
    """A task's `loop`: the callable runs again while `until` is false. `until` is a bool, or a
    Ref/Expr whose references are `result` (this iteration's result), `context.loop.index`,
    `context.loop.previous`, `params.NAME` or `env.NAME`; `max` bounds the iterations (passing
    it fails the task)."""

    until: object
    max: int = 1000


@dataclass(frozen=True)
class SubflowSpec:
    """A task's `flow:`: the child flow it runs as a child flow run.

    From a spec file (`flow: FILE`): `path` is the child spec's absolute path and `spec` its
    compiled FlowSpec (parameters checked against the parent's `with`/`map` keys at compile time);
    the runtime runs it in the parent's process as its own flow run. A registered flow (`flow:
    {name, project, version}`): `name`, `project`, `version` (None: the latest), `labels` (None:
    the flow's own) and `wait` (False: the task's result is the child run's id, at once); its
    parameters are checked when the run starts. The task's `with` and `map` are the child's
    parameters; its result is the child run's `outputs`."""

    path: str | None = None
    spec: object = field(default=None, repr=False, compare=False)  # the child FlowSpec, for a spec file
    name: str | None = None
    project: str = "default"
    version: int | None = None
    labels: tuple | None = None
    wait: bool = True

    @property
    def registered(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class CacheSpec:
    """A task's `cache:`. `key`: None for the default key (flowspec.cache_key.default_key: the
    callable's code, what it imports from the spec's folder, its resolved arguments), else a str
    or a compiled Template/Ref/Expr whose references are params, args (the task run's resolved
    arguments) and env; evaluated per task run (per mapped child) and used as the key in the
    result store (`flows/<flow>/<task>/<key>.pkl`). `expires`: seconds a stored result is used
    (None: no limit)."""

    key: object = None
    expires: float | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One task. `with_args`/`map_args` hold compiled values (constants, Ref, Template)."""

    name: str
    run: str
    with_args: MappingProxyType = field(default_factory=lambda: EMPTY)
    map_args: MappingProxyType = field(default_factory=lambda: EMPTY)
    after: tuple = ()
    retries: int = 0
    retry_delay: float = 0.0
    timeout: float | None = None
    trigger: str = "all_successful"
    description: str = ""
    upstream: tuple = ()  # every task this one waits for: data references and `after`
    data_upstream: tuple = ()  # tasks whose results it takes
    per_child: tuple = ()  # mapped upstreams that it maps over child to child
    # The keys below were added with the expression language; simple defaults (class
    # attributes), so that a TaskSpec made by `built` without them reads as "not set".
    condition: object = None  # `if`: None (no condition), a bool, or a Ref/Expr over params, tasks, env
    condition_upstream: tuple = ()  # tasks the condition references (in upstream and data_upstream too)
    run_name: object = None  # None, a str, or a Ref/Template/Expr whose references are all `args.NAME`
    loop: LoopSpec | None = None
    cleanup: str | None = None  # a callable (as `run`) called once with this task's result
    on_success: HookSpec | None = None
    on_failure: HookSpec | None = None
    on_retry: HookSpec | None = None
    # Groups of upstream task names joined by `||` in one expression (Prefect's merge), e.g.
    # (("small", "big"),): each group counts as satisfied when at least one of them succeeded.
    merge: tuple = ()
    # Issue 18: subflows and the result store (see SubflowSpec, CacheSpec). `run` is "" for a subflow.
    subflow: SubflowSpec | None = None
    cache: CacheSpec | None = None
    # `target`: None, a str, or a compiled Template/Ref whose references are params, args and env:
    # the path (relative, inside the store's `targets/`) evaluated per task run.
    target: object = None
    persist: bool | None = None  # None: the default (true when the flow has `results`)

    @property
    def mapped(self) -> bool:
        return bool(self.map_args)


@dataclass(frozen=True)
class DriverSpec:
    """An executor or storage choice: its `type` and its own keys."""

    type: str
    options: MappingProxyType = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class EnvironmentSpec:
    type: str = "local"
    labels: tuple = ()
    env: MappingProxyType = field(default_factory=lambda: EMPTY)  # values may hold env references, resolved when the run starts
    on_start: str | None = None
    on_exit: str | None = None
    options: MappingProxyType = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class FlowSpec:
    """A validated flow. `tasks` is in execution (topological) order."""

    name: str
    path: str  # absolute path of the spec file
    base_dir: str  # its folder: first on the import path, base of relative paths
    checksum: str  # sha256 of the spec text
    version: int = 1
    description: str = ""
    project: str = "default"
    parameters: MappingProxyType = field(default_factory=lambda: EMPTY)
    tasks: MappingProxyType = field(default_factory=lambda: EMPTY)
    executor: DriverSpec = DriverSpec("local")
    storage: DriverSpec = DriverSpec("local")
    environment: EnvironmentSpec = EnvironmentSpec()
    source: str = field(default="", repr=False, compare=False)  # the spec text, for storage
    document: object = field(default=None, repr=False, compare=False)  # loader.Document, for positions
    uses_env: bool = True  # may a task argument hold an env reference (False: none to check before a run)
    outputs: MappingProxyType = field(default_factory=lambda: EMPTY)  # name → compiled value (params, tasks, env)
    timeout: float | None = None  # seconds for the whole flow run; None: no limit
    on_success: HookSpec | None = None  # flow hooks, called once when the run ends in that state
    on_failure: HookSpec | None = None
    # `results`: the result store, DriverSpec("local", {directory}) or DriverSpec("s3", {bucket,
    # prefix, endpoint_url, region, profile}); values may hold env references, resolved where the
    # run starts. None: not given (the default local store under the flowspec home is used by
    # `cache` and `target`, and nothing is kept otherwise).
    results: DriverSpec | None = None
    schedule: tuple = ()  # flowspec.schedules.Clock, each; `flowspec register` records them
    catchup: bool = False  # missed times: skipped (False) or each run once (True)
