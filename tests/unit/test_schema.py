"""The shipped JSON Schema: valid, documented, in step with the driver tables, worded for people."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from flowspec import drivers, schema
from flowspec.loader import load_text

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "schemas" / "flow.schema.json").read_text(encoding="utf-8"))


def _resolve(node: dict) -> dict:
    ref = node.get("$ref", "")
    return SCHEMA["$defs"][ref.rsplit("/", 1)[1]] if ref.startswith("#/$defs/") else node


def _properties(node, where: str = "#"):
    """Every (location, property schema) in the schema."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield f"{where}/properties/{name}", sub
        for key, sub in node.items():
            yield from _properties(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _properties(sub, f"{where}/{i}")


def _diags(text: str) -> list[tuple]:
    return sorted((d.line, d.column, d.path, d.message, d.hint) for d in schema.check(load_text(text, "f.yaml")))


def test_schema_is_valid_draft_2020_12():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_every_property_has_a_description():
    missing = [where for where, sub in _properties(SCHEMA)  # `if` conditions declare no property
               if "/if/" not in where and "description" not in sub and "description" not in _resolve(sub)]
    assert missing == []


def test_the_package_ships_the_same_schema():
    shipped = Path(schema.SCHEMA_PATH)
    assert shipped.parent.name == "schemas" and shipped.parent.parent.name == "flowspec"
    assert filecmp.cmp(shipped, REPO / "schemas" / "flow.schema.json", shallow=False)
    assert schema.load_schema() == SCHEMA


@pytest.mark.parametrize("table", ["executor", "storage", "environment"])
def test_driver_tables_match_the_schema_types(table):
    kinds = set(drivers.TABLES[table])
    assert set(SCHEMA["$defs"][table]["properties"]["type"]["enum"]) == kinds
    assert set(SCHEMA["$defs"][f"{table}_type"]["enum"]) == kinds
    branches = {b["if"]["properties"]["type"]["const"] for b in SCHEMA["$defs"][table]["allOf"]}
    assert branches == kinds  # each type has its own keys


def test_examples_are_valid():
    for path in sorted((REPO / "examples").glob("*/flow.yaml")):
        assert schema.check(load_text(path.read_text(encoding="utf-8"), str(path))) == [], path


BASE = "version: 1\nname: x\n"


def test_unknown_keys_get_did_you_mean_or_the_allowed_list():
    assert _diags(BASE + "tasks: {a: {run: 'm:f', retires: 1, zzz: 2}}\n") == [
        (3, 25, "tasks.a.retires", "unknown key 'retires'", "did you mean 'retries'?"),
        (3, 37, "tasks.a.zzz", "unknown key 'zzz'",
         "allowed keys: run, description, with, map, after, retries, retry_delay, timeout, trigger, if, run_name, loop,"
             " cleanup, on_success, on_failure, on_retry")]


def test_keys_of_the_chosen_type_only():
    assert _diags(BASE + "tasks: {a: {run: 'm:f'}}\nexecutor: {type: local, workers: 2}\n")[0][2:4] == (
        "executor.workers", "unknown key 'workers'")
    assert _diags(BASE + "tasks: {a: {run: 'm:f'}}\nexecutor: {type: local-dask, workers: 2}\n") == []
    assert _diags(BASE + "tasks: {a: {run: 'm:f'}}\nstorage: {type: s3}\n") == [
        (4, 1, "storage", "missing required key 'bucket'", None)]


def test_missing_required_keys_point_at_the_owning_key():
    assert _diags(BASE + "tasks:\n  a:\n    with: {}\n") == [(4, 3, "tasks.a", "missing required key 'run'", None)]
    assert _diags("name: x\ntasks: {a: {run: 'm:f'}}\n") == [(1, 1, "(root)", "missing required key 'version'", None)]


def test_type_enum_pattern_and_version_messages():
    assert _diags("version: 3\nname: x\ntasks: {a: {run: 'm:f', retries: '2', trigger: all_succes, timeout: soon}}\n"
                  "parameters: {p: {type: null}}\n") == [
        (1, 10, "version", "unsupported spec version 3; this release reads version 1", "set 'version: 1'"),
        (3, 34, "tasks.a.retries", "expected integer, got string '2'", "remove the quotes to write a number"),
        (3, 48, "tasks.a.trigger", "string 'all_succes' is not one of: all_successful | all_finished | any_failed | all_failed"
                                    " | any_successful | none_failed",
         "did you mean 'all_successful'?"),
        (3, 69, "tasks.a.timeout", "'soon': expected a duration such as 500ms, 5s, 2m or 1h (or a number of seconds)",
         None),
        (4, 24, "parameters.p.type", "null is not one of: string | integer | number | boolean | array | object",
         None)]


@pytest.mark.parametrize(("target", "ok"), [
    ("mod:fn", True), ("pkg.mod:Class.method", True), ("path/to/file.py:fn", True), ("../up.py:fn", True),
    ("mod.fn", False), ("mod:", False), (":fn", False), ("mod:fn()", False), ("a b:fn", False), ("my-mod:fn", False),
])
def test_callable_pattern(target, ok):
    problems = _diags(BASE + f"tasks: {{a: {{run: '{target}'}}}}\n")
    assert (problems == []) is ok, problems


@pytest.mark.parametrize(("value", "ok"), [("5", True), ("0.5", True), ("'500ms'", True), ("2m", True),
                                           ("1h", True), ("-1", False), ("5 s", False), ("5d", False),
                                           ("true", False)])
def test_duration_forms(value, ok):
    assert (_diags(BASE + f"tasks: {{a: {{run: 'm:f', timeout: {value}}}}}\n") == []) is ok


def test_names_must_be_identifiers():
    assert _diags(BASE + "tasks: {'bad name': {run: 'm:f'}}\n") == [
        (3, 9, "tasks", "'bad name': a name must start with a letter or '_' and contain only letters, "
                        "digits, '_' and '-'", None)]


def test_did_you_mean():
    assert schema.did_you_mean("retires", ["retries", "run"]) == "did you mean 'retries'?"
    assert schema.did_you_mean("zzz", ["retries"]) is None and schema.did_you_mean(3, ["3"]) is None
