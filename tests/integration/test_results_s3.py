"""The result store on S3 (the moto server, real boto3 and HTTP on loopback): round trips under a
prefix, a changed object refused with both digests, targets, missing buckets said in words,
expiry and prune."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowspec.aws import AWSError
from flowspec.results import CorruptResult, NotFound, ResultStore, S3ResultStore, UnpicklableResult

pytestmark = [pytest.mark.aws, pytest.mark.integration]
BUCKET = "flowspec-results"


@pytest.fixture
def store(moto) -> S3ResultStore:
    moto.client("s3").create_bucket(Bucket=BUCKET)
    return ResultStore.from_spec({"type": "s3", "bucket": BUCKET, "prefix": "team/a/", "endpoint_url": moto.url})


def test_round_trip_under_the_prefix(store, moto):
    where = store.put("etl", "load", "k1", {"rows": [1, 2]})
    assert where == f"s3://{BUCKET}/team/a/flows/etl/load/k1.pkl"
    assert store.get("etl", "load", "k1") == {"rows": [1, 2]}
    assert store.exists("etl", "load", "k1") and not store.exists("etl", "load", "k2")
    with pytest.raises(NotFound, match="no such result"):
        store.get("etl", "load", "k2")
    keys = [o["Key"] for o in moto.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == ["team/a/flows/etl/load/k1.pkl"]


def test_a_changed_object_is_refused_naming_both_digests(store, moto):
    store.put("etl", "load", "k", list(range(50)))
    s3 = moto.client("s3")
    key = "team/a/flows/etl/load/k.pkl"
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[-2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(CorruptResult) as info:
        store.get("etl", "load", "k")
    assert f"s3://{BUCKET}/{key}" in str(info.value) and str(info.value).count("sha256") == 2


def test_targets_and_unpicklable_values(store):
    store.put_target("reports/2026-01-01.pkl", "report")
    assert store.target_exists("reports/2026-01-01.pkl")
    assert store.get_target("reports/2026-01-01.pkl") == "report"
    with pytest.raises(UnpicklableResult, match="task 'load'"):
        store.put("etl", "load", "k", threading.Lock())


def test_a_missing_bucket_is_said_in_words(moto):
    store = ResultStore.from_spec({"type": "s3", "bucket": "no-such-bucket", "endpoint_url": moto.url})
    with pytest.raises(AWSError, match="the bucket 'no-such-bucket' does not exist"):
        store.put("etl", "load", "k", 1)


def test_expiry_and_prune(store, moto):
    store.put("etl", "a", "k", 1)
    store.put("etl", "b", "k", 2)
    assert store.exists("etl", "a", "k", max_age=60)
    time.sleep(1.1)
    assert not store.exists("etl", "a", "k", max_age=0.5)
    with pytest.raises(NotFound, match="expired"):
        store.get("etl", "a", "k", max_age=0.5)
    assert store.prune(3600).removed == 0
    report = store.prune(0)
    assert report.removed == 2 and report.bytes > 0
    assert "Contents" not in moto.client("s3").list_objects_v2(Bucket=BUCKET)
    assert store.delete_runs(["a" * 32]).removed == 0


RUN = "c" * 32


def test_kept_results_of_a_run_go_up_as_one_pack_and_are_read_back(store, moto, monkeypatch):
    from flowspec.results import RunKey

    behind = ResultStore.from_spec({"type": "s3", "bucket": BUCKET, "prefix": "team/a/", "endpoint_url": moto.url},
                                   write_behind=True)
    for i in range(50):
        behind.put("etl", "many", RunKey(RUN, i), {"i": i})
    behind.close()
    keys = [o["Key"] for o in moto.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 1 and keys[0].startswith(f"team/a/runs/{RUN}/") and keys[0].endswith("-50.pack")
    assert [store.get("etl", "many", RunKey(RUN, i)) for i in (0, 49)] == [{"i": 0}, {"i": 49}]
    assert not store.exists("etl", "many", RunKey(RUN, 50))
    from flowspec import results

    ranged = ResultStore.from_spec({"type": "s3", "bucket": BUCKET, "prefix": "team/a/", "endpoint_url": moto.url})
    monkeypatch.setattr(results, "_SMALL_PACK", 0)  # read by byte ranges, as a large pack is
    assert ranged.get("etl", "many", RunKey(RUN, 7)) == {"i": 7} and not ranged._packs
    report = store.delete_runs([RUN])
    assert (report.removed, report.objects) == (50, 1) and report.bytes > 0
    assert "Contents" not in moto.client("s3").list_objects_v2(Bucket=BUCKET)


STEPS = "def nums(n):\n    return list(range(n))\n\n\ndef sq(x):\n    return x * x\n"
FLOW = """\
version: 1
name: s3kept
results: {{type: s3, bucket: {bucket}, prefix: kept, endpoint_url: "{url}"}}
tasks:
  nums: {{run: steps:nums, with: {{n: 3}}}}
  sq: {{run: steps:sq, map: {{x: "${{{{ tasks.nums }}}}"}}}}
"""


def test_runs_delete_and_results_prune_free_a_runs_results_in_s3(moto, tmp_path: Path):
    moto.client("s3").create_bucket(Bucket=BUCKET)
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flow.yaml").write_text(FLOW.format(bucket=BUCKET, url=moto.url))
    env = {**os.environ, "FLOWSPEC_HOME": str(tmp_path / "home")}
    env.pop("FLOWSPEC_BACKEND", None)
    env.pop("PYTHONWARNINGS", None)

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def objects(run_id):
        listed = moto.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"kept/runs/{run_id}/")
        return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}

    first = json.loads(cli("run", tmp_path / "flow.yaml", "--format", "json"))["run_id"]
    second = json.loads(cli("run", tmp_path / "flow.yaml", "--format", "json"))["run_id"]
    mine = objects(first)
    assert len(mine) == 1 and next(iter(mine)).endswith("-4.pack")  # nums and 3 children, one pack

    freed = json.loads(cli("runs", "delete", first, "--format", "json"))["freed"]
    assert freed == {"results": 4, "objects": 1, "bytes": sum(mine.values()), "errors": []}
    assert objects(first) == {} and len(objects(second)) == 1  # gone from the bucket; the other run's stay

    kept = json.loads(cli("results", "prune", "--keep-results", "1h", "--format", "json"))
    assert kept["results"] == 0 and kept["stores"][0]["location"] == f"s3://{BUCKET}/kept/"
    pruned = json.loads(cli("results", "prune", "--keep-results", "0s", "--format", "json"))
    assert (pruned["results"], pruned["stores"][0]["type"]) == (4, "s3") and objects(second) == {}
