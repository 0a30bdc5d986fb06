"""The `local` storage with real files: content addressing, atomic writes, checksums verified on
load, and code beside the spec pickled by value (loaded in a fresh process without it)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flowspec.compile import compile_file
from flowspec.errors import FlowspecError
from flowspec.storage import load_flow
from flowspec.storage.local import LocalStorage, atomic_write

SPEC = """\
version: 1
name: doubler
tasks:
  double:
    run: {module}:double
    with: {{x: 21}}
{storage}"""
STEPS = """\
import {helper}
from {helper} import FACTOR

def double(x):
    return {helper}.times(x, FACTOR)
"""
HELPER = """\
FACTOR = 2

def times(x, factor):
    return x * factor
"""


class FlowDir:
    """A spec and its code under module names of their own (sys.modules is shared by the tests)."""

    def __init__(self, root: Path, storage: str = "") -> None:
        tag = uuid.uuid4().hex[:8]
        self.module, self.helper = f"steps_{tag}", f"helper_{tag}"
        self.root = root / "flow"
        self.root.mkdir()
        self.spec = self.root / "flow.yaml"
        self.spec.write_text(SPEC.format(module=self.module, storage=storage))
        (self.root / f"{self.module}.py").write_text(STEPS.format(helper=self.helper))
        (self.root / f"{self.helper}.py").write_text(HELPER)

    def compile(self):
        for name in (self.module, self.helper):  # a fresh import sees the files as they are now
            sys.modules.pop(name, None)
        spec, diags = compile_file(str(self.spec))
        assert not diags, diags
        return spec

    def build(self) -> dict:
        return LocalStorage().build(self.compile())


@pytest.fixture
def flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FlowDir:
    monkeypatch.setenv("FLOWSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the spec's folder goes on it
    made = FlowDir(tmp_path)
    yield made
    for name in (made.module, made.helper):
        sys.modules.pop(name, None)


LOAD_AND_CALL = """
import json, sys
from flowspec.storage import load_flow
spec, callables = load_flow(json.loads(sys.argv[1]))
print(json.dumps([spec.name, sorted(callables), callables["double"](x=21)]))
"""


def test_build_writes_a_content_addressed_file_that_loads_where_the_code_is_not(flow: FlowDir, tmp_path: Path) -> None:
    location = flow.build()
    path = Path(location["path"])
    assert path.parent == tmp_path / "home" / "flows"
    assert path.name == hashlib.sha256(path.read_bytes()).hexdigest() + ".flow" == location["sha256"] + ".flow"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, "index"]  # no temporary file left
    shutil.rmtree(flow.root)  # the code is in the file, by value
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-c", LOAD_AND_CALL, json.dumps(location)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["doubler", ["double"], 42]


def test_the_same_flow_builds_to_the_same_file_and_changed_code_to_another(flow: FlowDir) -> None:
    first = flow.build()
    assert flow.build() == first
    assert LocalStorage().locate(flow.compile()) == first
    (flow.root / f"{flow.helper}.py").write_text(HELPER.replace("FACTOR = 2", "FACTOR = 3"))
    changed = flow.build()
    assert changed["fingerprint"] != first["fingerprint"] and changed["path"] != first["path"]
    assert load_flow(changed)[1]["double"](x=21) == 63
    assert load_flow(first)[1]["double"](x=21) == 42  # the old version is still there, intact


def test_a_damaged_file_is_refused_naming_it_and_a_rebuild_repairs_it(flow: FlowDir) -> None:
    location = flow.build()
    path = Path(location["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FlowspecError) as caught:
        load_flow(location)
    assert str(caught.value).startswith(f"{path}: checksum mismatch: the stored flow should have sha256 "
                                        f"{location['sha256']} but has ")
    assert caught.value.hint == "register the flow again (flowspec register FILE) to write a fresh copy"
    with pytest.raises(FlowspecError, match="no intact build of this flow"):
        LocalStorage().locate(flow.compile())
    assert flow.build() == location
    assert load_flow(location)[1]["double"](x=1) == 2


def test_a_missing_file_is_named(flow: FlowDir) -> None:
    location = flow.build()
    os.unlink(location["path"])
    with pytest.raises(FlowspecError, match=r"cannot read the stored flow \(No such file or directory\)") as caught:
        load_flow(location)
    assert str(caught.value).startswith(location["path"])


def test_storage_directory_is_taken_from_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    made = FlowDir(tmp_path, storage="storage:\n  type: local\n  directory: built\n")
    try:
        location = made.build()
    finally:
        for name in (made.module, made.helper):
            sys.modules.pop(name, None)
    assert Path(location["path"]).parent == made.root / "built"


def test_an_interrupted_write_leaves_neither_a_partial_file_nor_a_temporary_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(tmp_path / "x.flow", b"payload")
    assert list(tmp_path.iterdir()) == []
