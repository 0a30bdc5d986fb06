"""`flowspec runs list|show|logs|cancel|delete`, and `flowspec run --name` (a run of a registered flow).

Every action takes `--backend URL` and `--format text|json`. A RUN is a run id or a unique
prefix of it (4 characters or more).
"""
from __future__ import annotations

import json
import os
import sys
import time

from flowspec.commands._backend import (
    add_common, clock, emit_json, find_run, labels_text, mark_lost, open_from, subcommands, table, table_lines, warn,
    when)

EXIT_CODES = {"Success": 0, "Failed": 1, "TimedOut": 1, "Cancelled": 130}  # `run --name --watch`: the run's own code
# `runs logs --follow` watches a run: a run that ended Cancelled is no interrupt of the watcher
# (130 is for a Ctrl-C of `runs logs` itself), so it exits 1 as for any run that did not succeed.
FOLLOW_EXIT_CODES = {"Success": 0, "Failed": 1, "TimedOut": 1, "Cancelled": 1}
FOLLOW_POLL_S = 0.25


def register(sub) -> None:
    actions = subcommands(sub, "runs", "list, inspect, follow, cancel and delete flow runs")
    p = actions.add_parser("list", help="flow runs, newest first")
    p.add_argument("--flow", metavar="NAME", help="only runs of this flow")
    p.add_argument("--state", action="append", metavar="STATE",
                   help="only runs in this state (repeatable; any case: failed, Failed)")
    p.add_argument("--limit", type=_at_least_one, default=50, metavar="N", help="at most N runs (default 50)")
    p.add_argument("--parent", metavar="RUN", help="only the child flow runs of this run (its subflow tasks')")
    add_common(p)
    p.set_defaults(func=main_list)
    p = actions.add_parser("show", help="a run's state history, its tasks and, while it waits, why")
    p.add_argument("--children", action="store_true",
                   help="list every mapped child (default: a mapped task's children counted by state)")
    _run_arg(p, main_show)
    p = actions.add_parser("logs", help="a run's log lines",
                           description="A run's log lines. With --follow: exit 0 when the run succeeded, 1 when it"
                                       " failed or was cancelled, 130 when you stop watching (Ctrl-C).")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the run ends")
    _run_arg(p, main_logs)
    p = actions.add_parser("cancel", help="cancel a run: a waiting one at once, a running one through its agent"
                                          " (or its local `flowspec run` process)")
    _run_arg(p, main_cancel)
    p = actions.add_parser("restart", help="a new run of a run's flow that reuses the kept results of the tasks"
                                           " that succeeded and runs the rest",
                           description="A new flow run linked to RUN: tasks that succeeded in RUN and whose"
                                       " results are in the result store are Cached from them; failed, cancelled"
                                       " and never-run tasks, the --from tasks, tasks reading a changed --param and"
                                       " everything downstream of them run again. Exit codes as `flowspec run`.")
    p.add_argument("run", metavar="RUN", help="a run id, or a unique prefix of it")
    p.add_argument("--from", dest="from_tasks", action="append", default=[], metavar="TASK",
                   help="run this task and everything downstream of it again (repeatable)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value instead of RUN's (repeatable); what reads it runs again")
    p.add_argument("--watch", action="store_true", help="follow the run to its end (a local run always is)")
    p.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                   help="only warnings and errors, one result line")
    add_common(p)
    p.set_defaults(func=main_restart)
    p = actions.add_parser("delete", help="delete finished runs with their states, task states, logs and kept results",
                           description="Delete finished runs (Success, Failed, Cancelled) with everything recorded"
                                       " of them, in one transaction: all the runs named, or none when one is"
                                       " unknown or has not ended (cancel it first). Their kept results (`persist`)"
                                       " are then removed from the result stores. Exit 0 deleted, 1 unknown or"
                                       " refused, 2 usage.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run id, or a unique prefix of it (repeatable)")
    add_common(p)
    p.set_defaults(func=main_delete)


def _at_least_one(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs, 1 or more, got {text!r}")
    return value


def _run_arg(p, func) -> None:
    p.add_argument("run", metavar="RUN", help="a run id, or a unique prefix of it")
    add_common(p)
    p.set_defaults(func=func)


LATE_AFTER_S = 15.0  # a scheduled run not started this long after its time shows as Late


def is_late(run, now: float | None = None) -> bool:
    """Computed, never stored: a Scheduled run of a clock whose time has passed."""
    import time

    return (run.state == "Scheduled" and run.scheduled_start is not None
            and run.scheduled_start < (time.time() if now is None else now) - LATE_AFTER_S)


def late_reason(backend, run) -> str:
    reason = backend.waiting_reason(run.id)
    return (f"due at {when(run.scheduled_start)}, not started: "
            + (reason or "no agent has taken it yet (is an agent with its labels running?)"))


def run_json(run) -> dict:
    late = is_late(run)
    run = shown(run)
    return {"id": run.id, "flow_id": run.flow_id, "flow": run.flow_name, "state": "Late" if late else run.state,
            "scheduled_start": run.scheduled_start,
            "labels": list(run.labels), "parameters": run.parameters, "agent": run.agent,
            "created": run.created, "updated": run.updated, "heartbeat": run.heartbeat,
            "exit_code": run.exit_code, "message": run.message, "runner": run.runner,
            "heartbeat_timeout": run.heartbeat_timeout}


def shown(run):
    """The run as people see it: the values of parameters named like credentials masked, in its
    parameters and in its message (a run of a registered flow stores them as given, for its
    agent; see flowspec.masking)."""
    from dataclasses import replace

    from flowspec.masking import mask_params, mask_text, secret_values

    from flowspec.secrets import is_encrypted

    values = secret_values(run.parameters)
    encrypted = [name for name, value in run.parameters.items() if is_encrypted(value)]
    return replace(run, parameters=mask_params(run.parameters, encrypted), message=mask_text(run.message, values))


def _masking(run):
    """A function that masks a text of this run (a message, a log line) as `shown` does; None
    when the run has nothing to mask."""
    from flowspec.masking import mask_text, secret_values

    values = secret_values(run.parameters)
    return (lambda text: mask_text(text, values)) if values else None


def _masked_tasks(tasks, mask):
    """The task rows with their messages masked, one at a time (a million children stream)."""
    from dataclasses import is_dataclass, replace

    for t in tasks:
        if t.message and mask(t.message) != t.message:
            if is_dataclass(t):
                t = replace(t, message=mask(t.message))
            else:
                t.message = mask(t.message)
        yield t


# -- list / show / cancel ---------------------------------------------------------------------
def main_list(args) -> int:
    from flowspec.backend import RUN_STATES
    from flowspec.errors import UsageError

    import difflib

    by_case = {s.lower(): s for s in RUN_STATES}  # `--state failed` means Failed
    unknown = [s for s in args.state or () if s.lower() not in by_case]
    if unknown:
        close = difflib.get_close_matches(unknown[0].lower(), by_case, n=1, cutoff=0.6)
        states = f"states: {', '.join(RUN_STATES)}"
        raise UsageError(f"--state {unknown[0]}: not a flow run state",
                         f"did you mean '{by_case[close[0]]}'? {states}" if close else states)
    args.state = [by_case[s.lower()] for s in args.state] if args.state else args.state
    with open_from(args) as backend:
        mark_lost(backend, "runs list")
        parent = find_run(backend, args.parent).id if args.parent else None
        runs = backend.list_runs(states=args.state, flow_name=args.flow, limit=args.limit + 1, parent=parent)
        late = {r.id: late_reason(backend, r) for r in runs[:args.limit] if is_late(r)}
    more, runs = len(runs) > args.limit, runs[:args.limit]
    if more:  # on stderr: the table (or the JSON list) on stdout stays what it was
        print(f"flowspec: note: more runs match; only the {args.limit} newest are shown (see more with"
              f" --limit N, or narrow with --flow and --state)", file=sys.stderr)
    if args.format == "json":
        emit_json([run_json(r) | ({"late_reason": late[r.id]} if r.id in late else {}) for r in runs])
    elif not runs:
        print("no flow runs match")
    else:
        rows = [(r.id, r.flow_name, "Late" if is_late(r) else r.state, labels_text(r.labels), r.agent or "-",
                 when(r.created), when(r.scheduled_start) if r.scheduled_start else "-", when(r.updated))
                for r in runs]
        print(table(("ID", "FLOW", "STATE", "LABELS", "AGENT", "CREATED", "SCHEDULED", "UPDATED"), rows))
        for run_id, reason in list(late.items())[:10]:
            print(f"Late {run_id}: {reason}")
    return 0


def main_show(args) -> int:
    from dataclasses import replace

    with open_from(args) as backend:
        run = find_run(backend, args.run)
        mark_lost(backend, "runs show", run.id)
        run = backend.get_run(run.id)
        flow = backend.get_flow_by_id(run.flow_id) if run.flow_id is not None else None
        history = backend.run_history(run.id)
        reason = late_reason(backend, run) if is_late(run) else backend.waiting_reason(run.id)
        # Every child, read as it is written out (a million of them are never held whole), or
        # one row per task with its children counted
        tasks = backend.latest_task_states(run.id) if args.children else _summary(backend.task_summary(run.id))
        names = backend.run_names(run.id)  # task runs named by their task's `run_name`
        outputs = backend.run_outputs(run.id)
        link = backend.run_link_json(run.id)
        if mask := _masking(run):  # a registered flow's run: values stored as given, masked here
            history = [replace(e, message=mask(e.message)) for e in history]
            tasks = _masked_tasks(tasks, mask)
        if args.format == "json":
            _show_json(run, flow, reason, history, tasks, names, outputs, link)
        else:
            _show_text(run, flow, reason, history, tasks, args.children, names, outputs)
            _show_restart(link)
    return 0


def _show_json(run, flow, reason, history, tasks, names: dict = {}, outputs: dict | None = None,  # noqa: B006
               link: dict | None = None) -> None:
    link = link or {}
    head = json.dumps(run_json(run) | {
        "flow_version": flow.version if flow else None, "project": flow.project if flow else None,
        **link,
        "waiting_reason": reason, "outputs": outputs,
        "history": [{"time": e.time, "state": e.state, "message": e.message} for e in history],
        "tasks": None}, indent=2, default=str)
    # "tasks" is the last key: its `null` is the last one in the text (quotes inside strings are
    # escaped), and the list is written in its place
    before, after = head.rsplit('"tasks": null', 1)
    out = sys.stdout
    out.write(before + '"tasks": [')
    comma = "\n"
    dumps = json.dumps  # without indent: the C encoder, for each value
    for t in tasks:  # the layout emit_json gives, one task at a time
        children = getattr(t, "children", None)
        text = (f'{{\n      "task": {dumps(t.task)},\n      "map_index": {dumps(t.map_index)},\n'
                f'      "state": {dumps(t.state)},\n      "attempt": {dumps(t.attempt)},\n'
                f'      "time": {dumps(t.time)},\n      "message": {dumps(t.message)}')
        if names and (t.task, t.map_index) in names:
            text += f',\n      "run_name": {dumps(names[t.task, t.map_index])}'
        if children:
            text += ',\n      "children": ' + dumps(children, indent=2).replace("\n", "\n      ")
        out.write(f"{comma}    {text}\n    }}")
        comma = ",\n"
    out.write(("\n  ]" if comma != "\n" else "]") + after + "\n")


def _show_restart(link: dict | None) -> None:
    """A child run's parent, a run's children; a restart's run: what it restarted, and which tasks
    it reused and which ran again, why."""
    if not link:
        return
    if link.get("parent_run"):
        print(f"\nparent: run {link['parent_run']}, task {link['parent_task']}")
    if link.get("children"):
        print("\nchild flow runs:")
        for child in link["children"]:
            print(f"  {child['run']}  {child['state'] or '?':<9}  {child['task']}")
    if not link.get("restart_of"):
        return
    print(f"\nrestart of run {link['restart_of']}:")
    notes = link.get("restart") or {}
    width = max((len(n) for n in notes), default=0)
    for name, note in notes.items():
        print(f"  {name:<{width}}  {note['action']}: {note['why']}")


def _show_text(run, flow, reason, history, tasks, children: bool, names: dict = {},  # noqa: B006
               outputs: dict | None = None) -> None:
    run = shown(run)
    origin = f" (project {flow.project}, version {flow.version})" if flow else " (a local run)"
    late = is_late(run)
    fields = [("run", run.id), ("flow", run.flow_name + origin), ("state", "Late" if late else run.state),
              ("scheduled", when(run.scheduled_start) if run.scheduled_start else None),
              ("late" if late else "waiting", reason), ("message", run.message), ("labels", labels_text(run.labels)),
              ("parameters", json.dumps(run.parameters)), ("agent", run.agent), ("run by", run.runner),
              ("exit code", run.exit_code), ("created", when(run.created)), ("updated", when(run.updated))]
    for name, value in fields:
        if value is not None:
            print(f"{name + ':':<12}{_indent(str(value))}")
    print("\nhistory:")
    for e in history:
        print(f"  {when(e.time)}  {e.state:<10}" + (f"  {_indent(e.message, 4)}" if e.message else ""))
    words: dict = {}  # each state and attempt text once, however many children share it
    if children:
        head, rows = ("TASK", "STATE", "ATTEMPT", "MESSAGE"), [
            (_task_label(t.task, t.map_index, names), words.setdefault(t.state, t.state),
             words.setdefault(t.attempt, str(t.attempt)), t.message or "") for t in tasks]
    else:  # a mapped task's row counts its children by state
        head, rows = ("TASK", "STATE", "ATTEMPT", "CHILDREN", "MESSAGE"), [
            (_task_label(t.task, t.map_index, names), t.state, str(t.attempt), _children_text(t.children),
             t.message or "")
            for t in tasks]
    if outputs:
        print("\noutputs:")
        for key, value in outputs.items():
            print(f"  {key}: {_indent(json.dumps(value), 4)}")
    if rows:
        print("\ntasks:")
        for lines in table_lines(head, rows, indent="  "):
            sys.stdout.write(lines)


class _Shown:
    """A row of `runs show`'s tasks: a task's own latest state, or its children's summary."""

    def __init__(self, task: str, state: str, attempt: int, time: float, message, map_index=None,
                 children: dict | None = None) -> None:
        self.task, self.state, self.attempt, self.time, self.message = task, state, attempt, time, message
        self.map_index, self.children = map_index, children


def _summary(tasks: list) -> list[_Shown]:
    """One row per task: a mapped task's children counted by state (`--children` lists them).
    Its state is its own last recorded one (a cancelled map), else what its children add up to."""
    from flowspec.runner import FINAL_STATES, RUNNING, aggregate

    rows = []
    for task, own, groups in tasks:
        children = {state: n for state, n, _, _ in groups} or None
        attempts = sum(g[2] for g in groups)
        if own is not None:
            rows.append(_Shown(task, own.state, max(own.attempt, attempts), own.time, own.message, children=children))
            continue
        states = list(children or ())
        state = aggregate(states) if all(s in FINAL_STATES for s in states) else RUNNING
        rows.append(_Shown(task, state, attempts, max(g[3] for g in groups), None, children=children))
    return rows


def _children_text(children: dict | None) -> str:
    if not children:
        return "-"
    total = sum(children.values())
    return f"{total} (" + ", ".join(f"{n} {state}" for state, n in children.items()) + ")"


def main_cancel(args) -> int:
    from flowspec.errors import FlowspecError

    with open_from(args) as backend:
        run = find_run(backend, args.run)
        state = backend.cancel_run(run.id)
    if state in ("Success", "Failed", "TimedOut"):
        raise FlowspecError(f"run {run.id} already finished ({state}): nothing to cancel")
    if args.format == "json":
        emit_json({"id": run.id, "state": state})
    elif state == "Cancelling":
        print(f"run {run.id}: Cancelling ({_who_stops(run)})")
    else:
        print(f"run {run.id}: {state}")
    return 0


def _who_stops(run) -> str:
    """Who ends a Cancelling run, and how."""
    if run.flow_id is None:  # a local `flowspec run FILE`: no agent is involved
        from flowspec.recorder import HEARTBEAT_INTERVAL_S

        # the beat record_local_run gives it
        beat = min(HEARTBEAT_INTERVAL_S, run.heartbeat_timeout / 5) if run.heartbeat_timeout else HEARTBEAT_INTERVAL_S
        who = run.runner or "the local `flowspec run` process"
        return (f"a local run: {who} sees the cancel at its next heartbeat (within {beat:g}s) and cancels its"
                " tasks as Ctrl-C does")
    if run.agent:
        return f"agent {run.agent} stops its flow run process"
    return "its agent stops the flow run process"


def main_delete(args) -> int:
    from flowspec.commands.results import free_kept, freed_text

    with open_from(args) as backend:
        mark_lost(backend, "runs delete")  # a run whose process is gone has ended: it may go
        ids = backend.delete_runs([find_run(backend, ref).id for ref in args.runs])
        freed = free_kept(backend, ids)  # the runs' kept results in the result stores go with them
    if args.format == "json":
        emit_json({"deleted": {"runs": ids}, "freed": freed})
    else:
        for run_id in ids:
            print(f"run {run_id}: deleted")
        if freed["objects"]:
            print(freed_text(freed))
    return 0


# -- logs and watching ------------------------------------------------------------------------
def main_logs(args) -> int:
    with open_from(args) as backend:
        run = find_run(backend, args.run)
        mark_lost(backend, "runs logs --follow" if args.follow else "runs logs", run.id)
        if args.follow:
            return follow(backend, run.id, args.format, kinds=("log",))
        lines = backend.logs(run.id)
    events = [_log_event(line) for line in lines]
    if mask := _masking(run):
        for event in events:
            event["message"] = mask(event["message"])
    if args.format == "json":
        emit_json(events)
    else:
        for event in events:
            print(_text(event))
    return 0


def follow(backend, run_id: str, fmt: str, kinds: tuple[str, ...] = ("state", "task", "log")) -> int:
    """Print a run's events as they are recorded until it ends; return its exit code.

    Text: one line each; json: one JSON object per line. Ctrl-C stops watching, not the run.
    """
    from flowspec.backend.outage import DEFAULT_TOLERANCE_S, Outage
    from flowspec.errors import BackendError

    cursor = {"state": 0, "task": 0, "log": 0}
    judged = 0.0
    mask, masking = None, True
    # A backend that blinks (a database restart) pauses the watch instead of ending it.
    outage = Outage(backend.url, DEFAULT_TOLERANCE_S, lambda level, text: print(f"flowspec: {level}: {text}",
                                                                                 file=sys.stderr, flush=True))
    try:
        while True:
            try:
                if time.monotonic() - judged >= 1.0:  # a run whose process is gone ends the watch, Failed
                    mark_lost(backend, "runs logs --follow" if kinds == ("log",) else "run --watch", run_id)
                    judged = time.monotonic()
                if masking:  # once, but within the outage's retries
                    mask, masking = _masking(backend.get_run(run_id)), False
                final = backend.get_run(run_id).state in EXIT_CODES  # read first: nothing after it is missed
                read = dict(cursor)  # moved on only once every kind was read
                events = sorted(_new_events(backend, run_id, read, kinds), key=lambda e: e["time"])
            except BackendError as exc:
                time.sleep(outage.failed(exc))
                continue
            outage.ok()
            cursor = read
            for event in events:
                if mask and event.get("message"):
                    event["message"] = mask(event["message"])
                print(json.dumps(event, default=str) if fmt == "json" else _text(event), flush=True)
            if final:
                break
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        print(f"stopped watching; run {run_id} goes on (stop it with: flowspec runs cancel {run_id})",
              file=sys.stderr)
        return 130
    run = shown(backend.get_run(run_id))
    if fmt == "text" and "state" in kinds:
        print(f"flow run {run_id}: {run.state}" + (f" ({run.message})" if run.message else ""))
    return (FOLLOW_EXIT_CODES if kinds == ("log",) else EXIT_CODES).get(run.state, 1)


def _new_events(backend, run_id: str, cursor: dict, kinds: tuple[str, ...]) -> list[dict]:
    events: list[dict] = []
    if "state" in kinds:
        history = backend.run_history(run_id)
        events += [{"kind": "state", "time": e.time, "state": e.state, "message": e.message}
                   for e in history[cursor["state"]:]]
        cursor["state"] = len(history)
    if "task" in kinds:
        tasks, cursor["task"] = backend.task_states_since(run_id, cursor["task"])  # new rows only, each poll
        events += [{"kind": "task", "time": t.time, "task": _task_label(t.task, t.map_index), "state": t.state,
                    "attempt": t.attempt, "message": t.message} for t in tasks]
    if "log" in kinds:
        lines = backend.logs(run_id, cursor["log"])
        events += [_log_event(line) for line in lines]
        cursor["log"] = lines[-1].id if lines else cursor["log"]
    return events


def _log_event(line) -> dict:
    return {"kind": "log", "time": line.time, "level": line.level, "task": line.task, "message": line.message}


def _text(event: dict) -> str:
    if event["kind"] == "log":
        head = f"{event['level']:<7} {event['task'] or 'flow'}"
        body = event["message"]
    elif event["kind"] == "task":
        head, body = f"{'TASK':<7} {event['task']}", f"{event['state']} (attempt {event['attempt']})"
    else:
        head, body = f"{'RUN':<7} flow", event["state"]
    if event["kind"] != "log" and event.get("message"):
        body += f": {event['message']}"
    return f"{clock(event['time'])} {head} | {body}"


def _task_label(task: str, index: int | None, names: dict | None = None) -> str:
    """`load[3]`, or `load[orders]` when the task run has a name (the task's `run_name`)."""
    if names:
        name = names.get((task, index))
        if name is not None:
            return f"{task}[{name}]"
    return task if index is None else f"{task}[{index}]"


def _indent(text: str, by: int = 12) -> str:
    return text.replace("\n", "\n" + " " * by)


# -- flowspec run --name ----------------------------------------------------------------------
def run_registered(args) -> int:
    """Create a Scheduled run of a registered flow; warn when no live agent could take it."""
    from flowspec.backend import NotFoundError
    from flowspec.backend.base import AGENT_SEEN_WINDOW_S, agent_reason
    from flowspec.errors import UsageError

    if args.file:
        raise UsageError("give either FILE (run it here) or --name (run a registered flow), not both")
    if any(not label for label in args.label):
        raise UsageError("--label: a label cannot be empty")
    with open_from(args) as backend:
        flow = backend.get_flow(args.name, args.project)
        if flow is None:
            where = f" in project '{args.project}'" if args.project else ""
            raise NotFoundError(f"no flow named '{args.name}' is registered{where} in {backend.url}",
                                hint="register it with: flowspec register FILE (see: flowspec flows list)")
        params, secret = _parameters(flow, args)
        if secret:  # stored encrypted; the agent's child decrypts them where the flow runs
            from flowspec.secrets import encrypt_params

            params = encrypt_params(params, secret)
        run = backend.create_flow_run(flow.id, params, args.label)
        reason = agent_reason(run.labels, backend.list_agents(AGENT_SEEN_WINDOW_S))
        if args.format == "json" and not args.watch:
            emit_json(run_json(run) | {"flow_version": flow.version, "warning": reason})
        else:
            print(run.id, flush=True)
        if reason:
            warn(f"run {run.id} may wait forever: {reason}")
        return follow(backend, run.id, args.format) if args.watch else 0


def _parameters(flow, args) -> tuple[dict, list[str]]:
    """The run's parameter values, checked against the registered spec's declarations, and the
    names of its secret parameters (`secret: true`, or a default that reads a secret).

    The registered spec was validated when it was registered: only its `parameters` are read
    here, without a schema check, so that creating a run stays quick.
    """
    from types import SimpleNamespace

    from flowspec.commands._params import parameters
    from flowspec.loader import load_text
    from flowspec.params import reads_secrets
    from flowspec.spec import ParameterSpec

    declared = (load_text(flow.spec_text, f"{flow.name} (registered version {flow.version})").data
                or {}).get("parameters") or {}
    specs = {name: ParameterSpec(name=name, type=p.get("type"), default=p.get("default"),
                                 required="default" not in p, enum=tuple(p["enum"]) if "enum" in p else None)
             for name, p in declared.items()}
    return (parameters(SimpleNamespace(parameters=specs), args),
            [name for name, p in declared.items()
             if isinstance(p, dict) and (p.get("secret") is True or reads_secrets(p.get("default")))])


def main_restart(args) -> int:
    """Restart a run of `flowspec run FILE` in this process (see flowspec.restart)."""
    from flowspec.commands.run import EXIT_CODES, execute, prepare, report_invalid, stop_signals, summary_table
    from flowspec.errors import FlowspecError, SpecError, UsageError
    from flowspec.params import ParamsError, parse_flag, resolve_parameters
    from flowspec import restart, results
    from flowspec.compile import resolve_env

    with open_from(args) as backend:
        run = find_run(backend, args.run)
        link = backend.run_link(run.id)
        states = list(backend.latest_task_states(run.id))
    if run.state not in ("Success", "Failed", "Cancelled", "TimedOut"):
        raise FlowspecError(f"run {run.id} has not finished ({run.state}): restart it once it has",
                            f"cancel it first: flowspec runs cancel {run.id[:8]}")
    if run.flow_id is not None:
        return _restart_registered(args, run, states)
    if link is None or not link.get("spec_path"):
        raise FlowspecError(f"run {run.id} cannot be restarted: the backend does not say which spec file it ran"
                            " (it was recorded by an older flowspec)", "run the spec again with `flowspec run FILE`")
    path = link["spec_path"]
    if not os.path.isfile(path):
        raise FlowspecError(f"run {run.id} cannot be restarted: its spec file {path} is gone",
                            "run the flow anew with `flowspec run FILE`")
    try:
        spec = prepare(path, env=False)
    except SpecError as exc:
        return report_invalid(exc.diagnostics, args.format)
    if spec.checksum != link["spec_checksum"]:
        raise FlowspecError(f"run {run.id} cannot be restarted: its spec file {path} changed since it ran"
                            " (the flow it ran is gone); a restart runs the same flow",
                            "run the changed flow anew with `flowspec run FILE`")
    unknown = [t for t in args.from_tasks if t not in spec.tasks]
    if unknown:
        raise UsageError(f"--from {unknown[0]}: the flow {spec.name} has no task '{unknown[0]}'",
                         f"its tasks: {', '.join(list(spec.tasks)[:10])}")
    from flowspec.secrets import decrypt_params

    flags = [parse_flag(text, spec.parameters) for text in args.param]
    old, anew = restart.old_values(spec.parameters, decrypt_params(run.parameters), {k for k, _ in flags}, run.id)
    try:
        params = resolve_parameters(spec.parameters, {}, None, list(old.items()) + flags)
    except ParamsError as exc:
        return report_invalid(exc.diagnostics, args.format, exc.problems)
    changed = {k for k in params if k not in anew and (k not in old or old[k] != params[k])}
    settings = results.settings(spec)
    if (why := restart.store_gone(spec, settings)):
        raise FlowspecError(f"run {run.id} cannot be restarted: {why}",
                            "run the flow anew with `flowspec run FILE`")
    store = results.ResultStore.from_spec(settings)
    plan = restart.make_plan(spec, run, states, changed, args.from_tasks, store)
    spec = resolve_env(spec, storage=False)
    reused = sum(1 for n in plan.notes.values() if n["action"] == "reused")
    print(f"restart of run {run.id[:8]}: {reused} task{'s' * (reused != 1)} reused,"
          f" {len(plan.notes) - reused} run again", file=sys.stderr)
    for name, note in plan.notes.items():
        if note["action"] != "reused":
            print(f"  {name}: runs again: {note['why']}", file=sys.stderr)
    stopped: list[int] = []
    with stop_signals(stopped), restart.activate(plan):
        result = execute(spec, params, args.format, args.verbosity, args.backend, None, stopped)
    if args.format == "json":
        print(json.dumps(result.to_json() | {"restart_of": run.id, "restart": plan.notes}, indent=2, default=str))
    else:
        print(summary_table(result) if args.verbosity >= 0 else summary_table(result).splitlines()[-1])
    if result.state == "Cancelled" and stopped:
        return 128 + stopped[0]
    return EXIT_CODES.get(result.state, 1)


def _restart_registered(args, run, states) -> int:
    """A restart of a registered flow's run: a new run for the agents, its plan kept with it."""
    from flowspec import restart, results
    from flowspec.errors import FlowspecError, UsageError
    from flowspec.params import ParamsError, parse_flag, resolve_parameters
    from flowspec.secrets import encrypt_params, is_encrypted
    from flowspec.storage import load_flow

    with open_from(args) as backend:
        flow = backend.get_flow_by_id(run.flow_id)
        if flow is None:
            raise FlowspecError(f"run {run.id} cannot be restarted: the flow version it ran is gone (deleted)",
                                "run a registered version with `flowspec run --name NAME`")
        try:
            spec, _ = load_flow(flow.storage)
        except FlowspecError as exc:
            raise FlowspecError(f"run {run.id} cannot be restarted: the storage of {flow.name} version {flow.version}"
                                f" cannot be loaded: {exc.message}", "register the flow again") from None
        unknown = [t for t in args.from_tasks if t not in spec.tasks]
        if unknown:
            raise UsageError(f"--from {unknown[0]}: the flow {spec.name} has no task '{unknown[0]}'")
        flags = [parse_flag(text, spec.parameters) for text in args.param]
        given = {k for k, _ in flags}
        old, anew = restart.old_values(spec.parameters, run.parameters, given, run.id)
        # A secret parameter's value is kept encrypted: it goes to the new run as it is, unless given again.
        sealed = {k: v for k, v in old.items() if is_encrypted(v) and k not in given}
        old = {k: v for k, v in old.items() if not is_encrypted(v)}
        try:
            params = resolve_parameters({k: p for k, p in spec.parameters.items() if k not in sealed}, {}, None,
                                        list(old.items()) + flags, env_defaults=False)
        except ParamsError as exc:
            from flowspec.commands.run import report_invalid

            return report_invalid(exc.diagnostics, args.format, exc.problems)
        changed = {k for k in params if k not in anew and (k not in old or old[k] != params[k])}
        changed -= {k for k in given if is_encrypted(run.parameters.get(k))}  # the same secret given again
        secret = [k for k, p in spec.parameters.items() if p.secret and k in params]
        params = encrypt_params(params, secret) | sealed
        settings = results.settings(spec)
        if (why := restart.store_gone(spec, settings)):
            raise FlowspecError(f"run {run.id} cannot be restarted: {why}", "run the flow anew with `flowspec run --name`")
        plan = restart.make_plan(spec, run, states, changed, args.from_tasks, results.ResultStore.from_spec(settings))
        new = backend.create_flow_run(flow.id, params, run.labels, own_labels=True)
        backend.set_run_link(new.id, None, None, run.id, plan.notes)
        reused = sum(1 for n in plan.notes.values() if n["action"] == "reused")
        print(new.id, flush=True)
        print(f"restart of run {run.id[:8]}: {reused} task{'s' * (reused != 1)} reused,"
              f" {len(plan.notes) - reused} run again (by an agent)", file=sys.stderr)
        return follow(backend, new.id, args.format) if args.watch else 0
