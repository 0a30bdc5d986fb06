"""The result store on S3 (the moto server, real boto3 and HTTP on loopback): round trips under a
prefix, a changed object refused with both digests, targets, missing buckets said in words,
expiry and prune."""
from __future__ import annotations

import threading
import time

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
    assert store.delete_run([("etl", "a", "k")]) == 0
