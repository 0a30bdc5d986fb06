"""The `docker` environment: each flow run runs in a container from the flow's docker storage image."""
from __future__ import annotations

import codecs
import ipaddress
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from flowspec.environments.platform import FlowRunJob, Outcome, PlatformEnvironment
from flowspec.errors import FlowspecError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class DockerEnvironment(PlatformEnvironment):
    """Runs each flow run as a container on the engine at DOCKER_HOST (default: the local socket).

    YAML keys (`environment:`): the common ones (`labels`, `env`, `on_start`, `on_exit`) and
    `network_mode` (e.g. `host`), `volumes` (host path or volume name → path in the container,
    optionally `:ro`), `mem_limit` (bytes or e.g. `512m`), `cpus` (e.g. 1.5), `keep_container`
    (default false: a finished container is removed).

    The container must reach the backend: PostgreSQL (on this machine's loopback only with
    `network_mode: host`), or the SQLite file, bind-mounted at its own path when the engine is
    local (a unix socket).
    """

    platform = "container"

    def __init__(self, spec, location=None) -> None:
        super().__init__(spec, location)
        self.options = spec.environment.options
        self.mounts: dict[str, dict[str, str]] = {}
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from flowspec.storage.docker import engine

            self._client = engine()
        return self._client

    def prepare(self, url: str | None = None) -> None:
        """For `flowspec run FILE`: check that the backend is in reach, then build (or find) the image."""
        from flowspec.backend import backend_url
        from flowspec.storage import storage_for

        self.backend_url = backend_url(url)
        self.backend_url_inside(self.backend_url)
        if self.location is None:
            self.location = storage_for(self.spec.storage.type).build(self.spec)

    # -- the backend, seen from inside ------------------------------------------------------------------
    def backend_url_inside(self, url: str) -> str:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme in ("postgresql", "postgres"):
            host = urlsplit(url).hostname or "localhost"
            if _is_loopback(host) and self.options.get("network_mode") != "host":
                raise FlowspecError(
                    f"the backend is a PostgreSQL server on this machine's loopback ({host}), which a container"
                    " reaches only with host networking",
                    hint="set environment.network_mode: host, or use a PostgreSQL server the container can reach")
            return url
        path = os.path.abspath(url[len("sqlite://"):] if scheme == "sqlite" else url)
        host = os.environ.get("DOCKER_HOST", "")
        if host and not host.startswith("unix://"):
            raise FlowspecError(
                f"the backend is the SQLite file {path}, but the Docker engine at {host} may be on another"
                " machine: a container can use an SQLite backend only on a local engine (a unix socket)",
                hint="use a PostgreSQL backend (FLOWSPEC_BACKEND=postgresql://...) that the container can reach")
        folder = os.path.dirname(path)  # the folder: SQLite writes its journal beside the file
        self.mounts = {folder: {"bind": folder, "mode": "rw"}}
        return f"sqlite://{path}"

    # -- the container ------------------------------------------------------------------------------------
    def start(self, job: FlowRunJob) -> Any:
        from flowspec.environments.docker_options import resolved

        opts = resolved(self.options)  # `${{ env.NAME }}` read where the run starts, never passed on as text
        volumes = dict(self.mounts)
        for source, target in (opts.get("volumes") or {}).items():
            bind, _, mode = target.partition(":")
            volumes[source] = {"bind": bind, "mode": mode or "rw"}
        kwargs: dict[str, Any] = {"environment": dict(job.env), "name": job.name, "labels": dict(job.labels),
                                  "volumes": volumes, "detach": True, "init": False}
        if opts.get("network_mode"):
            kwargs["network_mode"] = opts["network_mode"]
        if opts.get("mem_limit") is not None:
            kwargs["mem_limit"] = opts["mem_limit"]
            kwargs["memswap_limit"] = opts["mem_limit"]  # no swap beyond the limit: OOM is OOM
        if opts.get("cpus") is not None:
            kwargs["nano_cpus"] = int(float(opts["cpus"]) * 1e9)
        client = self.client
        try:
            container = client.containers.create(self._image(job.image), list(job.command), **kwargs)
        except FlowspecError:
            raise
        except Exception as exc:
            raise self._refused(exc, f"creating the container for run {job.run_id}") from None
        handle = _Container(container)
        try:
            container.start()
        except Exception as exc:
            self.cleanup(handle, None)
            raise self._refused(exc, f"starting the container for run {job.run_id}") from None
        handle.watch()
        if self.run_backend is not None:
            handle.output = threading.Thread(target=_record_stdout, args=(handle, self.run_backend, job.run_id),
                                             daemon=True, name=f"stdout-{container.short_id}")
            handle.output.start()
        return handle

    def _image(self, ref: str) -> str:
        from flowspec.storage.docker import find_image

        return find_image(self.client, ref, bool((self.location or {}).get("registry_url"))).id

    def _refused(self, exc: Exception, doing: str) -> FlowspecError:
        from flowspec.storage.docker import engine_error

        explanation = getattr(exc, "explanation", None)
        if explanation:
            return FlowspecError(f"the Docker engine refused {doing}: {explanation}",
                                 hint="check environment.network_mode, volumes, mem_limit and cpus")
        return engine_error(exc, doing)

    def wait(self, handle: Any, timeout: float) -> Outcome | None:
        if not handle.ended.wait(timeout):
            return None
        try:
            handle.container.reload()
            state = handle.container.attrs.get("State", {})
        except Exception:  # removed from outside: the exit code from wait() is all there is
            state = {"ExitCode": handle.exit_code}
        code = state.get("ExitCode", handle.exit_code)
        if state.get("OOMKilled"):
            limit = self.options.get("mem_limit")
            return Outcome(code, f"was killed: OOMKilled (out of memory at mem_limit {limit}; exit code {code})")
        if code == 137:
            return Outcome(code, "was killed (SIGKILL, exit code 137)")
        if code is None:
            return Outcome(None, f"ended: {handle.error or 'its state cannot be read'}")
        return Outcome(code, f"exited with code {code}")

    def stream_logs(self, handle: Any, write) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            for chunk in handle.container.logs(stream=True, follow=True):
                write(decoder.decode(chunk))
        except Exception as exc:
            from flowspec.storage.docker import engine_error

            raise engine_error(exc, "reading the container's output") from None
        write(decoder.decode(b"", final=True))

    def stop(self, handle: Any, grace_s: float) -> None:
        try:
            if grace_s > 0:
                handle.container.stop(timeout=int(grace_s))
            else:
                handle.container.kill()
        except Exception:  # it ended (or was removed) meanwhile
            pass

    def cleanup(self, handle: Any, outcome: Outcome | None) -> None:
        if handle.output is not None and outcome is not None:
            handle.output.join(5.0)  # its last lines into the run's logs, before the container goes
        if self.options.get("keep_container"):
            return
        try:
            handle.container.remove(force=True)
        except Exception as exc:
            if "No such container" not in str(exc) and "is already in progress" not in str(exc):
                from flowspec.storage.docker import engine_error

                raise engine_error(exc, f"removing container {handle.container.name}") from None


class _Container:
    """A started container and a thread that waits for it to end."""

    def __init__(self, container) -> None:
        self.container = container
        self.ended = threading.Event()
        self.exit_code: int | None = None
        self.error: str | None = None
        self.output: threading.Thread | None = None  # records its standard output in the run's logs

    def watch(self) -> None:
        threading.Thread(target=self._wait, daemon=True, name=f"wait-{self.container.short_id}").start()

    def _wait(self) -> None:
        try:
            self.exit_code = self.container.wait().get("StatusCode")
        except Exception as exc:  # removed from outside, or the engine went away
            self.error = str(exc)
        self.ended.set()


OUTPUT_EVERY_S = 0.2


def _record_stdout(handle: _Container, backend, run_id: str) -> None:
    """The container's standard output (its tasks' print()) into the run's logs, in batches. Its
    standard error carries flowspec's own log lines, which the run inside records itself."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending, lines, last = "", [], time.monotonic()
    label = "output"

    def write(batch: list) -> None:
        try:
            backend.add_logs(run_id, batch)
        except FlowspecError:  # they still reached the watcher's output
            pass

    try:
        for chunk in handle.container.logs(stream=True, follow=True, stdout=True, stderr=False):
            parts = (pending + decoder.decode(chunk)).split("\n")
            pending = parts.pop()
            lines += [(time.time(), "INFO", label, text) for text in parts]
            if lines and time.monotonic() - last >= OUTPUT_EVERY_S:
                write(lines)
                lines, last = [], time.monotonic()
    except Exception:  # removed under the stream: its output ends there
        pass
    if pending:
        lines.append((time.time(), "INFO", label, pending))
    if lines:
        write(lines)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
