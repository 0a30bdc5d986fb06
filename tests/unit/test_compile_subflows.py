"""The compiled form of subflows and of the result keys (the fields the runner reads), and the
single NOT_RUN_YET set that keeps `run` from ignoring them."""
from __future__ import annotations

import pytest

from flowspec import compile as compile_mod
from flowspec.references import Template
from flowspec.spec import CacheSpec, DriverSpec

CHILD = """\
version: 1
name: child
parameters: {region: {type: string}}
tasks:
  a: {run: m:f}
"""
SPEC = """\
version: 1
name: parent
results: {type: s3, bucket: "${{ env.BUCKET || 'b' }}", prefix: p}
tasks:
  sub: {flow: child.yaml, with: {region: eu}}
  reg: {flow: {name: w, project: data}, wait: false}
  c: {run: m:f, with: {x: 1}, cache: {key: "k-${{ args.x }}", expires: 2m}, target: "t/${{ args.x }}.pkl"}
  d: {run: m:f, cache: true, persist: true}
  e: {run: m:f}
"""


def test_fields_the_runner_reads(flow):
    flow.write("child.yaml", CHILD)
    spec = flow.spec(SPEC)
    sub, reg, c, d, e = (spec.tasks[n] for n in ("sub", "reg", "c", "d", "e"))
    assert sub.run == "" and sub.subflow.path == str(flow.path / "child.yaml")
    assert sub.subflow.spec.name == "child" and not sub.subflow.registered
    assert sub.subflow.spec.parameters["region"].required
    assert reg.subflow.registered and (reg.subflow.name, reg.subflow.project, reg.subflow.version) == ("w", "data", None)
    assert reg.subflow.wait is False and reg.subflow.labels is None
    assert isinstance(c.cache.key, Template) and c.cache.expires == 120.0
    assert isinstance(c.target, Template) and c.persist is None
    assert d.cache == CacheSpec(None, None) and d.persist is True
    assert (e.subflow, e.cache, e.target, e.persist) == (None, None, None, None)
    assert spec.results == DriverSpec("s3", spec.results.options)
    assert dict(spec.results.options) == {"bucket": "${{ env.BUCKET || 'b' }}", "prefix": "p"}


def test_the_result_store_of_a_flow(flow, tmp_path):
    from flowspec.results import LocalResultStore, ResultStore, S3ResultStore

    spec = flow.spec("version: 1\nname: x\nresults: {directory: kept}\ntasks: {a: {run: m:f}}\n")
    store = ResultStore.for_flow(spec, tmp_path / "home")
    assert isinstance(store, LocalResultStore) and store.root == str(flow.path / "kept")
    spec = flow.spec("version: 1\nname: x\ntasks: {a: {run: m:f}}\n")
    assert ResultStore.for_flow(spec, tmp_path / "home").root == str(tmp_path / "home" / "results")
    flow.write("child.yaml", CHILD)
    store = ResultStore.for_flow(flow.spec(SPEC), None, environ={"BUCKET": "from-env"})
    assert isinstance(store, S3ResultStore) and (store.bucket, store.prefix) == ("from-env", "p/")


def test_not_run_yet_is_one_set_that_entries_leave(flow, monkeypatch):
    flow.write("child.yaml", CHILD)
    spec = flow.spec(SPEC)
    keys = [d.message.split("`")[1] for d in compile_mod.not_run_yet(spec)]
    assert keys == []  # every key runs
    monkeypatch.setattr(compile_mod, "NOT_RUN_YET", {"flow", "target"})
    assert [d.path for d in compile_mod.not_run_yet(spec)] == ["tasks.reg.flow", "tasks.c.target"]  # reg: registered
    monkeypatch.setattr(compile_mod, "NOT_RUN_YET", set())
    assert compile_mod.not_run_yet(spec) == []


@pytest.mark.parametrize("n", [300])
def test_a_child_shared_by_many_tasks_is_compiled_once(flow, monkeypatch, n):
    from flowspec import subflows

    flow.write("child.yaml", CHILD)
    calls = []
    real = compile_mod.compile_file
    monkeypatch.setattr(compile_mod, "compile_file", lambda path, strict=False: calls.append(path) or real(path))
    tasks = "".join(f"  t{i}: {{flow: child.yaml, with: {{region: r{i}}}}}\n" for i in range(n))
    spec = flow.spec("version: 1\nname: p\ntasks:\n" + tasks)
    assert len(spec.tasks) == n
    assert calls.count(str(flow.path / "child.yaml")) == 1
    assert subflows._state == {"chain": None, "done": None}  # nothing left over for the next compile
