"""The `remote` environment: the runner runs in place and the executor (typically `dask` with an
`address`) sends task runs to remote workers. In-process like `local`; the difference is where
the executor puts the work, which is the executor's business, not the environment's."""
from __future__ import annotations

from flowspec.environments.local import LocalEnvironment


class RemoteEnvironment(LocalEnvironment):
    """Runs the flow runner here and the tasks wherever the flow's executor sends them.
    YAML keys: the common ones only (`labels`, `env`, `on_start`, `on_exit`)."""
