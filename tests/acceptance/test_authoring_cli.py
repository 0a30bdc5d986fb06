"""Authoring commands as a user runs them: schema, init, fmt, plan, graph, validate --format
github, and the progress display of `flowspec run` (plain, quiet, verbose, and on a terminal)."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR|DEBUG) +\S+ \| ")
CLEAR = "\r\x1b[K"

SHUFFLED = """\
# yaml-language-server: $schema=flow.schema.json
tasks:
    only:
        timeout: 5s   # per attempt
        run: m:f
name: shuffled
version: 1
"""

PLANNED = """\
version: 1
name: planned
parameters:
  n: {type: integer}
tasks:
  numbers:
    run: booby_trapped:numbers
    with: {n: "${{ params.n }}"}
  square:
    run: booby_trapped:square
    map: {x: "${{ tasks.numbers }}"}
environment:
  labels: [dev]
  env:
    SERVICE_TOKEN: ${{ env.PLAN_TEST_TOKEN || 'fallback-token' }}
"""
# Task code that leaves a mark and fails, whether it is imported or called.
BOOBY_TRAPPED = """\
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("the plan imported task code")
raise RuntimeError("a plan must never import task code")
"""

SLOW = """\
version: 1
name: slow
tasks:
  items:
    run: work:items
  each:
    run: work:each
    map: {i: "${{ tasks.items }}"}
"""
WORK = """\
import time
from flowspec import context
def items():
    return [0, 1, 2]
def each(i):
    time.sleep(0.2)
    print(f"printed by child {i}")
    context.logger.info("child %d done", i)
    context.logger.debug("child %d detail", i)
    return i
"""


@pytest.fixture
def home(tmp_path: Path) -> dict:
    """A private flowspec home for commands that record runs or look for a backend."""
    return {"FLOWSPEC_HOME": str(tmp_path / "home"), "FLOWSPEC_BACKEND": ""}


def comments(text: str) -> list[str]:
    return sorted(m.group(2).strip() for line in text.splitlines() if (m := re.search(r"(^|\s)(#.*)$", line)))


# -- schema, init --------------------------------------------------------------------------------
def test_schema_prints_the_file_the_package_ships(cli):
    result = cli("schema")
    assert result.rc == 0
    assert result.stdout == (resources.files("flowspec") / "schemas" / "flow.schema.json").read_text()


def test_init_gives_a_flow_that_validates_strictly_and_whose_own_test_passes(cli, tmp_path, home):
    folder = tmp_path / "starter"
    assert cli("init", folder).rc == 0
    assert cli("validate", "--strict", folder / "flow.yaml").rc == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | home
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                           cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout


# -- fmt -----------------------------------------------------------------------------------------
def test_fmt_check_diff_and_rewrite(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_text(SHUFFLED)
    check = cli("fmt", "--check", spec)
    assert check.rc == 1 and f"would reformat {spec}" in check.stderr
    assert spec.read_text() == SHUFFLED
    diff = cli("fmt", "--diff", spec)
    assert diff.rc == 0 and "+version: 1\n" in diff.stdout and spec.read_text() == SHUFFLED
    assert cli("fmt", spec).rc == 0
    assert spec.read_text().startswith("# yaml-language-server: $schema=flow.schema.json\nversion: 1\nname: shuffled\n")
    assert comments(spec.read_text()) == comments(SHUFFLED)
    assert cli("fmt", "--check", spec).rc == 0


def test_fmt_keeps_every_comment_of_the_examples_and_is_idempotent(cli, repo, tmp_path):
    originals = {}
    for path in sorted((repo / "examples").glob("*/flow.yaml")):
        copy = tmp_path / f"{path.parent.name}.flow.yaml"
        copy.write_text(path.read_text())
        originals[copy] = path.read_text()
    assert cli("fmt", *originals).rc == 0
    for copy, text in originals.items():
        assert comments(copy.read_text()) == comments(text), copy.name
    assert cli("fmt", "--check", *originals).rc == 0


def test_fmt_reports_yaml_errors_with_their_position_and_missing_files(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntasks: [a\nname: x\n")
    result = cli("fmt", bad)
    assert result.rc == 1 and f"{bad}:3:" in result.stderr and "invalid YAML" in result.stderr
    assert cli("fmt", tmp_path / "absent.yaml").rc == 2


# -- plan ----------------------------------------------------------------------------------------
def test_plan_runs_no_task_code(cli, tmp_path, home):
    (tmp_path / "flow.yaml").write_text(PLANNED)
    (tmp_path / "booby_trapped.py").write_text(BOOBY_TRAPPED)
    result = cli("plan", tmp_path / "flow.yaml", "--param", "n=4", env=home)
    assert result.rc == 0, result.stderr
    assert not (tmp_path / "IMPORTED").exists()
    assert cli("run", tmp_path / "flow.yaml", "--param", "n=4", env=home).rc != 0  # the trap is real
    assert (tmp_path / "IMPORTED").exists()
    text = result.stdout
    assert text.index("1. numbers") < text.index("2. square") and "maps x over tasks.numbers" in text
    assert "n  integer  4  (--param)" in text
    assert "env SERVICE_TOKEN=***" in text and "fallback-token" not in text
    assert "labels: dev" in text and "Backend      not reachable" in text


def test_plan_json_and_its_parameter_errors(cli, tmp_path, home):
    (tmp_path / "flow.yaml").write_text(PLANNED)
    result = cli("plan", tmp_path / "flow.yaml", "--param", "n=2", "--format", "json", env=home)
    plan = json.loads(result.stdout)
    assert [t["name"] for t in plan["tasks"]] == ["numbers", "square"]
    assert plan["tasks"][1]["map"] == {"x": {"over": "tasks.numbers", "items": None, "per_child": False}}
    assert plan["environment"]["env"] == {"SERVICE_TOKEN": "***"}
    assert plan["backend"]["reachable"] is False
    missing = cli("plan", tmp_path / "flow.yaml", env=home)
    assert missing.rc == 2 and "missing required parameter 'n'" in missing.stderr


# -- graph ---------------------------------------------------------------------------------------
def test_graph_mermaid_by_default_and_pictures_through_graphviz(cli, repo, tmp_path):
    flow = repo / "examples" / "hello-flow" / "flow.yaml"
    mermaid = cli("graph", flow)
    assert mermaid.rc == 0 and mermaid.stdout.startswith("flowchart LR\n") and '[["say_hello' in mermaid.stdout
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's `dot` is not installed (apt-get install graphviz): svg not tested")
    assert cli("graph", flow, "-o", tmp_path / "hello.svg").rc == 0
    assert "<svg" in (tmp_path / "hello.svg").read_text()


def test_graph_without_graphviz_names_the_package(cli, repo, tmp_path):
    result = cli("graph", repo / "examples" / "hello-flow" / "flow.yaml", "--format", "png",
                 "-o", tmp_path / "g.png", env={"PATH": str(tmp_path)})
    assert result.rc == 2
    assert "needs Graphviz" in result.stderr and "apt-get install graphviz" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "g.png").exists()


# -- validate --format github --------------------------------------------------------------------
def test_github_annotations_follow_the_workflow_command_syntax(cli, tmp_path):
    spec = tmp_path / "a,b" / "flow.yaml"
    spec.parent.mkdir()
    spec.write_text("version: 1\nname: x\ntasks:\n  a:\n    run: m:f\n    retries: three\n")
    result = cli("validate", "--format", "github", spec)
    assert result.rc == 1
    line = result.stdout.splitlines()[0]
    escaped = str(spec).replace("%", "%25").replace(":", "%3A").replace(",", "%2C")
    assert line == (f"::error file={escaped},line=6,col=14,title=flowspec::"
                    "tasks.a.retries: expected integer, got string 'three'")


# -- run: progress -------------------------------------------------------------------------------
def test_progress_is_plain_lines_when_not_a_terminal(cli, repo, tmp_path, home):
    flow = repo / "examples" / "hello-flow" / "flow.yaml"
    normal = cli("run", flow, env=home)
    assert normal.rc == 0 and "\x1b" not in normal.output
    assert "progress | say_hello: 3/3 mapped runs done" in normal.stderr
    assert "TASK" in normal.stdout
    quiet = cli("run", "--quiet", flow, env=home)
    assert quiet.rc == 0 and quiet.stderr == ""
    assert re.fullmatch(r"Flow run 'hello-flow' \(\w+\): Success in [\d.]+s\n", quiet.stdout)
    (tmp_path / "flow.yaml").write_text(SLOW)
    (tmp_path / "work.py").write_text(WORK)
    verbose = cli("run", "--verbose", tmp_path / "flow.yaml", env=home)
    assert "each[1] Running (attempt 1)" in verbose.stderr and "items Success" in verbose.stderr
    assert "DEBUG   each[2] | child 2 detail" in verbose.stderr and "TASK" in verbose.stdout
    assert "detail" not in cli("run", tmp_path / "flow.yaml", env=home).stderr


def run_on_a_terminal(args: list, cwd: Path, env: dict) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; return everything it drew."""
    controller, terminal = pty.openpty()
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | env | {"TERM": "xterm"}
    proc = subprocess.Popen(args, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=terminal,
                            stderr=terminal)
    os.close(terminal)
    chunks = []
    try:
        while select.select([controller], [], [], 60)[0]:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(controller)
        proc.wait(timeout=60)
    return b"".join(chunks).decode()


def test_progress_on_a_terminal_is_a_live_line_below_intact_logs(tmp_path, home):
    (tmp_path / "flow.yaml").write_text(SLOW)
    (tmp_path / "work.py").write_text(WORK)
    drawn = run_on_a_terminal([sys.executable, "-m", "flowspec", "run", "flow.yaml"], tmp_path, home)
    # The line is redrawn a few times a second, not on every change: which counts it caught
    # while `each` ran depends on timing, that it showed `each` running does not.
    assert re.search(re.escape(CLEAR) + r"flowspec: 1/2 tasks, [0-2]/3 mapped runs done \| running: each [0-2]/3 \| 00:0",
                     drawn), drawn
    assert CLEAR + "flowspec: 2/2 tasks, 3/3 mapped runs done" in drawn
    # Whatever the status line drew, each line of output ends up whole once the line is cleared.
    lines = [line.rsplit(CLEAR, 1)[-1] for line in drawn.split("\r\n")]
    logged = [line for line in lines if " | child " in line]
    assert len(logged) == 3 and all(LOG_LINE.match(line) for line in logged)
    printed = sorted(line.split(" ", 1)[1] for line in lines if LOG_LINE.match(line) and "| printed" in line)
    assert printed == [f"INFO    each[{i}] | printed by child {i}" for i in range(3)]  # a task's print() is a log line
    assert any(line.startswith("TASK ") for line in lines)
    assert not any("flowspec: " in line for line in lines if line.startswith("Flow run"))
