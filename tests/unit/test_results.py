"""The local result store: round trips, digests checked on load, atomic writes, unpicklable
values, expiry, targets and prune; and the default cache key."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flowspec import cache_key
from flowspec.results import (CorruptResult, LocalResultStore, NotFound, ResultError, ResultStore,
                              UnpicklableResult, keyed_path)


@pytest.fixture
def store(tmp_path) -> LocalResultStore:
    return ResultStore.from_spec({"type": "local", "directory": str(tmp_path / "res")})


def test_default_store_is_under_the_home(tmp_path):
    s = ResultStore.from_spec(None, tmp_path)
    assert isinstance(s, LocalResultStore) and s.root == str(tmp_path / "results")


def test_put_get_round_trip_and_layout(store):
    where = store.put("etl", "load", "abc123", {"rows": [1, 2, 3]})
    assert where == os.path.join(store.root, "flows", "etl", "load", "abc123.pkl")
    assert store.get("etl", "load", "abc123") == {"rows": [1, 2, 3]}
    assert store.exists("etl", "load", "abc123")
    assert not store.exists("etl", "load", "other")
    with pytest.raises(NotFound, match="no such result"):
        store.get("etl", "load", "other")


def test_keys_that_are_not_plain_names_are_hashed(store):
    rel = keyed_path("etl", "load", "../../etc/passwd")
    assert ".." not in rel and rel.startswith("flows/etl/load/h-")
    store.put("etl", "load", "day=2026-01-01/x y", 5)
    assert store.get("etl", "load", "day=2026-01-01/x y") == 5


def test_a_changed_byte_is_reported_with_both_digests(store):
    where = store.put("etl", "load", "k", list(range(100)))
    data = bytearray(Path(where).read_bytes())
    data[-3] ^= 0xFF
    Path(where).write_bytes(bytes(data))
    with pytest.raises(CorruptResult) as info:
        store.get("etl", "load", "k")
    msg = str(info.value)
    assert "checksum mismatch" in msg and where in msg
    assert msg.count("sha256") == 2


def test_a_file_without_header_is_corrupt(store):
    where = store.put("etl", "load", "k", 1)
    Path(where).write_bytes(b"garbage")
    with pytest.raises(CorruptResult, match="not a flowspec result"):
        store.get("etl", "load", "k")


def test_unpicklable_value_names_task_and_type(store):
    lock = threading.Lock()
    with pytest.raises(UnpicklableResult, match=r"task 'load'.*_thread\.lock"):
        store.put("etl", "load", "k", lock)
    assert not store.exists("etl", "load", "k")


def test_expired_results_are_not_found(store):
    store.put("etl", "load", "k", 1)
    assert store.get("etl", "load", "k", max_age=60) == 1
    assert store.exists("etl", "load", "k", max_age=60)
    time.sleep(1.1)
    assert not store.exists("etl", "load", "k", max_age=0.5)
    with pytest.raises(NotFound, match="expired"):
        store.get("etl", "load", "k", max_age=0.5)


def test_targets(store):
    assert not store.target_exists("reports/2026-01-01.pkl")
    store.put_target("reports/2026-01-01.pkl", "report")
    assert store.get_target("reports/2026-01-01.pkl") == "report"
    for bad in ("/etc/x", "../x", "a//b", "a/./b", "dir/", "a b"):
        with pytest.raises(ResultError, match="target"):
            store.put_target(bad, 1)


def test_a_crash_mid_write_leaves_no_partial_result(store, tmp_path):
    """A process killed while writing a large value: the result is absent or whole, never part."""
    store.put("etl", "load", "k", "old")
    script = textwrap.dedent(f"""
        import os, sys
        from flowspec.results import LocalResultStore
        real_write = os.write
        def dying_write(fd, data):
            real_write(fd, data[: len(data) // 2])
            os._exit(9)  # killed half way through
        os.write = dying_write
        LocalResultStore({str(tmp_path / 'res')!r}).put("etl", "load", "k", "new" * 100000)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 9
    assert store.get("etl", "load", "k") == "old"
    leftovers = [n for n in os.listdir(os.path.join(store.root, "flows/etl/load")) if n.endswith(".tmp")]
    assert leftovers and all(n.startswith(".") for n in leftovers)  # hidden, and never read as a result
    report = store.prune(-1)  # everything is older than "one second in the future"
    assert (report.removed, report.objects) == (1, 2) and report.bytes > 0  # the temporary file holds no result


def test_prune_removes_only_old_results(store):
    store.put("etl", "a", "k", 1)
    old = store.put("etl", "b", "k", 2)
    past = time.time() - 3600
    os.utime(old, (past, past))
    report = store.prune(600)
    assert (report.removed, report.kept) == (1, 1) and report.bytes == os.path.getsize(store.location(keyed_path("etl", "a", "k")))
    assert store.exists("etl", "a", "k") and not store.exists("etl", "b", "k")


RUN, OTHER = "a" * 32, "b" * 32


def _kept_run(root, run=RUN, n=5):
    """A run's kept results written as its own process writes them: behind, in packs."""
    from flowspec.results import RunKey

    s = ResultStore.from_spec({"type": "local", "directory": str(root)}, write_behind=True)
    s.put("etl", "one", RunKey(run), "single")
    for i in range(n):
        s.put("etl", "many", RunKey(run, i), {"i": i})
    s.close()


def test_kept_results_of_a_run_are_packed_and_read_back(store):
    _kept_run(store.root)
    from flowspec.results import RunKey

    packs = os.listdir(os.path.join(store.root, "runs", RUN))
    assert len(packs) == 1 and packs[0].endswith("-6.pack")  # one pack, its count in its name
    assert store.get("etl", "one", RunKey(RUN)) == "single"
    assert [store.get("etl", "many", RunKey(RUN, i)) for i in range(5)] == [{"i": i} for i in range(5)]
    assert store.exists("etl", "many", RunKey(RUN, 4)) and not store.exists("etl", "many", RunKey(RUN, 5))
    assert not store.exists("etl", "many", RunKey(OTHER, 0))


def test_a_changed_byte_in_a_pack_is_reported_with_both_digests(store):
    _kept_run(store.root)
    from flowspec.results import RunKey

    folder = Path(store.root, "runs", RUN)
    pack = next(folder.iterdir())
    data = bytearray(pack.read_bytes())
    data[len(b"FSP1 6\n") + 80] ^= 0xFF  # inside the first result's payload
    pack.write_bytes(bytes(data))
    fresh = LocalResultStore(store.root)
    with pytest.raises(CorruptResult) as info:
        fresh.get("etl", "one", RunKey(RUN))
    assert "checksum mismatch" in str(info.value) and str(info.value).count("sha256") == 2
    data[-10] ^= 0xFF  # the index's digest no longer matches the index
    pack.write_bytes(bytes(data))
    with pytest.raises(CorruptResult, match="checksum mismatch in its index"):
        LocalResultStore(store.root).exists("etl", "many", RunKey(RUN, 0))
    pack.write_bytes(bytes(data[:-40]))  # cut short
    with pytest.raises(CorruptResult, match="not a whole flowspec pack"):
        LocalResultStore(store.root).exists("etl", "many", RunKey(RUN, 0))


def test_a_writer_killed_while_writing_a_pack_leaves_no_pack(store, tmp_path):
    script = textwrap.dedent(f"""
        import os
        from flowspec.results import LocalResultStore, RunKey
        real_write = os.write
        def dying_write(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            os._exit(9)
        s = LocalResultStore({store.root!r}, write_behind=True)
        for i in range(1000):
            s.put("etl", "many", RunKey({RUN!r}, i), i)
        os.write = dying_write
        s.flush()
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 9
    from flowspec.results import RunKey

    assert not store.exists("etl", "many", RunKey(RUN, 0))  # the pack is whole or absent
    names = os.listdir(os.path.join(store.root, "runs", RUN))
    assert names and all(n.startswith(".") and n.endswith(".tmp") for n in names)


def test_delete_runs_and_prune_spare_active_runs(store):
    _kept_run(store.root, RUN)
    _kept_run(store.root, OTHER)
    store.put("etl", "c", "cachekey", 1)
    report = store.delete_runs([RUN, "c" * 32])
    assert (report.removed, report.objects) == (6, 1) and report.bytes > 0
    assert not os.path.exists(os.path.join(store.root, "runs", RUN))
    assert store.prune(-1, active=[OTHER], keep_since=time.time() - 3600).removed == 0
    report = store.prune(-1, active=[OTHER])
    assert (report.removed, report.kept) == (1, 6)  # the cache key went, the active run stayed
    assert store.prune(-1).removed == 6


# -- cache keys -----------------------------------------------------------------------------
def _load(folder, name):
    import importlib

    sys.path.insert(0, str(folder))
    try:
        for mod in ("tasks_ck", "helpers_ck"):
            sys.modules.pop(mod, None)
        return getattr(importlib.import_module("tasks_ck"), name)
    finally:
        sys.path.remove(str(folder))


def test_default_key_follows_code_imports_and_arguments(tmp_path):
    (tmp_path / "helpers_ck.py").write_text("def clean(x):\n    return x.strip()\n")
    (tmp_path / "tasks_ck.py").write_text("from helpers_ck import clean\n\ndef work(x):\n    return clean(x)\n")
    fn = _load(tmp_path, "work")
    k1 = cache_key.default_key(fn, {"x": " a ", "n": 1}, str(tmp_path))
    assert k1 == cache_key.default_key(fn, {"n": 1, "x": " a "}, str(tmp_path))  # key order does not count
    assert k1 != cache_key.default_key(fn, {"x": " b ", "n": 1}, str(tmp_path))
    (tmp_path / "helpers_ck.py").write_text("def clean(x):\n    return x.strip().lower()  # changed\n")
    fn = _load(tmp_path, "work")
    assert cache_key.default_key(fn, {"x": " a ", "n": 1}, str(tmp_path)) != k1  # an imported helper changed


def test_default_key_of_arguments_that_are_not_json(tmp_path):
    (tmp_path / "tasks_ck.py").write_text("def work(x):\n    return x\n")
    fn = _load(tmp_path, "work")
    a = cache_key.default_key(fn, {"x": {1, 2}}, str(tmp_path))
    assert a == cache_key.default_key(fn, {"x": {1, 2}}, str(tmp_path))
    assert a != cache_key.default_key(fn, {"x": {1, 3}}, str(tmp_path))


def test_write_behind_reads_its_own_writes_and_flushes(tmp_path):
    store = ResultStore.from_spec({"directory": str(tmp_path / "wb")}, write_behind=True)
    try:
        for i in range(500):
            store.put("etl", "t", f"k{i}", i)
        assert store.get("etl", "t", "k499") == 499  # from memory or disk, whichever holds it now
        with pytest.raises(UnpicklableResult):  # still said to the caller, at once
            store.put("etl", "t", "lock", threading.Lock())
        store.flush()
        assert sorted(os.listdir(tmp_path / "wb/flows/etl/t")) == sorted(f"k{i}.pkl" for i in range(500))
        assert LocalResultStore(tmp_path / "wb").get("etl", "t", "k7") == 7
    finally:
        store.close()


def test_write_behind_reports_a_failed_write_at_flush(tmp_path):
    (tmp_path / "flows").write_text("a file where a folder should be")
    store = ResultStore.from_spec({"directory": str(tmp_path)}, write_behind=True)
    store.put("etl", "t", "k", 1)
    with pytest.raises(ResultError, match="cannot create the result folder"):
        store.flush()
    store.close()


def test_threads_writing_the_same_and_different_keys(store):
    def work(n):
        for i in range(200):
            store.put("etl", "t", f"k{i % 50}", i)
            store.put("etl", f"t{n}", f"k{i}", i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(store.get("etl", "t", f"k{i}"), int) for i in range(50))
    assert store.get("etl", "t3", "k199") == 199
    assert not [n for n in os.listdir(os.path.join(store.root, "flows/etl/t")) if n.endswith(".tmp")]


def test_a_large_pack_is_read_by_ranges_not_whole(store, monkeypatch):
    from flowspec import results
    from flowspec.results import RunKey

    monkeypatch.setattr(results, "_SMALL_PACK", 0)  # every pack counts as large
    _kept_run(store.root)
    fresh = LocalResultStore(store.root)
    assert fresh.get("etl", "many", RunKey(RUN, 3)) == {"i": 3} and fresh.get("etl", "one", RunKey(RUN)) == "single"
    assert not fresh._packs  # nothing was read whole
