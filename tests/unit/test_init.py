"""`flowspec init` and `flowspec schema`, called through the CLI's own entry point."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flowspec.cli import main
from flowspec.commands.init import SCHEMA_COPY, starter_test_name
from flowspec.compile import compile_file
from flowspec.fmt import format_text
from flowspec.schema import SCHEMA_PATH

MODELINE = "# yaml-language-server: $schema="


@pytest.fixture(autouse=True)
def own_imports(monkeypatch):
    """`validate --strict` imports the starter's `tasks` module: keep it out of other tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "tasks", raising=False)
    yield
    sys.modules.pop("tasks", None)


def test_init_writes_a_starter_that_validates_strictly_and_is_formatted(tmp_path: Path):
    folder = tmp_path / "greetings"
    assert main(["init", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(["flow.yaml", "tasks.py", "test_greetings.py",
                                                               SCHEMA_COPY])
    assert starter_test_name("my-flow.v2") == "test_my_flow_v2.py"
    flow = (folder / "flow.yaml").read_text()
    assert flow.splitlines()[0] == MODELINE + SCHEMA_COPY
    assert (folder / SCHEMA_COPY).read_text() == Path(SCHEMA_PATH).read_text()
    spec, diags = compile_file(str(folder / "flow.yaml"), strict=True)  # imports tasks.py too
    assert diags == [] and spec.name == "greetings"
    assert [t.name for t in spec.tasks.values() if t.mapped] == ["greet"]
    assert format_text(flow) == flow
    assert flow.count("\n#") + flow.count("  # ") > 10  # it is a commented starter


def test_init_never_overwrites_without_force(tmp_path: Path, capsys):
    (tmp_path / "tasks.py").write_text("# mine\n")
    assert main(["init", str(tmp_path)]) == 2
    assert "tasks.py already exists" in capsys.readouterr().err
    assert (tmp_path / "tasks.py").read_text() == "# mine\n"
    assert not (tmp_path / "flow.yaml").exists()
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert "def greet" in (tmp_path / "tasks.py").read_text()


def test_schema_url_and_names_that_yaml_would_misread(tmp_path: Path):
    assert main(["init", str(tmp_path / "1.0"), "--schema-url", "https://example.org/flow.json"]) == 0
    assert not (tmp_path / "1.0" / SCHEMA_COPY).exists()
    flow = (tmp_path / "1.0" / "flow.yaml").read_text()
    assert flow.startswith(MODELINE + "https://example.org/flow.json\n")
    spec, diags = compile_file(str(tmp_path / "1.0" / "flow.yaml"))
    assert diags == [] and spec.name == "1.0"  # quoted, so it stays a string


@pytest.mark.parametrize("bad", ["has space", "-dash", ""])
def test_a_bad_name_is_a_usage_error(tmp_path: Path, bad: str, capsys):
    assert main(["init", str(tmp_path), f"--name={bad}"]) == 2
    assert "--name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_schema_prints_the_shipped_file(capsys, tmp_path: Path):
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == Path(SCHEMA_PATH).read_text()
    assert json.loads(printed)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text() == printed
