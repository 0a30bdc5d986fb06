"""What a new user and a port of real flows ran into: each case through the command, as typed."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path) -> dict:
    """A private flowspec home and backend."""
    return {"FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": ""}


# -- fmt -----------------------------------------------------------------------------------------
EXPLICIT_KEY_LAST = "version: 1\nname: a\ntasks:\n  x:\n    run: m:f\n    with:\n      ? a"


def test_fmt_formats_a_spec_whose_last_line_is_an_explicit_key(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_text(EXPLICIT_KEY_LAST)
    assert cli("validate", spec).rc == 0
    diff = cli("fmt", "--diff", spec)
    assert diff.rc == 0 and "internal error" not in diff.stderr
    assert "\\ No newline at end of file" in diff.stdout
    result = cli("fmt", spec)
    assert result.rc == 0, result.stderr
    assert spec.read_text() == EXPLICIT_KEY_LAST + "\n"
    assert cli("fmt", "--check", spec).rc == 0 and cli("validate", spec).rc == 0


def test_fmt_indents_a_mapping_that_starts_with_an_explicit_key(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_text("version: 1\nname: a\ntasks:\n  x:\n    run: m:f\n    with:\n        ? a\n        : 3\n        b: 4\n")
    assert cli("fmt", spec).rc == 0
    assert spec.read_text().endswith("    with:\n      ? a\n      : 3\n      b: 4\n")
