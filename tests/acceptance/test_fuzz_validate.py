"""Property: whatever YAML it is given, `flowspec validate` answers with diagnostics, quickly.

Inputs are the examples mutated (lines deleted, duplicated or re-indented, keys renamed, values
replaced by random scalars, tags and aliases added, structure edited after parsing) plus random
YAML data and random text. Each input goes through `flowspec.cli.main` in this process (fast),
and a few through the real command. Examples are derandomized, so CI sees the same ones each run.
"""
from __future__ import annotations

import io
import json
import re
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowspec.cli import main

# When an example fails, Hypothesis's report imports a module that warns about mypy_extensions;
# with warnings as errors that would hide the failing example behind a pytest internal error.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEDS = [p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*/flow.yaml"))]
INVALID_SEEDS = [p.read_text(encoding="utf-8") for p in sorted((EXAMPLES / "invalid").glob("*.yaml"))]
VALID_DATA = [yaml.safe_load(text) for text in SEEDS]
TIME_LIMIT = 2.0
TAGS = ["!!python/object:os.system", "!!python/name:os.system", "!!int", "!!float", "!!bool", "!!binary",
        "!!set", "!!omap", "!!str", "!!map", "!!seq", "!!null", "!!timestamp", "!custom", "!", "!<tag:x>"]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["${{ params.x }}", "${{ tasks.", "1e400", "5s",
                                                           "a:b", "${{ env.X || 'y' }}", "}}", "*a", "&a",
                                                           "${{ env.FLOWSPEC_FUZZ_UNSET }}"]))
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


# -- mutations -----------------------------------------------------------------------------------
def _value_text(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


@st.composite
def line_edit(draw, lines: list[str]) -> list[str]:
    if not lines:
        return [draw(st.text(max_size=20))]
    i = draw(st.integers(0, len(lines) - 1))
    line, out = lines[i], list(lines)
    kind = draw(st.sampled_from(["delete", "duplicate", "indent", "dedent", "tag", "anchor", "alias",
                                 "scalar", "rename", "insert", "tab"]))
    key, sep, rest = line.partition(": ")
    if kind == "delete":
        del out[i]
    elif kind == "duplicate":
        out.insert(i, line)
    elif kind in ("indent", "dedent"):
        n = draw(st.integers(1, 3))
        out[i] = " " * n + line if kind == "indent" else line[min(n, len(line) - len(line.lstrip())):]
    elif kind == "tab":
        out[i] = "\t" + line.lstrip()
    elif kind in ("tag", "anchor", "alias") and sep:
        extra = {"tag": draw(st.sampled_from(TAGS)), "anchor": "&a", "alias": "*a"}[kind]
        out[i] = f"{key}: {extra} {rest}" if kind != "alias" else f"{key}: *a"
    elif kind == "scalar" and sep:
        out[i] = f"{key}: {_value_text(draw(scalars))}"
    elif kind == "rename" and sep:
        stripped = key.lstrip()
        cut = draw(st.integers(0, len(stripped)))
        out[i] = key[:len(key) - len(stripped)] + stripped[:cut] + draw(st.text("abcxyz_-", max_size=2)) + \
            stripped[cut + 1:] + sep + rest
    else:
        out.insert(i, draw(st.text(max_size=30)))
    return out


@st.composite
def mutated_text(draw) -> str:
    lines = draw(st.sampled_from(SEEDS + INVALID_SEEDS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        lines = draw(line_edit(lines))
    return "\n".join(lines) + "\n"


def _edit(data, draw, depth: int = 0):
    """Delete, retype or add one entry somewhere inside parsed data."""
    if isinstance(data, dict) and data and depth < 6 and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(data)))
        return {**data, key: _edit(data[key], draw, depth + 1)}
    if isinstance(data, list) and data and depth < 6 and draw(st.booleans()):
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + [_edit(data[i], draw, depth + 1)] + data[i + 1:]
    kind = draw(st.sampled_from(["retype", "delete", "add"]))
    if kind == "delete" and isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data)))
        return {k: v for k, v in data.items() if k != key}
    if kind == "add" and isinstance(data, dict):
        return {**data, draw(st.sampled_from(["type", "run", "with", "map", "after", "timeout", "env", "zz"])):
                draw(json_like)}
    return draw(json_like)


@st.composite
def mutated_data(draw) -> str:
    data = _edit(draw(st.sampled_from(VALID_DATA)), draw)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- checks --------------------------------------------------------------------------------------
def _validate(path: Path, fmt: str) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["validate", "--format", fmt, str(path)])
    return rc, out.getvalue(), err.getvalue(), time.perf_counter() - start


def _check_text_report(rc: int, stdout: str, file: str, n_lines: int) -> None:
    lines = stdout.splitlines()
    head = re.compile(rf"^{re.escape(file)}:(\d+):(\d+): (error|warning): .*: .+$")
    found = [head.match(line) for line in lines[:-1] if not line.startswith("  hint: ")]
    assert all(found), stdout
    assert all(1 <= int(m[1]) <= n_lines + 1 and int(m[2]) >= 1 for m in found), stdout
    n = sum(m[3] == "error" for m in found)
    w = len(found) - n
    also = f" ({w} warning{'s' if w != 1 else ''})" if w else ""
    assert (n > 0) == (rc == 1)
    assert lines[-1] == (f"{n} error{'s' if n != 1 else ''} found" if n else "no errors in 1 file") + also


def _check_json_report(rc: int, stdout: str) -> None:
    items = json.loads(stdout)
    errors = [i for i in items if i.get("severity", "error") == "error"]  # a warning says it is one
    assert isinstance(items, list) and bool(errors) == (rc == 1)
    assert all(set(i) == {"file", "line", "column", "path", "message", "hint"} for i in errors)
    assert all(set(i) == {"file", "line", "column", "path", "message", "hint", "severity"}
               for i in items if i not in errors)


def check(path: Path, text: str, fmt: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    rc, stdout, stderr, seconds = _validate(path, fmt)
    assert rc in (0, 1), (rc, stdout, stderr)
    assert stderr == "", stderr  # no traceback, no internal-error report
    assert seconds < TIME_LIMIT
    if fmt == "json":
        _check_json_report(rc, stdout)
    else:
        _check_text_report(rc, stdout, str(path), len(text.splitlines()) + 1)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "flow.yaml"


@FUZZ
@given(text=mutated_text(), fmt=st.sampled_from(["text", "json"]))
def test_mutated_examples(spec_path, text, fmt):
    check(spec_path, text, fmt)


@FUZZ
@given(text=mutated_data(), fmt=st.sampled_from(["text", "json"]))
def test_structurally_edited_examples(spec_path, text, fmt):
    check(spec_path, text, fmt)


@settings(FUZZ, max_examples=60)
@given(data=json_like)
def test_random_yaml_data(spec_path, data):
    check(spec_path, yaml.safe_dump(data, allow_unicode=True), "text")


@settings(FUZZ, max_examples=60)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_random_text(spec_path, text):
    check(spec_path, text, "text")


SUBPROCESS_CASES = {
    "tab-indented": SEEDS[0].replace("\n  ", "\n\t"),
    "python-tag": SEEDS[0].replace("run: ", "run: !!python/object/apply:os.system ", 1),
    "truncated": SEEDS[-1][: len(SEEDS[-1]) // 2],
    "alias-everywhere": "base: &b {run: 'm:f'}\nversion: 1\nname: a\ntasks: {x: *b, y: *b, z: *undefined}\n",
}


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_real_command_on_broken_input(cli, tmp_path, name):
    (tmp_path / "flow.yaml").write_text(SUBPROCESS_CASES[name], encoding="utf-8")
    result = cli("validate", "flow.yaml", cwd=tmp_path, timeout=10)
    assert result.rc == 1 and result.stderr == ""
    assert result.seconds < TIME_LIMIT + 1  # the interpreter's own start-up on a busy machine
    _check_text_report(result.rc, result.stdout, "flow.yaml", len(SUBPROCESS_CASES[name].splitlines()) + 1)
