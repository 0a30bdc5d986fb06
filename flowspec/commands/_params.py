"""Parameter values given on the command line (`--param NAME=VALUE`, `--params-file FILE`), shared
by `flowspec run FILE`, `flowspec run --name` and `flowspec plan`."""
from __future__ import annotations


def parameters(spec, args, secrets: bool = True) -> dict:
    """The run's values of `spec.parameters`: the file's, then the flags', checked and typed.
    Without `secrets` (`plan`), a default that reads a secret is not resolved (see resolve_parameters)."""
    from flowspec.compile import unset_env
    from flowspec.errors import SpecError
    from flowspec.params import ParamsError, load_params_file, parse_flag, resolve_parameters

    file_values, file_doc = load_params_file(args.params_file) if args.params_file else ({}, None)
    flags = [parse_flag(text, spec.parameters) for text in args.param]
    if getattr(spec, "document", None) is None:  # a registered flow's run, made here for an agent:
        # a default that reads the environment is resolved where the run runs, not here
        return resolve_parameters(spec.parameters, file_values, file_doc, flags, env_defaults=False)
    # The variables that the executor and the defaults used (not those of a parameter given a
    # value) read, at their line and column; reported with any other parameter problem, once.
    unset = unset_env(spec, given={*file_values, *(name for name, _ in flags)}, storage=False)
    reported = {name for name in spec.parameters if any(d.path.startswith(f"parameters.{name}.") for d in unset)}
    try:
        values = resolve_parameters(spec.parameters, file_values, file_doc, flags, skip=reported, secrets=secrets)
    except ParamsError as exc:
        raise ParamsError(exc.diagnostics + unset, exc.problems) if unset else exc from None
    if unset:
        raise SpecError(unset)
    return values
