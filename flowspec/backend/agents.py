"""Agents: who serves the backend, with which labels, and when each was last seen."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flowspec.backend.core import Store, Tx, labels_match, normalize_labels

AGENT_SEEN_WINDOW_S = 60.0


@dataclass(frozen=True)
class Agent:
    """An agent as last seen by the backend."""

    name: str
    labels: tuple[str, ...]
    started: float
    last_seen: float
    stopped: float | None = None  # when it said it stopped (Ctrl-C, SIGTERM); None while it serves
    stop_requested: float | None = None  # when `flowspec agent stop` asked it to stop

    @property
    def status(self) -> str:
        """stopped (it said so), stopping (asked to, not yet done), alive (seen within the last
        minute), or gone (not seen since)."""
        if self.stopped is not None:
            return "stopped"
        if self.stop_requested is not None:
            return "stopping"
        return "alive" if self.alive() else "gone"

    def alive(self, now: float | None = None) -> bool:
        """Seen within AGENT_SEEN_WINDOW_S and not stopped since."""
        return self.stopped is None and (now or time.time()) - self.last_seen <= AGENT_SEEN_WINDOW_S


def _agent(row: Sequence[Any]) -> Agent:
    return Agent(row[0], tuple(json.loads(row[1])), row[2], row[3], row[4], row[5])


def agent_reason(run_labels: Sequence[str], agents: Iterable[Agent]) -> str | None:
    """Why no live agent can take a run with these labels, or None when one can."""
    agents = list(agents)
    if any(labels_match(run_labels, agent.labels) for agent in agents):
        return None
    seen = ", ".join(f"{a.name} [{', '.join(a.labels)}]" for a in agents) or "none"
    window = f"in the last {AGENT_SEEN_WINDOW_S:g} s"
    if not run_labels:
        return f"the run has no labels and no agent without labels was seen {window}; agents: {seen}"
    return f"no agent seen {window} has labels covering [{', '.join(run_labels)}]; agents: {seen}"


class AgentStore(Store):
    """Agents: heartbeats, stops and listings."""

    def agent_heartbeat(self, name: str, labels: Iterable[str], *, starting: bool = False) -> None:
        """Record that an agent is alive; `starting` also resets its start time (and forgets a
        stop asked of an earlier agent of that name)."""
        restart = ", started = excluded.started, stopped = NULL, stop_requested = NULL" if starting else ""
        now = time.time()
        with self._transaction() as tx:
            tx.run(
                "INSERT INTO agents (name, labels, started, last_seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET labels = excluded.labels,"
                f" last_seen = excluded.last_seen{restart}",
                name, json.dumps(normalize_labels(labels)), now, now,
            )

    def agent_stopped(self, name: str) -> None:
        """Record that an agent stopped: it no longer counts as alive, however recently seen."""
        with self._transaction() as tx:
            tx.run("UPDATE agents SET stopped = ? WHERE name = ?", time.time(), name)

    def request_agent_stop(self, name: str) -> Agent | None:
        """Ask an agent to stop (it sees it at its next poll, see `agent_stop_requested`); returns
        the agent as it was before, or None when no agent of that name was ever seen. An agent
        already stopped is left as it is."""
        with self._transaction() as tx:
            before = self._agents(tx, None, name)
            if before and before[0].stopped is None and before[0].stop_requested is None:
                tx.run("UPDATE agents SET stop_requested = ? WHERE name = ? AND stopped IS NULL", time.time(), name)
        return before[0] if before else None

    def agent_stop_requested(self, name: str) -> bool:
        """Has `flowspec agent stop` asked this agent to stop since it started?"""
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT stop_requested FROM agents WHERE name = ?", name)
        return row is not None and row[0] is not None

    def get_agent(self, name: str) -> Agent | None:
        with self._transaction(write=False) as tx:
            found = self._agents(tx, None, name)
        return found[0] if found else None

    def list_agents(self, seen_within_s: float | None = None) -> list[Agent]:
        """Every agent ever seen; with `seen_within_s`, only those seen since that are still serving
        (neither stopped nor asked to stop)."""
        with self._transaction(write=False) as tx:
            return self._agents(tx, seen_within_s)

    def _agents(self, tx: Tx, seen_within_s: float | None, name: str | None = None) -> list[Agent]:
        where, params = ("last_seen >= ?", [-1.0]) if seen_within_s is None else (
            "last_seen >= ? AND stopped IS NULL AND stop_requested IS NULL", [time.time() - seen_within_s])
        if name is not None:
            where, params = where + " AND name = ?", params + [name]
        rows = tx.all(f"SELECT name, labels, started, last_seen, stopped, stop_requested FROM agents WHERE {where}"
                      " ORDER BY name", *params)
        return [_agent(row) for row in rows]
