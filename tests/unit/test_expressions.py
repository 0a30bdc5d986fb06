"""The expression language inside `${{ }}`: tokens, parse trees, evaluation, error columns."""
from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowspec import references as refs
from flowspec.expressions import accessor_problem, parse_expression, tokenize
from flowspec.references import ALL_KINDS, UNSET, Expr, Ref

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

VALUES = {
    ("params", "n"): 5, ("params", "name"): "orders", ("params", "flag"): True, ("params", "none"): None,
    ("params", "config"): {"data-tracker": "on", "rows": [{"id": 1}, {"id": 2}], "with space": 3},
    ("params", "items"): ["a", "b", "c"], ("tasks", "pair"): ("left", "right"),
    ("tasks", "big"): "big result", ("tasks", "skipped"): UNSET,
}


def lookup(ref: Ref):
    if ref.kind == "env":
        return refs.env_lookup({"SET": "yes"})(ref)
    return VALUES[(ref.kind, ref.name)]


def ev(text: str):
    return refs.resolve(refs.parse_string(text), lookup)


# -- tokens --------------------------------------------------------------------------------------
def test_tokens_carry_their_offsets_in_the_whole_string():
    tokens, end = tokenize("ab ${{ params.x['k'] >= -1.5 || \"q\" }} tail", 3)
    assert [(k, v) for k, v, _ in tokens] == [
        ("name", "params"), ("op", "."), ("name", "x"), ("op", "["), ("str", "'k'"), ("op", "]"),
        ("op", ">="), ("num", "-1.5"), ("op", "||"), ("str", '"q"'), ("end", "}}")]
    assert [o for *_, o in tokens][:3] == [7, 13, 14] and end == len("ab ${{ params.x['k'] >= -1.5 || \"q\" }}")


# -- literals and operators -----------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("${{ 'it''s' }}", "it's"), ('${{ "dq" }}', "dq"), ("${{ 42 }}", 42), ("${{ -3 }}", -3),
    ("${{ 2.5 }}", 2.5), ("${{ 1e3 }}", 1000.0), ("${{ true }}", True), ("${{ false }}", False),
    ("${{ null }}", None),
    ("${{ params.n == 5 }}", True), ("${{ params.n != 5 }}", False), ("${{ params.n < 6 }}", True),
    ("${{ params.n <= 5 }}", True), ("${{ params.n > 5 }}", False), ("${{ params.n >= 6 }}", False),
    ("${{ 'b' in params.items }}", True), ("${{ 'z' not in params.items }}", True),
    ("${{ 'rows' in params.config }}", True), ("${{ 'ord' in params.name }}", True),
    ("${{ not params.flag }}", False), ("${{ not not params.flag }}", True),
    ("${{ params.flag and params.n > 3 }}", True), ("${{ params.none or params.n == 1 }}", False),
    ("${{ params.none or 'x' }}", True),  # `or` gives a boolean; `||` gives a value
    ("${{ true or false and false }}", True), ("${{ (true or false) and false }}", False),
    ("${{ not params.n == 5 }}", False),  # not binds looser than ==
    ("${{ params.name == 'orders' and (params.n > 10 or params.flag) }}", True),
    ("${{ params.none == null }}", True),
])
def test_evaluation(text, value):
    result = ev(text)
    assert result == value and type(result) is type(value)


# -- accessors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("${{ params.config['data-tracker'] }}", "on"), ("${{ params.config.data-tracker }}", "on"),
    ("${{ params.config[\"with space\"] }}", 3), ("${{ params.config['with space'] }}", 3),
    ("${{ params.config.rows[0]['id'] }}", 1), ("${{ params.config.rows[-1].id }}", 2),
    ("${{ params.items[1] }}", "b"), ("${{ params.items[-1] }}", "c"),
    ("${{ tasks.pair[0] }}", "left"), ("${{ tasks.pair[-1] }}", "right"),
    ("${{ params.config.rows[1].id == 2 }}", True),
    ("n=${{ params.config.rows[0].id }}!", "n=1!"),
])
def test_accessors(text, value):
    assert ev(text) == value


def test_an_object_with_getitem_takes_accessors_but_never_attributes():
    class Box:
        secret = "attribute"

        def __getitem__(self, key):
            if key == "k":
                return "item"
            raise KeyError(key)

    class Plain:
        secret = "attribute"

    def look(ref):
        return Box() if ref.name == "box" else Plain()

    assert refs.resolve(refs.parse_string("${{ tasks.box.k }}"), look) == "item"
    with pytest.raises(refs.AccessError, match=r"tasks.box has no key 'secret'"):
        refs.resolve(refs.parse_string("${{ tasks.box.secret }}"), look)
    with pytest.raises(refs.AccessError, match=r"tasks.plain is a Plain .*which has no keys or indexes"):
        refs.resolve(refs.parse_string("${{ tasks.plain.secret }}"), look)


@pytest.mark.parametrize(("text", "message"), [
    ("${{ params.config.nope }}", "${{ params.config.nope }}: params.config has no key 'nope'; its keys: "
                                  "'data-tracker', 'rows', 'with space'"),
    ("${{ params.config.rows[5].id }}", "${{ params.config.rows[5].id }}: params.config.rows has no index 5; "
                                        "the list has length 2 (indexes 0..1 or -2..-1)"),
    ("${{ params.items.first }}", "${{ params.items.first }}: cannot take key 'first' of params.items "
                                  "(a list (['a', 'b', 'c'])): TypeError: list indices must be integers or "
                                  "slices, not str; the list has length 3 (indexes 0..2 or -3..-1)"),
    ("${{ params.n[0] }}", "${{ params.n[0] }}: params.n is a int (5), which has no keys or indexes "
                           "(cannot take index 0)"),
    ("${{ params.name[0] }}", "${{ params.name[0] }}: params.name is a str ('orders'), which has no keys or "
                              "indexes (cannot take index 0)"),
    ("${{ params.none.x }}", "${{ params.none.x }}: params.none is None, which has no keys or indexes "
                             "(cannot take key 'x')"),
    ("${{ params.config.rows[0].name }}", "${{ params.config.rows[0].name }}: params.config.rows[0] has no key "
                                          "'name'; its keys: 'id'"),
])
def test_a_missing_key_or_index_names_the_reference_and_what_the_value_has(text, message):
    with pytest.raises(refs.AccessError) as info:
        ev(text)
    assert str(info.value) == message
    assert isinstance(info.value, refs.ResolveError)


def test_many_keys_are_truncated():
    big = {f"k{i:02}": i for i in range(25)}
    with pytest.raises(refs.AccessError, match=r"its keys: 'k00', 'k01', .*'k09' and 15 more$"):
        refs.resolve(refs.parse_string("${{ tasks.t.zz }}"), lambda ref: big)
    with pytest.raises(refs.AccessError, match=r"the list is empty$"):
        refs.resolve(refs.parse_string("${{ tasks.t[-1] }}"), lambda ref: [])


# -- || --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("${{ tasks.skipped || tasks.big }}", "big result"), ("${{ tasks.big || tasks.skipped }}", "big result"),
    ("${{ env.UNSET || env.SET }}", "yes"), ("${{ env.UNSET || env.ALSO_UNSET || 'last' }}", "last"),
    ("${{ env.UNSET || params.n }}", 5), ("${{ params.none || 'x' }}", None),  # None is set
    ("${{ tasks.skipped || params.config.rows[1].id }}", 2),
    ("${{ (env.UNSET || 'a') == 'a' }}", True),
    ("${{ env.UNSET || 'x' == 'x' }}", True),  # || binds loosest
])
def test_coalesce_takes_the_first_operand_that_is_set(text, value):
    assert ev(text) == value


def test_coalesce_of_nothing_set_raises_the_last_error():
    with pytest.raises(refs.UnsetEnvError):
        ev("${{ env.UNSET || env.OTHER }}")
    with pytest.raises(refs.UnsetValueError, match="tasks.skipped was skipped"):
        ev("${{ env.UNSET || tasks.skipped }}")
    with pytest.raises(refs.UnsetValueError):
        ev("${{ tasks.skipped }} and more")


def test_env_fallback_stays_a_ref_for_its_users():
    assert refs.parse_string("${{ env.X || 'fb' }}") == Ref("env", "X", "fb")
    assert refs.parse_string("a ${{ env.X || 'fb' }}").parts[1] == Ref("env", "X", "fb", 2)
    assert isinstance(refs.parse_string("${{ env.X || env.Y }}"), Expr)
    assert isinstance(refs.parse_string("${{ params.x || 'd' }}"), Expr)


def test_type_errors_at_run_time_name_the_expression():
    with pytest.raises(refs.ExpressionError, match=r"^\$\{\{ params.name < 3 \}\}: cannot evaluate 'orders' < 3"):
        ev("${{ params.name < 3 }}")
    with pytest.raises(refs.ExpressionError, match=r"cannot evaluate 'a' in 5"):
        ev("${{ 'a' in params.n }}")


# -- structure ----------------------------------------------------------------------------------
def test_iter_refs_walks_expressions_with_each_offset():
    value = refs.compile_value({"a": "${{ params.n > 1 and tasks.big == 'x' }}",
                                "b": "x ${{ tasks.a || tasks.b.rows[0] }}"})
    found = [(path, r.kind, r.name, r.offset, r.accessors) for path, r in refs.iter_refs(value)]
    assert found == [(("a",), "params", "n", 4, ()), (("a",), "tasks", "big", 21, ()),
                     (("b",), "tasks", "a", 6, ()), (("b",), "tasks", "b", 17, ("rows", 0))]


def test_a_plain_reference_with_accessors_is_a_ref_at_its_opening():
    ref = refs.parse_string("${{ tasks.fetch.rows[0]['id'] }}")
    assert ref == Ref("tasks", "fetch", None, 0, ("rows", 0, "id"))
    assert ref.spots == (15, 20, 23)
    assert str(ref) == "${{ tasks.fetch.rows[0].id }}"
    assert str(refs.parse_string("${{ params.c['a b'] }}")) == "${{ params.c['a b'] }}"
    assert refs.parse_string(str(ref)) == ref


def test_refs_stay_backward_compatible():
    assert Ref("tasks", "t") == Ref("tasks", "t", None, 0, ())
    assert hash(Ref("tasks", "t")) == hash(Ref("tasks", "t", None, 0))
    assert Ref("tasks", "t") != Ref("tasks", "t", None, 0, ("k",))
    for r in (Ref("env", "X", "fb", 3), Ref("tasks", "t", None, 0, ("k", -1), (10, 12))):
        back = pickle.loads(pickle.dumps(r))
        assert back == r and back.spots == r.spots
    assert Ref("tasks", "t").__reduce__() == (Ref, ("tasks", "t", None, 0))


def test_expressions_pickle_and_evaluate_the_same():
    expr = refs.parse_string("${{ params.n > 3 and (tasks.skipped || 'x') == 'x' and 'b' in params.items }}")
    back = pickle.loads(pickle.dumps(expr))
    assert back == expr and refs.resolve(back, lookup) is True


@pytest.mark.parametrize(("text", "kind", "name", "accessors"), [
    ("${{ secrets.API_TOKEN }}", "secrets", "API_TOKEN", ()), ("${{ kv.last-run }}", "kv", "last-run", ()),
    ("${{ args.table }}", "args", "table", ()), ("${{ result }}", "result", "", ()),
    ("${{ result.done }}", "result", "", ("done",)), ("${{ result[0] }}", "result", "", (0,)),
    ("${{ context.loop.index }}", "context", "loop", ("index",)),
])
def test_more_kinds_parse_where_they_are_allowed(text, kind, name, accessors):
    assert refs.parse_string(text, ALL_KINDS) == Ref(kind, name, None, 0, accessors)
    with pytest.raises(refs.ReferenceError_, match=f"unknown reference kind '{kind}'") as info:
        refs.parse_string(text)
    assert info.value.offset == 4 and info.value.hint in ("use params., tasks. or env.", "did you mean 'params'?")
    assert refs.parse_string("${{ result.n >= 3 }}", ALL_KINDS).refs()[0].kind == "result"


def test_kinds_narrow_what_a_place_allows():
    assert refs.parse_string("${{ env.X }}", ("env",)) == Ref("env", "X")
    with pytest.raises(refs.ReferenceError_, match="unknown reference kind 'params'") as info:
        refs.parse_string("${{ params.X }}", ("env",))
    assert info.value.hint == "use env."
    with pytest.raises(refs.ReferenceError_) as info:
        refs.parse_string("${{ tasks.t }}", ("args", "result"))
    assert info.value.hint == "use args. or result"


# -- syntax errors: the offending token's offset, and a hint ---------------------------------------
@pytest.mark.parametrize(("text", "token", "message", "hint"), [
    ("${{ params.x = 1 }}", "=", "'=' is not an operator", "did you mean '=='?"),
    ("${{ params.x && params.y }}", "&", "'&' is not an operator", "use 'and' / 'or' / 'not'"),
    ("${{ params.x | upper }}", "|", "'|' is not an operator", "did you mean '||'"),
    ("${{ !params.x }}", "!", "'!' is not an operator", "use 'not'"),
    ("${{ params.x + 1 }}", "+", "expressions have no arithmetic", "compute the value in a task"),
    ("${{ params.x == orders }}", "orders", "unknown name 'orders'", "strings are quoted: 'orders'"),
    ("${{ (params.x }}", "(", "unbalanced parentheses: this '(' is never closed", "add the ')'"),
    ("${{ params.x) }}", ")", "unbalanced parentheses: ')' without a matching '('", None),
    ("${{ (params.x params.y) }}", "params.y", "expected ')' to close the '(', got 'params'", None),
    ("${{ params.x[ }}", "}}", "expected a quoted key or an integer index after '['", "write ['key'] or [0]"),
    ("${{ params.x['k' }}", "}}", "expected ']' to close the '[', got the end of the expression", None),
    ("${{ params.x[params.i] }}", "params.i", "expected a quoted key or an integer index after '['", None),
    ("${{ params.x[1.5] }}", "1.5", "an index is a whole number, not 1.5", None),
    ("${{ params.x.0 }}", "0", "'.0': an index goes in brackets", "write [0]"),
    ("${{ params.x. }}", "}}", "expected a key after '.'", None),
    ("${{ params. }}", "}}", "expected a name after 'params.'", None),
    ("${{ params }}", "}}", "expected '.' and a name after 'params'", "e.g. ${{ params.NAME }}"),
    ("${{ params.x == }}", "}}", "the expression ends where a value is expected", None),
    ("${{ == 1 }}", "==", "'==' needs a value on each side", None),
    ("${{ and }}", "and", "'and' needs a value on its left", None),
    ("${{ params.x params.y }}", "params.y", "unexpected 'params' after a complete expression", None),
    ("${{ params.a < params.b < 3 }}", "< 3", "comparisons cannot be chained", "join them with 'and'"),
    ("${{ 'a' in params.x in params.y }}", "in params.y", "comparisons cannot be chained", None),
    ("${{ upper(params.x) }}", "upper", "'upper(…)': expressions have no function calls", None),
    ("${{ 'open }}", "'open", "unterminated string", "a ' inside '...' is written ''"),
    ("${{ params.x == 1abc }}", "1abc", "malformed number '1abc'", None),
    ("${{ params.x || }}", "}}", "the expression ends where a value is expected", None),
    ("${{ || params.x }}", "||", "'||' needs a value on each side", None),
    ("${{ [1] }}", "[", "unexpected '['", None),
    ("${{ params.x , 2 }}", ",", "unexpected ','", None),
    ("${{ @ }}", "@", "unexpected character '@'", None),
])
def test_syntax_errors_point_at_the_offending_token(text, token, message, hint):
    with pytest.raises(refs.ReferenceError_) as info:
        refs.parse_string("pre " + text)  # inside a longer string: offsets count from its start
    exc = info.value
    assert f"invalid expression '{text}': {message}" in str(exc)
    assert ("pre " + text)[exc.offset:].startswith(token), (exc.offset, token)
    if hint is not None:
        assert exc.hint is not None and hint in exc.hint


def test_whole_string_errors_count_from_zero():
    with pytest.raises(refs.ReferenceError_) as info:
        refs.parse_string("${{ params.x = 1 }}")
    assert info.value.offset == 13


# -- static accessor checks ------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "declared", "problem"), [
    ("${{ params.n.key }}", "integer", "parameter 'n' is of type integer; it has no key 'key'"),
    ("${{ params.s[0] }}", "string", "parameter 's' is of type string; it has no index 0"),
    ("${{ params.b[0] }}", "boolean", "of type boolean"), ("${{ params.f.x }}", "number", "of type number"),
    ("${{ params.a.first }}", "array", "parameter 'a' is an array; it has indexes ([0], [-1]), not key 'first'"),
    ("${{ env.HOME[0] }}", None, "an environment variable is a string; it has no index 0"),
    ("${{ params.a[0].first }}", "array", None), ("${{ params.o.k[3] }}", "object", None),
    ("${{ params.o[0] }}", "object", None), ("${{ params.u.k }}", None, None), ("${{ tasks.t.k[0] }}", None, None),
    ("${{ params.n }}", "integer", None),
])
def test_accessor_problems_known_from_the_declared_type(text, declared, problem):
    ref = refs.parse_string(text)
    found = accessor_problem(ref, declared)
    if problem is None:
        assert found is None
    else:
        message, offset, _ = found
        assert problem in message and text[offset] in ".["
        assert offset == ref.spots[0]


# -- the parser's contract on any text -------------------------------------------------------------
ALPHABET = st.sampled_from(list("${}[]().'\"=!<>|&-+ 0123456789abcnotirudlxyz_") +
                           ["${{ ", " }}", "params.", "tasks.", "env.", " and ", " or ", " not ", " in ",
                            "==", "||", "['k']", "[0]", "[-1]", "'it''s'", "true", "null"])


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(st.lists(ALPHABET, max_size=24).map("".join) | st.text(max_size=40))
def test_the_parser_only_ever_raises_reference_errors(text):
    try:
        value = refs.parse_string(text)
    except refs.ReferenceError_ as exc:
        assert 0 <= exc.offset <= len(text)
        return
    for _, ref in refs.iter_refs(value):  # every reference it found is well formed
        assert ref.kind in refs.KINDS and (ref.name or ref.kind == "result")
    try:
        refs.resolve(value, lambda ref: {"k": [1, 2]})
    except refs.ResolveError:
        pass


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(ALPHABET, max_size=16).map("".join))
def test_expressions_round_trip_through_their_text(text):
    try:
        value = refs.parse_string("${{ " + text + " }}")
    except refs.ReferenceError_:
        return
    if isinstance(value, Expr):
        again = parse_expression(value.text)
        assert isinstance(again, (Expr, Ref))


@pytest.mark.parametrize("text", [
    "${{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "${{ " + "not " * 5000 + "true }}",
    "${{ " + "(not " * 3000 + "true" + ")" * 3000 + " }}",
])
def test_deep_nesting_is_a_positioned_error_not_a_crash(text):
    with pytest.raises(refs.ReferenceError_, match="nests deeper than 50 levels") as info:
        refs.parse_string(text)
    assert 0 < info.value.offset < len(text)


def test_nesting_within_the_limit_evaluates():
    assert ev("${{ " + "(" * 49 + "params.n" + ")" * 49 + " }}") == 5
    assert ev("${{ " + "not " * 50 + "true }}") is True


def test_huge_numbers_are_errors_not_crashes():
    with pytest.raises(refs.ReferenceError_, match="too long"):
        refs.parse_string("${{ params.n == " + "9" * 5000 + " }}")
    with pytest.raises(refs.ReferenceError_, match="too long"):
        refs.parse_string("${{ params.items[" + "9" * 5000 + "] }}")
    assert ev("${{ params.n < 1e999 }}") is True


def _tree(node):
    """A node's whole structure (Ref fields with offsets, node types, operators, literal types)."""
    if isinstance(node, Ref):
        return ("Ref", node.kind, node.name, node.fallback, node.offset, node.accessors, node.spots)
    if isinstance(node, Expr):
        return ("Expr", node.text, node.offset, _tree(node.root), tuple(_tree(r) for r in node.refs_))
    slots = [s for klass in type(node).__mro__ for s in getattr(klass, "__slots__", ())]
    fields = []
    for name in slots:
        value = getattr(node, name)
        if isinstance(value, tuple):
            fields.append(tuple(_tree(v) for v in value))
        elif hasattr(value, "__slots__") or isinstance(value, Ref):
            fields.append(_tree(value))
        else:
            fields.append((type(value).__name__, value))
    return (type(node).__name__, *fields)


@pytest.mark.parametrize("text", [
    "${{ tasks.t1 > 0 }}", "${{tasks.a>-1}}", "${{  params.mode == 'full'  }}", "${{ params.m != 'it''s' }}",
    '${{ env.X == "}}" }}', "${{ tasks.a-b <= 12 }}", "${{ params.flag == true }}", "${{ params.x != null }}",
    "${{ kv.mark >= 3 }}", "${{ secrets.S == 'x' }}", "${{ args.x < 5 }}", "${{ tasks.x == '' }}",
])
def test_the_fast_path_for_a_simple_comparison_builds_the_parsers_tree(text):
    from flowspec.expressions import parse_template, simple_compare

    fast = simple_compare(text, ALL_KINDS)
    assert fast is not None
    assert _tree(fast) == _tree(parse_template(text, ALL_KINDS)[0])


@pytest.mark.parametrize("text", [
    "${{ tasks.t1.rows > 0 }}", "${{ result > 0 }}", "${{ tasks.t1 > 1.5 }}", "${{ tasks.t1 in 'abc' }}",
    "${{ tasks.a > 0 }} and more", "${{ nope.a > 0 }}", "${{ tasks.a > 1e3 }}", "${{ tasks.a > 0 }}}",
])
def test_anything_else_goes_to_the_parser(text):
    from flowspec.expressions import simple_compare

    assert simple_compare(text, ALL_KINDS) is None


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["params", "tasks", "env", "kv", "args"]),
       name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True),
       op=st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
       literal=st.one_of(st.integers(-10**17, 10**17).map(str), st.sampled_from(["true", "false", "null"]),
                         st.text(st.characters(blacklist_characters="'\x00"), max_size=6).map(lambda t: f"'{t}'"),
                         st.text(st.characters(blacklist_characters='"\x00'), max_size=6).map(lambda t: f'"{t}"')),
       spaces=st.lists(st.sampled_from(["", " ", "  ", "\t"]), min_size=4, max_size=4))
def test_the_fast_path_agrees_with_the_parser_on_generated_comparisons(kind, name, op, literal, spaces):
    from flowspec.expressions import parse_template, simple_compare

    a, b, c, d = spaces
    text = f"${{{{{a}{kind}.{name}{b}{op}{c}{literal}{d}}}}}"
    fast = simple_compare(text, ALL_KINDS)
    slow = parse_template(text, ALL_KINDS)
    if fast is not None:
        assert len(slow) == 1 and _tree(fast) == _tree(slow[0]), text
