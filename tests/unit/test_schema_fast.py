"""The tasks' fast check: made from the shipped schema, it may say "valid" only where jsonschema
says so too (everything else goes through jsonschema, whose errors are the ones reported)."""
from __future__ import annotations

import random

from jsonschema import Draft202012Validator

from flowspec import schema

VALUES = {
    "run": ["m:f", "pkg.mod:fn", "dir/file.py:f", "nocolon", "", 3, None, "m:f:g", "a b:f"],
    "with": [{}, {"x": 1}, {"x": "${{ tasks.a }}", "y": [1, {"z": None}]}, {"bad name": 1}, {"1x": 2}, [], "s"],
    "map": [{"x": [1, 2]}, {"x": "${{ params.xs }}"}, {}, {"-x": [1]}, [1], None],
    "after": [[], ["a"], ["a", "b"], ["a", "a"], ["bad name"], [1], "a", [None]],
    "retries": [0, 3, -1, 1.5, True, "2", None, 10 ** 20],
    "retry_delay": [0, 1.5, "500ms", "2m", "1h", "5 s", "-1s", -1, True, None, "1.5s", "s"],
    "timeout": [1, "30s", "0s", "10x", -5, False, [], "2.0h"],
    "trigger": ["all_successful", "all_finished", "any_failed", "all", "", 1, None],
    "description": ["text", "", 5, None],
    "unknown": [1, "x"],
}


def test_the_fast_check_never_passes_what_jsonschema_refuses():
    name_ok, task_ok = schema._task_checks()
    task_schema = schema._validation_schema()["properties"]["tasks"]["additionalProperties"]
    validator = Draft202012Validator(task_schema)
    rng = random.Random(8)
    passed = refused = 0
    for _ in range(4_000):
        keys = rng.sample(list(VALUES), rng.randint(0, 5))
        if rng.random() < 0.8 and "run" not in keys:
            keys.append("run")
        task = {k: rng.choice(VALUES[k]) for k in keys}
        valid = validator.is_valid(task)
        if task_ok(task):
            assert valid, task
            passed += 1
        else:
            refused += 1
    assert passed > 200 and refused > 200  # both ways are exercised
    for name, valid in (("t0", True), ("_x-1", True), ("1x", False), ("a b", False), ("", False)):
        assert name_ok(name) is valid


def test_plain_tasks_take_the_fast_way():
    name_ok, task_ok = schema._task_checks()
    assert task_ok({"run": "m:f", "with": {"x": "${{ tasks.a }}"}, "after": ["b"], "retries": 2,
                    "retry_delay": "1s", "timeout": 30, "trigger": "all_finished", "description": "d"})
    assert task_ok({"run": "m.py:f", "map": {"x": [1, 2, 3]}})


# -- the whole document --------------------------------------------------------------------------
TYPED = {
    "string": ["x", "", "m:f", "1s", "a b", "${{ env.X }}", "127.0.0.1:5000/img", "on_success"],
    "integer": [0, 1, -1, 3, 2 ** 40],
    "number": [0.5, 2, -1.0, 0],
    "boolean": [True, False],
    "array": [[], ["a"], ["a", "a"], [1], ["x", "y"]],
    "object": [{}, {"A": "b"}, {"A": 1}, {"a b": "c"}, {"A": None}, {"A": {"B": 1}}],
}
ANYTHING = [v for values in TYPED.values() for v in values] + [None]


def _value(rng, prop: dict):
    """Mostly a value of the type `prop` asks for (or one of its enum), now and then anything."""
    if rng.random() < 0.12:
        return rng.choice(ANYTHING)
    if "enum" in prop:
        return rng.choice(prop["enum"])
    kinds = prop.get("type", "string")
    kind = rng.choice(kinds) if isinstance(kinds, list) else kinds
    return rng.choice(TYPED.get(kind, ANYTHING))


def _section(rng, section: dict):
    """An executor, storage or environment: a type, and keys of that type (or of another)."""
    branches = [(b["if"]["properties"]["type"]["const"], b["then"].get("properties", {})) for b in section["allOf"]]
    kind, props = rng.choice(branches)
    if rng.random() < 0.15:
        props = {**props, **rng.choice(branches)[1]}  # keys of another type too
    out = {} if rng.random() < 0.1 else {"type": kind if rng.random() < 0.9 else rng.choice(["nope", 1, None])}
    for key in rng.sample(sorted(props), min(len(props), rng.randint(0, 4))):
        if key != "type":
            out[key] = _value(rng, props[key])
    if rng.random() < 0.05:
        out["unknown_key"] = 1
    return out if rng.random() < 0.95 else rng.choice(ANYTHING)


def _document(rng, full: dict) -> dict:
    props = full["properties"]
    task = {"run": "m:f", "with": {"x": "${{ tasks.t1 }}"}} if rng.random() < 0.8 else \
        {k: rng.choice(VALUES[k]) for k in rng.sample(list(VALUES), rng.randint(0, 4))}
    doc = {"version": rng.choice([1, 1, 1, 2, "1", True, 1.0]), "name": rng.choice(["n", "n", "", "a b", 3]),
           "tasks": {"t0": task, "t1": {"run": "m:f"}} if rng.random() < 0.95 else rng.choice([{}, [], None])}
    for key in ("executor", "storage", "environment"):
        if rng.random() < 0.6:
            doc[key] = _section(rng, props[key])
    if rng.random() < 0.4:
        parameter = {k: _value(rng, v) for k, v in props["parameters"]["additionalProperties"]["properties"].items()
                     if rng.random() < 0.5}
        doc["parameters"] = {rng.choice(["p", "p-1", "1p", "a b"]): parameter}
    for key in ("description", "project"):
        if rng.random() < 0.3:
            doc[key] = _value(rng, props[key])
    if rng.random() < 0.05:
        doc["unknown"] = 1
    return doc


def test_the_document_check_never_passes_what_jsonschema_refuses():
    full = schema._validation_schema()
    sure = schema._document_check()
    assert sure is not None, "the schema has a keyword the fast check does not know: every command imports jsonschema"
    validator = Draft202012Validator(full)
    rng = random.Random(11)
    passed = refused = 0
    for _ in range(6_000):
        doc = _document(rng, full)
        valid = validator.is_valid(doc)
        if sure(doc):
            assert valid, doc
            passed += 1
        elif valid:
            refused += 1  # left to jsonschema: allowed, only slower
    assert passed > 150 and refused > 20, (passed, refused)  # both ways are exercised


def test_valid_documents_of_every_driver_take_the_fast_way():
    sure = schema._document_check()
    tasks = {"a": {"run": "m:f"}, "b": {"run": "m:f", "with": {"x": "${{ tasks.a }}"}}}
    for section, kind, keys in (
            ("executor", "local-dask", {"scheduler": "processes", "workers": 2}),
            ("executor", "dask", {"address": "tcp://127.0.0.1:8786"}),
            ("storage", "docker", {"image_name": "localhost/x", "python_dependencies": ["pandas"], "build": False}),
            ("storage", "s3", {"bucket": "b", "endpoint_url": "http://127.0.0.1:5000"}),
            ("environment", "docker", {"mem_limit": "256m", "cpus": 0.5, "volumes": {"/a": "/b"}}),
            ("environment", "kubernetes-job", {"namespace": "default", "delete_finished_jobs": "on_success"}),
            ("environment", "dask-kubernetes", {"min_workers": 1, "max_workers": 2}),
            ("environment", "fargate-task", {"cluster": "c", "on_drift": "error"})):
        doc = {"version": 1, "name": "n", "tasks": tasks, section: {"type": kind, **keys},
               "parameters": {"n": {"type": "integer", "default": 3}}}
        assert sure(doc), doc
        assert not sure({**doc, section: {"type": kind, **keys, "unknown_key": 1}})
