"""Deleting: finished flow runs with everything recorded of them, and flows with their runs.

Nothing active is ever deleted: a run that waits, runs or is being cancelled has a process or an
agent that counts on its rows, so deleting it (or its flow) is refused until it has ended.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flowspec.backend.core import NotFoundError, Store, Tx, _marks
from flowspec.backend.runs import FINAL_STATES
from flowspec.errors import FlowspecError, UsageError


class ActiveRunsError(FlowspecError):
    """Runs that have not ended stand in the way of a deletion."""


@dataclass(frozen=True)
class FlowDeletion:
    """What `delete_flow` removed."""

    project: str
    name: str
    versions: tuple[int, ...]
    runs: tuple[str, ...]


class RetentionStore(Store):
    """Deleting finished runs, and flows (some or all of their versions) with their runs."""

    def delete_runs(self, run_ids: Sequence[str]) -> list[str]:
        """Delete these runs with their states, task states and logs, in one transaction: all of
        them, or none when one is unknown (NotFoundError) or has not ended (ActiveRunsError)."""
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return []
        with self._transaction() as tx:
            found = dict(self._locked(tx, f"id IN ({_marks(ids)})", *ids))
            missing = [run_id for run_id in ids if run_id not in found]
            if missing:
                raise NotFoundError(f"no flow run has id {', '.join(missing)}: nothing was deleted",
                                    hint="list runs with: flowspec runs list")
            self._refuse_active(found, "cannot delete a run that has not ended")
            self._delete_rows(tx, f"IN ({_marks(ids)})", *ids)
        return ids

    def delete_flow(self, name: str, project: str | None = None, version: int | None = None) -> FlowDeletion:
        """Delete a flow's versions (only `version` if given) and all their runs, in one
        transaction; refused while one of those runs has not ended (ActiveRunsError)."""
        where, params = ["name = ?"], [name]
        for column, value in (("project", project), ("version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self._transaction() as tx:
            flows = tx.all(f"SELECT id, project, version FROM flows WHERE {' AND '.join(where)} ORDER BY version",
                           *params)
            self._one_flow(flows, name, project, version)
            flow_ids = [row[0] for row in flows]
            of_flows = f"flow_id IN ({_marks(flow_ids)})"
            runs = self._locked(tx, of_flows, *flow_ids)
            # Runs its clocks planned and that have not started go with it; any other unended run
            # (one an agent runs, or one given to agents by `run --name`) stops the deletion.
            planned = {r[0] for r in tx.all(f"SELECT id FROM flow_runs WHERE {of_flows} AND state = 'Scheduled'"
                                             " AND clock IS NOT NULL", *flow_ids)}
            what = f"flow '{name}'" + (f" version {version}" if version is not None else "")
            self._refuse_active({r: s for r, s in runs if r not in planned},
                                f"cannot delete {what}: it has runs that have not ended")
            self._delete_rows(tx, f"IN (SELECT id FROM flow_runs WHERE {of_flows})", *flow_ids)
            tx.run(f"DELETE FROM clocks WHERE flow_id IN ({_marks(flow_ids)})", *flow_ids)
            tx.run(f"DELETE FROM flows WHERE id IN ({_marks(flow_ids)})", *flow_ids)
            owner = flows[0][1]
            if version is None:  # the whole flow: a pause of its schedule goes too
                tx.run("DELETE FROM schedule_pauses WHERE project = ? AND flow_name = ?", owner, name)
            # A project is only a name for its flows: it goes with its last one.
            tx.run("DELETE FROM projects WHERE name = ? AND NOT EXISTS (SELECT 1 FROM flows WHERE project = ?)",
                   owner, owner)
        return FlowDeletion(owner, name, tuple(row[2] for row in flows), tuple(run_id for run_id, _ in runs))

    def _locked(self, tx: Tx, where: str, *params: object) -> list[tuple[str, str]]:
        """The (id, state) of the runs `where` selects, locked until the transaction ends: a run
        cannot move (be claimed, restarted) between the check and the deletion. (The UPDATE takes
        PostgreSQL's row locks; a SQLite writer holds the whole file already.)"""
        tx.run(f"UPDATE flow_runs SET updated = updated WHERE {where}", *params)
        return [(row[0], row[1]) for row in tx.all(f"SELECT id, state FROM flow_runs WHERE {where} ORDER BY seq",
                                                   *params)]

    @staticmethod
    def _refuse_active(states: dict[str, str], lead: str) -> None:
        active = [(run_id, state) for run_id, state in states.items() if state not in FINAL_STATES]
        if not active:
            return
        shown = ", ".join(f"{run_id} ({state})" for run_id, state in active[:5])
        more = f" and {len(active) - 5} more" if len(active) > 5 else ""
        first = active[0][0]
        raise ActiveRunsError(
            f"{lead}: {shown}{more}; nothing was deleted",
            hint=f"cancel {'it' if len(active) == 1 else 'them'} first (flowspec runs cancel {first}), then delete"
                 " once the run has ended (flowspec runs show shows its state)")

    @staticmethod
    def _one_flow(flows: list[tuple], name: str, project: str | None, version: int | None) -> None:
        if not flows:
            what = f"no flow named '{name}'" + (f" with version {version}" if version is not None else "")
            where = f" in project '{project}'" if project is not None else ""
            raise NotFoundError(f"{what} is registered{where}: nothing was deleted",
                                hint="list the registered flows with: flowspec flows list")
        projects = sorted({row[1] for row in flows})
        if len(projects) > 1:
            raise UsageError(f"a flow named '{name}' exists in several projects: {', '.join(projects)}",
                             hint="name the one to delete with --project")

    def _delete_rows(self, tx: Tx, selection: str, *params: object) -> None:
        """Delete the runs whose id is `selection` (`IN (...)`) and every row of theirs."""
        tables = dict.fromkeys(t for part in type(self).__mro__ for t in vars(part).get("run_tables", ()))
        for table in tables:
            tx.run(f"DELETE FROM {table} WHERE run_id {selection}", *params)
        tx.run(f"DELETE FROM flow_runs WHERE id {selection}", *params)
