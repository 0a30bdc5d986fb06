"""Fixtures: the moto server as the AWS endpoint (S3, ECS, EC2, CloudWatch Logs), on loopback.

One server per test session, in this process (`ThreadedMotoServer`, real HTTP on 127.0.0.1), so a
test can also reach moto's in-memory models where the API cannot say something AWS says (a
container's exit code, `failures`): those tests name the gap they work around. Every test gets
a reset server and an environment with dummy credentials, a region, `AWS_ENDPOINT_URL` pointing
at moto (boto3 honours it for every client), no retries (botocore would retry moto's HTTP 500s)
and no instance metadata lookups (which would leave loopback).
"""
from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REGION = "us-east-1"
DUMMY_KEY_ID = "testing"
DUMMY_SECRET = "testing"


@dataclass
class Moto:
    """The moto server of the session, reset for the test that uses it."""

    url: str
    env: dict[str, str] = field(default_factory=dict)  # for CLI subprocesses: os.environ plus these

    def client(self, service: str):
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET,
                            config=Config(retries={"max_attempts": 1}))

    def post(self, path: str, body: dict | bytes | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    def reset(self) -> None:
        """Empty every model, moto's defaults for task transitions, no IAM checks."""
        self.post("/moto-api/reset")
        self.post("/moto-api/state-manager/unset-transition", {"model_name": "ecs::task"})
        self.post("/moto-api/reset-auth", b"inf")

    def ecs_backend(self):
        """moto's in-memory ECS model (the server runs in this process)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ecs.models import ecs_backends

        return ecs_backends[DEFAULT_ACCOUNT_ID][REGION]

    def default_network(self) -> tuple[list[str], list[str]]:
        """The default VPC's subnets and security group (moto's run_task needs DNS hostnames on
        the VPC, which only the default VPC has)."""
        ec2 = self.client("ec2")
        subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        vpc = subnets[0]["VpcId"]
        groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                       {"Name": "group-name", "Values": ["default"]}])
        return [s["SubnetId"] for s in subnets[:2]], [groups["SecurityGroups"][0]["GroupId"]]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 (a free port) for the session; yields its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("the moto server is not installed: pip install 'moto[server]>=5.2.3,<5.3' (or flowspec[test])")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._server.server_port}"
    finally:
        server.stop()


def aws_environment(url: str, home: Path) -> dict[str, str]:
    """Variables that point boto3 at moto with dummy credentials and nothing else."""
    return {
        "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": url,
        "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard", "AWS_EC2_METADATA_DISABLED": "true",
        # No shared files of the machine's user: a test that wants a profile writes its own.
        "AWS_CONFIG_FILE": str(home / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
    }


AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@pytest.fixture
def moto(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    """The session's moto server, reset, with this process's (and CLI subprocesses') environment
    pointing boto3 at it with dummy credentials."""
    pytest.importorskip("boto3", reason="AWS tests need boto3: pip install 'flowspec[aws]'")
    aws_home = tmp_path / "aws"
    aws_home.mkdir()
    values = aws_environment(moto_server, aws_home)
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    server = Moto(moto_server, {**os.environ})
    server.reset()
    yield server
    server.reset()
