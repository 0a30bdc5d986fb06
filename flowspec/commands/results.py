"""`flowspec results prune [--keep-results DURATION] [--backend URL] [--format text|json]`, and the
freeing of runs' kept results that `runs delete` and `flows delete` do.

The stores are the ones the backend's runs noted (flowspec.backend.result_stores): each run's
recorder notes the store it opens. Pruning removes, in each store, a run's kept results when the
newest of them is older than DURATION and the run has ended, and any other object (cache keys,
targets, leftover temporary files) older than DURATION and older than the start of the oldest run
still going (which may have written it). Runs that have not ended, and the runs a waiting restart
will reuse, are never pruned.
"""
from __future__ import annotations

import re
import sys
import time

from flowspec.commands._backend import add_common, emit_json, mark_lost, open_from, subcommands, when

DEFAULT_KEEP = "30d"
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d|w)$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def register(sub) -> None:
    actions = subcommands(sub, "results", "the result store: free the space of kept results")
    p = actions.add_parser(
        "prune", help="delete kept results older than --keep-results (default 30d)",
        description="Delete, in every result store the backend's runs used, the kept results of ended runs"
                    " written more than DURATION ago, and cache keys, targets and leftover temporary files as"
                    " old. Results of runs that have not ended are never pruned. Prints what was freed."
                    " Exit 0 done, 1 a store could not be pruned, 2 usage.")
    p.add_argument("--keep-results", metavar="DURATION", default=None,
                   help=f"keep what was written within this long: 90m, 12h, 7d, 4w (default {DEFAULT_KEEP})")
    add_common(p)
    p.set_defaults(func=main_prune)


def parse_keep(text: str | None) -> float:
    from flowspec.errors import UsageError

    m = _DURATION.match((text if text is not None else DEFAULT_KEEP).strip())
    if m is None:
        raise UsageError(f"--keep-results: expected a duration such as 12h, 7d or 4w, got '{text}'",
                         "a number followed by s, m, h, d or w (seconds, minutes, hours, days, weeks)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def main_prune(args) -> int:
    from flowspec.backend import ACTIVE_STATES, FINAL_STATES, RUN_STATES

    keep_s = parse_keep(args.keep_results)
    with open_from(args) as backend:
        mark_lost(backend, "results prune")  # a run whose process is gone has ended: its results may go
        waiting = backend.list_runs(states=[s for s in RUN_STATES if s not in FINAL_STATES])
        protected = {run.id for run in waiting}
        for run in waiting:  # a restart that has not run yet reuses the results of the run it restarts
            link = backend.run_link(run.id)
            if link and link.get("restart_of"):
                protected.add(link["restart_of"])
        going = [run.created for run in waiting if run.state in ACTIVE_STATES]
        stores = backend.result_stores()
    keep_since = min(going) if going else None
    rows, failed = [], 0
    for settings in stores:
        row = _prune_one(settings, keep_s, protected, keep_since)
        failed += row["error"] is not None
        rows.append(row)
    total = {k: sum(r[k] for r in rows) for k in ("results", "objects", "bytes")}
    cutoff = time.time() - keep_s
    if args.format == "json":
        emit_json({"keep_results": args.keep_results or DEFAULT_KEEP, "keep_results_seconds": keep_s,
                   "cutoff": cutoff, **total, "stores": rows})
    else:
        print(f"pruning what was written before {when(cutoff)} ({args.keep_results or DEFAULT_KEEP + ', the default'}):")
        for row in rows:
            what = row["error"] or (f"{row['results']} results freed ({row['objects']} files, {row['bytes']:,}"
                                    f" bytes), {row['kept']} kept")
            print(f"  {row['type']} {row['location']}: {what}")
        if not rows:
            print("  no run of this backend has kept results yet")
        print(f"freed {total['results']} results, {total['bytes']:,} bytes")
    return 1 if failed else 0


def _prune_one(settings: dict, keep_s: float, protected: set, keep_since: float | None) -> dict:
    from flowspec.errors import FlowspecError
    from flowspec.results import ResultStore

    store = ResultStore.from_spec(settings)
    row = {"type": store.kind, "location": store.location(""), "results": 0, "objects": 0, "bytes": 0, "kept": 0,
           "error": None}
    try:
        report = store.prune(keep_s, protected, keep_since)
    except FlowspecError as exc:
        row["error"] = exc.message
        print(f"flowspec: error: {store.location('')}: {exc.message}", file=sys.stderr)
        return row
    row.update(results=report.removed, objects=report.objects, bytes=report.bytes, kept=report.kept)
    return row


def free_kept(backend, run_ids) -> dict:
    """Remove the kept results of deleted runs from every store the backend's runs used:
    {results, objects, bytes, errors}. A store that cannot be reached is warned about (its results
    stay, for `results prune`)."""
    from flowspec.errors import FlowspecError
    from flowspec.results import PruneReport, ResultStore

    total, errors = PruneReport(), []
    if not run_ids:
        return {"results": 0, "objects": 0, "bytes": 0, "errors": []}
    for settings in backend.result_stores():
        store = ResultStore.from_spec(settings)
        try:
            total += store.delete_runs(run_ids)
        except FlowspecError as exc:
            errors.append(f"{store.location('')}: {exc.message}")
            print(f"flowspec: warning: the kept results in {store.location('')} were not freed: {exc.message}"
                  " (`flowspec results prune` frees them later)", file=sys.stderr)
    return {"results": total.removed, "objects": total.objects, "bytes": total.bytes, "errors": errors}


def freed_text(freed: dict) -> str:
    return f"kept results freed: {freed['results']} results, {freed['bytes']:,} bytes"
