"""The loader: YAML → data with the position of every key and value; unsafe YAML refused."""
from __future__ import annotations

import time

import pytest
import yaml

from flowspec import loader
from flowspec.loader import LoadError, format_path, load_file, load_text

DOC = """\
version: 1
tasks:
  a:
    run: "m:f"
    after: [b, c]
    with:
      x: 'pre ${{ params.p }}'
"""


def _errors(text: str) -> list[tuple]:
    with pytest.raises(LoadError) as info:
        load_text(text, "f.yaml")
    return [(d.line, d.column, d.path, d.message) for d in info.value.diagnostics]


def test_marks_of_keys_and_values():
    doc = load_text(DOC, "f.yaml")
    assert doc.data == {"version": 1, "tasks": {"a": {"run": "m:f", "after": ["b", "c"],
                                                      "with": {"x": "pre ${{ params.p }}"}}}}
    assert doc.keys[("tasks", "a", "run")] == (4, 5)
    assert doc.values[("tasks", "a", "run")] == (4, 10)
    assert doc.values[("tasks", "a", "after", 1)] == (5, 16)
    assert doc.mark(("tasks", "a", "after"), prefer_key=True) == (5, 5)
    assert doc.mark(("tasks", "a", "nothing", "here")) == doc.values[("tasks", "a")]  # closest known parent
    # a reference inside a quoted string: the column of its `${{`
    assert doc.column_of(("tasks", "a", "with", "x"), 4) == 15


def test_diag_positions_at_key_or_value():
    doc = load_text(DOC, "f.yaml")
    d = doc.diag(("tasks", "a", "run"), "msg", "hint", key=True)
    assert (d.file, d.line, d.column, d.path, d.message, d.hint) == ("f.yaml", 4, 5, "tasks.a.run", "msg", "hint")
    assert doc.diag(("tasks", "a", "run"), "m").column == 10


def test_format_path():
    assert format_path(("tasks", "a", "after", 0)) == "tasks.a.after[0]"
    assert format_path(()) == "(root)"
    assert format_path((0, "x")) == "[0].x"


def test_duplicate_keys_are_errors_with_the_first_line():
    assert _errors("a: 1\nb: 2\na: 3\n") == [(3, 1, "a", "duplicate key 'a' (first defined at line 1)")]


def test_errors_inside_a_duplicate_are_reported_too():
    assert _errors("a: {x: 1}\na: {y: !!python/name:os.system ''}\n") == [
        (2, 1, "a", "duplicate key 'a' (first defined at line 1)"),
        (2, 8, "a.y", "unsupported YAML tag '!!python/name:os.system'")]


@pytest.mark.parametrize("tagged", ["!!python/object/apply:os.system ['echo']", "!!python/name:os.system ''",
                                    "!custom 3", "!!binary aGk=", "!!set {a}"])
def test_tags_are_refused_and_nothing_is_constructed(tagged):
    [(line, col, path, message)] = _errors(f"key: {tagged}\n")
    assert (line, col, path) == (1, 6, "key") and message.startswith("unsupported YAML tag '")


def test_explicit_standard_tags_are_checked():
    assert load_text("a: !!int '3'\nb: !!str 4\nc: !!float 1\n").data == {"a": 3, "b": "4", "c": 1.0}
    assert _errors("a: !!int abc\nb: !!bool maybe\n") == [(1, 4, "a", "invalid int value 'abc'"),
                                                        (2, 4, "b", "invalid bool value 'maybe'")]


def test_keys_must_be_strings():
    assert _errors("on: push\n1: x\n") == [(1, 1, "(root)", "mapping keys must be strings, found 'on'"),
                                           (2, 1, "(root)", "mapping keys must be strings, found '1'")]


def test_timestamps_stay_strings_and_merge_keys_work():
    doc = load_text("when: 2024-01-02\nbase: &b {x: 1, y: 2}\nother: {<<: *b, y: 3}\n")
    assert doc.data == {"when": "2024-01-02", "base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}}


def test_small_aliases_are_expanded():
    assert load_text("a: &x [1, 2]\nb: *x\n").data == {"a": [1, 2], "b": [1, 2]}


def test_billion_laughs_is_refused_quickly():
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    start = time.perf_counter()
    errors = _errors("\n".join(lines))
    assert time.perf_counter() - start < 0.2
    assert errors == [(1, 1, "(root)", "the document expands to more than 200000 nodes through aliases")]


def test_recursive_alias_is_refused():
    assert _errors("a: &a [*a]\n")[0][3].startswith("the document expands to more than")


def test_deep_nesting_is_refused_at_the_first_level_too_deep():
    too_deep = "the document nests deeper than 64 levels"
    assert _errors("[" * 200 + "]" * 200) == [(1, 65, "(root)", too_deep)]
    # a million levels: libyaml's composer would crash the interpreter on this
    assert _errors("[" * 1_000_000 + "]" * 1_000_000) == [(1, 65, "(root)", too_deep)]
    nested = "".join("  " * i + f"k{i}:\n" for i in range(70)) + "  " * 70 + "v\n"
    assert _errors(nested) == [(65, 129, "(root)", too_deep)]


def test_aliases_cannot_build_data_deeper_than_the_limit():
    levels = "[" * 40 + "x" + "]" * 40
    assert _errors(f"a: &a {levels}\nb: {'[' * 30}*a{']' * 30}\n")[0][3] == "the data nests deeper than 64 levels"


def test_syntax_errors_have_positions():
    assert _errors("a: [1, 2\nb: 3\n")[0][:2] == (2, 2)
    assert _errors("a: 1\n---\nb: 2\n")[0][3] == (
        "invalid YAML: expected a single document in the stream but found another document")


def test_control_characters_are_refused_at_their_position():
    assert _errors("a: 1\nbé: x\x07\n") == [
        (2, 6, "(root)", "invalid YAML: character #x0007 is not allowed (a control character)")]


def test_empty_document_has_no_data():
    assert load_text("# only a comment\n").data is None


def test_files_too_large_or_not_utf8(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "MAX_BYTES", 10)
    big = tmp_path / "big.yaml"
    big.write_text("a: 12345678901\n")
    with pytest.raises(LoadError, match="the file is 15 bytes; flowspec reads at most 10"):
        load_file(str(big))
    monkeypatch.undo()
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: caf\xe9\n")
    with pytest.raises(LoadError, match="the file is not UTF-8 text"):
        load_file(str(latin))


def test_the_depth_limit_is_flowspecs_without_libyaml_too(monkeypatch):
    # The same limit and position when PyYAML is installed without its C extension.
    monkeypatch.setattr(loader, "_Loader", yaml.SafeLoader)
    assert _errors("[" * 100_000 + "]" * 100_000) == [(1, 65, "(root)", "the document nests deeper than 64 levels")]


def test_a_byte_that_is_not_utf8_is_placed_by_characters_before_it(tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_bytes("a: 1\nbé: \u00e9\u00e9".encode() + b"\xff\n")
    with pytest.raises(LoadError) as caught:
        load_file(str(spec))
    d = caught.value.diagnostics[0]
    assert (d.line, d.column, d.message) == (2, 7, "the file is not UTF-8 text: byte 0xFF (invalid start byte)")


def test_a_plain_document_finds_its_positions_when_a_diagnostic_first_asks():
    line = "  a: {run: 'm:f', with: {x: [1, 2]}}"
    doc = load_text(f"version: 1\nname: x\ntasks:\n{line}\n")
    assert doc._values is None and doc._keys is None  # a valid spec never pays for them
    assert doc.mark(("tasks", "a", "with", "x", 1)) == (4, line.index("2]") + 1)
    assert doc.mark(("tasks", "a", "with"), prefer_key=True) == (4, line.index("with") + 1)
    assert doc.mark(("tasks", "a", "nothing", "here")) == (4, line.index("{") + 1)  # the closest parent
    assert doc.data == {"version": 1, "name": "x", "tasks": {"a": {"run": "m:f", "with": {"x": [1, 2]}}}}
