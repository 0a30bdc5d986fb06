"""Kubernetes support shared by the `kubernetes-job` and `dask-kubernetes` environments.

    manifests  the Job and pod manifests flowspec sends: names, labels, templates, env merging
    checks     every manifest checked before it is sent: the official schemas and the API
               server's own rules, as positioned diagnostics (no kubernetes import)
    client     the official client: credentials, API objects, answers turned into FlowspecErrors
    watch      what a Job and its pod are doing, in words for the run's history
    dask       the run's temporary Dask cluster: worker pods owned by the Job's pod

`flowspec validate` imports `manifests` and `checks` only; the kubernetes client is imported by
`client`, inside the drivers.
"""
