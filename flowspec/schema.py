"""The shipped JSON Schema, and its errors turned into positioned diagnostics."""
from __future__ import annotations

import difflib
import json
import os
from functools import lru_cache

from flowspec.diagnostics import Diagnostic
from flowspec.loader import Document

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schemas", "flow.schema.json")
SUPPORTED_VERSIONS = (1,)


@lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=1)
def _validation_schema() -> dict:
    """The schema with every `$ref` into `$defs` written out in place. jsonschema looks a `$ref`
    up again for every value it checks (each task of a 10 000-task flow): inlined, a check costs
    half as much. A reference whose siblings would clash with its target stays a reference."""
    schema = load_schema()
    defs = schema["$defs"]
    done: dict = {}

    def inline(node):
        if isinstance(node, list):
            return [inline(v) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        rest = {k: inline(v) for k, v in node.items() if k != "$ref"}
        if not (isinstance(ref, str) and ref.startswith("#/$defs/")) or ref in active:
            return node if ref is not None else rest
        name = ref[len("#/$defs/"):]
        if name not in done:
            active.add(ref)
            done[name] = inline(defs[name])
            active.discard(ref)
        target = done[name]
        if any(k in target and target[k] != v for k, v in rest.items() if k not in ("description", "default")):
            return node
        return {**target, **rest}

    active: set = set()
    return {**inline({k: v for k, v in schema.items() if k != "$defs"}), "$defs": defs}


def did_you_mean(word: object, choices) -> str | None:
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def check(doc: Document) -> list[Diagnostic]:
    """Every schema error of the document, positioned and worded for people."""
    sure = _document_check()
    if sure is not None and sure(doc.data):  # valid, and said so without jsonschema (see below)
        return []
    from jsonschema import Draft202012Validator  # deferred: only a document in doubt needs it

    validator = Draft202012Validator(_validation_schema())
    out: list[Diagnostic] = []
    for error in validator.iter_errors(_left_to_check(doc.data)):
        out.extend(_diagnose(doc, error))
    return _dedupe(out)


# -- a fast path ----------------------------------------------------------------------------------
# jsonschema costs some 30 us per task, and importing it and making its validator some 50 ms,
# a third of the start of every `flowspec` command. A simple checker made from the same schema
# says "valid" only when the schema would: a document it finds valid is not handed to jsonschema
# at all. Otherwise the tasks it finds valid are left out of the jsonschema pass, and every other
# part goes through it, so that the diagnostics are jsonschema's own.
_ANNOTATIONS = frozenset(("description", "default", "patternErrorMessage", "title", "$comment", "examples",
                          "markdownDescription", "$schema", "$id"))
_SCALARS = (str, int, float, bool)
_TYPES = {"object": (dict,), "array": (list,), "string": (str,), "null": (type(None),), "boolean": (bool,),
          "integer": (int,), "number": (int, float)}


def _is_any(kinds: list[str]):
    """A test for the JSON types `kinds` (an integer is not a boolean, unless both are allowed)."""
    types = tuple(t for k in kinds for t in _TYPES[k])
    if int in types and "boolean" not in kinds:
        return lambda v: isinstance(v, types) and not isinstance(v, bool)
    return lambda v: isinstance(v, types)


def _all_of(tests: list):
    """One test from several, with as few calls as possible (it runs for every value)."""
    if not tests:
        return lambda v: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda v: first(v) and second(v)

    def every(v) -> bool:
        for test in tests:
            if not test(v):
                return False
        return True
    return every


def _sure_valid(schema):
    """A predicate that is True only for values valid under `schema` (False: ask jsonschema),
    or None when the schema uses a keyword this checker does not know."""
    import re

    if schema is True or schema == {}:
        return lambda v: True
    if not isinstance(schema, dict) or set(schema) - _ANNOTATIONS - {
            "type", "required", "properties", "additionalProperties", "propertyNames", "items", "uniqueItems",
            "minimum", "exclusiveMinimum", "minProperties", "minLength", "minItems", "enum", "const", "pattern",
            "allOf", "if", "then"}:
        return None
    tests = []
    for sub in schema.get("allOf", ()):
        tests.append(_sure_valid(sub))
        if tests[-1] is None:
            return None
    if "if" in schema:  # without `else`: valid when the condition fails or `then` holds
        condition, then = _exactly(schema["if"]), _sure_valid(schema.get("then", True))
        if condition is None or then is None:
            return None
        tests.append(lambda v: not condition(v) or then(v))
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if any(k not in _TYPES for k in kinds):
            return None
        tests.append(_is_any(kinds))
    if "enum" in schema or "const" in schema:
        # (type, value): JSON's true is not its 1; a value equal only as JSON numbers (1.0 for 1)
        # is left to jsonschema
        choices = frozenset((type(c), c) for c in schema.get("enum", [schema.get("const")]) if isinstance(c, _SCALARS))
        tests.append(lambda v: isinstance(v, _SCALARS) and (type(v), v) in choices)
    if "minLength" in schema:
        shortest = schema["minLength"]
        tests.append(lambda v: not isinstance(v, str) or len(v) >= shortest)
    if "minItems" in schema:
        fewest = schema["minItems"]
        tests.append(lambda v: not isinstance(v, list) or len(v) >= fewest)
    if "exclusiveMinimum" in schema:
        above = schema["exclusiveMinimum"]
        tests.append(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)) or v > above)
    if "pattern" in schema:
        search = re.compile(schema["pattern"]).search
        tests.append(lambda v: not isinstance(v, str) or search(v) is not None)
    if "minimum" in schema:
        low = schema["minimum"]
        tests.append(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)) or v >= low)
    if "items" in schema:
        item = _sure_valid(schema["items"])
        if item is None:
            return None
        def items(v) -> bool:
            if isinstance(v, list):
                for x in v:
                    if not item(x):
                        return False
            return True
        tests.append(items)
    if schema.get("uniqueItems"):
        tests.append(lambda v: not isinstance(v, list) or (all(isinstance(x, str) for x in v)
                                                           and len(set(v)) == len(v)))
    props = {}
    for key, sub in schema.get("properties", {}).items():
        props[key] = _sure_valid(sub)
        if props[key] is None:
            return None
    extra = schema.get("additionalProperties", True)
    other = None  # the test of the other keys' values, when additionalProperties is a schema
    if extra not in (True, False):
        other = _sure_valid(extra)
        if other is None:
            return None
    names = _sure_valid(schema["propertyNames"]) if "propertyNames" in schema else None
    if "propertyNames" in schema and names is None:
        return None
    required = tuple(schema.get("required", ()))
    least = schema.get("minProperties", 0)

    def mapping(v) -> bool:
        if not isinstance(v, dict):
            return True
        if len(v) < least:
            return False
        for key in required:
            if key not in v:
                return False
        get = props.get
        for key, value in v.items():
            check = get(key)
            if check is None:
                if extra is False or other is not None and not other(value):
                    return False
            elif not check(value):
                return False
            if names is not None and not names(key):
                return False
        return True

    if props or extra is not True or names or required or least:
        tests.append(mapping)
    return _all_of(tests)


def _exactly(schema):
    """A predicate that is exactly "valid under `schema`", for the conditions of `if`: strings
    compared with `const` or `enum`, `type`, `required` and `properties` of such; None for any
    other schema."""
    if not isinstance(schema, dict) or set(schema) - _ANNOTATIONS - {"type", "required", "properties", "const", "enum"}:
        return None
    tests = []
    if "type" in schema:
        kinds = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if any(k not in _TYPES for k in kinds):
            return None
        tests.append(_is_any(kinds))
    if "enum" in schema or "const" in schema:
        choices = schema.get("enum", [schema.get("const")])
        if not all(isinstance(c, str) for c in choices):
            return None
        strings = frozenset(choices)
        tests.append(lambda v: isinstance(v, str) and v in strings)
    props = {}
    for key, sub in schema.get("properties", {}).items():
        props[key] = _exactly(sub)
        if props[key] is None:
            return None
    required = tuple(schema.get("required", ()))
    if props or required:
        def mapping(v) -> bool:
            if not isinstance(v, dict):
                return True  # `properties` and `required` say nothing of other values
            return all(key in v for key in required) and all(test(v[key]) for key, test in props.items() if key in v)
        tests.append(mapping)
    return _all_of(tests)


@lru_cache(maxsize=1)
def _document_check():
    """The fast check of a whole document, or None when the schema is not simple enough."""
    return _sure_valid({k: v for k, v in _validation_schema().items() if k != "$defs"})


@lru_cache(maxsize=1)
def _task_checks():
    """(valid task name?, valid task?) from the schema's `tasks`, or None when not simple enough."""
    tasks = _validation_schema()["properties"]["tasks"]
    name, task = _sure_valid(tasks.get("propertyNames", True)), _sure_valid(tasks.get("additionalProperties", True))
    return None if name is None or task is None else (name, task)


def _left_to_check(data):
    """The document with the tasks the fast checker finds valid taken out (the first one
    stays: `tasks` must not look empty); positions are unchanged, paths are the same."""
    checks = _task_checks()
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if checks is None or not isinstance(tasks, dict) or len(tasks) < 2:
        return data
    name_ok, task_ok = checks
    first = next(iter(tasks))
    left = {k: v for k, v in tasks.items() if k == first or not (isinstance(k, str) and name_ok(k) and task_ok(v))}
    return data if len(left) == len(tasks) else {**data, "tasks": left}


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for d in diags:
        if (d.line, d.column, d.message) not in seen:
            seen.add((d.line, d.column, d.message))
            out.append(d)
    return out


def _describe(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string",
             list: "list", dict: "mapping", type(None): "null"}
    kind = names.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return f"a {kind}"
    if value is None or isinstance(value, bool):  # as written in YAML, not Python's None/True
        return kind if value is None else f"{kind} {str(value).lower()}"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{kind} {shown}"


def _diagnose(doc: Document, error) -> list[Diagnostic]:
    path = tuple(error.absolute_path)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(schema.get("properties", {}))
        extras = [k for k in error.instance if k not in allowed]
        return [doc.diag(path + (k,), f"unknown key '{k}'",
                         feature_hint(path, k) or did_you_mean(k, allowed) or _allowed_hint(allowed), key=True)
                for k in extras]
    if kind == "required":
        missing = [k for k in error.validator_value if isinstance(error.instance, dict) and k not in error.instance]
        # Point at the key that owns the incomplete mapping: that is where the user looks.
        return [doc.diag(path, f"missing required key '{k}'", key=True) for k in missing]
    if kind == "propertyNames":
        bad = error.instance
        return [doc.diag(path + (bad,), f"invalid name '{bad}': must start with a letter or '_' and "
                         "contain only letters, digits, '_' and '-'", key=True)]
    if kind == "enum" and path == ("version",):
        versions = ", ".join(map(str, SUPPORTED_VERSIONS))
        if isinstance(error.instance, str) and error.instance.strip() in map(str, SUPPORTED_VERSIONS):
            return [doc.diag(path, f"version is the string {error.instance!r}, not the number {error.instance.strip()}",
                             f"remove the quotes: version: {error.instance.strip()}")]
        return [doc.diag(path, f"unsupported spec version {error.instance!r}; this release reads version {versions}",
                         "set 'version: 1'")]
    if kind == "enum" and len(path) == 3 and path[0] == "tasks" and path[2] == "trigger" \
            and isinstance(error.instance, str) and error.instance in PREFECT_TRIGGERS:
        listed = " | ".join(str(c) for c in error.validator_value)
        return [doc.diag(path, f"{_describe(error.instance)} is not one of: {listed}", PREFECT_TRIGGERS[error.instance])]
    if kind in ("enum", "const"):
        choices = error.validator_value if kind == "enum" else [error.validator_value]
        listed = " | ".join(str(c) for c in choices)
        return [doc.diag(path, f"{_describe(error.instance)} is not one of: {listed}",
                         did_you_mean(error.instance, choices))]
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return [doc.diag(path, f"expected {expected}, got {_describe(error.instance)}", _type_hint(error.instance))]
    if kind == "pattern":
        msg = schema.get("patternErrorMessage") or f"does not match {error.validator_value}"
        diag = doc.diag(path, f"{error.instance!r}: {msg}")
        if "propertyNames" in error.absolute_schema_path:  # a bad name: point at that key, not the first
            line, column = doc.mark(path + (error.instance,), prefer_key=True)
            diag = Diagnostic(diag.file, line, column, diag.path, diag.message, diag.hint)
        return [diag]
    if kind == "minProperties" and error.validator_value == 1:
        return [doc.diag(path, "must not be empty")]
    if kind == "uniqueItems":
        return [doc.diag(path, "items must be unique")]
    return [doc.diag(path, error.message)]


# Keys that people write because another tool has them, or that later releases of the flow
# language add: what flowspec does instead, or that this release does not have it yet. Each
# hint is true of this release; docs/flow-yaml.md lists the same under "Not in this release yet".
_FEATURE_HINTS: dict[str, dict[str, str]] = {
    "top": {
        "schedules": "write `schedule:` (a list of clocks)",
        "secrets": "secrets are not declared: write ${{ secrets.NAME }} where the value is needed (in `with`"
                   " or environment.env), and set it with `flowspec secrets set NAME` or FLOWSPEC_SECRET_NAME",
        "cache": "caching is set per task: tasks.NAME.cache (true or {key, expires}); results are kept where"
                 " the top-level `results` says",
        "result": "write `results: {type: local|s3, ...}`: where task results are kept",
        "result_store": "write `results: {type: local|s3, ...}`: where task results are kept",
    },
    "task": {
        "cache_for": "write `cache: {expires: DURATION}` (Prefect's cache_for)",
        "cache_validator": "write `cache: {key: ${{ ... }}, expires: DURATION}`: a run is Cached when a result"
                           " for its key is stored and unexpired",
        "cache_key": "write `cache: {key: ${{ ... }}, expires: DURATION}`",
        "checkpoint": "write `persist: true|false` (keep the task's result in the result store)",
        "result": "a flow's result store is the top-level `results: {type: local|s3, ...}`; per task:"
                  " `persist`, `cache`, `target`",
        "task_run_name": "write `run_name: ...` with ${{ args.NAME }} references to the task run's arguments",
        "name": "a task's name is its key under `tasks`",
        "subflow": "write `flow: FILE` (a spec beside this one) or `flow: {name, project, version}` instead of `run`",
        "flow_name": "write `flow: {name: NAME, project: PROJECT, version: N}` instead of `run`",
        "state_handlers": "write hooks: on_success, on_failure, on_retry (a callable, or {run: ..., with: {...}})",
        "condition": "write `if: ${{ expression }}`",
        "when": "write `if: ${{ expression }}`",
        "until": "write `loop: {until: ${{ expression over result }}, max: N}`",
        "resource_manager": "write `cleanup: module:function` on the task that makes the resource",
        "max_retries": "write `retries: N` (attempts after the first failure)",
        "outputs": "outputs are declared at the top level (outputs: {NAME: ${{ tasks.NAME }}}); a task's"
                   " result is its return value",
        "secrets": "write ${{ secrets.NAME }} in the task's `with`, or declare a parameter `secret: true`",
    },
    "parameter": {
        "required": "a parameter is required when it has no `default`; remove `required`",
        "choices": "write `enum: [...]`: the only values allowed",
        "allowed": "write `enum: [...]`: the only values allowed",
        "value": "write `default: ...`: the value used when none is given at run time",
    },
    "environment": {
        "secrets": "environment.secrets is for kubernetes-job, dask-kubernetes (secret-name/key) and fargate-task (ARN);"
                   " elsewhere write ${{ secrets.NAME }} in environment.env: it is resolved where the flow runs"
                   " (FLOWSPEC_SECRET_NAME, or the backend's store)",
        "schedule": "a schedule is top-level: `schedule:` beside `tasks`",
    },
}


# Prefect 1's trigger names that flowspec spells differently or does not have (`all_finished`,
# `all_successful`, `all_failed`, `any_successful`, `any_failed` are the same names).
PREFECT_TRIGGERS = {
    "always_run": "Prefect's always_run is flowspec's all_finished: the task runs once its upstreams have finished,"
                  " whatever their states",
    "manual_only": "no equivalent: flowspec has no manual approval state; guard the task with"
                   " `if: ${{ params.approved }}` and start a run with --param approved=true",
    "some_successful": "write any_successful (at least one upstream succeeded); there are no at_least/at_most counts",
    "some_failed": "write any_failed (at least one upstream failed); there are no at_least/at_most counts",
    "not_all_skipped": "no exact equivalent: none_failed runs when no upstream failed, Skipped ones allowed (even"
                       " when all were Skipped); the default all_successful skips a task whose upstreams were skipped",
}


def feature_hint(path: tuple, key: str) -> str | None:
    """What flowspec has for an unknown `key` in the mapping at `path`, when people write it."""
    if path == ():
        table = _FEATURE_HINTS["top"]
    elif len(path) == 2 and path[0] == "tasks":
        table = _FEATURE_HINTS["task"]
    elif len(path) == 2 and path[0] == "parameters":
        table = _FEATURE_HINTS["parameter"]
    elif path == ("environment",):
        table = _FEATURE_HINTS["environment"]
    else:
        return None
    return table.get(key) if isinstance(key, str) else None


def _allowed_hint(allowed: list[str]) -> str | None:
    return f"allowed keys: {', '.join(allowed)}" if allowed else None


def _type_hint(value: object) -> str | None:
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return "remove the quotes to write a number"
    if value is None:
        return "the value is empty; write one after the colon or remove the key"
    return None
