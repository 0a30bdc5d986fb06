"""The `s3` storage: the compiled flow in an S3 object, its sha256 checked by flowspec on load."""
from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any

from flowspec import references as refs
from flowspec.errors import FlowspecError, SpecError
from flowspec.storage.base import Storage, deserialize, serialize

REREGISTER = "register the flow again (flowspec register FILE) to upload a fresh copy"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # AWS's rules for bucket names


class S3Storage(Storage):
    """Flows as S3 objects. YAML keys: `bucket` (required), `key` (default
    `flowspec/PROJECT/FLOW/SHA256.flow`, content-addressed), `endpoint_url` (an S3-compatible
    service), `region`, `profile` (from the shared AWS configuration).

    Before uploading, the object is looked up (HeadObject): when it already holds this exact
    payload, nothing is uploaded, so registering an unchanged flow costs one request. The object
    carries the payload's sha256 as S3's own checksum (S3 refuses an upload whose body does not
    match it) and in its metadata (`x-amz-meta-sha256`); `load` computes it again and refuses an
    object that differs from what was registered. In a versioned bucket the version id is
    recorded and exactly that version is loaded, whatever was uploaded after it.
    Credentials come from the standard AWS chain only (see flowspec/aws.py).
    """

    def build(self, spec) -> dict[str, Any]:
        opts = options(spec)
        data, fp = serialize(spec)
        digest = hashlib.sha256(data).hexdigest()
        key = opts["key"] or default_key(spec, digest)
        client = _client(opts)
        found = _head(client, opts["bucket"], key)
        if found is not None and _holds(found, digest):
            version = found.get("VersionId")
        else:
            version = _put(client, opts["bucket"], key, data, digest)
        return location(opts, key, version, digest, fp)

    def locate(self, spec) -> dict[str, Any]:
        opts = options(spec)
        data, fp = serialize(spec)  # in memory only: the payload's digest names the object
        digest = hashlib.sha256(data).hexdigest()
        key = opts["key"] or default_key(spec, digest)
        found = _head(_client(opts), opts["bucket"], key)
        if found is None or not _holds(found, digest):
            raise FlowspecError(f"s3://{opts['bucket']}/{key} does not hold a build of this flow (spec and code"
                                " as they are now)", hint="register without --no-build to upload it")
        return location(opts, key, found.get("VersionId"), digest, fp)

    def load(self, location: dict[str, Any]) -> tuple[Any, dict]:
        from flowspec.aws import translated

        bucket, key, version = location["bucket"], location["key"], location.get("version_id")
        where = f"s3://{bucket}/{key}" + (f" (version {version})" if version else "")
        client = _client(location)
        args = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
        missing = {
            "NoSuchBucket": (f"the bucket '{bucket}' does not exist",
                             "create the bucket, or register the flow again with the right storage.bucket"),
            "NoSuchKey": ("the object does not exist (deleted after the flow was registered?)", REREGISTER),
            "NoSuchVersion": ("that version of the object does not exist (deleted?)", REREGISTER),
            "404": ("the object does not exist", REREGISTER),
        }
        with translated(f"loading the flow from {where}", "s3:GetObject" + ("Version" if version else ""),
                        _endpoint(client), missing):
            data = client.get_object(**args)["Body"].read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != location["sha256"]:
            raise FlowspecError(
                f"{where}: checksum mismatch: the registered flow has sha256 {location['sha256']} but the object"
                f" holds sha256 {actual}; it was changed or damaged after it was uploaded", hint=REREGISTER)
        return deserialize(data, where)


def options(spec) -> dict[str, Any]:
    """The storage keys with `${{ env.NAME }}` resolved; positioned errors for what cannot work."""
    from flowspec.aws import has_userinfo

    raw = dict(spec.storage.options)
    lookup = refs.env_lookup(os.environ)
    diags, out = [], {}
    for name in ("bucket", "key", "endpoint_url", "region", "profile"):
        try:
            value = refs.resolve(refs.compile_value(raw.get(name)), lookup)
        except refs.UnsetEnvError as exc:
            diags.append(spec.document.diag(("storage", name), str(exc), "export it before building"))
            continue
        out[name] = value if value not in ("", None) else None
    if out.get("endpoint_url") and (has_userinfo(out["endpoint_url"])
                                    or not out["endpoint_url"].startswith(("http://", "https://"))):
        diags.append(spec.document.diag(("storage", "endpoint_url"),
                                        "endpoint_url must be an http:// or https:// URL without user or password",
                                        "credentials come from the AWS credential chain, never from the spec"))
    if out.get("key") is not None and (out["key"].startswith("/") or out["key"].endswith("/")):
        diags.append(spec.document.diag(("storage", "key"), f"'{out['key']}' is not an object key",
                                        "write it without a leading or trailing '/', e.g. flows/etl.flow"))
    if "bucket" in out and not out["bucket"]:
        diags.append(spec.document.diag(("storage", "bucket"), "bucket is empty", "name the S3 bucket"))
    elif out.get("bucket") and not _BUCKET.match(out["bucket"]):
        diags.append(spec.document.diag(("storage", "bucket"), f"'{out['bucket']}' is not an S3 bucket name",
                                        "3 to 63 lowercase letters, digits, '.' and '-', starting and ending"
                                        " with a letter or digit"))
    if diags:
        raise SpecError(diags)
    return out


def default_key(spec, digest: str) -> str:
    return f"flowspec/{spec.project}/{spec.name}/{digest}.flow"


def location(opts: dict, key: str, version: str | None, digest: str, fp: str) -> dict[str, Any]:
    """What the backend keeps: where the object is and how to reach it; never a credential."""
    return {"type": "s3", "path": f"s3://{opts['bucket']}/{key}", "bucket": opts["bucket"], "key": key,
            "version_id": version, "sha256": digest, "fingerprint": fp, "endpoint_url": opts.get("endpoint_url"),
            "region": opts.get("region"), "profile": opts.get("profile")}


def _client(opts: dict):
    from flowspec.aws import Session

    return Session("storage", opts.get("profile"), opts.get("region"), opts.get("endpoint_url")).client("s3")


def _endpoint(client) -> str:
    from flowspec.aws import endpoint_of

    return endpoint_of(client)


def _head(client, bucket: str, key: str) -> dict | None:
    """The object's HeadObject answer, or None when there is no such object (or bucket: then the
    upload that follows says which)."""
    import botocore.exceptions as bx

    from flowspec.aws import translated

    with translated(f"looking up s3://{bucket}/{key}", "s3:GetObject (HeadObject; s3:ListBucket to tell"
                    " a missing object from a forbidden one)", _endpoint(client)):
        try:
            return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except bx.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise


def _holds(head: dict, digest: str) -> bool:
    """Does the object hold this payload, by both its metadata and S3's own checksum?"""
    checksum = base64.b64encode(bytes.fromhex(digest)).decode()
    return head.get("Metadata", {}).get("sha256") == digest and head.get("ChecksumSHA256") == checksum


def _put(client, bucket: str, key: str, data: bytes, digest: str) -> str | None:
    """Upload; S3 checks the body against the sha256 we send. Returns the version id, if versioned."""
    from flowspec.aws import translated

    missing = {"NoSuchBucket": (f"the bucket '{bucket}' does not exist",
                                "create it (aws s3 mb s3://BUCKET) or fix storage.bucket")}
    with translated(f"uploading the flow to s3://{bucket}/{key}", "s3:PutObject", _endpoint(client), missing):
        answer = client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256",
                                   ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
                                   Metadata={"sha256": digest}, ContentType="application/octet-stream")
    return answer.get("VersionId")
