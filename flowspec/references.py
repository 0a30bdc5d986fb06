"""The `${{ … }}` reference grammar: parse at compile time, resolve at run time.

Grammar (nothing else is evaluated):
    ${{ params.NAME }}   ${{ tasks.NAME }}   ${{ env.NAME }}   ${{ env.NAME || 'fallback' }}
A string that is exactly one reference keeps the value's type; references inside a longer string
are formatted into it. Values are compiled once into `Ref` / `Template` objects embedded in the
data, so resolving a task's arguments only walks the parts that hold references.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_OPEN = "${{"
_ANY = re.compile(r"\$\{\{(.*?)\}\}", re.S)
_INNER = re.compile(
    r"^\s*(?P<kind>[A-Za-z_]\w*)\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)\s*"
    r"(?:\|\|\s*(?P<fallback>'(?:[^']|'')*'|\"[^\"]*\")\s*)?$"
)
KINDS = ("params", "tasks", "env")
_WHOLE = re.compile(r"\$\{\{\s*(params|tasks|env)\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}").fullmatch


class ReferenceError_(ValueError):
    """A malformed reference; `column` is the offset in the string where it starts."""

    def __init__(self, message: str, offset: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.hint = hint


class UnsetEnvError(LookupError):
    """`${{ env.NAME }}` without a fallback, and NAME is not set."""


class Ref:
    """One reference: `kind` (params | tasks | env), `name`, the env `fallback`, and `offset`,
    where it starts in its string (for diagnostics). Read-only by convention; a plain class
    with slots, since a flow of 10 000 tasks makes one per argument."""

    __slots__ = ("kind", "name", "fallback", "offset")

    def __init__(self, kind: str, name: str, fallback: str | None = None, offset: int = 0) -> None:
        self.kind, self.name, self.fallback, self.offset = kind, name, fallback, offset

    def _fields(self) -> tuple:
        return self.kind, self.name, self.fallback, self.offset

    def __eq__(self, other) -> bool:
        return type(other) is Ref and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Ref(kind={self.kind!r}, name={self.name!r}, fallback={self.fallback!r}, offset={self.offset!r})"

    def __reduce__(self):
        return Ref, self._fields()

    def __str__(self) -> str:
        fb = " || '" + self.fallback.replace("'", "''") + "'" if self.fallback is not None else ""
        return f"${{{{ {self.kind}.{self.name}{fb} }}}}"


@dataclass(frozen=True)
class Template:
    """A string with references inside: literal parts alternate with Refs."""

    parts: tuple

    def refs(self):
        return [p for p in self.parts if isinstance(p, Ref)]


def parse_string(text: str):
    """Return `text` itself, a `Ref` (exactly one reference) or a `Template`."""
    if _OPEN not in text:
        return text
    whole = _WHOLE(text)
    if whole is not None:  # the common case, `${{ tasks.NAME }}`, in one match
        return Ref(whole.group(1), whole.group(2))
    parts: list = []
    pos = 0
    for m in _ANY.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append(_parse_inner(m.group(1), m.start()))
        pos = m.end()
    tail = text[pos:]
    if _OPEN in tail:
        raise ReferenceError_("unterminated reference: '${{' without a closing '}}'", pos + tail.index(_OPEN))
    if tail:
        parts.append(tail)
    if len(parts) == 1 and isinstance(parts[0], Ref):
        return parts[0]
    return Template(tuple(parts))


def _parse_inner(inner: str, offset: int) -> Ref:
    m = _INNER.match(inner)
    if not m:
        raise ReferenceError_(
            f"invalid reference '${{{{{inner}}}}}'", offset,
            "write ${{ params.NAME }}, ${{ tasks.NAME }} or ${{ env.NAME }} (optionally ${{ env.NAME || 'default' }});"
            " no other expressions are evaluated")
    kind, name, fallback = m.group("kind"), m.group("name"), m.group("fallback")
    if kind not in KINDS:
        from flowspec.schema import did_you_mean

        raise ReferenceError_(f"unknown reference kind '{kind}' in '${{{{{inner}}}}}'", offset,
                              did_you_mean(kind, KINDS) or "use params., tasks. or env.")
    if fallback is not None:
        if kind != "env":
            raise ReferenceError_(f"a fallback ('||') is only allowed for env references, not '{kind}'", offset)
        quote = fallback[0]
        fallback = fallback[1:-1].replace("''", "'") if quote == "'" else fallback[1:-1]
    return Ref(kind, name, fallback, offset)


def compile_value(value):
    """Parse every string inside `value` (nested lists and dicts included)."""
    if isinstance(value, str):
        return parse_string(value)
    if isinstance(value, list):
        return [compile_value(v) for v in value]
    if isinstance(value, dict):
        return {k: compile_value(v) for k, v in value.items()}
    return value


def iter_refs(value, path: tuple = ()):
    """Yield (path, Ref) for every reference in a compiled value."""
    if isinstance(value, Ref):
        yield path, value
    elif isinstance(value, Template):
        for r in value.refs():
            yield path, r
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_refs(v, path + (i,))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_refs(v, path + (k,))


def has_refs(value) -> bool:
    return next(iter_refs(value), None) is not None


def resolve(value, lookup):
    """Replace references using `lookup(ref) -> value`; constants are returned as they are."""
    if isinstance(value, Ref):
        return lookup(value)
    if isinstance(value, Template):
        return "".join(p if isinstance(p, str) else _fmt(lookup(p)) for p in value.parts)
    if isinstance(value, list):
        return [resolve(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, lookup) for k, v in value.items()}
    return value


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def env_lookup(environ):
    """A lookup for env references only, against a mapping such as os.environ."""
    def lookup(ref: Ref):
        if ref.kind != "env":
            raise LookupError(f"{ref} is not allowed here")
        if ref.name in environ:
            return environ[ref.name]
        if ref.fallback is not None:
            return ref.fallback
        raise UnsetEnvError(f"environment variable {ref.name} is not set (referenced as {ref})")
    return lookup
