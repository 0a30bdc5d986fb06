"""The agent: claims the flow runs its labels allow and runs each in a child process.

One loop, woken every poll interval, as soon as a child exits, or when the next Scheduled run
falls due (so a run on a clock starts at its time, not up to a poll interval later):
1. reap children that exited; a child that died without a final state fails its run with its
   exit code and the last lines of its output;
2. heartbeat the agent (so `flowspec run --name` knows who is listening);
3. force-stop children whose run is still Cancelling CANCEL_GRACE_S after the agent saw it
   (the child itself notices Cancelling through its heartbeat and stops gracefully first);
4. mark lost runs (no heartbeat for their heartbeat timeout) Failed, whoever ran them, freeing
   slots (commands that read runs do the same, see Backend.mark_lost_runs);
5. claim runs (the backend applies the label rule and the concurrency limits), as many as
   there are fewer than `max_runs` children running, in one claim, and start a child for each.

Heartbeats: each child heartbeats its own run every `run_heartbeat_s`; a child whose agent died
ends its run and exits. So a run goes stale only when its process is gone without a word
(machine lost, `kill -9` of the child): any live agent then marks it Failed.

Outages: a step that fails on the backend (a database restart, a locked file) is retried with
backoff for up to `outage_tolerance` seconds, with one warning and one line when it is back;
children go on running and buffer what they record. Nothing is cancelled for it. Past the
tolerance the agent stops with an error. After an outage the agent judges no other run lost
until it has been back for a whole heartbeat timeout: their processes could not heartbeat
either.

Stopping (Ctrl-C, SIGTERM, or `flowspec agent stop NAME`, seen at the next poll): children are
stopped (their runs end Cancelled) and the agent is recorded stopped, so that nothing counts on it
any more.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flowspec.backend import ACTIVE_STATES, CANCELLED, CANCELLING, FAILED, SUBMITTED, Backend, FlowRun
from flowspec.backend.outage import DEFAULT_TOLERANCE_S, Outage
from flowspec.errors import BackendError
from flowspec.masking import mask_text, secret_values
from flowspec.recorder import HEARTBEAT_INTERVAL_S

AGENT_BEAT_S = 10.0  # well inside the one-minute window in which an agent counts as seen
CANCEL_CHECK_S = 1.0
CANCEL_GRACE_S = 10.0
WAKE_AFTER_DUE_S = 0.01  # past a Scheduled run's time, so that the claim finds it due
TAIL_LINES, TAIL_BYTES = 20, 4096

log = logging.getLogger("flowspec.agent")


@dataclass(frozen=True)
class AgentConfig:
    """What `flowspec agent start` was given (its defaults live there, in commands/agent.py)."""

    name: str
    backend_url: str
    labels: tuple[str, ...]
    env: Mapping[str, str]
    max_runs: int
    poll_interval: float
    heartbeat_timeout: float
    outage_tolerance: float = DEFAULT_TOLERANCE_S

    @property
    def run_heartbeat_s(self) -> float:
        # Several beats fit in one timeout, so one slow beat never makes a live run look stale.
        return min(HEARTBEAT_INTERVAL_S, self.heartbeat_timeout / 5)


@dataclass
class Child:
    """A flow run process of this agent."""

    run: FlowRun
    proc: subprocess.Popen
    output: Path
    cancel_seen: float | None = None


class Agent:
    """Polls a backend and runs the flow runs it claims in child processes (see the module doc)."""

    def __init__(self, backend: Backend, config: AgentConfig, runs_dir: Path) -> None:
        self.backend, self.config, self.runs_dir = backend, config, runs_dir
        self.children: dict[str, Child] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._due = {"beat": 0.0, "cancels": 0.0, "stale": 0.0}
        self._warm: tuple[subprocess.Popen, Path] | None = None
        self._platform = False  # has it run a flow from an image (docker, Kubernetes, Fargate)?
        self._log = logging.LoggerAdapter(log, {"task": f"agent {config.name}"})
        self.outage = Outage(backend.url, config.outage_tolerance,
                             lambda level, text: self._log.log(logging.getLevelName(level.upper()), "%s", text))
        self._judge_from = 0.0  # monotonic time from which this agent may judge other runs lost
        self._next_start: float | None = None  # when the next Scheduled run falls due (epoch seconds)

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until `stop()` (see `serve` for the signals), then stop children."""
        cfg = self.config
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.backend.agent_heartbeat(cfg.name, cfg.labels, starting=True)
        self._log.info("started: labels [%s], at most %d runs, polling %s every %gs, heartbeat timeout %gs,"
                       " outage tolerance %gs", ", ".join(cfg.labels), cfg.max_runs, self.backend.url,
                       cfg.poll_interval, cfg.heartbeat_timeout, cfg.outage_tolerance)
        self.warm_up()
        try:
            while not self._stopping.is_set():
                self._wake.clear()  # before the step: a child exiting during it wakes the next wait
                try:
                    self.step()
                except BackendError as exc:
                    self._wake.wait(self.outage.failed(exc))  # raises past the tolerance
                    self._due = dict.fromkeys(self._due, 0.0)  # once back: beat, check and reap at once
                    continue
                if self.outage.ongoing:
                    self.outage.ok()
                    self._judge_from = time.monotonic() + cfg.heartbeat_timeout
                self._wake.wait(self._until_next_poll())
        finally:
            self.shutdown()

    def _until_next_poll(self) -> float:
        """The poll interval, or less when a Scheduled run falls due before it: a run on a clock
        then starts at its time, not up to a poll interval later."""
        wait = self.config.poll_interval
        if self._next_start is not None:
            wait = min(wait, max(0.0, self._next_start - time.time()) + WAKE_AFTER_DUE_S)
        return wait

    def stop(self, *_: object) -> None:
        self._stopping.set()
        self._wake.set()

    def step(self) -> None:
        if self.backend.agent_stop_requested(self.config.name):  # `flowspec agent stop NAME`
            self._log.info("asked to stop (flowspec agent stop): stopping its flow runs")
            self.stop()
            return
        self.reap()
        if self._due_now("beat", AGENT_BEAT_S):
            self.backend.agent_heartbeat(self.config.name, self.config.labels)
        if self.children and self._due_now("cancels", CANCEL_CHECK_S):
            self.enforce_cancels()
        if self._due_now("stale", min(max(self.config.heartbeat_timeout / 4, 0.5), 10.0)):
            self.reap_stale()
        self.claim()

    def _due_now(self, what: str, every: float) -> bool:
        now = time.monotonic()
        if now < self._due[what]:
            return False
        self._due[what] = now + every
        return True

    def shutdown(self) -> None:
        """Stop every child (SIGTERM: its run ends Cancelled), then SIGKILL what is left."""
        self._close_warm()
        for child in self.children.values():
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_S
        for child in self.children.values():
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
        try:
            self.reap()
            self.backend.agent_stopped(self.config.name)
        except BackendError as exc:
            self._log.error("could not record how its runs and the agent ended: %s", exc.message)
        self._log.info("stopped")

    # -- starting runs -----------------------------------------------------------------------
    def claim(self) -> None:
        """Claim as many runs as there are free places, in one claim (runs that fall due at one
        instant start together), then start them; again while every place asked for was filled."""
        self._next_start = None
        while (free := self.config.max_runs - len(self.children)) > 0 and not self._stopping.is_set():
            runs = self.backend.claim_runs(self.config.name, self.config.labels, self.config.heartbeat_timeout, free)
            for run in runs:
                self.spawn(run)
            if len(runs) < free:
                self._next_start = self.backend.next_scheduled_start()
                return

    def spawn(self, run: FlowRun) -> None:
        """Hand the run to the warm child (or to a new one), then warm the next."""
        try:
            proc, output = self._hand_over(run.id)
        except OSError as exc:
            message = f"agent {self.config.name} could not start the flow run process: {exc}"
            self.backend.set_run_state(run.id, FAILED, message, expected_from={SUBMITTED})
            self._log.error("run %s: %s", run.id, message)
            return
        self.children[run.id] = Child(run, proc, output)
        threading.Thread(target=self._watch, args=(proc,), daemon=True, name=f"watch-{proc.pid}").start()
        self._log.info("run %s (flow %s) started in process %d", run.id, run.flow_name, proc.pid)
        if not self._platform:  # it runs from an image: the next warm children import what that needs
            from flowspec.environments.platform import runs_elsewhere

            self._platform = runs_elsewhere(self.backend, run)
        self.warm_up()

    def _hand_over(self, run_id: str) -> tuple[subprocess.Popen, Path]:
        warm, self._warm = self._warm, None
        if warm is not None:
            try:
                return _send(warm, run_id)
            except OSError:  # it died while it waited: say why, and start a fresh one
                warm[0].wait()
                self._log.warning("the process started ahead of time %s: %s", exit_text(warm[0].returncode),
                                  read_tail(warm[1]))
                warm[1].unlink(missing_ok=True)
        return _send(self._start_child(), run_id)

    def warm_up(self) -> None:
        """Keep one child started and waiting for a run id: a claimed run then starts at once."""
        if self._warm is None and not self._stopping.is_set():
            try:
                self._warm = self._start_child()
            except OSError as exc:
                self._log.warning("cannot start a flow run process ahead of time: %s", exc)

    def _start_child(self) -> tuple[subprocess.Popen, Path]:
        cfg = self.config
        output = self.runs_dir / f"child-{uuid.uuid4().hex}.log"
        cmd = [sys.executable, "-m", "flowspec.child", "--agent-pid", str(os.getpid()),
               "--heartbeat", f"{cfg.run_heartbeat_s:g}", "--outage-tolerance", f"{cfg.outage_tolerance:g}"]
        # Precedence, later wins: the agent's environment, its --env, then (in the child) the
        # flow's environment.env. The backend URL is the agent's own, whatever --env says.
        env = {**os.environ, **cfg.env, "FLOWSPEC_BACKEND": cfg.backend_url,
               "FLOWSPEC_AGENT_ENV": ",".join(cfg.env)}  # --env names: a container gets them all
        if self._platform:
            env["FLOWSPEC_WARM_PLATFORM"] = "1"
        with open(output, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return proc, output

    def _close_warm(self) -> None:
        if self._warm is not None:
            proc, output = self._warm
            self._warm = None
            proc.stdin.close()  # end of input: the child exits without running anything
            proc.wait()
            output.unlink(missing_ok=True)

    def _watch(self, proc: subprocess.Popen) -> None:
        proc.wait()
        self._wake.set()

    # -- ending runs -------------------------------------------------------------------------
    def reap(self) -> None:
        for run_id, child in list(self.children.items()):
            code = child.proc.poll()
            if code is not None:
                self.settle(child, code)  # first: if the backend fails, the child is settled on a later try
                del self.children[run_id]

    def settle(self, child: Child, code: int) -> None:
        """A child exited: if it left its run active, end the run with what the child said last."""
        run = self.backend.get_run(child.run.id)
        if run is not None and run.state in ACTIVE_STATES:
            final = CANCELLED if run.state == CANCELLING else FAILED
            message = f"the flow run process {exit_text(code)} without reporting a final state"
            tail = mask_text(read_tail(child.output), secret_values(run.parameters))  # it may print a password
            message += f"; its last output:\n{tail}" if tail else ""
            self.backend.set_run_state(run.id, final, message, expected_from={run.state},
                                       exit_code=code if code >= 0 else 128 - code)
            self._log.warning("run %s: %s: %s", run.id, final, message)
        else:
            state = run.state if run is not None else "gone"
            self._log.info("run %s finished: %s (exit code %d)", child.run.id, state, code)
        child.output.unlink(missing_ok=True)

    def enforce_cancels(self) -> None:
        cancelling = {run.id for run in self.backend.list_runs(states=[CANCELLING])}
        now = time.monotonic()
        for child in self.children.values():
            if child.run.id not in cancelling:
                continue
            if child.cancel_seen is None:
                child.cancel_seen = now
            elif now - child.cancel_seen > CANCEL_GRACE_S:
                self._log.warning("run %s: still running %gs after it was cancelled: killing it",
                                  child.run.id, CANCEL_GRACE_S)
                _signal_group(child.proc, signal.SIGKILL)

    def reap_stale(self) -> None:
        if time.monotonic() < self._judge_from:
            return  # just back from an outage: the others could not heartbeat either
        alive = [run_id for run_id, child in self.children.items() if child.proc.poll() is None]
        # Our live children's heartbeats are late, not lost: spared.
        timeout = self.config.heartbeat_timeout
        for run, message in self.backend.mark_lost_runs(f"agent {self.config.name}", timeout, spare=alive,
                                                        cap_s=timeout):
            self._log.warning("run %s: %s", run.id, message)


def _send(child: tuple[subprocess.Popen, Path], run_id: str) -> tuple[subprocess.Popen, Path]:
    """Tell a waiting child which run is its own."""
    child[0].stdin.write(f"{run_id}\n".encode())
    child[0].stdin.close()
    return child


def exit_text(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


def read_tail(path: Path) -> str:
    """The last TAIL_LINES lines of a file (from its last TAIL_BYTES bytes)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").rstrip().splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Signal the child's process group (it leads one): tasks' own subprocesses go with it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass


def serve(backend: Backend, config: AgentConfig, runs_dir: Path) -> None:
    """Run an agent in the foreground; SIGINT, SIGTERM and SIGHUP stop it (children are stopped
    first, then the agent is recorded stopped)."""
    agent = Agent(backend, config, runs_dir)
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, agent.stop) for sig in stops}
    try:
        agent.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
