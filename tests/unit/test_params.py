"""Parameter values: `--param` parsing, params files, types, and every problem reported at once."""
from __future__ import annotations

import pytest

from flowspec.errors import UsageError
from flowspec.params import ParamsError, load_params_file, parse_flag, resolve_parameters, type_error
from flowspec.spec import ParameterSpec

PARAMS = {
    "name": ParameterSpec("name", "string"),
    "count": ParameterSpec("count", "integer", 3, required=False),
    "ratio": ParameterSpec("ratio", "number", 0.5, required=False),
    "items": ParameterSpec("items", "array", [], required=False),
    "mode": ParameterSpec("mode", "string", "full", required=False, enum=("full", "delta")),
    "anything": ParameterSpec("anything", None, None, required=False),
}


@pytest.mark.parametrize(("value", "declared", "why"), [
    (3, "integer", None), (True, "integer", "expected integer, got boolean true"),
    (3, "number", None), (False, "number", "expected number, got boolean false"),
    ("3", "integer", 'expected integer, got string "3"'), ([1], "array", None), ({}, "object", None),
    ([1], "object", "expected object, got array [1]"), (None, "string", "expected string, got null null"),
    ({"any": 1}, None, None), ("x" * 50, "integer", 'expected integer, got string "' + "x" * 36 + "..."),
])
def test_type_error(value, declared, why):
    assert type_error(value, declared) == why


def test_enum_is_checked_after_the_type():
    assert type_error("delta", "string", ("full", "delta")) is None
    assert type_error("other", "string", ("full", "delta")) == 'string "other" is not one of: "full" | "delta"'


@pytest.mark.parametrize(("flag", "expected"), [
    ("name=007", ("name", "007")),  # string parameters take the raw text
    ("name=a: b # not a comment", ("name", "a: b # not a comment")),
    ("name=", ("name", "")),
    ("count=7", ("count", 7)),
    ("ratio=1.5", ("ratio", 1.5)),
    ("items=[1, two, {k: v}]", ("items", [1, "two", {"k": "v"}])),
    ("anything=yes", ("anything", True)),  # YAML 1.1, as in the spec file itself
    ("anything=null", ("anything", None)),
    ("anything=2024-01-02", ("anything", "2024-01-02")),
    ("undeclared=3", ("undeclared", 3)),  # unknown names are reported by resolve_parameters
    (" count =7", ("count", 7)),
])
def test_parse_flag(flag, expected):
    assert parse_flag(flag, PARAMS) == expected


@pytest.mark.parametrize(("flag", "message"), [
    ("count", "--param 'count': expected NAME=VALUE"),
    ("=3", "--param '=3': expected NAME=VALUE"),
    # flowspec's words and the position, then the YAML library's own reason (worded by its version)
    ("items=[1, 2", "--param items: cannot parse '[1, 2' as YAML at the end: while parsing a flow sequence "),
    ("items=a: b: c", "--param items: cannot parse 'a: b: c' as YAML at column 5: mapping values are not allowed "),
    ("items=!!python/name:os.system ''", "--param items: cannot parse \"!!python/name:os.system ''\" as YAML at "
                                         "column 1: unsupported YAML tag '!!python/name:os.system'"),
])
def test_bad_flags(flag, message):
    with pytest.raises(UsageError) as info:
        parse_flag(flag, PARAMS)
    assert info.value.message.startswith(message) and info.value.exit_code == 2


def test_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: from-file\ncount: 5\nitems: [a]\n")
    values, doc = load_params_file(str(path))
    resolved = resolve_parameters(PARAMS, values, doc, [("count", 9)])
    assert resolved == {"name": "from-file", "count": 9, "ratio": 0.5, "items": ["a"], "mode": "full",
                        "anything": None}
    assert list(resolved) == list(PARAMS)


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("count: many\nnmae: x\n")
    values, doc = load_params_file(str(path))
    with pytest.raises(ParamsError) as info:
        resolve_parameters(PARAMS, values, doc, [("mode", "fast"), ("colour", "red")])
    err = info.value
    assert [(d.file, d.line, d.column, d.path, d.message, d.hint) for d in err.diagnostics] == [
        (str(path), 1, 8, "count", "parameter 'count': expected integer, got string \"many\"", None),
        (str(path), 2, 1, "nmae", "unknown parameter 'nmae'", "did you mean 'name'?")]
    assert err.problems == [
        "--param mode: string \"fast\" is not one of: \"full\" | \"delta\"",
        "--param colour: unknown parameter 'colour' (known parameters: name, count, ratio, items, mode, anything)",
        "missing required parameter 'name' (give it with --param name=VALUE or in --params-file)"]
    assert err.exit_code == 2


def test_params_file_must_be_a_readable_mapping(tmp_path):
    with pytest.raises(UsageError, match="cannot read it"):
        load_params_file(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ParamsError, match="a params file must be a mapping"):
        load_params_file(str(tmp_path / "list.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    assert load_params_file(str(tmp_path / "empty.yaml"))[0] == {}
    (tmp_path / "dup.yaml").write_text("a: 1\na: 2\n")
    with pytest.raises(ParamsError, match="duplicate key 'a'"):
        load_params_file(str(tmp_path / "dup.yaml"))


def test_no_parameters_declared():
    with pytest.raises(ParamsError, match=r"unknown parameter 'x' \(the flow declares no parameters\)"):
        resolve_parameters({}, {}, None, [("x", 1)])
