"""The `local` storage: the compiled flow in a content-addressed file on this machine."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from flowspec.errors import FlowspecError
from flowspec.storage.base import Storage, deserialize, fingerprint, import_flow, serialize

REREGISTER = "register the flow again (flowspec register FILE) to write a fresh copy"


class LocalStorage(Storage):
    """Flows as `<sha256>.flow` files. YAML keys: `directory` (default: `flows` in the flowspec
    home; a relative path is taken from the spec's folder).

    The file name is the sha256 of its bytes, so equal flows share one file; it is written to a
    temporary file and renamed into place, so a reader never sees half a flow. An index file
    per fingerprint (`index/<fingerprint>`) lets `register --no-build` find an earlier build.
    Agents read the file by its absolute path: they must see the same filesystem.
    """

    def build(self, spec) -> dict[str, Any]:
        data, fp = serialize(spec)
        directory = self.directory(spec)
        digest = hashlib.sha256(data).hexdigest()
        path = directory / f"{digest}.flow"
        if not _intact(path, digest):
            atomic_write(path, data)
        atomic_write(directory / "index" / fp, digest.encode())
        return location(path, digest, fp)

    def locate(self, spec) -> dict[str, Any]:
        _, modules = import_flow(spec)
        fp = fingerprint(spec, modules)
        directory = self.directory(spec)
        index = directory / "index" / fp
        digest = index.read_text().strip() if index.is_file() else ""
        path = directory / f"{digest}.flow"
        if not digest or not _intact(path, digest):
            raise FlowspecError(
                f"no intact build of this flow (spec and code as they are now) is in {directory}",
                hint="register without --no-build to build it",
            )
        return location(path, digest, fp)

    def load(self, location: dict[str, Any]) -> tuple[Any, dict]:
        path = Path(location["path"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FlowspecError(f"{path}: cannot read the stored flow ({exc.strerror})", hint=REREGISTER) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != location["sha256"]:
            raise FlowspecError(
                f"{path}: checksum mismatch: the stored flow should have sha256 {location['sha256']}"
                f" but has {actual}; it was changed or damaged after it was written",
                hint=REREGISTER,
            )
        return deserialize(data, str(path))

    @staticmethod
    def directory(spec) -> Path:
        configured = spec.storage.options.get("directory")
        if configured:
            return Path(spec.base_dir, os.path.expanduser(configured)).resolve()
        from flowspec.backend import flowspec_home

        return flowspec_home() / "flows"


def location(path: Path, digest: str, fp: str) -> dict[str, Any]:
    return {"type": "local", "path": str(path), "sha256": digest, "fingerprint": fp}


def _intact(path: Path, digest: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise FlowspecError(f"cannot write to {path.parent}: {exc.strerror}",
                            hint="set storage.directory to a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
