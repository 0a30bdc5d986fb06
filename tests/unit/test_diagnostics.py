"""Diagnostics and their reporters: text, JSON and GitHub annotations."""
from __future__ import annotations

import json

from flowspec.diagnostics import Diagnostic, count_line, render

A = Diagnostic("b.yaml", 3, 7, "tasks.a.retries", "expected integer, got string '3'", "remove the quotes")
B = Diagnostic("a.yaml", 12, 1, "name", "missing", None)
C = Diagnostic("b.yaml", 3, 2, "tasks.a", "first on the line")


def test_text_lines_with_and_without_hint():
    assert A.text() == ("b.yaml:3:7: error: tasks.a.retries: expected integer, got string '3'\n"
                        "  hint: remove the quotes")
    assert B.text() == "a.yaml:12:1: error: name: missing"


def test_control_characters_are_escaped_to_keep_one_line():
    d = Diagnostic("f.yaml", 1, 1, "a\rb", "unknown key 'a\rb'\n", "x\ty")
    assert d.text() == "f.yaml:1:1: error: a\\rb: unknown key 'a\\rb'\\n\n  hint: x\\ty"


def test_render_sorts_by_file_line_column_and_counts():
    assert render([A, B, C], "text").splitlines() == [
        B.text(), C.text(), *A.text().splitlines(), "3 errors found"]
    assert render([], "text", files=2) == "no errors in 2 files"


def test_count_line():
    assert [count_line(0), count_line(0, 3), count_line(1), count_line(2)] == [
        "no errors in 1 file", "no errors in 3 files", "1 error found", "2 errors found"]


def test_json_is_a_list_of_objects_with_exactly_six_keys():
    items = json.loads(render([A, B], "json"))
    assert items == [
        {"file": "a.yaml", "line": 12, "column": 1, "path": "name", "message": "missing", "hint": None},
        {"file": "b.yaml", "line": 3, "column": 7, "path": "tasks.a.retries",
         "message": "expected integer, got string '3'", "hint": "remove the quotes"}]
    assert json.loads(render([], "json")) == []


def test_github_annotations_escape_their_delimiters():
    d = Diagnostic("dir/f::x.yaml", 2, 5, "p", "50% bad\nline", "h")
    assert d.github() == "::error file=dir/f%3A%3Ax.yaml,line=2,col=5,title=flowspec::p: 50%25 bad%0Aline (hint: h)"
    assert render([d], "github").splitlines()[-1] == "1 error found"


def test_sort_key_orders_by_position_then_path():
    assert sorted([A, C], key=Diagnostic.sort_key) == [C, A]
