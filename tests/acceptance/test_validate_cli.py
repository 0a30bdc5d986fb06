"""`flowspec validate` as a user runs it: output formats, exit codes, speed, and what it imports."""
from __future__ import annotations

import json
import time

from flowspec.compile import compile_file

BROKEN = """\
version: 1
name: broken
parameters:
  people: {type: array, default: [a, b]}
tasks:
  greet:
    run: hello:greet
    retries: "2"
    map:
      name: ${{ params.peeple }}
  report:
    run: hello:report
    tiemout: 5s
    after: [gret]
"""

BROKEN_TEXT = """\
flow.yaml:8:14: error: tasks.greet.retries: expected integer, got string '2'
  hint: remove the quotes to write a number
flow.yaml:10:13: error: tasks.greet.map.name: unknown parameter 'peeple' in ${{ params.peeple }}
  hint: did you mean 'people'?
flow.yaml:13:5: error: tasks.report.tiemout: unknown key 'tiemout'
  hint: did you mean 'timeout'?
flow.yaml:14:13: error: tasks.report.after[0]: unknown task 'gret' in after
  hint: did you mean 'greet'?
4 errors found
"""

HEAVY = ("dask", "distributed", "kubernetes", "boto3", "botocore", "docker")

# Runs in a child process: records every attempt to import a heavy package, even one that is
# not installed, while validate runs; then proves that the recorder works by importing one.
IMPORT_PROBE = """
import sys
HEAVY = {heavy!r}
seen = []
class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            seen.append(name)
        return None
sys.meta_path.insert(0, Recorder())
from flowspec.cli import main
codes = [main(["validate", *{files!r}]), main(["validate", "--strict", *{files!r}])]
during = sorted(set(seen))
try:
    import dask
except ImportError:
    pass
print(codes, during, "dask" in seen)
"""


def _write(tmp_path, text: str, name: str = "flow.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_error_at_once_with_line_column_and_hint(cli, tmp_path):
    _write(tmp_path, BROKEN)
    result = cli("validate", "flow.yaml", cwd=tmp_path)
    assert (result.rc, result.stdout, result.stderr) == (1, BROKEN_TEXT, "")


def test_json_format_is_a_list_of_exact_objects(cli, tmp_path):
    _write(tmp_path, BROKEN)
    result = cli("validate", "--format", "json", "flow.yaml", cwd=tmp_path)
    assert result.rc == 1
    items = json.loads(result.stdout)
    assert [list(item) for item in items] == [["file", "line", "column", "path", "message", "hint"]] * 4
    assert items[1] == {"file": "flow.yaml", "line": 10, "column": 13, "path": "tasks.greet.map.name",
                        "message": "unknown parameter 'peeple' in ${{ params.peeple }}",
                        "hint": "did you mean 'people'?"}


def test_github_format_annotates_lines(cli, tmp_path):
    _write(tmp_path, BROKEN)
    result = cli("validate", "--format", "github", "flow.yaml", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert result.rc == 1
    assert lines[0] == ("::error file=flow.yaml,line=8,col=14,title=flowspec::tasks.greet.retries: expected integer, "
                        "got string '2' (hint: remove the quotes to write a number)")
    assert lines[-1] == "4 errors found"


def test_valid_examples_pass(cli, repo):
    files = sorted(str(p.relative_to(repo)) for p in (repo / "examples").glob("*/flow.yaml"))
    assert len(files) >= 3
    result = cli("validate", *files)
    assert (result.rc, result.stdout) == (0, f"no errors in {len(files)} files\n")


def test_errors_of_several_files_are_sorted_by_file_then_position(cli, tmp_path):
    _write(tmp_path, BROKEN, "b.yaml")
    _write(tmp_path, "version: 1\nname: x\ntasks: {a: {run: 'm:f', trigger: always}}\n", "a.yaml")
    result = cli("validate", "b.yaml", "a.yaml", cwd=tmp_path)
    heads = [line.split(": error")[0] for line in result.stdout.splitlines() if ": error: " in line]
    assert heads == ["a.yaml:3:34", "b.yaml:8:14", "b.yaml:10:13", "b.yaml:13:5", "b.yaml:14:13"]
    assert result.stdout.splitlines()[-1] == "5 errors found"


def _billion_laughs() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_in_well_under_a_second(cli, tmp_path):
    path = _write(tmp_path, _billion_laughs())
    start = time.perf_counter()
    spec, diags = compile_file(str(path))
    assert time.perf_counter() - start < 0.25
    assert spec is None and "alias" in diags[0].message
    result = cli("validate", "flow.yaml", cwd=tmp_path, timeout=10)
    assert result.rc == 1 and result.seconds < 2
    assert result.stdout.startswith("flow.yaml:1:1: error: (root): the document expands to more than")


def test_oversized_file_is_refused_before_it_is_read(cli, tmp_path):
    path = tmp_path / "flow.yaml"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("version: 1\nname: big\ndescription: " + "x" * (5 * 1024 * 1024) + "\n")
    result = cli("validate", "flow.yaml", cwd=tmp_path, timeout=10)
    assert result.rc == 1 and result.seconds < 2
    assert "flowspec reads at most 4194304" in result.stdout


def test_validate_imports_no_heavy_sdk(cli, repo, tmp_path):
    files = sorted(str(p) for p in (repo / "examples").glob("*/*.yaml")) + [
        str(p) for p in (repo / "examples" / "invalid").glob("*.yaml")]
    probe = _write(tmp_path, IMPORT_PROBE.format(heavy=HEAVY, files=files), "probe.py")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    # exit 1 for both (the invalid examples are there), nothing heavy attempted, and the probe works.
    assert out.stdout.split("\n")[-2] == "[1, 1] [] True", out.stdout + out.stderr


def test_strict_imports_callables_and_checks_signatures(cli, tmp_path):
    _write(tmp_path, "import pathlib\npathlib.Path('imported').touch()\n\ndef greet(name):\n    return name\n",
           "steps.py")
    _write(tmp_path, "version: 1\nname: s\ntasks:\n  a:\n    run: steps:greet\n    with: {nmae: x}\n")
    plain = cli("validate", "flow.yaml", cwd=tmp_path)
    assert plain.rc == 0 and not (tmp_path / "imported").exists()  # plain validate runs no user code
    strict = cli("validate", "--strict", "flow.yaml", cwd=tmp_path)
    assert strict.rc == 1 and (tmp_path / "imported").exists()
    assert strict.stdout.splitlines()[:4] == [
        "flow.yaml:5:10: error: tasks.a.run: steps:greet: argument 'nmae' is not a parameter of it",
        "  hint: arguments come from 'with' and 'map'; they must match the function's parameters",
        "flow.yaml:5:10: error: tasks.a.run: steps:greet: missing required argument: name",
        "  hint: arguments come from 'with' and 'map'; they must match the function's parameters"]


def test_missing_file_and_directory_are_usage_errors(cli, tmp_path):
    _write(tmp_path, "version: 1\nname: ok\ntasks: {a: {run: 'm:f'}}\n")
    (tmp_path / "folder").mkdir()
    result = cli("validate", "flow.yaml", "nope.yaml", "folder", cwd=tmp_path)
    assert result.rc == 2
    assert result.stdout == "no errors in 1 file\n"
    assert result.stderr.splitlines() == ["flowspec: error: nope.yaml: no such file",
                                          "flowspec: error: folder: not a readable file"]
    alone = cli("validate", "nope.yaml", cwd=tmp_path)
    assert (alone.rc, alone.stdout) == (2, "")


def test_bad_flags_exit_2_without_traceback(cli):
    for args in (("validate",), ("validate", "--format", "xml", "f.yaml"), ("validate", "--bogus", "f.yaml")):
        result = cli(*args)
        assert result.rc == 2, args
        assert "usage: flowspec" in result.stderr and "Traceback" not in result.stderr


def test_yaml_safety_problems_are_errors(cli, tmp_path):
    _write(tmp_path, "version: 1\nname: x\ntasks:\n  a: !!python/object/new:os.system [echo hi]\n"
                     "  a: {run: 'm:f'}\n")
    result = cli("validate", "flow.yaml", cwd=tmp_path)
    assert result.rc == 1
    assert [line.split(": error: ")[0] for line in result.stdout.splitlines() if ": error: " in line] == [
        "flow.yaml:4:6", "flow.yaml:5:3"]
    assert "'!!python/object/new:os.system'" in result.stdout and "duplicate key 'a'" in result.stdout


def test_non_utf8_file_is_an_error_not_a_crash(cli, tmp_path):
    (tmp_path / "flow.yaml").write_bytes(b"version: 1\nname: \xff\xfe\n")
    result = cli("validate", "flow.yaml", cwd=tmp_path)
    assert result.rc == 1
    assert result.stdout.startswith("flow.yaml:2:7: error: (root): the file is not UTF-8 text: byte 0xFF")
