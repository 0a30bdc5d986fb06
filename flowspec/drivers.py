"""Driver tables: kind → "module:Class". The schema's `type` enums are tested against these keys.

A value of None marks a kind that the schema accepts (so a full spec validates) but that this
release cannot run yet; using it is a clear error, never a silent no-op.
"""
from __future__ import annotations

import importlib

from flowspec.errors import UsageError

EXECUTORS = {
    "local": "flowspec.executors.local:LocalExecutor",
    "local-dask": "flowspec.executors.local_dask:LocalDaskExecutor",
    "dask": "flowspec.executors.dask:DaskExecutor",
}

STORAGE = {
    "local": "flowspec.storage.local:LocalStorage",
    "docker": "flowspec.storage.docker:DockerStorage",
    "s3": "flowspec.storage.s3:S3Storage",
    "git": "flowspec.storage.git:GitStorage",
}

ENVIRONMENTS = {
    "local": "flowspec.environments.local:LocalEnvironment",
    "remote": "flowspec.environments.remote:RemoteEnvironment",
    "docker": "flowspec.environments.docker:DockerEnvironment",
    "kubernetes-job": "flowspec.environments.kubernetes_job:KubernetesJobEnvironment",
    "dask-kubernetes": "flowspec.environments.dask_kubernetes:DaskKubernetesEnvironment",
    "fargate-task": "flowspec.environments.fargate_task:FargateTaskEnvironment",
}

TABLES = {"executor": EXECUTORS, "storage": STORAGE, "environment": ENVIRONMENTS}


def available(table: str) -> list[str]:
    return [k for k, v in TABLES[table].items() if v]


def load_driver(table: str, kind: str):
    """The driver class for `kind`, or a UsageError naming what this release can do instead."""
    target = TABLES[table].get(kind)
    if target is None:
        raise UsageError(f"the {table} type '{kind}' is not available in this release of flowspec",
                         f"available {table} types: {', '.join(available(table))}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
