"""The result store (`results:` of a spec): task results kept for caching, targets, restarts and
subflows.

Layout, the same on a local folder and under an S3 prefix:

    flows/<flow>/<task>/<key>.pkl     a keyed result (cache keys, a run's kept results)
    targets/<path>                    a `target:` of a task, its path as the template made it

Each object is one blob: a header line ``FSR1 <sha256 of the payload> <created, epoch seconds>``
then the payload, the value pickled with cloudpickle. The digest is checked on every load: a
mismatch is a CorruptResult that names both digests and the location. A local write goes to a
temporary file in the same folder, then is linked (or renamed) to the final name (atomic on
POSIX: a reader sees the old object, the new one, or none, never a part); an S3 write is a
single PutObject, which S3 makes visible whole or not at all.

boto3 is imported only when an s3 store is used (flowspec/storage/s3.py's client helpers).
"""
from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowspec.errors import FlowspecError

MAGIC = b"FSR1"
_PROTOCOL = 5  # readable by every Python flowspec supports (3.8+)
_TEMP_NUMBERS = itertools.count()  # next() on it is atomic under the GIL
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_TARGET_PART = re.compile(r"^[A-Za-z0-9_.=@+,-]+$")


class ResultError(FlowspecError):
    """A result that cannot be kept or read."""


class NotFound(ResultError):
    """No result at that location (or one that has expired)."""


class CorruptResult(ResultError):
    """A stored result whose bytes do not match the digest written with them."""


class UnpicklableResult(ResultError):
    """A value that cannot be pickled: the task keeps its state, the value is not kept."""


@dataclass(frozen=True)
class PruneReport:
    removed: int = 0
    bytes: int = 0
    kept: int = 0


# -- encoding ---------------------------------------------------------------------------------
def encode(value: Any, task: str = "?") -> bytes:
    """The stored form of `value`: header line + cloudpickle payload."""
    try:  # plain pickle first: plain data, the common case, pickles several times faster
        payload = pickle.dumps(value, _PROTOCOL)
    except Exception:  # noqa: BLE001 - a lambda, a local class...: cloudpickle pickles those by value
        payload = None
    if payload is None:
        payload = _cloudpickled(value, task)
    return b"%s %s %d\n" % (MAGIC, hashlib.sha256(payload).hexdigest().encode(), int(time.time())) + payload


def _cloudpickled(value: Any, task: str) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(value, _PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling raises anything the value's __reduce__ raises
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise UnpicklableResult(f"the result of task '{task}' cannot be kept: a {kind} cannot be pickled ({exc})",
                                "return plain data (or an object cloudpickle can serialize), or set"
                                " `persist: false` on the task") from None


def decode(blob: bytes, where: str) -> Any:
    """The value stored in `blob` (read from `where`), its digest checked."""
    import pickle

    header, sep, payload = blob.partition(b"\n")
    parts = header.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        raise CorruptResult(f"{where}: not a flowspec result (no 'FSR1' header); it was damaged or written"
                            " by something else", "delete it; the task runs again and writes it anew")
    expected = parts[1].decode(errors="replace")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CorruptResult(f"{where}: checksum mismatch: written with sha256 {expected} but holds sha256 {actual};"
                            " it was changed or damaged after it was written",
                            "delete it; the task runs again and writes it anew")
    try:
        return pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001 - the code the value needs may be gone
        raise ResultError(f"{where}: the stored value cannot be loaded: {type(exc).__name__}: {exc}",
                          "the code that made it may have changed (a class renamed or removed);"
                          " delete it to run the task again") from None


def created_at(blob_head: bytes) -> float | None:
    parts = blob_head.partition(b"\n")[0].split(b" ")
    try:
        return float(parts[2]) if len(parts) == 3 and parts[0] == MAGIC else None
    except ValueError:
        return None


# -- names ------------------------------------------------------------------------------------
def segment(text: str) -> str:
    """A flow, task or key name as one path segment: itself when it is plain, else a digest
    (a cache key written as `${{ ... }}` may evaluate to any text)."""
    text = str(text)
    if _SAFE_SEGMENT.match(text) and text not in (".", ".."):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def target_error(path: str) -> str | None:
    """Why `path` cannot be a target (None: it can): relative, no `..`, plain characters."""
    if not path or path.startswith("/") or path.endswith("/"):
        return "a target is a relative path to a file, e.g. reports/2026-01-01.pkl"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "a target may not hold empty, '.' or '..' parts"
    bad = [p for p in parts if not _TARGET_PART.match(p)]
    if bad:
        return f"'{bad[0]}' holds characters other than letters, digits and . _ - = @ + ,"
    return None


def keyed_path(flow: str, task: str, key: str) -> str:
    return f"flows/{segment(flow)}/{segment(task)}/{segment(key)}.pkl"


def settings(spec, environ=None) -> dict | None:
    """A flow's `results` as a plain mapping, env references resolved, `directory` made absolute."""
    from flowspec import references as refs

    results = getattr(spec, "results", None)
    if results is None:
        return None
    lookup = refs.env_lookup(os.environ if environ is None else environ)
    out = {"type": results.type}
    for key, value in results.options.items():
        out[key] = refs.resolve(refs.compile_value(value), lookup)
    if out["type"] == "local" and out.get("directory"):
        out["directory"] = os.path.join(spec.base_dir, os.path.expanduser(str(out["directory"])))
    return out


def describe(spec, environ=None) -> dict:
    """Where a flow's results go, for `plan`: {type, location, given} (nothing created, no AWS call)."""
    try:
        opts = settings(spec, environ)
    except Exception as exc:  # noqa: BLE001 - an unset variable: plan reports it as text
        return {"type": spec.results.type, "location": f"unknown ({exc})", "given": True}
    if opts is None or opts["type"] == "local":
        directory = (opts or {}).get("directory")
        if not directory:
            home = (environ or os.environ).get("FLOWSPEC_HOME") or os.path.expanduser("~/.flowspec")
            directory = os.path.join(home, "results")
        return {"type": "local", "location": directory, "given": opts is not None}
    prefix = (opts.get("prefix") or "").strip("/")
    where = f"s3://{opts['bucket']}/{prefix + '/' if prefix else ''}"
    if opts.get("endpoint_url"):
        where += f" (endpoint {opts['endpoint_url']})"
    return {"type": "s3", "location": where, "given": True}


# -- stores -----------------------------------------------------------------------------------
class ResultStore:
    """Where results are kept. `from_spec` picks the kind; the kinds share the object layout."""

    kind = "?"

    @staticmethod
    def from_spec(spec: dict | None, home: str | os.PathLike | None = None, write_behind: bool = False,
                  ) -> ResultStore:
        """`spec`: a flow's `results` mapping with env references resolved (None: the default
        local store, `<home>/results`). `write_behind`: see LocalResultStore (local only)."""
        spec = dict(spec or {})
        kind = spec.get("type", "local")
        if kind == "s3":
            return S3ResultStore(spec["bucket"], spec.get("prefix") or "", spec.get("endpoint_url"),
                                 spec.get("region"), spec.get("profile"))
        directory = spec.get("directory")
        if directory is None:
            if home is None:
                from flowspec.backend import flowspec_home

                home = flowspec_home()
            directory = Path(home) / "results"
        return LocalResultStore(directory, write_behind)

    @staticmethod
    def for_flow(spec, home: str | os.PathLike | None = None, environ=None) -> ResultStore:
        """The store of a compiled flow: its `results` with `${{ env.NAME }}` resolved (here: where
        the run runs), a relative `directory` taken from the spec's folder; the default local
        store when the flow has no `results`."""
        return ResultStore.from_spec(settings(spec, environ), home)

    # keyed results
    def put(self, flow: str, task: str, key: str, value: Any) -> str:
        return self.write(keyed_path(flow, task, key), encode(value, task))

    def get(self, flow: str, task: str, key: str, max_age: float | None = None) -> Any:
        return self.load(keyed_path(flow, task, key), max_age)

    def exists(self, flow: str, task: str, key: str, max_age: float | None = None) -> bool:
        return self.has(keyed_path(flow, task, key), max_age)

    def delete(self, flow: str, task: str, key: str) -> bool:
        return self.remove(keyed_path(flow, task, key))

    def delete_run(self, entries) -> int:
        """Remove the results of one run: `entries` are (flow, task, key) triples (what the run
        recorded it kept). Returns how many existed."""
        return sum(self.delete(*entry) for entry in entries)

    # targets
    def put_target(self, path: str, value: Any, task: str = "?") -> str:
        return self.write(self._target(path), encode(value, task))

    def get_target(self, path: str) -> Any:
        return self.load(self._target(path), None)

    def target_exists(self, path: str) -> bool:
        return self.has(self._target(path), None)

    @staticmethod
    def _target(path: str) -> str:
        if (why := target_error(path)):
            raise ResultError(f"target '{path}': {why}")
        return "targets/" + path

    def flush(self) -> None:
        """Wait until every result put so far is stored (a no-op for stores that write at once)."""

    def close(self) -> None:
        self.flush()

    # what each kind implements
    def write(self, rel: str, blob: bytes) -> str:
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def has(self, rel: str, max_age: float | None) -> bool:
        raise NotImplementedError

    def remove(self, rel: str) -> bool:
        raise NotImplementedError

    def location(self, rel: str) -> str:
        raise NotImplementedError

    def prune(self, older_than_s: float) -> PruneReport:
        raise NotImplementedError

    def load(self, rel: str, max_age: float | None) -> Any:
        blob = self.read(rel)
        where = self.location(rel)
        if max_age is not None:
            made = created_at(blob[:100])
            if made is not None and time.time() - made > max_age:
                raise NotFound(f"{where}: expired (written {time.time() - made:.0f}s ago, kept {max_age:g}s)")
        return decode(blob, where)


class LocalResultStore(ResultStore):
    """A folder of results. With `write_behind`, `put` pickles and hashes the value at once (so
    an unpicklable value is still reported to the caller) and leaves the file operations to one
    writer thread: the task run pays for the encoding only. What is queued is read back from
    memory until it is written; `flush()` waits for the queue and raises the first write error;
    `close()` flushes and stops the thread. Each file is still written atomically."""

    kind = "local"

    def __init__(self, directory: str | os.PathLike, write_behind: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(directory))
        self._made: set[str] = set()  # folders known to exist: one mkdir per folder, not per put
        self._pending: dict[str, bytes] | None = None
        if write_behind:
            import queue
            import threading

            self._pending = {}
            self._queue: queue.SimpleQueue = queue.SimpleQueue()
            self._failed: list[ResultError] = []
            self._idle = threading.Event()
            self._idle.set()
            self._writer = threading.Thread(target=self._drain, name="flowspec-results", daemon=True)
            self._writer.start()

    def _drain(self) -> None:
        while True:
            rel = self._queue.get()
            if rel is None:
                return
            blob = self._pending.get(rel)
            try:
                if blob is not None:
                    self._write_now(rel, blob)
            except ResultError as exc:
                self._failed.append(exc)
            finally:
                if self._pending.get(rel) is blob:
                    self._pending.pop(rel, None)
                if self._queue.empty():
                    self._idle.set()

    def flush(self) -> None:
        if self._pending is None:
            return
        while self._pending:
            self._idle.wait(0.05)
        if self._failed:
            first, self._failed[:] = self._failed[0], []
            raise first

    def close(self) -> None:
        if self._pending is not None:
            self.flush()
            self._queue.put(None)
            self._writer.join()
            self._pending = None

    def write(self, rel: str, blob: bytes) -> str:
        if self._pending is None:
            return self._write_now(rel, blob)
        self._idle.clear()
        self._pending[rel] = blob
        self._queue.put(rel)
        return os.path.join(self.root, rel)

    def location(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _write_now(self, rel: str, blob: bytes) -> str:
        final = os.path.join(self.root, rel)
        folder = os.path.dirname(final)
        if folder not in self._made:
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise ResultError(f"cannot create the result folder {folder}: {exc.strerror}",
                                  "check `results.directory` and its permissions") from None
            self._made.add(folder)
        # The temporary name starts with '.' and ends '.tmp': never read as a result, and removed by prune.
        # pid and a process-wide counter: unique across the threads and processes of a run
        temp = f"{folder}/.{os.path.basename(final)}.{os.getpid()}.{next(_TEMP_NUMBERS)}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, blob)
            finally:
                os.close(fd)
            _publish(temp, final)
        except OSError as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise ResultError(f"cannot write the result {final}: {exc.strerror}",
                              "check the free space and permissions of the result store") from None
        return final

    def read(self, rel: str) -> bytes:
        if self._pending and (blob := self._pending.get(rel)) is not None:
            return blob
        path = os.path.join(self.root, rel)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"{path}: no such result") from None
        except OSError as exc:
            raise ResultError(f"cannot read the result {path}: {exc.strerror}") from None

    def has(self, rel: str, max_age: float | None) -> bool:
        if self._pending and rel in self._pending:
            return True
        path = os.path.join(self.root, rel)
        if max_age is None:
            return os.path.isfile(path)
        try:
            with open(path, "rb") as f:
                made = created_at(f.read(100))
        except OSError:
            return False
        return made is None or time.time() - made <= max_age

    def remove(self, rel: str) -> bool:
        self.flush()
        try:
            os.unlink(os.path.join(self.root, rel))
            return True
        except FileNotFoundError:
            return False

    def prune(self, older_than_s: float) -> PruneReport:
        """Remove results (and leftover temporary files) last written more than `older_than_s` ago."""
        self.flush()
        cutoff = time.time() - older_than_s
        removed = size = kept = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                    if st.st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                        size += st.st_size
                    else:
                        kept += 1
                except FileNotFoundError:
                    continue
        return PruneReport(removed, size, kept)


def _publish(temp: str, final: str) -> None:
    """Give the written temporary file its final name, atomically. A hard link then an unlink is
    a third of the cost of a rename on ext4 (which makes a rename durable before it returns); a
    name that exists already (the same key put again) or a file system without hard links takes
    the rename."""
    try:
        os.link(temp, final)
    except OSError:
        os.replace(temp, final)
        return
    os.unlink(temp)


class S3ResultStore(ResultStore):
    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.opts = {"endpoint_url": endpoint_url, "region": region, "profile": profile}
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from flowspec.storage.s3 import _client

            self._client = _client(self.opts)
        return self._client

    def location(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{rel}"

    def _translated(self, action: str, permission: str, missing: dict | None = None):
        from flowspec.aws import endpoint_of, translated

        return translated(action, permission, endpoint_of(self.client), missing)

    def _missing_bucket(self) -> dict:
        return {"NoSuchBucket": (f"the bucket '{self.bucket}' does not exist",
                                 "create it (aws s3 mb s3://BUCKET) or fix results.bucket")}

    def write(self, rel: str, blob: bytes) -> str:
        import base64

        key = self.prefix + rel
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
        with self._translated(f"keeping a result at {self.location(rel)}", "s3:PutObject", self._missing_bucket()):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=blob, ChecksumAlgorithm="SHA256",
                                   ChecksumSHA256=digest, ContentType="application/octet-stream")
        return self.location(rel)

    def read(self, rel: str) -> bytes:
        missing = {**self._missing_bucket(), "NoSuchKey": ("no such result", "")}
        from flowspec.aws import AWSError

        try:
            with self._translated(f"loading the result {self.location(rel)}", "s3:GetObject", missing):
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"].read()
        except AWSError as exc:
            if exc.code == "NoSuchKey":
                raise NotFound(f"{self.location(rel)}: no such result") from None
            raise

    def has(self, rel: str, max_age: float | None) -> bool:
        import botocore.exceptions as bx

        with self._translated(f"looking up the result {self.location(rel)}", "s3:GetObject (HeadObject)",
                              self._missing_bucket()):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + rel)
            except bx.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return max_age is None or time.time() - head["LastModified"].timestamp() <= max_age

    def remove(self, rel: str) -> bool:
        found = self.has(rel, None)
        with self._translated(f"deleting the result {self.location(rel)}", "s3:DeleteObject"):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + rel)
        return found

    def prune(self, older_than_s: float) -> PruneReport:
        cutoff = time.time() - older_than_s
        removed = size = kept = 0
        old: list[str] = []
        with self._translated(f"listing results under s3://{self.bucket}/{self.prefix}", "s3:ListBucket",
                              self._missing_bucket()):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    if obj["LastModified"].timestamp() < cutoff:
                        old.append(obj["Key"])
                        size += obj["Size"]
                    else:
                        kept += 1
        with self._translated(f"deleting old results under s3://{self.bucket}/{self.prefix}", "s3:DeleteObject"):
            for i in range(0, len(old), 1000):  # DeleteObjects takes at most 1000 keys
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": [{"Key": k} for k in old[i:i + 1000]], "Quiet": True})
                removed += len(old[i:i + 1000])
        return PruneReport(removed, size, kept)
