"""The `${{ … }}` reference language: parse at compile time, resolve at run time.

    ${{ params.NAME }}   ${{ tasks.NAME }}   ${{ env.NAME }}   ${{ env.NAME || 'fallback' }}
    ${{ tasks.fetch.rows[0]['id'] }}   ${{ tasks.a || tasks.b }}   ${{ params.n > 3 and not params.dry }}
A string that is exactly one reference keeps the value's type; references inside a longer string
are formatted into it. Values are compiled once into `Ref` / `Expr` / `Template` objects embedded
in the data, so resolving a task's arguments only walks the parts that hold references. The
expression grammar (tokenizer, parser, evaluator) lives in flowspec.expressions; this module keeps
the data model and the fast paths: a plain `${{ tasks.NAME }}` never reaches the parser.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_OPEN = "${{"
KINDS = ("params", "tasks", "env")  # what a task's `with`/`map` may name (today's specs)
# Every kind the language knows; a compiler passes the ones allowed where it parses.
ALL_KINDS = ("params", "tasks", "env", "secrets", "kv", "args", "result", "context")
_WHOLE = re.compile(r"\$\{\{\s*(params|tasks|env)\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}").fullmatch
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*").fullmatch  # a key written as `.key`
# A plain reference with accessors, `${{ tasks.NAME.rows[0]['id'] }}`, also without the parser.
_ACCESSED = re.compile(r"\$\{\{\s*(params|tasks|env)\.([A-Za-z_][A-Za-z0-9_-]*)((?:\.[A-Za-z_][A-Za-z0-9_-]*"
                       r"|\[(?:-?[0-9]{1,18}|'(?:[^']|'')*'|\"[^\"]*\")\])+)\s*\}\}").fullmatch
_ACCESSOR = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?[0-9]{1,18})\]|\['((?:[^']|'')*)'\]|\[\"([^\"]*)\"\]")


class ReferenceError_(ValueError):
    """A malformed reference; `offset` is where in the string the offending token starts."""

    def __init__(self, message: str, offset: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.hint = hint


class ResolveError(LookupError):
    """A reference or expression that cannot be resolved at run time: fails the consuming task
    run with its message (never a traceback)."""


class UnsetEnvError(ResolveError):
    """`${{ env.NAME }}` without a fallback, and NAME is not set."""


class UnsetValueError(ResolveError):
    """A reference whose lookup gave UNSET (a task that was Skipped) outside `||`."""


class AccessError(ResolveError):
    """An accessor (`.key`, `['key']`, `[0]`) that the value does not have."""


class ExpressionError(ResolveError):
    """An expression whose operands do not fit its operator (`'a' < 1`, `1 in 2`)."""


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self):
        return "UNSET"


UNSET = _Unset()  # what a lookup returns for a value that is not set (a Skipped task), for `||`


class Ref:
    """One reference: `kind`, `name`, the env `fallback` (UNSET for an env operand of `||` that is
    not the last: its lookup gives UNSET when the variable is unset), `offset` (where it starts in its
    string, for diagnostics), `accessors` (keys and indexes applied in order to the value) and
    `spots` (the offset of each accessor, for diagnostics; not part of equality). Read-only by
    convention; a plain class with slots, since a flow of 10 000 tasks makes one per argument."""

    __slots__ = ("kind", "name", "fallback", "offset", "accessors", "spots")

    def __init__(self, kind: str, name: str, fallback: str | None = None, offset: int = 0,
                 accessors: tuple = (), spots: tuple = ()) -> None:
        self.kind, self.name, self.fallback, self.offset = kind, name, fallback, offset
        self.accessors, self.spots = accessors, spots

    def _fields(self) -> tuple:
        return self.kind, self.name, self.fallback, self.offset, self.accessors

    def __eq__(self, other) -> bool:
        return type(other) is Ref and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        more = f", accessors={self.accessors!r}" if self.accessors else ""
        return (f"Ref(kind={self.kind!r}, name={self.name!r}, fallback={self.fallback!r}, "
                f"offset={self.offset!r}{more})")

    def __reduce__(self):
        if self.accessors:
            return Ref, (*self._fields(), self.spots)
        return Ref, (self.kind, self.name, self.fallback, self.offset)

    def path(self, upto: int | None = None) -> str:
        """The reference as written inside `${{ }}`, with its first `upto` accessors."""
        text = f"{self.kind}.{self.name}" if self.name else self.kind
        for key in self.accessors[:upto]:
            if isinstance(key, str) and _KEY(key):
                text += "." + key
            elif isinstance(key, str):
                text += "['" + key.replace("'", "''") + "']"
            else:
                text += f"[{key}]"
        return text

    def __str__(self) -> str:
        fb = " || '" + self.fallback.replace("'", "''") + "'" if isinstance(self.fallback, str) else ""
        return f"${{{{ {self.path()}{fb} }}}}"


class Expr:
    """A `${{ … }}` that is more than one reference: `root` is its syntax tree (nodes of
    flowspec.expressions, each with `ev(lookup)`), `refs` every reference in it, in order."""

    __slots__ = ("root", "refs_", "text", "offset")

    def __init__(self, root, refs: tuple, text: str, offset: int = 0) -> None:
        self.root, self.refs_, self.text, self.offset = root, refs, text, offset

    def refs(self):
        return self.refs_

    def evaluate(self, lookup):
        return self.root.ev(lookup)

    def __eq__(self, other) -> bool:
        return type(other) is Expr and (self.text, self.offset) == (other.text, other.offset)

    def __hash__(self) -> int:
        return hash((self.text, self.offset))

    def __repr__(self) -> str:
        return f"Expr({self.text!r}, offset={self.offset!r})"

    def __str__(self) -> str:
        return f"${{{{ {self.text} }}}}"


@dataclass(frozen=True)
class Template:
    """A string with references inside: literal parts alternate with Refs and Exprs."""

    parts: tuple

    def refs(self):
        out = []
        for p in self.parts:
            if isinstance(p, Ref):
                out.append(p)
            elif isinstance(p, Expr):
                out.extend(p.refs_)
        return out


def parse_string(text: str, kinds: tuple = KINDS):
    """Return `text` itself, a `Ref` (exactly one reference), an `Expr` (exactly one expression)
    or a `Template`. `kinds`: the reference kinds allowed here."""
    if _OPEN not in text:
        return text
    whole = _WHOLE(text)
    if whole is not None and whole.group(1) in kinds:  # the common case, `${{ tasks.NAME }}`, in one match
        return Ref(whole.group(1), whole.group(2))
    accessed = _ACCESSED(text)
    if accessed is not None and accessed.group(1) in kinds:
        return _accessed_ref(accessed)
    from flowspec.expressions import parse_template, simple_compare

    if (compared := simple_compare(text, kinds)) is not None:
        return compared
    parts = parse_template(text, kinds)
    if len(parts) == 1 and not isinstance(parts[0], str):
        return parts[0]
    return Template(tuple(parts))


def _accessed_ref(m) -> Ref:
    keys, spots = [], []
    for a in _ACCESSOR.finditer(m.string, m.start(3), m.end(3)):
        dotted, index, single, double = a.groups()
        keys.append(dotted if dotted is not None else int(index) if index is not None
                    else single.replace("''", "'") if single is not None else double)
        spots.append(a.start())
    return Ref(m.group(1), m.group(2), None, 0, tuple(keys), tuple(spots))


def compile_value(value, kinds: tuple = KINDS):
    """Parse every string inside `value` (nested lists and dicts included)."""
    if isinstance(value, str):
        return parse_string(value, kinds)
    if isinstance(value, list):
        return [compile_value(v, kinds) for v in value]
    if isinstance(value, dict):
        return {k: compile_value(v, kinds) for k, v in value.items()}
    return value


def iter_refs(value, path: tuple = ()):
    """Yield (path, Ref) for every reference in a compiled value."""
    if isinstance(value, Ref):
        yield path, value
    elif isinstance(value, (Template, Expr)):
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
        found = lookup(value)
        return found if not value.accessors and found is not UNSET else access(value, found)
    if isinstance(value, Template):
        return "".join(p if isinstance(p, str) else _fmt(resolve(p, lookup)) for p in value.parts)
    if isinstance(value, list):
        return [resolve(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, lookup) for k, v in value.items()}
    if isinstance(value, Expr):
        return value.root.ev(lookup)
    return value


def access(ref: Ref, value):
    """`value` (what `ref`'s kind and name gave) with `ref`'s accessors applied, in order. Only
    subscription: `.key` is `value['key']`, never an attribute. A string takes no accessor."""
    if value is UNSET and ref.kind == "env":
        raise UnsetEnvError(f"environment variable {ref.name} is not set (referenced as {ref})")
    if value is UNSET:
        raise UnsetValueError(f"{ref}: {ref.path(0)} was skipped and has no value")
    for i, key in enumerate(ref.accessors):
        if isinstance(value, (str, bytes)) or not hasattr(type(value), "__getitem__"):
            raise AccessError(f"{ref}: {ref.path(i)} is {_describe(value)}, which has no keys or indexes"
                              f" (cannot take {_show_key(key)})")
        try:
            value = value[key]
        except (KeyError, IndexError) as exc:
            raise AccessError(f"{ref}: {ref.path(i)} has no {_show_key(key)}; {_has(value)}") from exc
        except Exception as exc:  # a TypeError (a list given a key) or the object's own error
            raise AccessError(f"{ref}: cannot take {_show_key(key)} of {ref.path(i)} ({_describe(value)}): "
                              f"{type(exc).__name__}: {exc}; {_has(value)}") from exc
    return value


MAX_KEYS = 10  # keys named in an error about a missing one


def _show_key(key) -> str:
    return f"index {key}" if isinstance(key, int) else f"key {key!r}"


def _describe(value) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__} ({text})" if value is not None else "None"


def _has(value) -> str:
    """What `value` has: its keys (sorted, the first MAX_KEYS) or its length."""
    keys = None
    if isinstance(value, dict) or hasattr(value, "keys"):
        try:
            keys = sorted(map(str, value.keys()))
        except Exception:  # an object whose keys() is not a plain iterable of keys
            keys = None
    if keys is not None:
        if not keys:
            return f"the {type(value).__name__} is empty"
        shown = ", ".join(repr(k) for k in keys[:MAX_KEYS])
        more = f" and {len(keys) - MAX_KEYS} more" if len(keys) > MAX_KEYS else ""
        return f"its keys: {shown}{more}"
    try:
        n = len(value)
    except Exception:
        return f"it is {_describe(value)}"
    return f"the {type(value).__name__} is empty" if n == 0 else \
        f"the {type(value).__name__} has length {n} (indexes 0..{n - 1} or -{n}..-1)"


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def env_lookup(environ):
    """A lookup for env references only, against a mapping such as os.environ (an unset
    variable inside `||` falls through to the next operand)."""
    def lookup(ref: Ref):
        if ref.kind != "env":
            raise LookupError(f"{ref} is not allowed here")
        if ref.name in environ:
            return environ[ref.name]
        if ref.fallback is not None:
            return ref.fallback
        raise UnsetEnvError(f"environment variable {ref.name} is not set (referenced as {ref})")
    return lookup
