"""The official kubernetes client: credentials, API objects, and its answers in words.

Credentials come from the kubeconfig (`$KUBECONFIG`, else `~/.kube/config`, its current
context) or, inside a pod, from the pod's service account; never from the spec. Every API
call goes through `call`, which turns an ApiException (or a connection failure) into a
FlowspecError that says what was refused and what to do.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from flowspec.errors import FlowspecError, require


@dataclass
class Kube:
    """An ApiClient of its own (never the library's global configuration) and the APIs we use."""

    api: Any
    core: Any
    batch: Any
    host: str

    def close(self) -> None:
        try:
            self.api.close()
        except Exception:  # closing a pool that is half gone: nothing to report
            pass


def connect(what: str = "the Kubernetes environments") -> Kube:
    """A client from the kubeconfig, or in a pod from its service account."""
    kubernetes = require("kubernetes", "k8s", what)
    from kubernetes import client, config

    configuration = client.Configuration()
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        if os.environ.get("KUBECONFIG") or os.path.exists(path):
            config.load_kube_config(config_file=path.split(os.pathsep)[0], client_configuration=configuration)
        else:
            in_cluster(configuration)
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as exc:
        raise FlowspecError(f"no Kubernetes credentials: {exc}",
                            hint="set KUBECONFIG (or write ~/.kube/config) with a current context, or run "
                                 "inside a pod with a service account") from None
    api = client.ApiClient(configuration)
    return Kube(api, client.CoreV1Api(api), client.BatchV1Api(api), configuration.host)


def in_cluster(configuration) -> None:
    """The pod's service account. `$FLOWSPEC_K8S_API_SERVER` (set by the dask-kubernetes driver
    when the cluster's API server is on loopback) replaces the service address, which a pod
    without cluster networking cannot reach; the loader's token refresh keeps that address."""
    from urllib.parse import urlsplit

    from kubernetes.config import incluster_config as ic

    environ = dict(os.environ)
    if server := os.environ.get("FLOWSPEC_K8S_API_SERVER"):
        parts = urlsplit(server)
        environ[ic.SERVICE_HOST_ENV_NAME], environ[ic.SERVICE_PORT_ENV_NAME] = parts.hostname, str(parts.port or 443)
    ic.InClusterConfigLoader(token_filename=ic.SERVICE_TOKEN_FILENAME, cert_filename=ic.SERVICE_CERT_FILENAME,
                             try_refresh_token=True, environ=environ).load_and_set(configuration)


def reason_of(exc) -> str:
    """The API server's own message from an ApiException's body, else its reason phrase."""
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        data = {}
    return data.get("message") or getattr(exc, "reason", None) or str(exc)


def status_of(exc) -> int | None:
    return getattr(exc, "status", None)


HINTS = {
    401: "the credentials in the kubeconfig were refused: refresh them (a token may have expired)",
    403: "the agent's service account or user lacks a permission: see the Role in docs/kubernetes.md",
    404: "check the namespace (environment.namespace) and that the object exists",
    409: "an object of that name exists already",
    410: "the cluster no longer has that version of the object: it is read again",
    422: "the cluster refused the manifest: fix the field it names",
}


def call(what: str, fn, *args, ok: tuple[int, ...] = (), **kwargs):
    """`fn(*args, **kwargs)`; an answer in `ok` returns None, any other failure is a FlowspecError."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status in ok:
            return None
        hint = HINTS.get(exc.status, "check that the cluster is up (kubectl get nodes)")
        raise FlowspecError(f"Kubernetes refused to {what} ({exc.status}): {reason_of(exc)}", hint=hint) from None
    except (HTTPError, OSError) as exc:
        raise FlowspecError(f"cannot reach the Kubernetes API server to {what}: {exc}",
                            hint="check the cluster address in the kubeconfig, and that the cluster is up") from None
