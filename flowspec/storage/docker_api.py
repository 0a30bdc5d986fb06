"""The two engine calls of every image build (is this image there? build this context) over the
engine's HTTP API with the standard library, and the same two through the SDK.

Why two ways: importing the docker SDK (requests, urllib3, their charsets and certificates)
takes 50-60 ms, more than the docker CLI's whole start, and a build after a one-line change
takes about half a second. So an engine on a local socket or on plain TCP is asked directly.
The SDK stays for what needs its knowledge: engines over SSH or TLS, builds whose FROM lines
may pull with registry credentials (a user's Dockerfile), and pushes, pulls and containers.
"""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

TIMEOUT = 120.0  # one answer; a build's stream waits as long as its steps take


class Image(NamedTuple):
    id: str
    labels: dict[str, str]


class EngineError(Exception):
    """The engine answered with an error status. `explanation` holds its words, as the SDK's errors do."""

    def __init__(self, status: int, explanation: str) -> None:
        super().__init__(f"{status}: {explanation}")
        self.status, self.explanation = status, explanation


def local_address(host: str | None, tls: bool) -> tuple[str, str] | None:
    """('unix', path) or ('tcp', host:port) when DOCKER_HOST is asked directly; None for the SDK."""
    if not host:
        return "unix", "/var/run/docker.sock"
    scheme, sep, rest = host.partition("://")
    if not sep:
        return None
    if scheme == "unix" and rest:
        return "unix", rest
    if scheme in ("tcp", "http") and rest and not tls:
        return "tcp", rest.rstrip("/")
    return None  # ssh://, npipe://, TLS: the SDK knows them


class HttpEngine:
    """The engine's API over a Unix socket or plain TCP, unversioned: the engine's own API version."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where

    def _connect(self, timeout: float | None):
        import http.client

        if self.kind == "tcp":
            return http.client.HTTPConnection(self.where, timeout=timeout)
        path = self.where

        class UnixConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)

        return UnixConnection("localhost", timeout=timeout)

    def _send(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
              timeout: float | None = TIMEOUT):
        conn = self._connect(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _error(status: int, text: bytes) -> EngineError:
        try:
            message = json.loads(text).get("message") or ""
        except (ValueError, AttributeError):
            message = text.decode(errors="replace").strip()
        return EngineError(status, message or f"HTTP {status}")

    def image(self, ref: str) -> Image | None:
        conn, resp = self._send("GET", f"/images/{quote(ref, safe=':/@')}/json")
        try:
            text = resp.read()
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._error(resp.status, text)
        found = json.loads(text)
        return Image(found["Id"], (found.get("Config") or {}).get("Labels") or {})

    def build(self, context: bytes, tag: str, dockerfile: str) -> Iterator[dict[str, Any]]:
        """The build's JSON messages as the engine sends them ({"stream": ...}, {"error": ...})."""
        query = urlencode({"t": tag, "dockerfile": dockerfile, "rm": "1", "forcerm": "0", "pull": "0"})
        conn, resp = self._send("POST", f"/build?{query}", body=context,
                                headers={"Content-Type": "application/x-tar"}, timeout=None)
        try:
            if resp.status != 200:
                raise self._error(resp.status, resp.read())
            for line in resp:  # one JSON object a line: the engine ends each with CRLF
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def close(self) -> None:
        pass  # a connection a call: nothing stays open


class SdkEngine:
    """The same two calls through a docker SDK client."""

    def __init__(self, client) -> None:
        self.client = client

    def image(self, ref: str) -> Image | None:
        import docker

        try:
            found = self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None
        return Image(found.id, found.labels or {})

    def build(self, context: bytes, tag: str, dockerfile: str) -> Iterator[dict[str, Any]]:
        return self.client.api.build(fileobj=context, custom_context=True, dockerfile=dockerfile, tag=tag,
                                     rm=True, forcerm=False, pull=False, decode=True)

    def close(self) -> None:
        self.client.close()


def http_engine() -> HttpEngine | None:
    """The engine at DOCKER_HOST asked directly, or None when only the SDK can reach it."""
    tls = bool(os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH"))  # as the SDK reads them
    address = local_address(os.environ.get("DOCKER_HOST"), tls)
    return HttpEngine(*address) if address else None
