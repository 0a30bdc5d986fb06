"""The result store (`results:` of a spec): task results kept for caching, targets, restarts and
subflows.

Layout, the same on a local folder and under an S3 prefix:

    flows/<flow>/<task>/<key>.pkl     a cache key's result
    targets/<path>                    a `target:` of a task, its path as the template made it
    runs/<run id>/NNNNNN-TOKEN-N.pack a run's kept results (`persist`), N of them in one pack
    runs/<run id>/<flow>/<task>/<index or ->.pkl  one kept result, written on its own (a dask worker)

Each result is one blob: a header line ``FSR1 <sha256 of the payload> <created, epoch seconds>``
then the payload, the value pickled with cloudpickle. The digest is checked on every load: a
mismatch is a CorruptResult that names both digests and the location. A local write goes to a
temporary file in the same folder, then is linked (or renamed) to the final name (atomic on
POSIX: a reader sees the old object, the new one, or none, never a part); an S3 write is a
single PutObject, which S3 makes visible whole or not at all.

A run's kept results are many small values written once and read back together (by a restart),
so a store that writes behind (the run's own process) gathers them and writes them as packs: a
pack is ``FSP1 <count>`` then the blobs, back to back, each with its own header and digest, then
an index (a line ``<name> <offset> <length> <sha256>`` per result) and a last line ``FSPX
<index offset> <index length> <sha256 of the index>``. A pack is written like any object
(atomically, fsynced first on a local disk), one every couple of seconds while the run goes on
and at its end: a run that is killed loses the results of its last seconds, never the store's
consistency (a pack is whole or absent; a damaged one fails its digests). One file per result
cost some 40 µs of file system work each; a pack costs well under 1 µs per result.

boto3 is imported only when an s3 store is used (flowspec/storage/s3.py's client helpers).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import os
import pickle
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowspec.errors import FlowspecError

MAGIC = b"FSR1"
PACK_MAGIC = b"FSP1"
KEPT = "runs/"  # the folder of runs' kept results
PACK_BYTES = 8 << 20  # a pack is written once its results reach this size...
PACK_SECONDS = 2.0  # ...or this long after its first result was put
_SMALL_PACK = 16 << 20  # a pack up to this size is read whole (and kept) when one of its results is read
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
    """What a prune or a deletion freed: `removed` results (a pack counts its results; a leftover
    temporary file counts none), in `objects` files or objects of `bytes` bytes; `kept` results
    stay."""

    removed: int = 0
    bytes: int = 0
    kept: int = 0
    objects: int = 0

    def __add__(self, other: PruneReport) -> PruneReport:
        return PruneReport(self.removed + other.removed, self.bytes + other.bytes, self.kept + other.kept,
                           self.objects + other.objects)


class RunKey(str):
    """The key of a run's kept result (`<run id>` or `<run id>-<index>` as text): `keyed_path`
    puts it under the run's own folder, `runs/<run id>/`."""

    run_id: str
    index: int | None

    def __new__(cls, run_id: str, index: int | None = None) -> RunKey:
        self = super().__new__(cls, run_id if index is None else f"{run_id}-{index}")
        self.run_id, self.index = run_id, index
        return self


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


def decode(blob: bytes, where) -> Any:
    """The value stored in `blob` (read from `where`: text, or a function that makes it, called
    only for a message), its digest checked."""
    if callable(where):
        header, _, payload = blob.partition(b"\n")
        parts = header.split(b" ")
        if len(parts) == 3 and parts[0] == MAGIC and parts[1] == hashlib.sha256(payload).hexdigest().encode():
            try:
                return pickle.loads(payload)
            except Exception:  # noqa: BLE001 - said below, with where it was read from
                pass
        where = where()
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
@functools.lru_cache(maxsize=4096)  # flows, tasks and run ids come back for every task run
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
    if type(key) is RunKey:
        return kept_path(key.run_id, flow, task, key.index)
    return f"flows/{segment(flow)}/{segment(task)}/{segment(key)}.pkl"


def kept_path(run_id: str, flow: str, task: str, index: int | None) -> str:
    """Where a run's kept result is: in one of the run's packs under this name, or an object."""
    return f"{KEPT}{segment(run_id)}/{segment(flow)}/{segment(task)}/{'-' if index is None else index}.pkl"


def split_kept(rel: str) -> tuple[str, str] | None:
    """(run id, name in the run's packs) of a kept result's path; None for any other path."""
    if not rel.startswith(KEPT):
        return None
    run, sep, name = rel[len(KEPT):].partition("/")
    return (run, name) if sep and name else None


# -- packs ------------------------------------------------------------------------------------
def build_pack(entries: list[tuple[str, bytes]]) -> bytes:
    """One pack of (name, blob) entries (see the module's text)."""
    head = b"%s %d\n" % (PACK_MAGIC, len(entries))
    parts, index, offset = [head], [], len(head)
    sha = hashlib.sha256
    for name, blob in entries:
        parts.append(blob)
        # The blob's own header holds its payload's digest: the index repeats it (a pack is
        # content-addressed: a name leads to a digest, the digest to the bytes)
        digest = blob[5:blob.index(b" ", 5)] if blob[:5] == MAGIC + b" " else sha(blob).hexdigest().encode()
        index.append(b"%s %d %d %s\n" % (name.encode(), offset, len(blob), digest))
        offset += len(blob)
    text = b"".join(index)
    parts.append(text)
    parts.append(b"FSPX %d %d %s\n" % (offset, len(text), sha(text).hexdigest().encode()))
    return b"".join(parts)


def pack_name(seq: int, token: str, count: int) -> str:
    """`NNNNNN-TOKEN-COUNT.pack`: in the order written (per writer), the count of results in it
    (what a prune frees, without reading it)."""
    return f"{seq:06d}-{token}-{count}.pack"


def pack_count(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1][:-len(".pack")])
    except (IndexError, ValueError):
        return 0


def pack_footer(tail: bytes, size: int, where: str) -> tuple[int, int, str]:
    """(index offset, index length, its sha256) from the last bytes of a pack of `size` bytes."""
    line = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]
    parts = line.split()
    try:
        if len(parts) != 4 or parts[0] != b"FSPX" or not tail.endswith(b"\n"):
            raise ValueError
        start, length = int(parts[1]), int(parts[2])
        if start + length + len(line) != size:
            raise ValueError
    except ValueError:
        raise CorruptResult(f"{where}: not a whole flowspec pack (no index at its end); it was cut short or"
                            " damaged", "delete it; the run's tasks whose results it held run again on a"
                                        " restart") from None
    return start, length, parts[3].decode(errors="replace")


def pack_index(text: bytes, digest: str, pack: str, where: str) -> dict:
    """{name: (pack, offset, length, sha256)} of a pack's index, its digest checked."""
    actual = hashlib.sha256(text).hexdigest()
    if actual != digest:
        raise CorruptResult(f"{where}: checksum mismatch in its index: written with sha256 {digest} but holds"
                            f" sha256 {actual}; it was changed or damaged after it was written",
                            "delete it; the run's tasks whose results it held run again on a restart")
    out = {}
    for line in text.splitlines():
        name, offset, length, sha = line.split(b" ")
        out[name.decode()] = (pack, int(offset), int(length), sha.decode())
    return out


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
    """Where results are kept. `from_spec` picks the kind; the kinds share the object layout and
    what is built on it here (packs of kept results, writing behind, pruning). A kind provides
    the object operations: write, read (whole or a range), has, the listing and removal."""

    kind = "?"

    def __init__(self, write_behind: bool = False) -> None:
        # run id -> (when listed, {name: (pack, offset, length, sha256)}): the packs of a run, read once
        self._index: dict[str, tuple[float, dict]] = {}
        self._packs: dict[str, bytes] = {}  # small packs read whole, by path (see _SMALL_PACK)
        self._behind = _Behind(self) if write_behind else None

    @staticmethod
    def from_spec(spec: dict | None, home: str | os.PathLike | None = None, write_behind: bool = False,
                  ) -> ResultStore:
        """`spec`: a flow's `results` mapping with env references resolved (None: the default
        local store, `<home>/results`). `write_behind`: `write` returns at once and one writer
        thread stores what was put (kept results of a run gathered into packs); `flush()` waits
        for it, `close()` flushes and stops the thread."""
        spec = dict(spec or {})
        kind = spec.get("type", "local")
        if kind == "s3":
            return S3ResultStore(spec["bucket"], spec.get("prefix") or "", spec.get("endpoint_url"),
                                 spec.get("region"), spec.get("profile"), write_behind)
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

    def describe(self) -> dict:
        """The store as settings `from_spec` takes (what the backend keeps to find it again)."""
        raise NotImplementedError

    # keyed results
    def put(self, flow: str, task: str, key: str, value: Any) -> str:
        return self.write(keyed_path(flow, task, key), encode(value, task))

    def get(self, flow: str, task: str, key: str, max_age: float | None = None) -> Any:
        return self.load(keyed_path(flow, task, key), max_age)

    def exists(self, flow: str, task: str, key: str, max_age: float | None = None) -> bool:
        return self.has(keyed_path(flow, task, key), max_age)

    def delete(self, flow: str, task: str, key: str) -> bool:
        return self.remove(keyed_path(flow, task, key))

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

    # writing, reading
    def write(self, rel: str, blob: bytes) -> str:
        if self._behind is not None:
            self._behind.put(rel, blob)
            return self.location(rel)
        return self.write_object(rel, blob)

    def queue(self, rel: str, blob: bytes) -> None:
        """`write`, without making the location the caller does not need (once per task run)."""
        if self._behind is not None:
            self._behind.put(rel, blob)
        else:
            self.write_object(rel, blob)

    def read(self, rel: str) -> bytes:
        if self._behind is not None and (blob := self._behind.pending.get(rel)) is not None:
            return blob
        kept = split_kept(rel)
        if kept is not None and (entry := self._kept_entry(*kept)) is not None:
            return self._read_entry(entry)
        return self.read_object(rel)

    def has(self, rel: str, max_age: float | None) -> bool:
        if self._behind is not None and rel in self._behind.pending:
            return True
        kept = split_kept(rel)
        if kept is not None and self._kept_entry(*kept) is not None:
            return True  # a run's kept results do not expire
        return self.has_object(rel, max_age)

    def load(self, rel: str, max_age: float | None) -> Any:
        blob = self.read(rel)
        if max_age is not None:
            made = created_at(blob[:100])
            if made is not None and time.time() - made > max_age:
                raise NotFound(f"{self.location(rel)}: expired (written {time.time() - made:.0f}s ago,"
                               f" kept {max_age:g}s)")
        return decode(blob, lambda: self.location(rel))

    def remove(self, rel: str) -> bool:
        """Remove one object (a kept result in a pack goes with its run: `delete_runs`)."""
        self.flush()
        found = self.has_object(rel, None)
        self.remove_objects([rel])
        return found

    def flush(self) -> None:
        """Wait until every result put so far is stored (a no-op for stores that write at once);
        raise the first write that failed."""
        if self._behind is not None:
            self._behind.flush()

    def close(self) -> None:
        if self._behind is not None:
            behind, self._behind = self._behind, None
            behind.close()

    # a run's kept results
    def _kept_entry(self, run: str, name: str):
        listed = self._index.get(run)
        if listed is None:
            listed = self._index[run] = (time.monotonic(), {}, set())
            self._load_index(run, listed[1], listed[2])
        elif name not in listed[1] and time.monotonic() - listed[0] > 1.0:
            # Packs written since (by another process): only new ones are read, so a restart that
            # asks for 10 000 missing results lists the folder at most once a second
            listed = self._index[run] = (time.monotonic(), listed[1], listed[2])
            self._load_index(run, listed[1], listed[2])
        return listed[1].get(name)

    def _load_index(self, run: str, index: dict, seen: set) -> None:
        """Add the indexes of the run's packs not in `seen` to `index`, later packs over earlier ones."""
        folder = f"{KEPT}{run}/"
        for rel, size, _ in sorted(self.list_objects(folder, recursive=False)):
            if not rel.endswith(".pack") or rel.rsplit("/", 1)[1].startswith(".") or rel in seen:
                continue
            where = self.location(rel)
            whole = self._whole_pack(rel, size)
            tail = whole[-300:] if whole is not None else self.read_range(rel, max(0, size - 300), min(size, 300))
            start, length, digest = pack_footer(tail, size, where)
            text = whole[start:start + length] if whole is not None else self.read_range(rel, start, length)
            index.update(pack_index(text, digest, rel, where))
            seen.add(rel)

    def _whole_pack(self, rel: str, size: int) -> bytes | None:
        data = self._packs.get(rel)
        if data is None and size <= _SMALL_PACK:
            data = self.read_object(rel)
            while self._packs and sum(map(len, self._packs.values())) + len(data) > 4 * _SMALL_PACK:
                self._packs.pop(next(iter(self._packs)))
            self._packs[rel] = data
        return data

    def _read_entry(self, entry) -> bytes:
        pack, offset, length, digest = entry
        whole = self._packs.get(pack)
        blob = whole[offset:offset + length] if whole is not None else self.read_range(pack, offset, length)
        written = blob[5:5 + len(digest)].decode(errors="replace")
        if written != digest:
            raise CorruptResult(f"{self.location(pack)}: checksum mismatch at offset {offset}: its index says sha256"
                                f" {digest} but the result there says sha256 {written}; the pack was changed or"
                                " damaged after it was written",
                                "delete it; the run's tasks whose results it held run again on a restart")
        return blob

    def write_pack(self, run: str, entries: list[tuple[str, bytes]], seq: int, token: str) -> str:
        rel = f"{KEPT}{run}/{pack_name(seq, token, len(entries))}"
        self.write_object(rel, build_pack(entries), durable=True)
        self._index.pop(run, None)  # read again when next asked
        return rel

    # deleting
    def delete_runs(self, run_ids) -> PruneReport:
        """Remove the kept results of these runs (packs and single objects under `runs/<id>/`)."""
        self.flush()
        report = PruneReport()
        for run in run_ids:
            found = self.list_objects(f"{KEPT}{segment(run)}/", recursive=True)
            report += self._removed(found)
            self._index.pop(segment(run), None)
        return report

    def prune(self, older_than_s: float, active=(), keep_since: float | None = None) -> PruneReport:
        """Remove what was written more than `older_than_s` ago: a run's kept results together,
        when the newest of them is that old and the run is not in `active`; any other object
        (cache keys, targets, leftover temporary files) when it is that old and, with
        `keep_since`, older than that time too (what a run still going may have written)."""
        self.flush()
        cutoff = time.time() - older_than_s
        shared_cutoff = cutoff if keep_since is None else min(cutoff, keep_since)
        active = {segment(r) for r in active}
        runs: dict[str, list] = {}
        others = []
        for obj in self.list_objects("", recursive=True):
            kept = split_kept(obj[0])
            if kept is not None:
                runs.setdefault(kept[0], []).append(obj)
            else:
                others.append(obj)
        old = [o for o in others if o[2] < shared_cutoff]
        kept = sum(_results_in(o[0]) for o in others if o[2] >= shared_cutoff)
        for run, objs in runs.items():
            if run not in active and max(o[2] for o in objs) < cutoff:
                old += objs
            else:
                kept += sum(_results_in(o[0]) for o in objs)
            self._index.pop(run, None)
        return self._removed(old) + PruneReport(kept=kept)

    def _removed(self, objs: list) -> PruneReport:
        if objs:
            self.remove_objects([o[0] for o in objs])
        return PruneReport(sum(_results_in(o[0]) for o in objs), sum(o[1] for o in objs), 0, len(objs))

    # what each kind implements
    def write_object(self, rel: str, blob: bytes, durable: bool = False) -> str:
        raise NotImplementedError

    def read_object(self, rel: str) -> bytes:
        raise NotImplementedError

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        raise NotImplementedError

    def has_object(self, rel: str, max_age: float | None) -> bool:
        raise NotImplementedError

    def list_objects(self, prefix: str, recursive: bool) -> list[tuple[str, int, float]]:
        """(path, size, written at) of the objects under `prefix` (a folder, '' for all)."""
        raise NotImplementedError

    def remove_objects(self, rels: list[str]) -> int:
        raise NotImplementedError

    def location(self, rel: str) -> str:
        raise NotImplementedError


def _results_in(rel: str) -> int:
    """How many results an object holds: a pack its count, a temporary file none, a result one."""
    name = rel.rsplit("/", 1)[-1]
    if name.startswith("."):
        return 0
    return pack_count(name) if name.endswith(".pack") else 1


class _Behind:
    """The writer thread of a store that writes behind. `put` (the task run's side) costs a lock
    and two appends; the thread writes other results as they come and gathers a run's kept
    results into a pack, written once it holds PACK_BYTES or PACK_SECONDS after its first result,
    and at every flush. What is not yet written is read back from `pending`."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.pending: dict[str, bytes] = {}
        self._items: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()  # `put` takes it alone: a Condition's `with` is Python code
        self._cond = threading.Condition(self._lock)
        self._asleep = False
        self._put = self._done = 0
        self._flushing = 0
        self._stop = False
        self._failed: list[ResultError] = []
        self._token = uuid.uuid4().hex[:8]
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="flowspec-results", daemon=True)
        self._thread.start()

    def put(self, rel: str, blob: bytes) -> None:
        with self._lock:
            self.pending[rel] = blob
            self._items.append((rel, blob))
            self._put += 1
            if self._asleep:
                self._asleep = False
                self._cond.notify()

    def flush(self) -> None:
        with self._cond:
            target = self._put
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._done < target and self._thread.is_alive():
                    self._cond.wait(0.5)
            finally:
                self._flushing -= 1
            if self._failed:
                first, self._failed[:] = self._failed[0], []
                raise first

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join()

    def _run(self) -> None:
        packs: dict[str, list] = {}  # run id -> [(name, blob, rel)]
        size, due = 0, None
        while True:
            with self._cond:
                while not self._items and not self._stop and not (packs and (self._flushing or time.monotonic() >= due)):
                    self._asleep = not packs
                    self._cond.wait(None if not packs else max(0.0, due - time.monotonic()))
                if self._items and not self._flushing and not self._stop:
                    self._cond.wait(0.2)  # let results gather: one wake-up per batch, not per result
                items, self._items = self._items, []
                flushing, stop = self._flushing, self._stop
            written = []
            for rel, blob in items:
                kept = split_kept(rel)
                if kept is None:
                    self._write(written, [(rel, blob)], lambda: self.store.write_object(rel, blob))
                    continue
                packs.setdefault(kept[0], []).append((kept[1], blob, rel))
                size += len(blob)
                due = due or time.monotonic() + PACK_SECONDS
            if packs and (flushing or stop or size >= PACK_BYTES or time.monotonic() >= due):
                for run, entries in packs.items():
                    self._write(written, [(rel, blob) for _, blob, rel in entries],
                                lambda: self.store.write_pack(run, [(n, b) for n, b, _ in entries], next(self._seq),
                                                              self._token))
                packs, size, due = {}, 0, None
            with self._cond:
                for rel, blob in written:
                    if self.pending.get(rel) is blob:
                        del self.pending[rel]
                self._done += len(written)
                self._cond.notify_all()
                if stop and not self._items and not packs:
                    return

    def _write(self, written: list, what: list, action) -> None:
        try:
            action()
        except ResultError as exc:
            self._failed.append(exc)
        except Exception as exc:  # noqa: BLE001 - a writer that dies would leave flush() waiting
            self._failed.append(ResultError(f"cannot write results: {type(exc).__name__}: {exc}"))
        written.extend(what)


class LocalResultStore(ResultStore):
    """A folder of results."""

    kind = "local"

    def __init__(self, directory: str | os.PathLike, write_behind: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(directory))
        self._made: set[str] = set()  # folders known to exist: one mkdir per folder, not per put
        super().__init__(write_behind)

    def describe(self) -> dict:
        return {"type": "local", "directory": self.root}

    def location(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def write_object(self, rel: str, blob: bytes, durable: bool = False) -> str:
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
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                if durable:  # a pack holds many results: on disk before it has its name
                    os.fsync(fd)
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

    def read_object(self, rel: str) -> bytes:
        path = os.path.join(self.root, rel)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"{path}: no such result") from None
        except OSError as exc:
            raise ResultError(f"cannot read the result {path}: {exc.strerror}") from None

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        path = os.path.join(self.root, rel)
        try:
            with open(path, "rb") as f:
                return os.pread(f.fileno(), length, start)
        except OSError as exc:
            raise ResultError(f"cannot read the result {path}: {exc.strerror}") from None

    def has_object(self, rel: str, max_age: float | None) -> bool:
        path = os.path.join(self.root, rel)
        if max_age is None:
            return os.path.isfile(path)
        try:
            with open(path, "rb") as f:
                made = created_at(f.read(100))
        except OSError:
            return False
        return made is None or time.time() - made <= max_age

    def list_objects(self, prefix: str, recursive: bool) -> list[tuple[str, int, float]]:
        top = os.path.join(self.root, prefix)
        out = []
        for folder, dirs, files in os.walk(top):
            if not recursive:
                dirs[:] = []
            rel_folder = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in files:
                try:
                    st = os.stat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue
                out.append((name if rel_folder == "." else f"{rel_folder}/{name}", st.st_size, st.st_mtime))
        return out

    def remove_objects(self, rels: list[str]) -> int:
        removed = 0
        folders = set()
        for rel in rels:
            try:
                os.unlink(os.path.join(self.root, rel))
                removed += 1
            except FileNotFoundError:
                pass
            folders.add(os.path.dirname(rel))
        # Empty folders of runs go too (a run's folder, its flow and task folders)
        for folder in sorted(folders, key=len, reverse=True):
            while folder.startswith(KEPT) and folder.rstrip("/") != KEPT.rstrip("/"):
                try:
                    os.rmdir(os.path.join(self.root, folder))
                except OSError:
                    break
                self._made.discard(os.path.join(self.root, folder))
                folder = os.path.dirname(folder)
        return removed


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
                 profile: str | None = None, write_behind: bool = False) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.opts = {"endpoint_url": endpoint_url, "region": region, "profile": profile}
        self._client = None
        super().__init__(write_behind)

    def describe(self) -> dict:
        return {"type": "s3", "bucket": self.bucket, "prefix": self.prefix,
                **{k: v for k, v in self.opts.items() if v}}

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

    def write_object(self, rel: str, blob: bytes, durable: bool = False) -> str:
        import base64

        key = self.prefix + rel
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
        with self._translated(f"keeping a result at {self.location(rel)}", "s3:PutObject", self._missing_bucket()):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=blob, ChecksumAlgorithm="SHA256",
                                   ChecksumSHA256=digest, ContentType="application/octet-stream")
        return self.location(rel)

    def read_object(self, rel: str) -> bytes:
        return self._get(rel, None)

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        return self._get(rel, f"bytes={start}-{start + length - 1}")

    def _get(self, rel: str, byte_range: str | None) -> bytes:
        missing = {**self._missing_bucket(), "NoSuchKey": ("no such result", "")}
        from flowspec.aws import AWSError

        extra = {"Range": byte_range} if byte_range else {}
        try:
            with self._translated(f"loading the result {self.location(rel)}", "s3:GetObject", missing):
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel, **extra)["Body"].read()
        except AWSError as exc:
            if exc.code == "NoSuchKey":
                raise NotFound(f"{self.location(rel)}: no such result") from None
            raise

    def has_object(self, rel: str, max_age: float | None) -> bool:
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

    def list_objects(self, prefix: str, recursive: bool) -> list[tuple[str, int, float]]:
        out = []
        args = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if not recursive:
            args["Delimiter"] = "/"
        with self._translated(f"listing results under s3://{self.bucket}/{self.prefix}{prefix}", "s3:ListBucket",
                              self._missing_bucket()):
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for obj in page.get("Contents", []):
                    out.append((obj["Key"][len(self.prefix):], obj["Size"], obj["LastModified"].timestamp()))
        return out

    def remove_objects(self, rels: list[str]) -> int:
        keys = [self.prefix + rel for rel in rels]
        with self._translated(f"deleting results under s3://{self.bucket}/{self.prefix}", "s3:DeleteObject"):
            for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        return len(keys)
