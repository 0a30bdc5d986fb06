"""The expression language inside `${{ }}`: tokenizer, parser, syntax tree and evaluator.

    expr     := coalesce
    coalesce := or ('||' or)*                 the first operand that is set
    or       := and ('or' and)*
    and      := not ('and' not)*
    not      := 'not' not | compare
    compare  := primary (('==' | '!=' | '<' | '<=' | '>' | '>=' | 'in' | 'not' 'in') primary)?
    primary  := literal | reference | '(' expr ')'
    literal  := 'text' ('' inside is one ') | "text" | integer | float | true | false | null
    reference:= KIND '.' NAME accessor* | 'result' accessor*
    accessor := '.' KEY | '[' ('text' | "text" | integer) ']'

Nothing else: no calls, no arithmetic, no attribute access (`.key` is a key lookup), never
Python's eval. The parser is hand-written recursive descent over a regex tokenizer, so every
syntax error knows the column of its token. `and`, `or` and `not` give booleans; `||` gives
the operand's own value.
"""
from __future__ import annotations

import operator
import re

from flowspec.references import (ALL_KINDS, KINDS, Expr, ExpressionError, Ref, ReferenceError_,
                                 UNSET, UnsetEnvError, UnsetValueError, access)

# One token per match, classified by its first character (_CLASS); group 1 is a character that
# starts no token (reported with _BAD). Whitespace between tokens is skipped by finditer.
_TOKEN = re.compile(r"""\}\}|'(?:[^']|'')*'|"[^"]*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_.])"""
                    r"""|[A-Za-z_][A-Za-z0-9_-]*|==|!=|<=|>=|\|\||[<>()\[\].]|(\S)""")
_CLASS = {**dict.fromkeys("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_", "name"),
          **dict.fromkeys("0123456789-", "num"), "'": "str", '"': "str", "}": "end",
          **dict.fromkeys("=!<>|()[].", "op")}
_WORD = re.compile(r"[^\s)\]}]*")
_BAD = {  # a character the grammar does not have → (what it is, a hint)
    "=": ("'=' is not an operator", "did you mean '=='?"),
    "&": ("'&' is not an operator", "use 'and' / 'or' / 'not'"),
    "|": ("'|' is not an operator", "did you mean '||' (the first operand that is set)? there are no filters"),
    "!": ("'!' is not an operator", "use 'not' (or '!=' to compare)"),
    "+": ("expressions have no arithmetic", "compute the value in a task and reference its result"),
    "*": ("expressions have no arithmetic", "compute the value in a task and reference its result"),
    "/": ("expressions have no arithmetic", "compute the value in a task and reference its result"),
    "%": ("expressions have no arithmetic", "compute the value in a task and reference its result"),
    "-": ("expressions have no arithmetic", "compute the value in a task and reference its result"),
    "'": ("unterminated string", "close it with the same quote; a ' inside '...' is written ''"),
    '"': ("unterminated string", "close it with the same quote"),
    "{": ("unexpected '{'", "a reference is written ${{ params.NAME }}"),
    "}": ("unexpected '}'", "a reference is written ${{ params.NAME }}"),
    ",": ("unexpected ','", "there are no lists or calls in expressions; use 'in' with a reference"),
}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b}
MAX_DEPTH = 50  # nested parentheses and `not`s in one expression
MAX_DIGITS = 100  # characters in a number literal
_CONSTANTS = {"true": True, "false": False, "null": None}
_UNSET_ERRORS = (UnsetEnvError, UnsetValueError)


# -- syntax tree: each node evaluates itself against a lookup -----------------------------------
class Lit:
    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def ev(self, lookup):
        return self.value


class RefNode:
    __slots__ = ("ref",)

    def __init__(self, ref: Ref) -> None:
        self.ref = ref

    def ev(self, lookup):
        ref = self.ref
        value = lookup(ref)
        if ref.accessors or value is UNSET:
            return access(ref, value)
        return value


class Not:
    __slots__ = ("operand", "where")

    def __init__(self, operand, where: str) -> None:
        self.operand, self.where = operand, where

    def ev(self, lookup):
        return not _truth(self.operand.ev(lookup), self.where)


class And:
    __slots__ = ("operands", "where")

    def __init__(self, operands: tuple, where: str) -> None:
        self.operands, self.where = operands, where

    def ev(self, lookup):
        return all(_truth(op.ev(lookup), self.where) for op in self.operands)


class Or(And):
    __slots__ = ()

    def ev(self, lookup):
        return any(_truth(op.ev(lookup), self.where) for op in self.operands)


class Compare:
    __slots__ = ("op", "left", "right", "where")

    def __init__(self, op: str, left, right, where: str) -> None:
        self.op, self.left, self.right, self.where = op, left, right, where

    def ev(self, lookup):
        a, b = self.left.ev(lookup), self.right.ev(lookup)
        try:
            return bool(_COMPARE[self.op](a, b))
        except Exception as exc:  # '<' between a string and a number, 'in' an integer, …
            raise ExpressionError(f"{self.where}: cannot evaluate {_show(a)} {self.op} {_show(b)} "
                                  f"({type(exc).__name__}: {exc})") from exc


class Coalesce:
    """`a || b || c`: the first operand that is set (an env variable that exists, a task that was
    not Skipped); the last one's error when none is."""
    __slots__ = ("operands",)

    def __init__(self, operands: tuple) -> None:
        self.operands = operands

    def ev(self, lookup):
        *first, last = self.operands
        for op in first:
            try:
                return op.ev(lookup)
            except _UNSET_ERRORS:
                continue
        return last.ev(lookup)


def _truth(value, where: str) -> bool:
    try:
        return bool(value)
    except Exception as exc:  # an object whose truth is ambiguous (an array)
        raise ExpressionError(f"{where}: {_show(value)} is neither true nor false "
                              f"({type(exc).__name__}: {exc})") from exc


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- tokenizer ---------------------------------------------------------------------------------
def tokenize(text: str, start: int) -> tuple[list[tuple], int]:
    """Tokens of the `${{ … }}` opening at `start`, as (type, value, offset) up to and including
    its closing `}}` (type 'end'), and the offset just past it."""
    out = []
    classes = _CLASS
    for m in _TOKEN.finditer(text, start + 3):
        if m.lastindex:
            raise _bad_char(text, start, m.start())
        value = m.group()
        kind = classes[value[0]]
        out.append((kind, value, m.start()))
        if kind == "end":
            return out, m.end()
    raise ReferenceError_("unterminated reference: '${{' without a closing '}}'", start)


def _bad_char(text: str, start: int, at: int) -> ReferenceError_:
    ch = text[at]
    what, hint = _BAD.get(ch, (f"unexpected character {ch!r}", None))
    if ch.isdigit():
        word = _WORD.match(text, at).group()
        what, hint = f"malformed number {word!r}", "numbers are written 3, -1, 2.5 or 1e3; an index goes in brackets: [0]"
    return ReferenceError_(f"invalid expression '{_block(text, start)}': {what}", at, hint)


def _block(text: str, start: int) -> str:
    """The `${{ … }}` opening at `start`, as written (for messages)."""
    end = text.find("}}", start + 3)
    return text[start:end + 2] if end >= 0 else text[start:]


# -- parser ------------------------------------------------------------------------------------
# The most common condition, `${{ tasks.NAME > 0 }}`: one reference without accessors compared with
# one literal, in one match. It builds the tree the parser would (a test holds them equal), since
# a flow of 10 000 conditional tasks would otherwise spend most of its compile time parsing.
_SIMPLE_COMPARE = re.compile(
    r"""\$\{\{\s*([a-z]+)\.([A-Za-z_][A-Za-z0-9_-]*)\s*(==|!=|<=|>=|<|>)\s*"""
    r"""(-?[0-9]{1,18}(?![0-9.eE])|'(?:[^']|'')*'|"[^"]*"|true|false|null)\s*\}\}""").fullmatch


def simple_compare(text: str, kinds: tuple) -> Expr | None:
    """The Expr of `text` when it is exactly `${{ KIND.NAME OP LITERAL }}`, else None."""
    m = _SIMPLE_COMPARE(text)
    if m is None or m.group(1) not in kinds or m.group(1) == "result":
        return None
    literal = m.group(4)
    if literal[0] == "'":
        value = literal[1:-1].replace("''", "'")
    elif literal[0] == '"':
        value = literal[1:-1]
    else:
        value = _CONSTANTS[literal] if literal in _CONSTANTS else int(literal)
    ref = Ref(m.group(1), m.group(2), None, m.start(1))
    root = Compare(m.group(3), RefNode(ref), Lit(value), text)
    return Expr(root, (ref,), text[3:-2].strip(), 0)


def parse_template(text: str, kinds: tuple = KINDS) -> list:
    """The parts of `text`: literal strings, and a Ref or Expr for each `${{ … }}`."""
    parts: list = []
    pos = 0
    while (i := text.find("${{", pos)) >= 0:
        if i > pos:
            parts.append(text[pos:i])
        tokens, pos = tokenize(text, i)
        parts.append(_Parser(text, i, tokens, kinds).whole())
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def parse_expression(inner: str, kinds: tuple = KINDS):
    """A Ref or an Expr for the text of one expression, without its `${{ }}` (tests, tools)."""
    parts = parse_template("${{ " + inner + " }}", kinds)
    if len(parts) != 1 or isinstance(parts[0], str):
        raise ReferenceError_(f"not one expression: {inner!r}", 0)
    return parts[0]


class _Parser:
    """Recursive descent over one `${{ … }}`'s tokens; offsets are into the whole string."""

    def __init__(self, text: str, start: int, tokens: list[tuple], kinds: tuple) -> None:
        self.text, self.start, self.tokens, self.kinds = text, start, tokens, kinds
        self.i = 0
        self.depth = 0  # open parentheses and `not`s: bounded, so that no input exhausts the stack
        self.refs: list[Ref] = []
        self.source = text[start:tokens[-1][2] + 2]  # `${{ … }}` as written

    # helpers
    def peek(self) -> tuple:
        return self.tokens[self.i]

    def take(self) -> tuple:
        tok = self.tokens[self.i]
        if tok[0] != "end":
            self.i += 1
        return tok

    def at(self, kind: str, value: str) -> bool:
        tok = self.tokens[self.i]
        return tok[0] == kind and tok[1] == value

    def fail(self, tok: tuple, what: str, hint: str | None = None) -> ReferenceError_:
        return ReferenceError_(f"invalid expression '{self.source}': {what}", tok[2], hint)

    # grammar
    def whole(self):
        if self.peek()[0] == "end":
            raise ReferenceError_(f"empty reference '{self.source}'", self.start,
                                  "write ${{ params.NAME }}, ${{ tasks.NAME }} or ${{ env.NAME }}, or an expression")
        root = self.coalesce()
        tok = self.peek()
        if tok[0] != "end":
            raise self.trailing(tok)
        if isinstance(root, RefNode):
            root.ref.offset = self.start  # a plain reference is reported at its `${{`, as always
            return root.ref
        if isinstance(root, Coalesce) and len(root.operands) == 2:  # `env.X || 'fallback'`: today's Ref
            first, second = root.operands
            if isinstance(first, RefNode) and first.ref.kind == "env" and not first.ref.accessors \
                    and isinstance(second, Lit) and isinstance(second.value, str):
                return Ref("env", first.ref.name, second.value, self.start)
        return Expr(root, tuple(self.refs), self.source[3:-2].strip(), self.start)

    def trailing(self, tok: tuple) -> ReferenceError_:
        if tok[1] == ")":
            return self.fail(tok, "unbalanced parentheses: ')' without a matching '('")
        if tok[0] == "op" and tok[1] in ("<", ">", "<=", ">=", "==", "!="):
            return self.fail(tok, f"comparisons cannot be chained ('{tok[1]}' after a comparison)",
                             "join them with 'and': a < b and b < c")
        if tok[1] == "in" or (tok[1] == "not" and self.tokens[self.i + 1][1] == "in"):
            return self.fail(tok, f"comparisons cannot be chained ('{tok[1]}' after a comparison)",
                             "join them with 'and', or add parentheses")
        return self.fail(tok, f"unexpected {_tok(tok)} after a complete expression",
                         "join two conditions with 'and' / 'or'; strings are quoted: 'text'")

    # A token's value tells keywords and operators apart: a string token keeps its quotes.
    def coalesce(self):
        operands = [self.or_()]
        while self.tokens[self.i][1] == "||":
            self.i += 1
            operands.append(self.or_())
        if len(operands) == 1:
            return operands[0]
        for op in operands[:-1]:  # an env variable here may be unset: the next operand is taken
            if isinstance(op, RefNode) and op.ref.kind == "env" and op.ref.fallback is None:
                op.ref.fallback = UNSET
        return Coalesce(tuple(operands))

    def or_(self):
        first = self.and_()
        if self.tokens[self.i][1] != "or":
            return first
        operands = [first]
        while self.tokens[self.i][1] == "or":
            self.i += 1
            operands.append(self.and_())
        return Or(tuple(operands), self.source)

    def and_(self):
        first = self.not_()
        if self.tokens[self.i][1] != "and":
            return first
        operands = [first]
        while self.tokens[self.i][1] == "and":
            self.i += 1
            operands.append(self.not_())
        return And(tuple(operands), self.source)

    def not_(self):
        if self.tokens[self.i][1] == "not":
            self.nest(self.tokens[self.i])
            self.i += 1
            operand = self.not_()
            self.depth -= 1
            return Not(operand, self.source)
        return self.compare()

    def nest(self, tok: tuple) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(tok, f"the expression nests deeper than {MAX_DEPTH} levels",
                            "compute the value in a task and reference its result")

    def compare(self):
        left = self.primary()
        tok = self.peek()
        if tok[0] == "op" and tok[1] in _COMPARE:
            op = tok[1]
        elif tok[0] == "name" and tok[1] == "in":
            op = "in"
        elif tok[0] == "name" and tok[1] == "not" and self.tokens[self.i + 1][1] == "in":
            self.take()
            op = "not in"
        else:
            return left
        self.take()
        return Compare(op, left, self.primary(), self.source)

    def primary(self):
        tok = self.take()
        kind, value = tok[0], tok[1]
        if kind == "str":
            return Lit(value[1:-1].replace("''", "'") if value[0] == "'" else value[1:-1])
        if kind == "num":
            return Lit(self.number(tok))
        if kind == "op":
            if value == "(":
                self.nest(tok)
                inner = self.coalesce()
                self.depth -= 1
                if not self.at("op", ")"):
                    closing = self.peek()
                    if closing[0] == "end":
                        raise self.fail(tok, "unbalanced parentheses: this '(' is never closed",
                                        "add the ')' that closes it")
                    raise self.fail(closing, f"expected ')' to close the '(', got {_tok(closing)}")
                self.take()
                return inner
            if value == ")":
                raise self.fail(tok, "unbalanced parentheses: ')' without a matching '('")
            if value == "||":
                raise self.fail(tok, "'||' needs a value on each side")
            if value == ".":
                raise self.fail(tok, "unexpected '.': a reference starts with its kind",
                                "write ${{ params.NAME }}, ${{ tasks.NAME }} or ${{ env.NAME }}")
            if value == "[":
                raise self.fail(tok, "unexpected '[': there are no list literals",
                                "an index follows a reference: ${{ tasks.NAME[0] }}")
            raise self.fail(tok, f"'{value}' needs a value on each side")
        if kind == "end":
            raise self.fail(tok, "the expression ends where a value is expected",
                            "complete it, e.g. ${{ params.NAME == 'text' }}")
        return self.word(tok)

    def word(self, tok: tuple):
        """A name at the start of a value: a constant, a reference, or a mistake."""
        value = tok[1]
        if value in _CONSTANTS:
            return Lit(_CONSTANTS[value])
        if value in ("and", "or", "in", "not"):
            raise self.fail(tok, f"'{value}' needs a value on its left")
        nxt = self.peek()
        if nxt[1] == "(":
            raise self.fail(tok, f"'{value}(…)': expressions have no function calls",
                            "compute the value in a task and reference its result")
        if value not in self.kinds and (nxt[1] == "." or value in ALL_KINDS):
            raise self.unknown_kind(tok)
        if value not in self.kinds:
            raise self.fail(tok, f"unknown name '{value}'",
                            f"strings are quoted: '{value}'; references start with {_kinds_text(self.kinds)}")
        return self.reference(tok)

    def unknown_kind(self, tok: tuple) -> ReferenceError_:
        from flowspec.schema import did_you_mean

        kind = tok[1]
        return ReferenceError_(f"unknown reference kind '{kind}' in '{self.source}'", tok[2],
                               did_you_mean(kind, self.kinds) or f"use {_kinds_text(self.kinds)}")

    def reference(self, tok: tuple) -> RefNode:
        kind = tok[1]
        name = ""
        if kind != "result":
            dot = self.take()
            if dot[1] != ".":
                raise self.fail(dot, f"expected '.' and a name after '{kind}', got {_tok(dot)}",
                                f"e.g. ${{{{ {kind}.NAME }}}}")
            word = self.take()
            if word[0] != "name":
                raise self.fail(word, f"expected a name after '{kind}.', got {_tok(word)}",
                                "names start with a letter or '_': [A-Za-z_][A-Za-z0-9_-]*")
            name = word[1]
        keys, spots = [], []
        while self.peek()[1] in (".", "["):
            opener = self.take()
            keys.append(self.key() if opener[1] == "." else self.index())
            spots.append(opener[2])
        ref = Ref(kind, name, None, tok[2], tuple(keys), tuple(spots))
        self.refs.append(ref)
        return RefNode(ref)

    def number(self, tok: tuple) -> int | float:
        text = tok[1]
        if len(text) > MAX_DIGITS:  # int() refuses thousands of digits with a ValueError
            raise self.fail(tok, f"a number of {len(text)} characters is too long")
        return float(text) if any(c in text for c in ".eE") else int(text)

    def key(self):
        word = self.take()
        if word[0] == "name":
            return word[1]
        if word[0] == "num":
            raise self.fail(word, f"'.{word[1]}': an index goes in brackets", f"write [{word[1].lstrip('.')}]")
        raise self.fail(word, f"expected a key after '.', got {_tok(word)}",
                        "write .key, ['key with spaces'] or [0]")

    def index(self):
        tok = self.take()
        if tok[0] == "str":
            key = tok[1][1:-1].replace("''", "'") if tok[1][0] == "'" else tok[1][1:-1]
        elif tok[0] == "num" and not any(c in tok[1] for c in ".eE"):
            key = self.number(tok)
        elif tok[0] == "num":
            raise self.fail(tok, f"an index is a whole number, not {tok[1]}")
        else:
            raise self.fail(tok, f"expected a quoted key or an integer index after '[', got {_tok(tok)}",
                            "write ['key'] or [0]; the key or index is a literal, not an expression")
        close = self.peek()
        if close[1] != "]":
            raise self.fail(close, f"expected ']' to close the '[', got {_tok(close)}")
        self.take()
        return key


def _tok(tok: tuple) -> str:
    return "the end of the expression ('}}')" if tok[0] == "end" else f"'{tok[1]}'"


def _kinds_text(kinds: tuple) -> str:
    named = [k + "." if k != "result" else k for k in kinds]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " or " + named[-1]


# -- static checks -----------------------------------------------------------------------------
_SCALARS = ("string", "integer", "number", "boolean")


def accessor_problem(ref: Ref, declared: str | None = None) -> tuple[str, int, str | None] | None:
    """(message, offset, hint) when `ref`'s first accessor cannot apply to what is known of the
    value now: an env variable (always a string), or a parameter's declared `declared` type."""
    if not ref.accessors:
        return None
    key, spot = ref.accessors[0], ref.spots[0] if ref.spots else ref.offset
    what = f"index {key}" if isinstance(key, int) else f"key '{key}'"
    if ref.kind == "env":
        return (f"{ref}: an environment variable is a string; it has no {what}", spot,
                "drop the accessor, or pass the variable to a task that parses it")
    if ref.kind != "params" or declared is None:
        return None
    if declared in _SCALARS:
        return (f"{ref}: parameter '{ref.name}' is of type {declared}; it has no {what}", spot,
                "accessors apply to parameters of type array or object")
    if declared == "array" and isinstance(key, str):
        return (f"{ref}: parameter '{ref.name}' is an array; it has indexes ([0], [-1]), not {what}", spot,
                None)
    return None


__all__ = ["Coalesce", "Compare", "Lit", "RefNode", "accessor_problem", "parse_expression",
           "parse_template", "tokenize"]
