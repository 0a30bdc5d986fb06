"""What a run's Job and pod are doing, in words for the run's history and its final message.

Prefect's Kubernetes agent learned late that a pod can wait forever without a word: the
scheduler finds no node, the Job controller may not create the pod (a quota, a missing service
account), the image cannot be pulled. These functions read the API objects (kubernetes client
models) and say which of those is happening; the drivers report each once and fail the run
after `pending_timeout()` seconds of it.
"""
from __future__ import annotations

import os

PENDING_TIMEOUT_S = 60.0
PENDING_TIMEOUT_VAR = "FLOWSPEC_K8S_PENDING_TIMEOUT"
# Container waiting reasons that are problems (ContainerCreating, PodInitializing are progress).
WAITING_PROBLEMS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                    "CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def pending_timeout() -> float:
    """Seconds a pod may stay in trouble before the run fails (`$FLOWSPEC_K8S_PENDING_TIMEOUT`)."""
    text = os.environ.get(PENDING_TIMEOUT_VAR, "")
    try:
        value = float(text) if text else PENDING_TIMEOUT_S
    except ValueError:
        value = PENDING_TIMEOUT_S
    return value if value > 0 else PENDING_TIMEOUT_S


def container_status(pod, container: str):
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if status.name == container:
            return status
    return None


def ended(pod, container: str) -> tuple[int | None, str] | None:
    """(exit code, reason) once the pod is over: terminated, evicted, failed; None while it runs."""
    status = pod.status
    if status is None:
        return None
    if status.reason == "Evicted":
        return None, f"was evicted: {status.message or 'the node ran short of a resource'}"
    cs = container_status(pod, container)
    terminated = cs.state.terminated if cs is not None and cs.state is not None else None
    if terminated is not None:
        return terminated.exit_code, terminated_reason(terminated)
    if status.phase in ("Succeeded", "Failed"):
        return None, f"failed: {status.reason or status.phase}: {status.message or 'no message'}"
    return None


def terminated_reason(terminated) -> str:
    code, reason = terminated.exit_code, terminated.reason or ""
    if reason == "OOMKilled":
        return f"was killed: OOMKilled (out of memory; exit code {code})"
    extra = f": {terminated.message.strip()}" if terminated.message and terminated.message.strip() else ""
    return f"exited with code {code}" + (f" ({reason}{extra})" if reason and reason != "Completed" else "")


def pod_problem(pod, container: str) -> str | None:
    """Why a pending pod does not start, when something is wrong (None: it is on its way)."""
    status = pod.status
    if status is None:
        return None
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason:
            return f"{cond.reason}: {cond.message or 'no node can run it'}"
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = cs.state.waiting if cs.state is not None else None
        if waiting is not None and waiting.reason in WAITING_PROBLEMS:
            return f"{waiting.reason}: {waiting.message or cs.image}"
    return None


def warning_events(events) -> list[str]:
    """The Warning events' reasons and messages, oldest first (FailedCreate, FailedMount, ...)."""
    items = sorted((e for e in events.items if e.type == "Warning"),
                   key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp or 0).timestamp()
                   if (e.last_timestamp or e.event_time or e.metadata.creation_timestamp) else 0)
    return [f"{e.reason}: {e.message}" for e in items]


def job_failed(job) -> str | None:
    """The Job's own Failed condition (DeadlineExceeded, BackoffLimitExceeded), if any."""
    for cond in (job.status.conditions or []) if job.status else []:
        if cond.type == "Failed" and cond.status == "True":
            return f"{cond.reason}: {cond.message}"
    return None


class Trouble:
    """A pod (or Job) in trouble: each new reason reported once, failure after the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.since: float | None = None
        self.reported: set[str] = set()

    def seen(self, problem: str | None, now: float) -> tuple[bool, bool]:
        """(is it new, has it lasted past the timeout) for the current problem (None: all well)."""
        if problem is None:
            self.since = None
            return False, False
        if self.since is None:
            self.since = now
        key = problem.split(":")[0]
        new = key not in self.reported
        self.reported.add(key)
        return new, now - self.since >= self.timeout
