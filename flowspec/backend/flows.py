"""Projects and registered flows, each name with its versions."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flowspec.backend.core import Store, Tx, normalize_labels
from flowspec.errors import FlowspecError


@dataclass(frozen=True)
class Flow:
    """One registered version of a flow."""

    id: int
    project: str
    name: str
    version: int
    labels: tuple[str, ...]
    storage: dict[str, Any]
    spec_checksum: str
    spec_text: str
    environment: dict[str, Any]
    created: float


_FLOW_COLS = "id, project, name, version, labels, storage, spec_checksum, spec_text, environment, created"


def _flow(row: Sequence[Any]) -> Flow:
    fields = list(row)
    fields[4] = tuple(json.loads(row[4]))
    fields[5], fields[8] = json.loads(row[5]), json.loads(row[8])
    return Flow(*fields)


class FlowStore(Store):
    """Projects and flows: register a version, look flows up, list them."""

    def list_projects(self) -> list[str]:
        with self._transaction(write=False) as tx:
            return [row[0] for row in tx.all("SELECT name FROM projects ORDER BY name")]

    def register_flow(
        self,
        project: str,
        name: str,
        labels: Iterable[str],
        storage: dict[str, Any],
        checksum: str,
        spec_text: str,
        environment: dict[str, Any],
    ) -> tuple[Flow, bool]:
        """Store a new version of a flow, or return the latest one if nothing changed."""
        labels = normalize_labels(labels)
        with self._transaction() as tx:
            self._serialize(tx, "register")  # two registrations must not take one version
            tx.run(
                "INSERT INTO projects (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                project, time.time(),
            )
            latest = self._flows(tx, "project = ? AND name = ?", project, name)
            if latest and (latest[0].spec_checksum, latest[0].labels) == (checksum, labels):
                return latest[0], False
            version = latest[0].version + 1 if latest else 1
            row = tx.one(
                "INSERT INTO flows (project, name, version, labels, storage, spec_checksum,"
                " spec_text, environment, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" RETURNING {_FLOW_COLS}",
                project, name, version, json.dumps(labels), json.dumps(storage), checksum,
                spec_text, json.dumps(environment), time.time(),
            )
            return _flow(row), True

    def get_flow(self, name: str, project: str | None = None, version: int | None = None) -> Flow | None:
        """A flow by name: its latest version unless `version` is given."""
        where, params = ["name = ?"], [name]
        for column, value in (("project", project), ("version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self._transaction(write=False) as tx:
            flows = self._flows(tx, " AND ".join(where), *params)
        projects = sorted({flow.project for flow in flows})
        if len(projects) > 1:
            raise FlowspecError(
                f"a flow named '{name}' exists in several projects: {', '.join(projects)}",
                hint="name the project",
            )
        return flows[0] if flows else None

    def get_flow_by_id(self, flow_id: int) -> Flow | None:
        with self._transaction(write=False) as tx:
            flows = self._flows(tx, "id = ?", flow_id)
        return flows[0] if flows else None

    def list_flows(self, project: str | None = None) -> list[Flow]:
        """The latest version of each flow, by project and name."""
        latest = "version = (SELECT MAX(version) FROM flows g WHERE g.project = flows.project AND g.name = flows.name)"
        with self._transaction(write=False) as tx:
            if project is None:
                flows = self._flows(tx, latest)
            else:
                flows = self._flows(tx, f"project = ? AND {latest}", project)
        return sorted(flows, key=lambda flow: (flow.project, flow.name))

    def _flows(self, tx: Tx, where: str, *params: Any) -> list[Flow]:
        rows = tx.all(f"SELECT {_FLOW_COLS} FROM flows WHERE {where} ORDER BY version DESC", *params)
        return [_flow(row) for row in rows]
