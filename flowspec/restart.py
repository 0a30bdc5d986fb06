"""`flowspec runs restart`: which tasks of a new run reuse the kept results of the run it restarts.

The plan is made before the new run starts, from what the backend recorded of the old run (the
latest state of each task and mapped child) and what the result store holds (the results kept
under the old run's id, see keeping.run_key). In the flow's order, a task runs again when it is a
`--from` task, when a task it waits for runs again, when it reads a parameter whose value
changed, when it did not succeed in the old run, or when its result is not in the store; else it
is reused: Cached from the store, not called. A mapped task that did not succeed as a whole
reuses its children that did and runs the others. A task that was Cached in the old run (by its
`cache` or `target`) runs again, where its cache finds its result again; one reused by a restart
was kept again under that restart's own id, so every run's kept results are under its id.

The runner reads the plan of the restart being run through `active()`: a restart is one run
per process, set up by the command with `activate`. Only that run is a restart: the child flow
runs of its subflow tasks (which always run again) are new runs, made with no plan
(`no_plan`). `notes` (task → {action, why, from}) are kept with the new run and shown by
`runs show`.
"""
from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar

from flowspec import references as refs

OK = ("Success",)


class RestartPlan:
    __slots__ = ("of", "flow", "reuse", "notes")

    def __init__(self, of: str, flow: str) -> None:
        self.of, self.flow = of, flow
        self.reuse: dict = {}  # task → (run id its result is kept under, None | frozenset of child indices)
        self.notes: dict = {}  # task → {"action": "reused" | "runs again", "why": str, "from": run id}


# A ContextVar: the child flow runs of a mapped subflow run on threads that copy the parent's
# context, and each clears it for its own run (`no_plan`) without clearing it for the others.
_ACTIVE: ContextVar[RestartPlan | None] = ContextVar("flowspec_restart_plan", default=None)


def active() -> RestartPlan | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def activate(plan: RestartPlan | None):
    token = _ACTIVE.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE.reset(token)


def no_plan():
    """While a child flow run of a subflow runs: it restarts nothing, whatever its parent does."""
    return activate(None)


def param_refs(task) -> set[str]:
    """The parameters a task reads (arguments, map, condition, run name, cache key, target)."""
    values = [dict(task.with_args), dict(task.map_args), task.condition, task.run_name, task.target,
              task.cache.key if task.cache is not None else None]
    return {ref.name for value in values if value is not None and not isinstance(value, (str, bool))
            for _, ref in refs.iter_refs(value) if ref.kind == "params"}


def make_plan(spec, old_run, old_states, changed: set[str], from_tasks: list[str],
              store) -> RestartPlan:
    """The plan of a restart of `old_run` (its latest task states `old_states`)."""
    from flowspec.keeping import run_key
    from flowspec.results import keyed_path

    plan = RestartPlan(old_run.id, spec.name)
    unmapped: dict = {}
    children: dict = {}
    for t in old_states:
        if t.map_index is None:
            unmapped[t.task] = t.state
        else:
            children.setdefault(t.task, {})[t.map_index] = t.state
    again: set[str] = set()
    short = old_run.id[:8]
    for name, task in spec.tasks.items():
        source = old_run.id
        state = unmapped.get(name)
        kids = children.get(name)
        if state is None and kids:  # a mapped task is recorded child by child
            state = next((s for s in kids.values() if s not in OK and s != "Cached"), None) or \
                ("Cached" if all(s == "Cached" for s in kids.values()) else "Success")
        if state == "Cached" and not task.mapped and store.exists(spec.name, name, run_key(source, None)):
            state = "Success"  # reused by the old run (a restart), which kept it under its own id
        why = None
        if name in from_tasks:
            why = "named by --from"
        elif (up := next((u for u in task.upstream if u in again), None)) is not None:
            why = f"upstream task {up} runs again"
        elif (p := sorted(param_refs(task) & changed)):
            why = f"parameter {p[0]} changed"
        elif not task.run:
            why = "a subflow task runs again"
        elif state is None:
            why = f"it did not run in run {short}"
        elif state == "Cached" and not task.mapped:
            why = f"it was Cached in run {short}: its cache or target is looked up again"
        elif state not in OK and not (task.mapped and children.get(name)):
            why = f"it ended {state} in run {short}"
        if why is None and not task.mapped:
            if not store.exists(spec.name, name, run_key(source, None)):
                why = f"its result from run {source[:8]} is not in the result store ({store.location(keyed_path(spec.name, name, run_key(source, None)))})"
        if why is None and task.mapped:
            kids = kids or {}
            kept = frozenset(i for i, s in kids.items() if (s in OK or s == "Cached")
                             and store.exists(spec.name, name, run_key(source, i)))
            if len(kept) == len(kids):
                plan.reuse[name] = (source, kept)
                plan.notes[name] = {"action": "reused", "why": f"succeeded in run {short}", "from": source,
                                    "children": sorted(kept)}
                continue
            ran = len(kids) - len(kept)
            why = f"{ran} of {len(kids)} mapped runs did not succeed in run {short} or are not in the store;" \
                  f" the {len(kept)} that did are reused"
            plan.reuse[name] = (source, kept)
            plan.notes[name] = {"action": "runs again", "why": why, "from": source, "children": sorted(kept)}
            again.add(name)
            continue
        if why is not None:
            again.add(name)
            plan.notes[name] = {"action": "runs again", "why": why, "from": None}
            continue
        plan.reuse[name] = (source, None)
        plan.notes[name] = {"action": "reused", "why": f"succeeded in run {short}", "from": source}
    return plan


def from_notes(of: str, flow: str, notes: dict) -> RestartPlan:
    """The plan of a restart run by an agent, from the notes kept with its run."""
    plan = RestartPlan(of, flow)
    plan.notes = notes
    for name, note in notes.items():
        if "children" in note:
            plan.reuse[name] = (note["from"], frozenset(note["children"]))
        elif note.get("action") == "reused":
            plan.reuse[name] = (note["from"], None)
    return plan


def of_run(link: dict | None, flow: str):
    """The restart plan a run was made with (kept with its run link), activated; a null context
    for a run that restarts nothing. Whoever runs a recorded run calls this: an agent's child,
    and the run inside a container, pod or Fargate task (`flowspec.inside`)."""
    if not link or not link.get("restart_of"):
        return contextlib.nullcontext()
    return activate(from_notes(link["restart_of"], flow, link.get("notes") or {}))


def old_values(parameters, old: dict, given: set[str], run_id: str) -> tuple[dict, set[str]]:
    """The old run's parameter values a restart takes, and the secret ones it takes anew.

    The backend never keeps a secret parameter's value (`secret: true`, or named like a
    credential): it holds the mask, which is never a value. A secret given again (`--param`) is
    taken as the old value given again; one whose default reads `${{ secrets.X }}` (or
    `${{ env.X }}`) is resolved again where the run runs; any other must be given again, or the
    restart is refused (a UsageError naming the parameter and the flag)."""
    from flowspec.errors import UsageError
    from flowspec.masking import MASK, is_secret
    from flowspec.params import reads_env

    kept, anew = {}, set()
    for name, value in old.items():
        p = parameters.get(name)
        if p is None:
            continue
        if value != MASK or not (p.secret or is_secret(name)):
            kept[name] = value
        elif name in given or (not p.required and reads_env(p.default)):
            anew.add(name)
        else:
            raise UsageError(f"run {run_id} cannot be restarted without the value of its secret parameter '{name}':"
                             " the backend keeps *** in place of a secret, never the value",
                             f"give it again: flowspec runs restart {run_id[:8]} --param {name}=VALUE")
    return kept, anew


def store_gone(spec, settings: dict | None) -> str | None:
    """Why the old run's result store cannot be read (None: it can)."""
    if settings is not None and settings.get("type", "local") == "local" and settings.get("directory") \
            and not os.path.isdir(settings["directory"]):
        return f"its result store {settings['directory']} is gone"
    return None
