"""Parameter values: types, parsing of `--param` and `--params-file`, and the final check."""
from __future__ import annotations

import json

from flowspec.diagnostics import Diagnostic
from flowspec.errors import UsageError

_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def type_error(value: object, declared: str | None, enum: tuple | None = None) -> str | None:
    """Why `value` does not fit the declared type (and enum), or None when it fits."""
    check = _CHECKS.get(declared)  # an unknown type name is the schema's error, reported there
    if check is not None and not check(value):
        return f"expected {declared}, got {_show(value)}"
    if enum is not None and value not in enum:
        return f"{_show(value)} is not one of: {' | '.join(json.dumps(e) for e in enum)}" + _closest(value, enum)
    return None


def _closest(value: object, enum: tuple) -> str:
    """`; did you mean "green"?` for a value close to one of the enum's (any case), else ''."""
    import difflib

    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return ""
    shown = {str(e).lower(): e for e in enum if isinstance(e, (str, int, float)) and not isinstance(e, bool)}
    close = difflib.get_close_matches(str(value).lower(), shown, n=1, cutoff=0.6)
    return f"; did you mean {json.dumps(shown[close[0]])}?" if close else ""


def _show(value: object) -> str:
    text = json.dumps(value, default=str)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {text}"


def parse_flag(text: str, parameters) -> tuple[str, object]:
    """`NAME=VALUE` → (name, value): raw for string parameters, else a YAML scalar or collection."""
    from flowspec.loader import LoadError, load_text

    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"--param {text!r}: expected NAME=VALUE", "e.g. --param people='[Arthur, Ford]'")
    spec = parameters.get(name)
    if spec is not None and spec.type == "string":
        return name, raw
    try:  # the spec's own loader: the same YAML rules as in flow.yaml (dates stay strings, no tags)
        return name, load_text(raw, "--param").data if raw.strip() else raw
    except LoadError as exc:
        d = exc.diagnostics[0]
        lines = raw.split("\n")
        # past the last character is "the end", however the YAML library marks it
        at_end = d.line > len(lines) or (d.line == len(lines) and d.column > len(lines[-1]))
        where = "at the end" if at_end else f"at column {d.column}"
        why = d.message.removeprefix("invalid YAML: ")
        raise UsageError(f"--param {name}: cannot parse {raw!r} as YAML {where}: {why}",
                         "quote strings that contain ':' or '#', e.g. --param x='\"a: b\"'") from None


def load_params_file(path: str) -> tuple[dict, object]:
    """A YAML mapping of name → value; returns the values and the Document for positions."""
    from flowspec.loader import LoadError, load_file

    try:
        doc = load_file(path)
    except OSError as exc:
        raise UsageError(f"--params-file {path}: cannot read it ({exc.strerror})") from None
    except LoadError as exc:
        raise ParamsError(exc.diagnostics) from None
    if doc.data is None:
        return {}, doc
    if not isinstance(doc.data, dict):
        raise ParamsError([doc.diag((), "a params file must be a mapping of parameter name to value")])
    return doc.data, doc


class ParamsError(UsageError):
    """Parameter problems found in a params file, with their positions."""

    def __init__(self, diagnostics: list[Diagnostic], problems: list[str] = ()) -> None:
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        self.problems = list(problems)
        super().__init__("\n".join([d.text() for d in self.diagnostics] + self.problems))


def resolve_parameters(parameters, file_values: dict, file_doc, flag_values: list[tuple[str, object]],
                       environ=None, env_defaults: bool = True, skip=(), secrets: bool = True) -> dict:
    """Merge defaults < params file < --param flags; every problem reported at once. Defaults
    read `${{ env.NAME }}` from `environ` (default: this process's environment); without
    `env_defaults`, a default that reads the environment is left out (resolved where the run
    runs). The defaults of parameters in `skip` are left out too (their problem said already).
    Without `secrets` (`plan`), a default that reads a secret is not resolved: it is the mask."""
    problems: list[str] = []
    diags: list[Diagnostic] = []
    values: dict = {}
    for name, value in file_values.items():
        if name not in parameters:
            diags.append(file_doc.diag((name,), f"unknown parameter '{name}'", _known(name, parameters), key=True))
        elif (why := type_error(value, parameters[name].type, parameters[name].enum)):
            diags.append(file_doc.diag((name,), f"parameter '{name}': {why}"))
        values[name] = value
    for name, value in flag_values:
        if name not in parameters:
            problems.append(f"--param {name}: unknown parameter '{name}' ({_known(name, parameters)})")
        elif (why := type_error(value, parameters[name].type, parameters[name].enum)):
            problems.append(f"--param {name}: {why}")
        values[name] = value
    for name, spec in parameters.items():
        if name not in values:
            if spec.required:
                problems.append(f"missing required parameter '{name}'"
                                f" (give it with --param {name}=VALUE or in --params-file)")
            elif name not in skip and (env_defaults or not reads_env(spec.default)):
                try:
                    values[name] = default_value(spec, environ) if secrets or not reads_secrets(spec.default) \
                        else _mask()
                except ValueError as exc:
                    problems.append(str(exc))
    if diags or problems:
        raise ParamsError(diags, problems)
    return {name: values[name] for name in parameters if name in values}


def _mask() -> str:
    from flowspec.masking import MASK

    return MASK


# What a parameter default may reference: the environment and secrets (params and tasks parse,
# so that the compiler can say they are not allowed there).
DEFAULT_KINDS = ("params", "tasks", "env", "secrets")


def reads_env(default) -> bool:
    """Does a parameter default hold `${{ env.NAME }}` references?"""
    from flowspec import references as refs

    if not isinstance(default, (str, list, dict)) or isinstance(default, str) and "${{" not in default:
        return False
    try:
        return refs.has_refs(refs.compile_value(default, DEFAULT_KINDS))
    except refs.ReferenceError_:
        return False


def reads_secrets(default) -> bool:
    """Does a parameter default hold `${{ secrets.NAME }}` references (then the parameter is secret)?"""
    from flowspec import references as refs

    if not isinstance(default, (str, list, dict)) or isinstance(default, str) and "${{" not in default:
        return False
    try:
        return any(ref.kind == "secrets" for _, ref in refs.iter_refs(refs.compile_value(default, DEFAULT_KINDS)))
    except refs.ReferenceError_:
        return False


def _default_lookup(spec, environ):
    """env references from `environ`; secrets resolved here, where the run runs (and masked)."""
    from flowspec import references as refs

    env = refs.env_lookup(environ)

    def lookup(ref):
        if ref.kind != "secrets":
            return env(ref)
        from flowspec import masking, secrets

        try:
            value = secrets.resolve(ref.name, environ)
        except secrets.SecretError as exc:
            raise ValueError(f"parameter '{spec.name}': its default reads {ref}: {exc.message}"
                             + (f" ({exc.hint})" if exc.hint else "")) from None
        masking.add_runtime_values([value])
        return value
    return lookup


def default_value(spec, environ=None):
    """A parameter's default with its `${{ env.NAME }}` references resolved. A default that is
    exactly one reference, of a parameter that is not a string, is parsed as a --param value is
    (`port: {type: integer, default: ${{ env.PORT || '8080' }}}` gives 8080); the result must
    fit the type. ValueError says what is wrong."""
    import os

    from flowspec import references as refs

    default = spec.default
    if not reads_env(default):
        return default
    compiled = refs.compile_value(default, DEFAULT_KINDS)
    environ = os.environ if environ is None else environ
    unset = next((r for _, r in refs.iter_refs(compiled) if r.kind == "env" and r.fallback is None
                  and r.name not in environ), None)
    if unset is not None:
        raise ValueError(f"parameter '{spec.name}': its default reads {unset}, and {unset.name} is not set"
                         f" (set it, give --param {spec.name}=VALUE, or write"
                         f" ${{{{ env.{unset.name} || 'fallback' }}}})")
    value = refs.resolve(compiled, _default_lookup(spec, environ))
    if isinstance(compiled, refs.Ref) and spec.type not in (None, "string"):
        try:
            value = parse_flag(f"{spec.name}={value}", {})[1]
        except UsageError:
            pass  # not YAML: kept as the string it is, which the type check below refuses
    if (why := type_error(value, spec.type, spec.enum)):
        raise ValueError(f"parameter '{spec.name}': its default {default} resolves to a value that does not"
                         f" fit: {why}")
    return value


def _known(name: str, parameters) -> str:
    from flowspec.schema import did_you_mean

    return did_you_mean(name, list(parameters)) or (
        f"known parameters: {', '.join(parameters)}" if parameters else "the flow declares no parameters")
