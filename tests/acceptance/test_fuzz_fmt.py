"""Property: `flowspec fmt`, `plan` and `graph` answer any input without an internal error.

The inputs are those of test_fuzz_validate.py (the examples mutated line by line and after
parsing, random YAML data, random text). For each one:
- `fmt` exits 0 or 1 (not YAML) and never crashes; its output validates as the input did (the
  same errors and warnings, at their new positions), and formatting it again changes nothing;
- `plan` and `graph` exit 0, 1 (invalid spec) or 2 (usage: a required parameter, say), never 70.
Each command runs through `flowspec.cli.main` in this process, derandomized as the validate fuzzer.
"""
from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_validate import FUZZ, SUBPROCESS_CASES, VALID_DATA, json_like, mutated_data, mutated_text

from flowspec.cli import main
from flowspec.fmt import format_text

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

# Nothing a fuzzed spec names may leave the machine: cloud endpoints point at a closed local
# port, and the flowspec home (where `plan` looks for a backend) is empty.
ISOLATED = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "KUBECONFIG": os.devnull, "FLOWSPEC_BACKEND": ""}


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-fmt")
    saved = {k: os.environ.get(k) for k in [*ISOLATED, "FLOWSPEC_HOME"]}
    os.environ.update(ISOLATED, FLOWSPEC_HOME=str(folder / "home"))
    yield folder / "flow.yaml"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@st.composite
def relaid_valid(draw) -> str:
    """A valid example in another layout: keys shuffled, other indents and flow styles, comment
    and blank lines here and there (most mutated inputs are invalid; this property is about valid ones)."""
    data = draw(st.sampled_from(VALID_DATA))
    if draw(st.booleans()):
        data = dict(draw(st.permutations(list(data.items()))))
    text = yaml.safe_dump(data, sort_keys=False, indent=draw(st.integers(2, 6)), allow_unicode=True,
                          default_flow_style=draw(st.sampled_from([False, None, True])),
                          width=draw(st.sampled_from([40, 80, 10_000])), explicit_start=draw(st.booleans()))
    lines = text.splitlines()
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(lines)))
        lines.insert(i, draw(st.sampled_from(["", "# a note", "   # an indented note", "      #"])))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


def _cli(*args) -> tuple[int, str, str]:
    """`flowspec ARGS` in this process: (exit code, stdout, stderr); stdout has a binary buffer,
    as a real one does (graph writes bytes)."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([*map(str, args)])
    out.flush()
    return rc, out.buffer.getvalue().decode("utf-8", "replace"), err.getvalue()


def _findings(path: Path) -> tuple[int, list]:
    """validate's exit code and what it found, without positions (fmt moves lines)."""
    rc, stdout, _ = _cli("validate", "--format", "json", path)
    return rc, sorted((d["path"], d["message"]) for d in json.loads(stdout))


def check(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    before = _findings(path)
    rc, _, stderr = _cli("fmt", "--diff", path)
    assert rc in (0, 1) and "internal error" not in stderr, (rc, stderr)
    if rc == 0:
        once = format_text(path.read_text(encoding="utf-8"), str(path))
        assert format_text(once, str(path)) == once  # fmt twice = fmt once
        path.write_text(once, encoding="utf-8")
        after = _findings(path)
        if before[0] == 0:  # a valid spec stays valid, with the same warnings
            assert after == before, (text, once, after)
        else:  # an invalid one keeps its errors
            assert after[0] == before[0] and after[1] == before[1], (text, once, before, after)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for command in (("plan", path), ("plan", "--format", "json", path), ("graph", path)):
        rc, _, stderr = _cli(*command)
        assert rc in (0, 1, 2) and "internal error" not in stderr, (command, rc, stderr)


@FUZZ
@given(text=mutated_text())
def test_mutated_examples(spec_path, text):
    check(spec_path, text)


@FUZZ
@given(text=mutated_data())
def test_structurally_edited_examples(spec_path, text):
    check(spec_path, text)


@FUZZ
@given(text=relaid_valid())
def test_valid_examples_in_other_layouts(spec_path, text):
    check(spec_path, text)


@settings(FUZZ, max_examples=60)
@given(data=json_like)
def test_random_yaml_data(spec_path, data):
    check(spec_path, yaml.safe_dump(data, allow_unicode=True))


@settings(FUZZ, max_examples=60)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_random_text(spec_path, text):
    check(spec_path, text)


EXPLICIT_KEYS = ["version: 1\nname: a\ntasks:\n  x:\n    run: m:f\n    with:\n      ? a",
                 "? version\n: 1\n? name\n: a\ntasks: {x: {run: 'm:f'}}\n",
                 "version: 1\nname: a\ntasks:\n  x:\n    run: m:f\n    with:\n      - ? a\n        : 1\n"]


@pytest.mark.parametrize("text", EXPLICIT_KEYS)
def test_explicit_keys(spec_path, text):
    check(spec_path, text)


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES) + ["explicit-key-last"])
def test_real_commands_on_broken_input(cli, tmp_path, name):
    text = SUBPROCESS_CASES.get(name) or EXPLICIT_KEYS[0]
    (tmp_path / "flow.yaml").write_text(text, encoding="utf-8")
    env = ISOLATED | {"FLOWSPEC_HOME": str(tmp_path / "home")}
    for command in (("fmt", "--check"), ("plan",), ("plan", "--format", "json"), ("graph",)):
        result = cli(*command, "flow.yaml", cwd=tmp_path, env=env, timeout=20)
        assert result.rc in (0, 1, 2) and "internal error" not in result.stderr, (command, result.output)
