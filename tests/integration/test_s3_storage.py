"""The `s3` storage against the moto server (real boto3, real HTTP on loopback), through the CLI:
content-addressed uploads with their checksums, unchanged flows uploading nothing, versions
loaded exactly, tampered and missing objects refused, each AWS error said in words, agents
loading flows from S3, and no credential ever accepted in a spec or written to the backend."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flowspec.errors import FlowspecError

pytestmark = [pytest.mark.aws, pytest.mark.integration]

BUCKET = "flowspec-flows"
SECRET = "moto-dummy-secret-Zq8xW3"  # a value that can only come from this environment
TASKS = """
import os
from flowspec import context

def answer(x):
    context.logger.info("answering with %s", x * {factor})
    return x * {factor}
"""


class Flow:
    """A flow folder with s3 storage, and the CLI with moto's environment."""

    def __init__(self, root: Path, env: dict, name: str = "s3-flow", storage: dict | None = None,
                 environment: dict | None = None, factor: int = 2) -> None:
        self.root, self.name = root, name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "FLOWSPEC_HOME": str(root / "home"), "FLOWSPEC_BACKEND": f"sqlite://{root / 'fs.db'}"}
        self.env.pop("PYTHONWARNINGS", None)
        self.storage = {"type": "s3", "bucket": BUCKET, **(storage or {})}
        self.environment = environment or {}
        self.write(factor)

    @property
    def spec(self) -> Path:
        return self.dir / "flow.yaml"

    def write(self, factor: int) -> None:
        (self.dir / "tasks_s3.py").write_text(TASKS.format(factor=factor))
        spec = {"version": 1, "name": self.name,
                "tasks": {"only": {"run": "tasks_s3:answer", "with": {"x": 21}}},
                "storage": self.storage, "environment": self.environment}
        self.spec.write_text(json.dumps(spec))  # JSON is YAML

    def cli(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowspec", *args], env=env or self.env,
                              capture_output=True, text=True, timeout=90)

    def build(self, env: dict | None = None) -> dict:
        done = self.cli("build", str(self.spec), "--format", "json", env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def fails(self, *args: str, env: dict | None = None) -> str:
        done = self.cli(*args, env=env)
        assert done.returncode != 0, done.stdout
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done.stdout + done.stderr


@pytest.fixture
def s3(moto):
    client = moto.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def load_in_child(location: dict, env: dict) -> subprocess.CompletedProcess:
    """Load a flow from its location in a fresh process with no flow files around, and call the task."""
    code = ("import json, sys\nfrom flowspec.storage import load_flow\n"
            "spec, fns = load_flow(json.loads(sys.argv[1]))\nprint(fns['only'](x=21))\n")
    return subprocess.run([sys.executable, "-c", code, json.dumps(location)], env=env, capture_output=True,
                          text=True, timeout=60, cwd="/")


def versions(s3, key: str) -> list[str]:
    return [v["VersionId"] for v in s3.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])]


# -- build, reuse, versions ------------------------------------------------------------------------
def test_build_uploads_a_content_addressed_object_carrying_its_sha256(tmp_path, moto, s3):
    flow = Flow(tmp_path, moto.env)
    location = flow.build()
    digest = location["sha256"]
    assert location["key"] == f"flowspec/default/s3-flow/{digest}.flow"
    head = s3.head_object(Bucket=BUCKET, Key=location["key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(digest)).decode()
    assert head["Metadata"] == {"sha256": digest}
    body = s3.get_object(Bucket=BUCKET, Key=location["key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest
    shutil.rmtree(flow.dir)  # the flow's files are gone: it loads from S3 alone, code included
    loaded = load_in_child(location, flow.env)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "42"


def test_an_unchanged_flow_uploads_nothing_and_a_changed_one_a_new_object(tmp_path, moto, s3):
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    flow = Flow(tmp_path, moto.env)
    first = flow.build()
    again = flow.cli("register", str(flow.spec), "--format", "json")
    assert again.returncode == 0, again.stderr
    registered = json.loads(again.stdout)["storage"]
    assert registered == first
    assert versions(s3, first["key"]) == [first["version_id"]]  # one object, one version: nothing re-uploaded
    flow.write(factor=3)
    changed = flow.build()
    assert changed["key"] != first["key"]
    assert len(s3.list_objects_v2(Bucket=BUCKET, Prefix="flowspec/")["Contents"]) == 2


def test_a_versioned_key_records_each_version_and_loads_exactly_it(tmp_path, moto, s3):
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    flow = Flow(tmp_path, moto.env, storage={"key": "flows/answer.flow"})
    v1 = flow.build()
    flow.write(factor=3)
    v2 = flow.build()
    assert v1["key"] == v2["key"] == "flows/answer.flow"
    assert v1["version_id"] and v2["version_id"] and v1["version_id"] != v2["version_id"]
    assert sorted(versions(s3, "flows/answer.flow")) == sorted([v1["version_id"], v2["version_id"]])
    assert load_in_child(v1, flow.env).stdout.strip() == "42"  # the old version, though v2 is the latest
    assert load_in_child(v2, flow.env).stdout.strip() == "63"


def test_register_no_build_finds_the_uploaded_object(tmp_path, moto, s3):
    flow = Flow(tmp_path, moto.env)
    stderr = flow.fails("register", str(flow.spec), "--no-build")
    assert "does not hold a build of this flow" in stderr and "without --no-build" in stderr
    built = flow.build()
    done = flow.cli("register", str(flow.spec), "--no-build", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["storage"] == built


# -- what load refuses -----------------------------------------------------------------------------
def test_a_tampered_object_is_refused_naming_both_digests(tmp_path, moto, s3):
    flow = Flow(tmp_path, moto.env)
    location = flow.build()
    forged = b"not the flow that was registered"
    forged_digest = hashlib.sha256(forged).hexdigest()
    # moto gap: S3 refuses (BadDigest) a body whose ChecksumSHA256 does not match it; moto stores
    # it. An honest overwrite (matching checksum and forged metadata) is refused all the same.
    for checksum in (base64.b64encode(bytes.fromhex(location["sha256"])).decode(),
                     base64.b64encode(bytes.fromhex(forged_digest)).decode()):
        s3.put_object(Bucket=BUCKET, Key=location["key"], Body=forged, ChecksumSHA256=checksum,
                      Metadata={"sha256": location["sha256"]})
        loaded = load_in_child(location, flow.env)
        assert loaded.returncode != 0
        assert f"the registered flow has sha256 {location['sha256']}" in loaded.stderr
        assert f"the object holds sha256 {forged_digest}" in loaded.stderr
    # A rebuild notices that the object no longer holds this flow and uploads it again.
    assert flow.build() == location
    assert load_in_child(location, flow.env).stdout.strip() == "42"


def test_a_missing_object_bucket_or_version_is_named_with_the_next_step(tmp_path, moto, s3):
    from flowspec.storage import load_flow

    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    flow = Flow(tmp_path, moto.env)
    location = flow.build()
    cases = {
        "the object does not exist": {**location, "version_id": None, "key": "flowspec/nothing-here.flow"},
        "that version of the object does not exist": {**location, "version_id": "no-such-version"},
        "the bucket 'no-such-bucket' does not exist": {**location, "bucket": "no-such-bucket"},
    }
    for expected, where in cases.items():
        with pytest.raises(FlowspecError) as caught:
            load_flow(where)
        assert expected in caught.value.message, caught.value
        assert f"loading the flow from s3://{where['bucket']}/{where['key']}" in caught.value.message
        assert caught.value.hint


# -- errors of build -------------------------------------------------------------------------------
def test_build_errors_say_what_is_wrong_and_what_to_do(tmp_path, moto, s3):
    flow = Flow(tmp_path, moto.env, storage={"bucket": "no-such-bucket"})
    stderr = flow.fails("build", str(flow.spec))
    assert "the bucket 'no-such-bucket' does not exist" in stderr and "hint: create it" in stderr

    no_credentials = {k: v for k, v in flow.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    stderr = flow.fails("build", str(flow.spec), env=no_credentials)
    assert "no usable AWS credentials" in stderr and "AWS_ACCESS_KEY_ID" in stderr and "profile" in stderr

    unreachable = {**flow.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # discard port: nothing listens
    stderr = flow.fails("build", str(flow.spec), env=unreachable)
    assert "cannot reach the AWS endpoint http://127.0.0.1:9" in stderr and "hint: check endpoint_url" in stderr

    flow = Flow(tmp_path / "b", moto.env, storage={"bucket": "Not_A_Bucket"})
    stderr = flow.fails("build", str(flow.spec))
    assert "storage.bucket: 'Not_A_Bucket' is not an S3 bucket name" in stderr

    flow = Flow(tmp_path / "p", moto.env, storage={"profile": "nobody"})
    stderr = flow.fails("build", str(flow.spec))
    assert "the AWS profile 'nobody' is not in the shared AWS configuration" in stderr


def test_endpoint_url_and_a_profile_of_the_shared_configuration_are_used(tmp_path, moto, s3):
    aws = Path(moto.env["AWS_CONFIG_FILE"])
    aws.write_text("[profile flows]\nregion = eu-west-1\n")
    Path(moto.env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        "[flows]\naws_access_key_id = profilekey\naws_secret_access_key = profilesecret\n")
    env = {k: v for k, v in moto.env.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    flow = Flow(tmp_path, env, storage={"profile": "flows", "endpoint_url": moto.url, "region": "us-east-1"})
    location = flow.build()
    assert location["profile"] == "flows" and location["endpoint_url"] == moto.url
    assert s3.head_object(Bucket=BUCKET, Key=location["key"])  # it went to moto: the endpoint of the spec
    assert load_in_child(location, flow.env).stdout.strip() == "42"  # and loads with the same profile


def test_access_denied_names_the_permission(tmp_path, moto, s3):
    iam = moto.client("iam")
    iam.create_user(UserName="reader")
    # Everything but the upload: moto 5.2.6 checks reads against action names that are not IAM's
    # (s3:HeadObject, s3:ListObjectsV2), so a policy of s3:GetObject and s3:ListBucket alone
    # would be refused at the lookup there, and allowed on AWS and earlier moto.
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="no-upload", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    env = {**moto.env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    flow = Flow(tmp_path, env)
    moto.post("/moto-api/reset-auth", b"0")  # from now on moto checks IAM policies, as AWS does
    try:
        stderr = flow.fails("build", str(flow.spec))
    finally:
        moto.post("/moto-api/reset-auth", b"inf")
    # flowspec's own words (what it was doing, the permission it needs), not the endpoint's
    assert "uploading the flow to s3://" in stderr and "access denied" in stderr
    assert "the credentials in use need the IAM permission s3:PutObject" in stderr
    assert "Traceback" not in stderr


def test_a_credential_in_an_s3_spec_is_refused_before_anything_runs(tmp_path, moto, s3):
    flow = Flow(tmp_path, moto.env, storage={"endpoint_url": "http://user:pass@127.0.0.1:9"})
    stderr = flow.fails("validate", str(flow.spec))
    assert "flow.yaml:1:" in stderr and "storage.endpoint_url: this URL carries a password" in stderr
    flow = Flow(tmp_path / "u", moto.env, storage={"endpoint_url": "http://someone@127.0.0.1:9"})
    stderr = flow.fails("build", str(flow.spec))
    assert "storage.endpoint_url" in stderr and "without user or password" in stderr
    flow = Flow(tmp_path / "k", moto.env, storage={"key": "flows/AKIAABCDEFGHIJKLMNOP.flow"},
                environment={"env": {"AWS_SECRET_ACCESS_KEY": "literal-secret"}})
    stderr = flow.fails("validate", str(flow.spec))
    assert "storage.key: this looks like an AWS access key id" in stderr
    assert "environment.env.AWS_SECRET_ACCESS_KEY: 'AWS_SECRET_ACCESS_KEY' looks like a credential" in stderr
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


# -- agents ----------------------------------------------------------------------------------------
def _agent(flow: Flow, env: dict) -> subprocess.Popen:
    with open(flow.root / "agent.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--name", "s3-agent",
                                 "--poll-interval", "0.1"], env=env, stdout=log, stderr=subprocess.STDOUT)


def _watch(flow: Flow, name: str) -> subprocess.CompletedProcess:
    return flow.cli("run", "--name", name, "--watch")


@pytest.mark.slow
def test_an_agent_loads_flows_from_s3_and_refuses_a_tampered_one(tmp_path, moto, s3):
    """Environments `local` and `remote` both load from S3; the agent's environment holds the only
    copy of the credentials, and they reach neither the backend nor the run's logs."""
    env = {**moto.env, "AWS_SECRET_ACCESS_KEY": SECRET, "MY_API_TOKEN": SECRET}
    flows = {kind: Flow(tmp_path, env, name=f"s3-{kind}",
                        environment={"type": kind, "env": {"MY_API_TOKEN": "${{ env.MY_API_TOKEN }}"}})
             for kind in ("local", "remote")}
    for flow in flows.values():
        done = flow.cli("register", str(flow.spec))
        assert done.returncode == 0, done.stderr
        shutil.rmtree(flow.dir)  # nothing but the S3 object is left to run from
    tampered = Flow(tmp_path, env, name="s3-tampered")
    location = tampered.build()
    assert tampered.cli("register", str(tampered.spec)).returncode == 0
    s3.put_object(Bucket=BUCKET, Key=location["key"], Body=b"forged")
    agent = _agent(flows["local"], flows["local"].env)
    try:
        for kind, flow in flows.items():
            done = _watch(flow, flow.name)
            assert done.returncode == 0, (kind, done.stdout, done.stderr, (tmp_path / "agent.log").read_text())
            assert "answering with 42" in done.stdout + done.stderr
        done = _watch(tampered, tampered.name)
        assert done.returncode == 1
        assert f"the object holds sha256 {hashlib.sha256(b'forged').hexdigest()}" in done.stdout + done.stderr
    finally:
        agent.terminate()
        agent.wait(20)
    # Nothing the backend keeps holds the secret (the runs read it from the agent's environment).
    with sqlite3.connect(tmp_path / "fs.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = "\n".join(str(row) for t in tables for row in db.execute(f"SELECT * FROM {t}"))
    assert "answering with 42" in dump and SECRET not in dump
    assert SECRET not in (tmp_path / "agent.log").read_text()
