"""Parameter values given on the command line (`--param NAME=VALUE`, `--params-file FILE`), shared
by `flowspec run FILE`, `flowspec run --name` and `flowspec plan`."""
from __future__ import annotations


def parameters(spec, args) -> dict:
    """The run's values of `spec.parameters`: the file's, then the flags', checked and typed."""
    from flowspec.params import load_params_file, parse_flag, resolve_parameters

    file_values, file_doc = load_params_file(args.params_file) if args.params_file else ({}, None)
    flags = [parse_flag(text, spec.parameters) for text in args.param]
    return resolve_parameters(spec.parameters, file_values, file_doc, flags)
