"""What a new user meets first, through the CLI: positions of YAML-level mistakes, machine output
that always parses, refused flags with the way out, help with examples, and the repository's own
files in the canonical layout."""
from __future__ import annotations

import json
import re

import pytest

TOO_DEEP = "the document nests deeper than 64 levels"


def _first(result) -> str:
    return result.output.splitlines()[0]


@pytest.mark.parametrize("text, where", [
    ("[" * 1_000_000 + "]" * 1_000_000, "1:65"),  # one line: libyaml's look-ahead meets its own limit first
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "1:67"),
    ("".join("  " * i + f"k{i}:\n" for i in range(2000)), "65:129"),  # block nesting, by indentation
])
def test_deep_nesting_is_refused_with_flowspecs_own_limit(cli, tmp_path, text, where):
    spec = tmp_path / "deep.yaml"
    spec.write_text(text)
    result = cli("validate", spec, "--format", "json")
    assert result.rc == 1, result.output
    [d] = json.loads(result.stdout)
    assert (f"{d['line']}:{d['column']}", d["message"]) == (where, TOO_DEEP)


def test_a_byte_that_is_not_utf8_is_reported_where_it_is(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_bytes(b"version: 1\nname: x\ntasks:\n  a:\n    run: caf\xc3\xa9:f\n  b:\n    run: na\xefve:f\n")
    result = cli("validate", spec)
    assert result.rc == 1
    assert _first(result) == f"{spec}:7:12: error: (root): the file is not UTF-8 text: byte 0xEF (invalid continuation byte)"
    assert "save the file as UTF-8" in result.stdout


def test_a_tab_in_the_indentation_gets_a_hint(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_text("version: 1\nname: x\ntasks:\n  a:\n\trun: m:f\n")
    result = cli("validate", spec)
    assert result.rc == 1
    assert result.stdout.startswith(f"{spec}:5:1: error: (root): invalid YAML:")
    assert "hint: line 5 is indented with a tab; YAML indents with spaces only" in result.stdout


def _stdin_cli(*args, stdin: bytes, cwd=None):
    """`python -m flowspec ARGS` with bytes on standard input."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], input=stdin, capture_output=True,
                          cwd=cwd or Path(__file__).resolve().parents[2], env=env, timeout=30)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_bare_flowspec_prints_the_help_and_exits_0(cli):
    result = cli()
    assert result.rc == 0, result.output
    assert result.stdout.startswith("usage: flowspec") and "validate" in result.stdout and "examples:" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("group", ["runs", "flows", "agent", "agents", "concurrency-limit"])
def test_a_command_group_without_its_action_prints_its_help(cli, group):
    result = cli(group)
    assert result.rc == 0 and result.stdout.startswith(f"usage: flowspec {group} ") and "examples:" in result.stdout


@pytest.mark.parametrize("args, hint", [
    (("valdate", "flow.yaml"), "did you mean 'validate'?"),
    (("runs", "lst"), "did you mean 'list'?"),
    (("validate", "--format", "jsn", "flow.yaml"), "did you mean 'json'?"),
    (("graph", "--format", "svgg", "flow.yaml"), "did you mean 'svg'?"),
    (("validate", "--strikt", "flow.yaml"), "did you mean '--strict'?"),
    (("runs", "list", "--limt", "3"), "did you mean '--limit'?"),
])
def test_a_mistyped_command_or_choice_gets_a_suggestion(cli, args, hint):
    result = cli(*args)
    assert result.rc == 2
    assert result.stderr.splitlines()[-1] == f"  hint: {hint}"
    assert "Traceback" not in result.output


HELP_PAGES = ["", "validate", "run", "plan", "graph", "fmt", "init", "schema", "build", "register",
              "flows list", "runs list", "runs show", "runs logs", "runs cancel", "agent start", "agents list",
              "concurrency-limit set", "concurrency-limit list", "concurrency-limit delete"]


@pytest.mark.parametrize("page", HELP_PAGES)
def test_every_help_page_has_examples_and_names_the_environment(cli, page):
    result = cli(*page.split(), "--help")
    assert result.rc == 0
    examples = result.stdout.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert examples and all(line.startswith("  flowspec ") or line.startswith("  FLOWSPEC_") or
                            line.startswith("  cat ") for line in examples)
    assert "FLOWSPEC_HOME" in result.stdout and "FLOWSPEC_BACKEND" in result.stdout


def test_every_example_in_the_help_pages_parses(cli):
    # the examples are commands a user copies: each must be accepted by the parser
    import shlex

    from flowspec.cli import EXAMPLES, build_parser

    parser = build_parser()
    for lines in EXAMPLES.values():
        for line in lines:
            words = shlex.split(line, comments=True)
            words = words[words.index("|") + 1:] if words[0] == "cat" else words  # cat FILE | flowspec ...
            words = words[:next((i for i, w in enumerate(words) if w in ("|", "<", ">")), len(words))]
            words = words[1:] if "=" in words[0] else words  # FLOWSPEC_BACKEND=... flowspec ...
            if words[1:2] == ["COMMAND"]:
                continue
            assert words[0] == "flowspec", line
            parser.parse_args(words[1:])


def test_validate_json_and_github_name_an_unreadable_file(cli, tmp_path):
    result = cli("validate", "missing.yaml", "--format", "json", cwd=tmp_path)
    assert result.rc == 2
    [d] = json.loads(result.stdout)
    assert (d["file"], d["message"]) == ("missing.yaml", "no such file")
    assert set(d) == {"file", "line", "column", "path", "message", "hint"}
    (tmp_path / "folder").mkdir()
    result = cli("validate", "folder", "--format", "github", cwd=tmp_path)
    assert result.rc == 2
    assert result.stdout.splitlines()[0].startswith("::error file=folder,line=1,col=1,title=flowspec::")
    assert "not a readable file" in result.stdout


def test_validate_dash_reads_standard_input_as_stdin(tmp_path):
    good = b"version: 1\nname: x\ntasks:\n  a:\n    run: m:f\n"
    assert _stdin_cli("validate", "-", stdin=good)[:2] == (0, "no errors in 1 file\n")
    rc, out, _ = _stdin_cli("validate", "-", "--format", "json", stdin=good.replace(b"run:", b"runn:"))
    assert rc == 1
    found = [(d["file"], d["line"], d["column"], d["path"]) for d in json.loads(out)]
    assert ("<stdin>", 5, 5, "tasks.a.runn") in found and {f[0] for f in found} == {"<stdin>"}
    rc, out, _ = _stdin_cli("validate", "-", stdin=b"version: 1\nname: caf\xe9\n")
    assert (rc, out.splitlines()[0]) == (
        1, "<stdin>:2:10: error: (root): the file is not UTF-8 text: byte 0xE9 (invalid continuation byte)")
    # --strict imports from the current folder, the folder of a spec that has no file
    (tmp_path / "here.py").write_text("def f():\n    pass\n")
    strict = b"version: 1\nname: x\ntasks:\n  a:\n    run: here:f\n"
    assert _stdin_cli("validate", "--strict", "-", stdin=strict, cwd=tmp_path)[0] == 0


@pytest.fixture
def home(tmp_path):
    return {"FLOWSPEC_HOME": str(tmp_path / "home")}


def test_runs_show_unknown_in_json_prints_an_error_object(cli, home):
    result = cli("runs", "show", "0123456789abcdef", "--format", "json", env=home)
    assert result.rc == 1
    error = json.loads(result.stdout)
    assert error["error"].startswith("no flow run has id '0123456789abcdef'")
    assert error["exit_code"] == 1 and error["hint"] == "list runs with: flowspec runs list"


@pytest.mark.parametrize("limit", ["-3", "0", "many"])
def test_runs_list_refuses_a_limit_below_one(cli, home, limit):
    result = cli("runs", "list", "--limit", limit, env=home)
    assert result.rc == 2
    assert f"argument --limit: expected a whole number of runs, 1 or more, got '{limit}'" in result.stderr


def test_a_too_short_run_prefix_says_so_with_the_minimum(cli, home):
    result = cli("runs", "show", "ab", env=home)
    assert result.rc == 2
    assert "run id prefix 'ab' is too short: give at least 4 characters of the id" in result.stderr
    assert "no such run" not in result.stderr


def test_runs_list_state_in_any_case_and_a_suggestion(cli, home):
    assert cli("runs", "list", "--state", "failed", "--state", "RUNNING", env=home).rc == 0
    result = cli("runs", "list", "--state", "faild", env=home)
    assert result.rc == 2
    assert "--state faild: not a flow run state\n  hint: did you mean 'Failed'?" in result.stderr


def test_an_enum_parameter_value_gets_a_suggestion(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_text("version: 1\nname: e\nparameters:\n  color: {type: string, enum: [red, green], default: red}\n"
                    "tasks:\n  a:\n    run: m:f\n")
    for command in ("run", "plan"):
        result = cli(command, spec, "--param", "color=Gren")
        assert result.rc == 2
        assert ('--param color: string "Gren" is not one of: "red" | "green"; did you mean "green"?'
                in result.stderr), result.output


@pytest.mark.parametrize("where", ["a file", "below a file", "unwritable"])
def test_init_where_it_cannot_write_is_a_usage_error(cli, tmp_path, where):
    import os

    (tmp_path / "taken").write_text("not a folder\n")
    if where == "unwritable":
        if os.geteuid() == 0:  # root writes through permission bits: sysfs refuses new entries to anyone
            target = "/sys/flowspec-init-test"
        else:
            (tmp_path / "locked").mkdir(mode=0o555)
            target = str(tmp_path / "locked" / "flow")
    else:
        target = str(tmp_path / "taken") + ("/flow" if where == "below a file" else "")
    result = cli("init", target)
    assert result.rc == 2, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"flowspec: error: {target}: ") and "nothing was written" in first
    assert (tmp_path / "taken").read_text() == "not a folder\n"


def test_graph_refuses_a_format_that_the_file_name_contradicts(cli, repo, tmp_path):
    spec = repo / "examples/hello-flow/flow.yaml"
    result = cli("graph", spec, "--format", "svg", "-o", tmp_path / "g.png")
    assert result.rc == 2
    assert f"--format svg does not match --output {tmp_path / 'g.png'}, whose extension .png means png" in result.stderr
    assert not (tmp_path / "g.png").exists()
    result = cli("graph", spec, "-o", tmp_path / "g.jpg")
    assert result.rc == 2 and "graph does not write .jpg files" in result.stderr
    # without --format the extension decides; an extension of no format leaves --format free
    assert cli("graph", spec, "-o", tmp_path / "g.dot").rc == 0
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    assert cli("graph", spec, "--format", "dot", "-o", tmp_path / "g.txt").rc == 0


def test_fmt_keeps_crlf_and_compares_fairly(cli, repo, tmp_path):
    canonical = (repo / "examples/hello-flow/flow.yaml").read_bytes()
    crlf = tmp_path / "flow.yaml"
    crlf.write_bytes(canonical.replace(b"\n", b"\r\n"))
    result = cli("fmt", "--check", crlf)
    assert (result.rc, result.stderr) == (0, "0 files would be reformatted, 1 file left unchanged\n")
    # a CRLF file that does need formatting is rewritten with CRLF line ends still
    crlf.write_bytes(canonical.replace(b"  say_hello:", b"  say_hello:   ").replace(b"\n", b"\r\n"))
    assert cli("fmt", "--check", crlf).rc == 1
    assert cli("fmt", crlf).rc == 0
    assert crlf.read_bytes() == canonical.replace(b"\n", b"\r\n")


def test_fmt_dash_is_a_filter(repo):
    canonical = (repo / "examples/hello-flow/flow.yaml").read_bytes()
    messy = canonical.replace(b"  report:\n    run: hello:report\n    with:\n      greetings:",
                              b"  report:\n      run: hello:report\n      with:\n          greetings:")
    assert messy != canonical
    rc, out, err = _stdin_cli("fmt", "-", stdin=messy)
    assert (rc, out, err) == (0, canonical.decode(), "")
    assert _stdin_cli("fmt", "-", stdin=canonical)[:2] == (0, canonical.decode())
    rc, out, err = _stdin_cli("fmt", "--check", "-", stdin=messy)
    assert (rc, out) == (1, "") and "would reformat <stdin>" in err
    rc, out, err = _stdin_cli("fmt", "-", stdin=b"a: [1,\n")
    assert rc == 1 and out == "" and err.startswith("<stdin>:")


def test_the_repositorys_specs_and_readme_tour_are_in_the_canonical_layout(cli, repo):
    import re

    result = cli("fmt", "--check", *sorted((repo / "examples").glob("*/flow.yaml")))
    assert result.rc == 0, result.output
    readme = (repo / "README.md").read_text()
    tour = re.search(r"## A tour of flow.yaml\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    assert _stdin_cli("fmt", "--check", "-", stdin=tour.encode())[0] == 0
    assert _stdin_cli("validate", "-", stdin=tour.encode())[:2] == (0, "no errors in 1 file\n")


def test_readmes_validate_example_is_the_real_output(cli, repo):
    import re

    readme = (repo / "README.md").read_text()
    block = re.search(r"```text\n\$ (flowspec validate [^\n]+)\n(.*?)```", readme, re.S)
    command, shown = block.group(1), block.group(2)
    result = cli(*command.split()[1:])
    assert result.rc == 1 and result.stdout == shown


def test_readme_says_what_the_tutorials_tasks_do(repo):
    # the tutorial's tasks do not sleep; README must not say they take a second each
    readme = (repo / "README.md").read_text()
    assert "sleep" not in (repo / "examples/hello-flow/hello.py").read_text()
    assert "one-second tasks" not in readme and "The tutorial's tasks return at once." in readme


def test_the_etl_example_writes_nothing_where_it_is_started(cli, repo, tmp_path):
    result = cli("run", repo / "examples/etl-callbacks/flow.yaml", cwd=tmp_path)
    assert result.rc == 0, result.output
    assert list(tmp_path.iterdir()) == []
    written = re.search(r"loaded total 55 into (\S+)", result.stderr).group(1)
    with open(written) as fh:
        assert fh.read().endswith(" 55\n")


def test_ci_installs_as_readme_says_in_a_fresh_environment(repo):
    # .ci/run itself takes minutes and installs system packages; what is checked here is that it
    # stays in step with README (a run of it is part of every release check)
    import re
    import subprocess

    script = (repo / ".ci/run").read_text()
    assert subprocess.run(["bash", "-n", str(repo / ".ci/run")]).returncode == 0
    readme = (repo / "README.md").read_text()
    install, test = re.search(r"```sh\n(python3 -m pip install -e \"\.\[test\]\") && (python3 -m pytest)\n```",
                              readme).groups()
    lines = [line.strip() for line in script.splitlines()]
    venv, activate = lines.index('python3 -m venv "$work/venv"'), lines.index('source "$work/venv/bin/activate"')
    assert venv < activate < lines.index(install) < lines.index("flowspec fmt --check examples/*/flow.yaml")
    assert any(line.startswith(test + " ") for line in lines[lines.index(install):])
    assert '"$status" -eq 5' in script  # no tests collected fails the run
    for package in ("postgresql", "graphviz", "npm", "git", "docker.io", "debootstrap", "docker-registry",
                    "etcd-server", "etcd-client", "kubernetes-client"):
        assert re.search(rf"^packages=\(.*\b{re.escape(package)}\b", script, re.M | re.S), package
    assert sum("apt-get update" in line for line in lines if not line.startswith("#")) == 1


def test_an_ambiguous_run_prefix_says_so(cli, repo, tmp_path, home):
    import sqlite3

    assert cli("register", repo / "examples/hello-flow/flow.yaml", env=home).rc == 0
    ids = [cli("run", "--name", "hello-flow", "--project", "tutorial", env=home).stdout.strip() for _ in range(2)]
    # Run ids are random: two that share a prefix of 4 are made by renaming them in the real
    # SQLite file (the only table that the prefix lookup reads).
    with sqlite3.connect(tmp_path / "home" / "flowspec.db") as db:
        for i, run_id in enumerate(ids):
            db.execute("UPDATE flow_runs SET id = ? WHERE id = ?", (f"beef{i}" + run_id[5:], run_id))
    result = cli("runs", "show", "beef", env=home)
    assert result.rc == 2
    assert "run id prefix 'beef' is ambiguous: it matches several runs" in result.stderr
    assert "hint: give more of the id" in result.stderr
    assert cli("runs", "show", "beef1", env=home).rc == 0


def test_a_usage_error_with_format_json_is_json_on_stdout_too(cli, home):
    result = cli("runs", "list", "--limit", "-3", "--format", "json", env=home)
    assert result.rc == 2
    assert json.loads(result.stdout) == {
        "error": "argument --limit: expected a whole number of runs, 1 or more, got '-3'", "hint": None, "exit_code": 2}
    assert "usage: flowspec runs list" in result.stderr
    assert cli("runs", "list", "--limit", "-3", env=home).stdout == ""  # text: stderr only, as ever


def test_a_command_parsed_alone_has_the_help_and_defaults_of_the_full_parser():
    # `flowspec WORD ...` builds only WORD's parser (the other modules are not imported): it
    # must be the very parser the full one holds
    import argparse

    from flowspec.cli import COMMANDS, build_parser

    def commands(parser) -> dict:
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    full = commands(build_parser())
    for module in COMMANDS:
        word = module.replace("_", "-")
        alone = commands(build_parser([word, "--help"]))
        assert list(alone) == [word]
        assert alone[word].format_help() == full[word].format_help()
    assert len(commands(build_parser(["runz"]))) == len(COMMANDS)  # a mistyped command: all, for the hint
