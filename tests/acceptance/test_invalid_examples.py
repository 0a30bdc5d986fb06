"""examples/invalid: each broken spec gives exactly the diagnostics its README shows."""
from __future__ import annotations

import json
import re

import pytest

INVALID = "examples/invalid"

# file → every diagnostic (line, column, path), in the order printed.
EXPECTED = {
    "schema-errors.yaml": [
        (4, 10, "version"), (6, 1, "descripton"), (10, 10, "tasks.fetch.run"), (11, 14, "tasks.fetch.retries"),
        (12, 14, "tasks.fetch.timeout"), (15, 5, "tasks.parse.retires"), (16, 14, "tasks.parse.trigger"),
        (18, 3, "tasks.publish"), (24, 3, "executor.worker"),
    ],
    "references-and-cycles.yaml": [
        (19, 13, "tasks.greet.map.name"), (21, 62, "tasks.greet.with.text"), (25, 14, "tasks.count.with.items"),
        (26, 18, "tasks.count.with.token"), (30, 13, "tasks.letters.map.char"), (31, 3, "tasks.extract"),
        (43, 13, "tasks.load.after[0]"),
    ],
    "platform-and-credentials.yaml": [
        (18, 12, "executor.address"), (25, 9, "environment.type"), (28, 25, "environment.env.WAREHOUSE_PASSWORD"),
        (37, 20, "environment.task_definition.containerDefinitions[0].environment[0].value"),
        (39, 20, "environment.task_definition.containerDefinitions[0].environment[1].value"),
    ],
    "yaml-level.yaml": [
        (12, 15, "tasks.extract.with.source"), (16, 16, "tasks.transform.with.api_key"), (17, 3, "tasks.extract"),
        (19, 5, "tasks.extract"),
    ],
    "parameter-defaults.yaml": [
        (9, 14, "parameters.batch_size.default"), (12, 14, "parameters.country.default"),
        (16, 14, "parameters.regions.default"), (19, 31, "parameters.mode.enum[2]"),
        (20, 14, "parameters.mode.default"),
    ],
}
STRICT = "strict-signatures.yaml"
STRICT_EXPECTED = [(9, 10, "tasks.resize.run"), (9, 10, "tasks.resize.run"), (15, 10, "tasks.publish.run"),
                   (19, 10, "tasks.notify.run")]
_LINE = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): error: (?P<path>\S+): ")


def _positions(stdout: str, file: str) -> list[tuple]:
    found = []
    for line in stdout.splitlines():
        m = _LINE.match(line)
        if m:
            assert m["file"] == f"{INVALID}/{file}"
            found.append((int(m["line"]), int(m["col"]), m["path"]))
    return found


def _readme_blocks(repo) -> dict[str, str]:
    """`$ flowspec validate ...` → the output shown under it in examples/invalid/README.md."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in (repo / INVALID / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("$ flowspec "):
            current = blocks.setdefault(line[2:], [])
        elif line.startswith("```"):
            current = None
        elif current is not None:
            current.append(line)
    return {cmd: "\n".join(lines) for cmd, lines in blocks.items()}


@pytest.fixture(scope="module")
def validated(cli):
    """Each command of the README, run once: command line (without `flowspec`) → CliResult."""
    commands = [("validate", f"{INVALID}/{f}") for f in [*EXPECTED, STRICT]]
    commands.append(("validate", "--strict", f"{INVALID}/{STRICT}"))
    return {" ".join(c): cli(*c) for c in commands}


@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_each_invalid_example_reports_every_error_at_its_position(validated, file):
    result = validated[f"validate {INVALID}/{file}"]
    assert result.rc == 1, result.output
    assert _positions(result.stdout, file) == EXPECTED[file]
    n = len(EXPECTED[file])
    assert result.stdout.rstrip().splitlines()[-1] == f"{n} errors found"
    assert "Traceback" not in result.output


def test_strict_example_is_valid_until_callables_are_checked(validated):
    path = f"{INVALID}/{STRICT}"
    plain, strict = validated[f"validate {path}"], validated[f"validate --strict {path}"]
    assert (plain.rc, plain.stdout.strip()) == (0, "no errors in 1 file")
    assert strict.rc == 1
    assert _positions(strict.stdout, STRICT) == STRICT_EXPECTED


def test_readme_shows_the_real_output(validated, repo):
    blocks = _readme_blocks(repo)
    assert set(blocks) == {f"flowspec {command}" for command in validated}
    for command, result in validated.items():
        assert result.stdout.rstrip("\n") == blocks[f"flowspec {command}"], command


def test_json_report_has_the_same_positions_and_exact_keys(cli):
    files = sorted(EXPECTED)
    result = cli("validate", "--format", "json", *(f"{INVALID}/{f}" for f in files))
    assert result.rc == 1
    items = json.loads(result.stdout)
    assert all(set(item) == {"file", "line", "column", "path", "message", "hint"} for item in items)
    for file in files:
        mine = [(i["line"], i["column"], i["path"]) for i in items if i["file"] == f"{INVALID}/{file}"]
        assert mine == EXPECTED[file]
