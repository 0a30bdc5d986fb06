"""What a new user and a port of real flows ran into: each case through the command, as typed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
    spec.write_text("version: 1\nname: a\ntasks:\n  x:\n    run: m:f\n    with:\n"
                    "        ? a\n        : 3\n        b: 4\n")
    assert cli("fmt", spec).rc == 0
    assert spec.read_text().endswith("    with:\n      ? a\n      : 3\n      b: 4\n")


# -- ${{ env.NAME }} in the executor and in parameter defaults -----------------------------------
EXECUTOR_ENV = """\
version: 1
name: remote-cluster
tasks:
  show:
    run: tasks:show
    with: {where: here}
executor:
  type: dask
  address: ${{ env.FS16_SCHEDULER }}
"""
DEFAULTS_ENV = """\
version: 1
name: defaults
parameters:
  where:
    type: string
    default: ${{ env.FS16_WHERE }}
  port:
    type: integer
    default: ${{ env.FS16_PORT || '8080' }}
  token:
    type: string
    default: ${{ env.FS16_API_TOKEN || 'not-a-token' }}
tasks:
  show:
    run: tasks:show
    with: {where: "${{ params.where }}", port: "${{ params.port }}"}
"""
SHOW = """\
def show(where, port=None):
    print(f"where={where} port={port!r}")
    return where
"""


def _flow(tmp_path: Path, text: str) -> Path:
    (tmp_path / "flow.yaml").write_text(text)
    (tmp_path / "tasks.py").write_text(SHOW)
    return tmp_path / "flow.yaml"


def test_an_unset_variable_in_the_executor_is_an_error_at_its_position_and_nothing_runs(cli, tmp_path, home):
    spec = _flow(tmp_path, EXECUTOR_ENV)
    at = f"{spec}:9:12"
    for strict in ((), ("--strict",)):  # validate warns: the machine that validates may not run it
        checked = cli("validate", *strict, spec)
        assert checked.rc == 0, checked.output
        assert f"{at}: warning: executor.address: environment variable FS16_SCHEDULER is not set" in checked.stdout
        assert checked.stdout.endswith("no errors in 1 file (1 warning)\n")
    items = json.loads(cli("validate", "--format", "json", spec).stdout)
    assert [(i["line"], i["column"], i["severity"]) for i in items] == [(9, 12, "warning")]
    result = cli("run", spec, env=home)
    assert result.rc == 2 and "internal error" not in result.output, result.output
    assert f"{at}: error: executor.address: environment variable FS16_SCHEDULER is not set" in result.stderr
    assert "${{ env.FS16_SCHEDULER || 'fallback' }}" in result.stderr and "nothing was run" in result.stderr
    as_json = cli("run", spec, "--format", "json", env=home)
    assert as_json.rc == 2 and json.loads(as_json.stdout)[0]["path"] == "executor.address"
    assert not (tmp_path / "home" / "flowspec.db").exists()  # nothing recorded
    plan = cli("plan", spec, env=home)
    assert plan.rc == 1 and f"{at}: error: executor.address" in plan.stderr
    registered = cli("register", spec, env=home)
    assert registered.rc == 1 and f"{at}: error: executor.address" in registered.stderr
    assert "nothing was registered" in registered.stderr
    built = cli("build", spec, env=home)
    assert built.rc == 1 and f"{at}: error: executor.address" in built.stderr and "nothing was built" in built.stderr


def test_parameter_defaults_read_the_environment_at_run_time(cli, tmp_path, home):
    spec = _flow(tmp_path, DEFAULTS_ENV)
    checked = cli("validate", "--strict", spec)
    assert checked.rc == 0 and f"{spec}:6:14: warning: parameters.where.default: environment variable" \
                               " FS16_WHERE is not set" in checked.stdout
    unset = cli("run", spec, env=home)
    assert unset.rc == 2 and f"{spec}:6:14: error: parameters.where.default" in unset.stderr
    assert "--param where=VALUE" in unset.stderr and "internal error" not in unset.stderr
    given = cli("run", spec, "--param", "where=given", env=home)  # a value given: its default is not read
    assert given.rc == 0 and "show | where=given port=8080" in given.stderr, given.output
    read = cli("run", spec, env=home | {"FS16_WHERE": "from-env", "FS16_PORT": "99"})
    assert read.rc == 0 and "show | where=from-env port=99" in read.stderr, read.output
    wrong = cli("run", spec, env=home | {"FS16_WHERE": "x", "FS16_PORT": "ninety"})
    assert wrong.rc == 2 and "parameter 'port'" in wrong.stderr and 'expected integer, got string "ninety"' \
        in wrong.stderr
    plan = json.loads(cli("plan", spec, "--format", "json", env=home | {"FS16_WHERE": "w",
                                                                        "FS16_API_TOKEN": "s3cr3t"}).stdout)
    values = {p["name"]: p["value"] for p in plan["parameters"]}
    assert values == {"where": "w", "port": 8080, "token": "***"}  # a default read from a secret: masked


def test_only_env_references_stand_in_a_parameter_default(cli, tmp_path):
    spec = _flow(tmp_path, DEFAULTS_ENV.replace("${{ env.FS16_WHERE }}", "${{ params.port }}"))
    result = cli("validate", spec)
    assert result.rc == 1 and f"{spec}:6:14: error: parameters.where.default: ${{{{ params.port }}}}: only env and" \
                               " secrets references are allowed in a parameter default" in result.stdout


# -- plan ----------------------------------------------------------------------------------------
FARGATE_SECRETS = """\
version: 1
name: fargate-secrets
tasks:
  load:
    run: tasks:show
    with: {where: "${{ env.FS16_WAREHOUSE_PASSWORD }}", port: "${{ env.FS16_WAREHOUSE_HOST }}"}
storage: {type: docker, image_name: localhost/flows/fargate-secrets, image_tag: v1}
environment:
  type: fargate-task
  region: eu-west-1
  cluster: etl
  task_definition:
    cpu: "256"
    memory: "512"
    containerDefinitions:
      - name: flow
        environment:
          - {name: FS16_WAREHOUSE_HOST, value: db.internal}
        secrets:
          - {name: FS16_WAREHOUSE_PASSWORD, valueFrom: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:wh"}
"""
# Whatever the plan asks AWS goes to a closed port on this machine.
NO_AWS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def test_plan_counts_what_a_fargate_task_definition_sets_as_provided(cli, tmp_path, home):
    spec = _flow(tmp_path, FARGATE_SECRETS)
    result = cli("plan", spec, env=home | NO_AWS)
    assert result.rc == 0, result.output
    assert "Warnings" not in result.stdout and "not set" not in result.stdout, result.stdout
    assert "reads ${{ env.FS16_WAREHOUSE_PASSWORD }} in task load (set by the task definition)" in result.stdout
    plan = json.loads(cli("plan", spec, "--format", "json", env=home | NO_AWS).stdout)
    assert [r["set"] for r in plan["env_references"]] == [True, True] and plan["warnings"] == []


DASK_KUBERNETES = """\
version: 1
name: dk
tasks:
  load:
    run: tasks:show
    with: {where: here}
storage: {type: docker, image_name: localhost/flows/dk, image_tag: v1}
environment:
  type: dask-kubernetes
  worker_spec_file: worker.yaml
"""
WORKER = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: worker\n      image: {image}\n"


def test_plan_says_nothing_of_a_worker_image_that_is_the_flows_own(cli, tmp_path, home):
    spec = _flow(tmp_path, DASK_KUBERNETES)
    (tmp_path / "worker.yaml").write_text(WORKER.format(image="localhost/flows/dk:v1"))
    same = cli("plan", spec, env=home)
    assert same.rc == 0 and "would be replaced" not in same.stdout and "Warnings" not in same.stdout, same.output
    (tmp_path / "worker.yaml").write_text(WORKER.format(image="localhost/flows/other:v2"))
    other = cli("plan", spec, env=home)
    assert "worker.yaml: the worker image localhost/flows/other:v2 would be replaced by the flow's image" \
           " localhost/flows/dk:v1" in other.stdout


def test_plan_describes_the_docker_environment(cli, tmp_path, home):
    spec = _flow(tmp_path, DASK_KUBERNETES.replace("dask-kubernetes", "docker").replace(
        "  worker_spec_file: worker.yaml\n", ""))
    result = cli("plan", spec, env=home)
    assert result.rc == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("Environment"))
    assert line == "Environment  docker: a container from the docker storage image, on the Docker engine"


# -- run -----------------------------------------------------------------------------------------
LOGGING_FLOW = """\
version: 1
name: logging
tasks:
  work:
    run: work:work
"""
LOGGING_WORK = """\
from flowspec import context
def work():
    context.logger.info("an info line for the record")
    context.logger.warning("a warning line")
"""


def test_quiet_is_a_display_option_and_the_backend_keeps_every_info_line(cli, tmp_path, home):
    (tmp_path / "flow.yaml").write_text(LOGGING_FLOW)
    (tmp_path / "work.py").write_text(LOGGING_WORK)
    quiet = cli("run", "-q", tmp_path / "flow.yaml", env=home)
    assert quiet.rc == 0, quiet.output
    assert "an info line" not in quiet.output and "a warning line" in quiet.stderr
    run_id = re.search(r"\((\w{8})\)", quiet.stdout)[1]
    logs = cli("runs", "logs", run_id, env=home)
    assert logs.rc == 0 and "an info line for the record" in logs.stdout and "a warning line" in logs.stdout


# -- validate: hints for what people write -------------------------------------------------------
def test_a_quoted_version_is_told_to_drop_the_quotes(cli, tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_text('version: "1"\nname: a\ntasks:\n  x:\n    run: m:f\n')
    result = cli("validate", spec)
    assert result.rc == 1
    assert f"{spec}:1:10: error: version: version is the string '1', not the number 1" in result.stdout
    assert "hint: remove the quotes: version: 1" in result.stdout


@pytest.mark.parametrize("where, key, value, says", [
    ((), "result", "{type: local}", "write `results: {type: local|s3, ...}`"),
    ((), "cache", "true", "caching is set per task"),
    (("tasks", "x"), "cache_for", "1h", "write `cache: {expires: DURATION}` (Prefect's cache_for)"),
    (("tasks", "x"), "checkpoint", "true", "write `persist: true|false`"),
    (("tasks", "x"), "subflow", "other.yaml", "write `flow: FILE`"),
    (("tasks", "x"), "task_run_name", "n", "write `run_name: ...`"),
    (("tasks", "x"), "state_handlers", "[m:h]", "on_success, on_failure, on_retry"),
    (("tasks", "x"), "outputs", "{a: 1}", "outputs are declared at the top level"),
    (("tasks", "x"), "max_retries", "3", "write `retries: N`"),
    (("environment",), "secrets", "{A: b}", "write ${{ secrets.NAME }} in environment.env"),
    (("parameters", "p"), "required", "true", "a parameter is required when it has no `default`"),
])
def test_an_unknown_key_that_people_write_says_what_flowspec_has(cli, tmp_path, where, key, value, says):
    indent = "  " * len(where)
    lines = ["version: 1", "name: a", "tasks:", "  x:", "    run: m:f"]
    if where == ():
        lines.insert(2, f"{key}: {value}")
    elif where == ("environment",):
        lines += ["environment:", f"  {key}: {value}"]
    elif where[0] == "parameters":
        lines += ["parameters:", "  p:", f"    {key}: {value}"]
    else:
        lines.append(f"{indent}{key}: {value}")
    spec = tmp_path / "flow.yaml"
    spec.write_text("\n".join(lines) + "\n")
    result = cli("validate", spec)
    path = ".".join(where + (key,))
    assert result.rc == 1 and f"error: {path}: unknown key '{key}'" in result.stdout, result.stdout
    hint = result.stdout.split(f"unknown key '{key}'\n", 1)[1].splitlines()[0]
    assert hint.startswith("  hint: ") and says in hint, hint
    if "not in this release yet" in hint:
        assert "docs/flow-yaml.md, 'Not in this release yet'" in hint


def test_the_flow_yaml_reference_is_self_contained_and_lists_what_is_not_there_yet(repo):
    text = (repo / "docs" / "flow-yaml.md").read_text()
    assert "SPEC.md" not in text
    assert "## Not in this release yet" in text
    for target in re.findall(r"\]\(([\w./-]+\.md)", text):
        assert (repo / "docs" / target).exists(), target


def test_the_remote_environment_example_validates_and_plans(cli, repo, tmp_path, home):
    text = (repo / "docs" / "flow-yaml.md").read_text()
    section = text.split("### The `remote` environment", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)[1]
    spec = tmp_path / "flow.yaml"
    spec.write_text("version: 1\nname: remote-example\ntasks:\n  show:\n    run: tasks:show\n"
                    "    with: {where: here}\n" + example)
    (tmp_path / "tasks.py").write_text(SHOW)
    assert cli("validate", "--strict", spec).rc == 0
    plan = cli("plan", spec, env=home)
    assert plan.rc == 0 and "Environment  remote: the runner runs here" in plan.stdout, plan.output


def test_run_of_a_missing_file_as_json_is_the_documented_error_object(cli, tmp_path, home):
    result = cli("run", tmp_path / "nothere.yaml", "--format", "json", env=home)
    assert result.rc == 2
    assert json.loads(result.stdout) == {"error": f"{tmp_path / 'nothere.yaml'}: no such file", "hint": None,
                                         "exit_code": 2}
    malformed = cli("run", _flow(tmp_path, DEFAULTS_ENV), "--param", "where", "--format", "json", env=home)
    assert malformed.rc == 2 and json.loads(malformed.stdout)["error"] == "--param 'where': expected NAME=VALUE"


def test_params_file_errors_say_error_once_per_line(cli, tmp_path, home):
    spec = _flow(tmp_path, DEFAULTS_ENV)
    (tmp_path / "params.yaml").write_text("wher: here\nport: x\n")
    env = home | {"FS16_WHERE": "w"}
    here = cli("run", spec, "--params-file", tmp_path / "params.yaml", env=env)
    assert here.rc == 2 and f"{tmp_path / 'params.yaml'}:1:1: error: wher: unknown parameter 'wher'" in here.stderr
    assert "did you mean 'where'?" in here.stderr
    registered = cli("register", spec, env=env)
    assert registered.rc == 0, registered.output
    for command in (("run", "--name", "defaults"), ("plan", spec, spec)):
        result = cli(*command, "--params-file", tmp_path / "params.yaml", env=env)
        assert result.rc == 2, result.output
        lines = result.stderr.splitlines()
        assert any(line.startswith(f"{tmp_path / 'params.yaml'}:2:7: error: port:") for line in lines), lines
        assert not any(line.count("error:") > 1 for line in lines), lines


def test_a_registered_flows_default_is_read_where_the_run_runs(cli, tmp_path, home):
    spec = _flow(tmp_path, DEFAULTS_ENV)
    assert cli("register", spec, env=home | {"FS16_WHERE": "at-register"}).rc == 0
    created = cli("run", "--name", "defaults", "--format", "json", env=home)  # FS16_WHERE is not set here
    assert created.rc == 0, created.output
    assert "where" not in json.loads(created.stdout)["parameters"]


# -- run DIR, init -------------------------------------------------------------------------------
def test_run_and_plan_of_a_folder_use_its_flow_yaml(cli, tmp_path, home):
    folder = tmp_path / "greet"
    folder.mkdir()
    _flow(folder, LOGGING_FLOW.replace("work:work", "tasks:show\n    with: {where: folder}"))
    result = cli("run", folder, env=home)
    assert result.rc == 0 and "work | where=folder" in result.stderr, result.output
    assert cli("plan", folder, env=home).rc == 0
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "other.yaml").write_text("version: 1\n")
    empty = cli("run", tmp_path / "empty", env=home)
    assert empty.rc == 2
    assert f"flowspec: error: {tmp_path / 'empty'} is a folder without a flow.yaml" in empty.stderr
    assert f"hint: give the spec's path: {tmp_path / 'empty' / 'other.yaml'}" in empty.stderr


def test_init_quotes_the_paths_it_prints_for_the_shell(cli, tmp_path):
    result = cli("init", "My Flow", cwd=tmp_path)
    assert result.rc == 0, result.output
    assert "next: flowspec validate --strict 'My Flow/flow.yaml'" in result.stderr
    assert "      flowspec run 'My Flow/flow.yaml'" in result.stderr
    assert "      python -m pytest 'My Flow'" in result.stderr
    assert "wrote 'My Flow/flow.yaml', 'My Flow/tasks.py', 'My Flow/test_my_flow.py'" in result.stderr


def test_the_tests_of_two_init_folders_run_together(cli, tmp_path, home):
    for folder in ("first", "second"):
        assert cli("init", folder, cwd=tmp_path).rc == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | home
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "first", "second"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "6 passed" in tests.stdout


def test_a_command_that_lives_in_a_group_is_named_with_its_group(cli):
    logs = cli("logs", "3f2a")
    assert logs.rc == 2 and "hint: did you mean 'runs logs'?" in logs.stderr
    listed = cli("list")
    assert "hint: did you mean one of 'flows list', 'runs list', 'agents list', 'concurrency-limit list', 'kv list'," \
        " 'secrets list', 'schedules list'?" in listed.stderr
    assert "hint: did you mean 'validate'?" in cli("valdate").stderr
    assert "hint: did you mean 'logs'?" in cli("runs", "log").stderr


# -- docs: the pre-commit example ----------------------------------------------------------------
def _pre_commit_blocks(repo: Path) -> list[str]:
    text = (repo / "docs" / "authoring.md").read_text()
    section = text.split("## Before a commit: pre-commit", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_the_pre_commit_example_names_no_tag_the_project_does_not_have(repo):
    import yaml

    for block in _pre_commit_blocks(repo):
        for entry in yaml.safe_load(block)["repos"]:
            if entry["repo"] != "local":  # a remote hook's rev: a commit, since there are no release tags
                assert re.fullmatch(r"[0-9a-f]{40}", entry["rev"]), entry["rev"]


@pytest.mark.integration
def test_the_documented_local_hooks_block_a_bad_spec(repo, tmp_path):
    import shutil

    import yaml

    if shutil.which("git") is None:
        pytest.skip("git is not installed (apt-get install git)")
    pytest.importorskip("pre_commit", reason="pre-commit is not installed (pip install pre-commit)")
    config = yaml.safe_load(_pre_commit_blocks(repo)[0])
    assert config["repos"][0]["repo"] == "local"
    for hook in config["repos"][0]["hooks"]:  # this checkout's flowspec, whatever is on PATH
        hook["entry"] = hook["entry"].replace("flowspec", f"{sys.executable} -m flowspec", 1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {
        "HOME": str(tmp_path), "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org"}
    root = tmp_path / "project"
    root.mkdir()

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=120)

    run("git", "init", "-q", "-b", "main")
    (root / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert run(sys.executable, "-m", "pre_commit", "install").returncode == 0
    (root / "flow.yaml").write_text("version: 1\nname: bad\ntasks:\n  only:\n    run: m:f\n    retries: three\n")
    run("git", "add", "-A")
    blocked = run("git", "commit", "-q", "-m", "bad spec")
    assert blocked.returncode != 0 and "flow.yaml:6:14: error: tasks.only.retries" in blocked.stdout + blocked.stderr
