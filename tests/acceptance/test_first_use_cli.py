"""What a new user meets first, through the CLI: positions of YAML-level mistakes, machine output
that always parses, refused flags with the way out, help with examples, and the repository's own
files in the canonical layout."""
from __future__ import annotations

import json

import pytest

TOO_DEEP = "the document nests deeper than 64 levels"


def _first(result) -> str:
    return result.output.splitlines()[0]


@pytest.mark.parametrize("text, where", [
    ("[" * 1_000_000 + "]" * 1_000_000, "1:65"),  # one line: libyaml's look-ahead meets its own limit first
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "1:67"),
    ("".join("  " * i + f"k{i}:\n" for i in range(2000)), "65:129"),  # block nesting, by indentation
])
def test_deep_nesting_is_refused_with_flowspecs_own_limit(cli, tmp_path, text, where):
    spec = tmp_path / "deep.yaml"
    spec.write_text(text)
    result = cli("validate", spec, "--format", "json")
    assert result.rc == 1, result.output
    [d] = json.loads(result.stdout)
    assert (f"{d['line']}:{d['column']}", d["message"]) == (where, TOO_DEEP)


def test_a_byte_that_is_not_utf8_is_reported_where_it_is(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_bytes(b"version: 1\nname: x\ntasks:\n  a:\n    run: caf\xc3\xa9:f\n  b:\n    run: na\xefve:f\n")
    result = cli("validate", spec)
    assert result.rc == 1
    assert _first(result) == f"{spec}:7:12: error: (root): the file is not UTF-8 text: byte 0xEF (invalid continuation byte)"
    assert "save the file as UTF-8" in result.stdout


def test_a_tab_in_the_indentation_gets_a_hint(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_text("version: 1\nname: x\ntasks:\n  a:\n\trun: m:f\n")
    result = cli("validate", spec)
    assert result.rc == 1
    assert result.stdout.startswith(f"{spec}:5:1: error: (root): invalid YAML:")
    assert "hint: line 5 is indented with a tab; YAML indents with spaces only" in result.stdout
