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
