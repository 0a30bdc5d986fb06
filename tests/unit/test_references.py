"""The `${{ … }}` grammar: parse, find, resolve; nothing else is evaluated."""
from __future__ import annotations

import pytest

from flowspec import references as refs
from flowspec.references import Ref, Template


def test_plain_strings_stay_strings():
    assert refs.parse_string("no references here") == "no references here"
    assert refs.parse_string("${ not one }") == "${ not one }"


@pytest.mark.parametrize(("text", "ref"), [
    ("${{ params.people }}", Ref("params", "people")),
    ("${{tasks.say_hello}}", Ref("tasks", "say_hello")),
    ("${{  env.HOME  }}", Ref("env", "HOME")),
    ("${{ tasks.with-dash }}", Ref("tasks", "with-dash")),
    ("${{ env.X || 'fall back' }}", Ref("env", "X", "fall back")),
    ("${{ env.X || 'it''s' }}", Ref("env", "X", "it's")),
    ('${{ env.X || "double" }}', Ref("env", "X", "double")),
    ("${{ env.X || '' }}", Ref("env", "X", "")),
])
def test_exactly_one_reference_is_a_ref(text, ref):
    assert refs.parse_string(text) == ref


def test_references_inside_text_make_a_template():
    value = refs.parse_string("Hi ${{ params.name }}, see ${{ tasks.t }}!")
    assert value == Template(("Hi ", Ref("params", "name", None, 3), ", see ", Ref("tasks", "t", None, 27), "!"))
    assert [r.offset for r in value.refs()] == [3, 27]


@pytest.mark.parametrize(("text", "message", "offset"), [
    ("${{ params.a + 1 }}", "invalid expression '${{ params.a + 1 }}': expressions have no arithmetic", 13),
    ("x ${{ tasks.a.field. }}", "invalid expression '${{ tasks.a.field. }}': expected a key after '.', got the end"
                                " of the expression ('}}')", 21),
    ("${{ secrets.TOKEN }}", "unknown reference kind 'secrets' in '${{ secrets.TOKEN }}'", 4),
    ("${{ parms.x }}", "unknown reference kind 'parms' in '${{ parms.x }}'", 4),
    ("ok ${{ params.x }} then ${{ params.y", "unterminated reference: '${{' without a closing '}}'", 24),
    ("${{ }}", "empty reference '${{ }}'", 0),
    ("${{ env.X || unquoted }}", "invalid expression '${{ env.X || unquoted }}': unknown name 'unquoted'", 13),
])
def test_malformed_references(text, message, offset):
    with pytest.raises(refs.ReferenceError_) as info:
        refs.parse_string(text)
    assert (str(info.value), info.value.offset) == (message, offset)


def test_unknown_kind_suggests_the_close_one():
    with pytest.raises(refs.ReferenceError_) as info:
        refs.parse_string("${{ parms.x }}")
    assert info.value.hint == "did you mean 'params'?"


def test_compile_and_iterate_nested_values():
    compiled = refs.compile_value({"a": ["${{ params.p }}", {"b": "x ${{ tasks.t }}"}], "c": 3})
    assert list(refs.iter_refs(compiled)) == [(("a", 0), Ref("params", "p")), (("a", 1, "b"), Ref("tasks", "t", None, 2))]
    assert refs.has_refs(compiled) and not refs.has_refs(refs.compile_value({"c": [1, "two"]}))


def test_resolve_keeps_types_and_formats_templates():
    values = {("params", "n"): 3, ("params", "flag"): True, ("params", "none"): None, ("tasks", "t"): [1, 2]}
    compiled = refs.compile_value({"n": "${{ params.n }}", "lst": "${{ tasks.t }}",
                                   "text": "n=${{ params.n }} f=${{ params.flag }} z=${{ params.none }} l=${{ tasks.t }}",
                                   "const": [1, {"k": "v"}]})
    resolved = refs.resolve(compiled, lambda ref: values[(ref.kind, ref.name)])
    assert resolved == {"n": 3, "lst": [1, 2], "text": "n=3 f=true z= l=[1, 2]", "const": [1, {"k": "v"}]}


def test_env_lookup_uses_fallback_and_reports_unset():
    lookup = refs.env_lookup({"SET": "yes"})
    assert refs.resolve(refs.compile_value(["${{ env.SET }}", "${{ env.UNSET || 'fb' }}"]), lookup) == ["yes", "fb"]
    with pytest.raises(refs.UnsetEnvError, match=r"environment variable UNSET is not set \(referenced as"):
        lookup(Ref("env", "UNSET"))
    with pytest.raises(LookupError, match="is not allowed here"):
        lookup(Ref("params", "x"))


def test_str_of_a_ref_is_its_source_form():
    ref = Ref("env", "X", "it's")
    assert str(ref) == "${{ env.X || 'it''s' }}" and refs.parse_string(str(ref)) == ref
    assert str(Ref("tasks", "t")) == "${{ tasks.t }}"
