"""Task results in the result store during a run: `persist`, `cache` and `target`.

The runner wraps the callable of a task that uses the store in a `Kept`; `run_unit` hands a
Kept to `run_kept`, which runs where the task run runs (this process for `local` and
`local-dask`, the worker for `dask`), so that a value is pickled once, where it is:
- `target`: its path (a template over params, args and env) exists → the task run is Cached from
  it, not called; otherwise its value is written there;
- `cache`: its key (the default digest of code and arguments, or the template) has a stored,
  unexpired value → Cached from it; otherwise its value is stored under that key;
- `persist`: its value is kept with the run (`results.kept_path`: in the run's packs, see
  flowspec/results.py), which a restart of the run reads (a Cached task run is not copied there:
  its cache key or target finds it again).
A stored value whose digest does not match fails the task run with a message naming both
digests (it is not silently run again: a damaged store is something to look at). A value that
cannot be pickled is logged as an error naming the task and type; the task keeps its state.
"""
from __future__ import annotations

import os
import time
import uuid

from flowspec import references as refs

CACHED = "Cached"
# The store of this process for each run, by token: write-behind (local) and flushed by the
# runner at the end of its run. A process without one (a dask worker, a child process) makes a
# store that writes at once.
_STORES: dict = {}


class KeepPlan:
    """What a task does with the store: picklable (it travels to dask workers)."""

    __slots__ = ("token", "settings", "home", "flow", "task", "base_dir", "params", "run_id",
                 "persist", "cache", "target", "code", "_folder")
    _SENT = ("token", "settings", "home", "flow", "task", "base_dir", "params", "run_id", "persist", "cache",
             "target", "code")

    def __init__(self, token: str, settings: dict | None, home: str, flow: str, task, base_dir: str,
                 params: dict, run_id: str, persist: bool) -> None:
        self.token, self.settings, self.home, self.flow = token, settings, home, flow
        self.task, self.base_dir, self.params, self.run_id = task.name, base_dir, params, run_id
        self.persist, self.cache, self.target = persist, task.cache, task.target
        # The digest of the callable's code (default cache key), computed where the run starts and
        # sent along: a worker that got the function by value cannot read its module's files.
        self.code = None
        self._folder = None

    def __getstate__(self):
        return {k: getattr(self, k) for k in self._SENT}

    def __setstate__(self, state) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._folder = None

    def folder(self) -> str:
        """`flows/<flow>/<task>/` of this task in the store (its cache keys)."""
        from flowspec.results import keyed_path

        return keyed_path(self.flow, self.task, "x")[:-len("x.pkl")]

    def kept_folder(self) -> str:
        """`runs/<run id>/<flow>/<task>/`: where this task's kept results are."""
        if self._folder is None:
            from flowspec.results import kept_path

            self._folder = kept_path(self.run_id, self.flow, self.task, 0)[:-len("0.pkl")]
        return self._folder

    def store(self):
        store = _STORES.get(self.token)
        if store is None:
            from flowspec.results import ResultStore

            store = _STORES[self.token] = ResultStore.from_spec(self.settings, self.home)
        return store

    def render(self, value, kwargs: dict) -> str:
        if isinstance(value, str):
            return value

        def lookup(ref: refs.Ref):
            if ref.kind == "params":
                return self.params[ref.name]
            if ref.kind == "args":
                return kwargs[ref.name]
            if ref.name in os.environ:
                return os.environ[ref.name]
            if ref.fallback is not None:
                return ref.fallback
            raise refs.UnsetEnvError(f"environment variable {ref.name} is not set (referenced as {ref})")

        return str(refs.resolve(value, lookup))

    def cache_key(self, fn, kwargs: dict) -> str:
        if self.cache.key is not None:
            return self.render(self.cache.key, kwargs)
        from flowspec.cache_key import code_digest, default_key

        fn = plain_callable(fn)
        if self.code is None:  # the code does not change during a run
            self.code = code_digest(fn, self.base_dir)
        return default_key(fn, kwargs, self.base_dir, self.code)


class Kept:
    """A task's callable with its KeepPlan."""

    __slots__ = ("fn", "plan")

    def __init__(self, fn, plan: KeepPlan) -> None:
        self.fn, self.plan = fn, plan

    def __call__(self, **kwargs):  # called as the task itself (an executor that ships `fn` alone)
        return self.fn(**kwargs)


def plain_callable(fn):
    """The user's function inside the runner's wrappers (a loop, a child-process proxy)."""
    for _ in range(4):
        inner = getattr(fn, "fn", None)
        if inner is None or not callable(inner):
            return fn
        fn = inner
    return fn


def new_token() -> str:
    return uuid.uuid4().hex


def run_key(run_id: str, index: int | None):
    """The key of a run's kept result of one task run (kept under the run's own folder)."""
    from flowspec.results import RunKey

    return RunKey(run_id, index)


def run_kept(kept: Kept, kwargs: dict, ctx, retries: int, retry_delay: float, timeout: float | None,
             notify=None, first_attempt: int = 1):
    results, runner = _modules()
    plan, start = kept.plan, time.time()
    try:
        store = plan.store()
        where, rel = lookup_places(plan, kept.fn, kwargs, ctx.map_index)
        for rel_path, max_age in where:
            try:
                value = store.load(rel_path, max_age)
            except results.NotFound:
                continue
            location = store.location(rel_path)
            # A mapped child's line is a debug one: the runner says once how many were Cached, and from where
            ctx.logger.log(20 if ctx.map_index is None else 10, "%s: result loaded from %s, not called", CACHED,
                           location)
            return runner.Outcome(CACHED, value, 0, start, time.time(), f"cached from {location}")
    except (results.ResultError, refs.ResolveError) as exc:
        text = str(exc)
        ctx.logger.error("%s: %s", runner.FAILED, text)
        return runner.Outcome(runner.FAILED, None, 0, start, time.time(), text)
    outcome = runner.run_unit(kept.fn, kwargs, ctx, retries, retry_delay, timeout, notify, first_attempt)
    if outcome.state == runner.SUCCESS and rel:
        keep(store, rel, outcome.result, ctx)
    return outcome


_MODULES: list = []


def _modules():
    """flowspec.results and flowspec.runner, imported once (not per task run: an import statement
    in a function costs a lookup each call)."""
    if not _MODULES:
        from flowspec import results, runner

        _MODULES[:] = [results, runner]
    return _MODULES


def lookup_places(plan: KeepPlan, fn, kwargs: dict, index: int | None) -> tuple[list, list]:
    """(where a stored value would make the run Cached: (path, max age) pairs; where its value
    goes when it runs)."""
    if plan.target is None and plan.cache is None:  # persist alone: the common case, kept short
        return [], [f"{plan.kept_folder()}{'-' if index is None else index}.pkl"] if plan.persist else []
    from flowspec.results import keyed_path

    where, rel = [], []
    if plan.target is not None:
        path = plan.render(plan.target, kwargs)
        where.append((plan.store()._target(path), None))
        rel.append(where[-1][0])
    if plan.cache is not None:
        path = keyed_path(plan.flow, plan.task, plan.cache_key(fn, kwargs))
        where.append((path, plan.cache.expires))
        rel.append(path)
    if plan.persist:  # flow, task and run id are plain segments: no need to check them per task run
        rel.append(f"{plan.kept_folder()}{'-' if index is None else index}.pkl")
    return where, rel


def keep(store, rels: list, value, ctx) -> None:
    """Write `value` to each of `rels`, pickled once. A failure is logged; the task keeps its state."""
    results = _modules()[0]
    try:
        blob = results.encode(value, ctx.task_name if ctx.map_index is None else f"{ctx.task_name}[{ctx.map_index}]")
        if _holds_secret(blob):
            ctx.logger.warning("its result is not kept: it holds the value of a secret, which flowspec never"
                               " writes anywhere; a restart or a cache lookup runs the task again")
            return
        for rel in rels:
            store.queue(rel, blob)
    except results.ResultError as exc:
        ctx.logger.error("%s", exc)


def _holds_secret(blob: bytes) -> bool:
    """Does the pickled value hold a secret resolved in this process (as pickle writes a string:
    its UTF-8 bytes)? Nothing to look for, and no cost, when no secret was resolved."""
    from flowspec.masking import runtime_values

    return any(text.encode() in blob for text in runtime_values())


def reuse(store, flow: str, task: str, old_key: str, new_key: str | None):
    """The value kept under `old_key` (a restart reusing it), kept under `new_key` too (None: not):
    the same bytes, not pickled again (into the new run's packs)."""
    from flowspec.results import decode, keyed_path

    old = keyed_path(flow, task, old_key)
    blob = store.read(old)
    value = decode(blob, store.location(old))
    if new_key is not None:
        store.write(keyed_path(flow, task, new_key), blob)
    return value
