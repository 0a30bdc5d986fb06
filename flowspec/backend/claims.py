"""Claiming runs: which waiting run an agent takes now, under the label rule and the limits."""
from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from flowspec.backend.agents import AGENT_SEEN_WINDOW_S, agent_reason
from flowspec.backend.core import NotFoundError, Store, Tx, _marks, labels_match
from flowspec.backend.runs import QUEUED, SCHEDULED, SUBMITTED, WAITING_STATES, FlowRun


@dataclass(frozen=True)
class SlotBlock:
    """A limited label of a run whose slots are all taken (or kept for older waiting runs).

    `ancestors`: the holders that are the run's own ancestors (subflow parents), when they alone
    fill the limit: the run can start only after they end, and a parent waiting for it never
    ends."""

    label: str
    limit: int
    holders: tuple[str, ...]
    kept_for: tuple[str, ...] = ()
    ancestors: tuple[str, ...] = ()

    @property
    def gist(self) -> str:
        return f"label '{self.label}' is at its limit of {self.limit}" + self._deadlock()

    def _deadlock(self) -> str:
        if not self.ancestors:
            return ""
        return (f", all of them this run's own ancestors (the parent runs of its subflow task): it can start"
                f" only after they end, and a parent that waits for it never ends; raise the limit to at least"
                f" {len(self.ancestors) + 1} (`flowspec concurrency-limit set {self.label} {len(self.ancestors) + 1}`)"
                f" or give the subflow task other `labels`")

    def __str__(self) -> str:
        parts = [f"held by runs {', '.join(self.holders)}"] if self.holders else []
        if self.kept_for:
            parts.append(f"kept for older waiting runs {', '.join(self.kept_for)}")
        head = f"label '{self.label}' is at its limit of {self.limit}"
        return head + (f" ({'; '.join(parts)})" if parts else "") + self._deadlock()


_HELD_BY = re.compile(r" \((held by|kept for) [^)]*\)")


def slot_blocks(
    labels: Iterable[str], limits: dict[str, int], holders: dict[str, list[str]],
    kept: dict[str, list[str]] | None = None, ancestors: Iterable[str] = (),
) -> list[SlotBlock]:
    """The limited labels among `labels` that have no free slot (`kept`: slots set aside;
    `ancestors`: the run's own ancestors, named when they alone fill a limit)."""
    kept, ancestors = kept or {}, set(ancestors)
    blocks = []
    for label in sorted(set(labels)):
        held = holders.get(label, ())
        if label not in limits or len(held) + len(kept.get(label, ())) < limits[label]:
            continue
        own = tuple(h for h in held if h in ancestors)
        blocks.append(SlotBlock(label, limits[label], tuple(held), tuple(kept.get(label, ())),
                                own if own and len(own) >= limits[label] else ()))
    return blocks


def same_gist(message: str | None, blocks: list[SlotBlock]) -> bool:
    """Is a stored Queued message about the same full labels (whoever holds them now)?"""
    return _HELD_BY.sub("", message or "") == "; ".join(b.gist for b in blocks)


def plan_claims(
    candidates: Iterable[FlowRun],
    agent_labels: Iterable[str],
    limits: dict[str, int],
    holders: dict[str, list[str]],
    count: int,
) -> tuple[list[FlowRun], list[tuple[FlowRun, list[SlotBlock]]]]:
    """Choose up to `count` runs an agent takes now, and the runs it found blocked by full limits
    before it had them all.

    `candidates` must be oldest first. A run the agent may take that has a free slot in every
    limited label is chosen, and holds those slots for the runs after it. A run blocked on a full
    label stops every later run needing that label too (it is just as full), and it keeps a slot
    of each of its other limited labels for itself, so that later runs cannot take those one by
    one while it waits: a freed slot always goes to the oldest waiting run, and no run starves.
    Runs that need only labels with room to spare may go ahead. Choosing `count` runs at once
    chooses what `count` claims one after another would (`holders` is updated as it goes).
    """
    agent_labels = set(agent_labels)
    kept: dict[str, list[str]] = {}
    chosen: list[FlowRun] = []
    blocked: list[tuple[FlowRun, list[SlotBlock]]] = []
    for run in candidates:
        if len(chosen) >= count:
            break
        if not labels_match(run.labels, agent_labels):
            continue
        blocks = slot_blocks(run.labels, limits, holders, kept)
        if not blocks:
            chosen.append(run)
            for label in set(run.labels) & limits.keys():
                holders.setdefault(label, []).append(run.id)
            continue
        blocked.append((run, blocks))
        full = {block.label for block in blocks}
        for label in (set(run.labels) & limits.keys()) - full:
            kept.setdefault(label, []).append(run.id)
    return chosen, blocked


class ClaimStore(Store):
    """An agent's claim of the oldest run it may take, and why a waiting run still waits."""

    def claim_run(self, agent_name: str, agent_labels: Iterable[str],
                  heartbeat_timeout: float | None = None) -> FlowRun | None:
        """Take the oldest waiting run this agent may run and that has free slots (see `claim_runs`)."""
        runs = self.claim_runs(agent_name, agent_labels, heartbeat_timeout, 1)
        return runs[0] if runs else None

    def claim_runs(self, agent_name: str, agent_labels: Iterable[str], heartbeat_timeout: float | None = None,
                   count: int = 1) -> list[FlowRun]:
        """Take the oldest `count` waiting runs this agent may run and that have free slots, in
        one transaction: runs falling due at one instant (a clock's) start together, not one
        claim after another.

        The runs move to Submitted (agent set, heartbeat now). Runs found blocked by a full
        limit move to Queued with a message naming the label, its limit and the holders.
        """
        with self._transaction() as tx:
            # Every claim runs alone, so the slot count it reads is still true when it writes.
            self._serialize(tx, "claim")
            # A scheduled run waits for its time (`scheduled_start`); the others are due at once.
            waiting = self._runs(tx, f"state IN ({_marks(WAITING_STATES)})"
                                 " AND (scheduled_start IS NULL OR scheduled_start <= ?)", *WAITING_STATES, time.time())
            limits, holders = self._slots(tx)
            chosen, blocked = plan_claims(waiting, agent_labels, limits, holders, count)
            parents = self._parents(tx, [run.id for run, _ in blocked])
            for run, blocks in blocked:
                if run.id in parents:  # a subflow's child: are the slots held by its own ancestors?
                    ancestors = self._ancestors(tx, run.id, parents[run.id])
                    seen = {block.label: list(block.holders) for block in blocks}  # with the runs chosen before it
                    blocks = slot_blocks(run.labels, limits, seen, _kept(blocks), ancestors)
                self._queue(tx, run, blocks)
            extra = {"agent": agent_name, "heartbeat": time.time(), "runner": f"agent {agent_name}",
                     "heartbeat_timeout": heartbeat_timeout}
            # A run cancelled meanwhile is not taken; the agent simply polls again.
            taken = [run.id for run in chosen if self._move(tx, run.id, SUBMITTED, None, WAITING_STATES, extra)]
            if not taken:
                return []
            return self._runs(tx, f"id IN ({_marks(taken)})", *taken)

    def next_scheduled_start(self) -> float | None:
        """When the next Scheduled run not yet due becomes due (any labels: an agent woken for
        another's run only polls once more), or None. Agents wait for it rather than for their poll."""
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT MIN(scheduled_start) FROM flow_runs WHERE state = ? AND scheduled_start > ?",
                         SCHEDULED, time.time())
        return row[0] if row is not None and row[0] is not None else None

    def _queue(self, tx: Tx, run: FlowRun, blocks: list[SlotBlock]) -> None:
        message = "; ".join(map(str, blocks))
        if run.state == QUEUED and same_gist(run.message, blocks):
            # Same full labels, maybe other holders: refresh the message without new history.
            if run.message != message:
                tx.run("UPDATE flow_runs SET message = ? WHERE id = ?", message, run.id)
            return
        self._move(tx, run.id, QUEUED, message, {run.state}, {})

    def waiting_reason(self, run_id: str) -> str | None:
        """Why a Scheduled or Queued run is not running yet; None when nothing holds it back."""
        with self._transaction(write=False) as tx:
            runs = self._runs(tx, "id = ?", run_id)
            if not runs:
                raise NotFoundError(f"no flow run has id {run_id}")
            if runs[0].state not in WAITING_STATES:
                return None
            agents = self._agents(tx, AGENT_SEEN_WINDOW_S)
            limits, holders = self._slots(tx)
            ancestors = self._ancestors(tx, run_id)
        run = runs[0]
        blocks = [str(block) for block in slot_blocks(run.labels, limits, holders, (), ancestors)]
        if not blocks and run.state == QUEUED and run.message:
            blocks = [run.message]  # its slots are kept for older waiting runs: the claim said which
        return "; ".join(r for r in [agent_reason(run.labels, agents), *blocks] if r) or None

    def ancestor_blocks(self, run_id: str) -> list[SlotBlock]:
        """The limited labels of a waiting run whose every slot its own ancestors hold (a child
        that can start only after the parents waiting for it end)."""
        with self._transaction(write=False) as tx:
            runs = self._runs(tx, "id = ?", run_id)
            if not runs or runs[0].state not in WAITING_STATES:
                return []
            ancestors = self._ancestors(tx, run_id)
            if not ancestors:
                return []
            limits, holders = self._slots(tx)
        return [b for b in slot_blocks(runs[0].labels, limits, holders, (), ancestors) if b.ancestors]

    def _parents(self, tx: Tx, run_ids: list[str]) -> dict[str, str]:
        """The parent run of each of `run_ids` that has one (few do: subflow children)."""
        parents: dict[str, str] = {}
        for start in range(0, len(run_ids), 500):  # within every SQL engine's limit of parameters
            chunk = run_ids[start:start + 500]
            parents.update(tx.all(f"SELECT run_id, parent_run FROM run_links WHERE run_id IN ({_marks(chunk)})"
                                  " AND parent_run IS NOT NULL", *chunk))
        return parents

    def _ancestors(self, tx: Tx, run_id: str, parent: str | None = None) -> list[str]:
        """The chain of parent runs of `run_id`, nearest first (subflows nest a few deep)."""
        chain: list[str] = []
        if parent is None:
            row = tx.one("SELECT parent_run FROM run_links WHERE run_id = ?", run_id)
            parent = row[0] if row else None
        while parent is not None and parent not in chain and parent != run_id:
            chain.append(parent)
            row = tx.one("SELECT parent_run FROM run_links WHERE run_id = ?", parent)
            parent = row[0] if row else None
        return chain


def _kept(blocks: list[SlotBlock]) -> dict[str, list[str]]:
    return {b.label: list(b.kept_for) for b in blocks if b.kept_for}
