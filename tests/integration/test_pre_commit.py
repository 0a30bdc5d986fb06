"""The real pre-commit tool runs this repository's hooks in a throwaway git repository.

Hooks from remote repositories cannot be fetched here, so the hook definitions are copied from
`.pre-commit-hooks.yaml` into `repo: local` hooks; only the way flowspec is found changes
(`language: system` with this interpreter instead of a fresh virtualenv).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

GOOD = "version: 1\nname: good\ntasks:\n  only:\n    run: m:f\n"
BAD = "version: 1\nname: bad\ntasks:\n  only:\n    run: m:f\n    retries: three\n"
UNFORMATTED = "name: good\nversion: 1\ntasks:\n    only:\n        run: m:f\n"


def local_hook(hook_id: str, **overrides) -> dict:
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    entry = hooks[hook_id]["entry"].replace("flowspec", f"{sys.executable} -m flowspec", 1)
    return {**hooks[hook_id], "language": "system", "entry": entry, **overrides}


@pytest.fixture
def project(tmp_path: Path):
    """A git repository with pre-commit installed; `project(*args)` runs a command in it."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed (apt-get install git)")
    pytest.importorskip("pre_commit", reason="pre-commit is not installed (pip install pre-commit)")
    root = tmp_path / "project"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(HOME=str(tmp_path), PRE_COMMIT_HOME=str(tmp_path / "pre-commit-cache"), GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=120)

    run("git", "init", "-q", "-b", "main")
    config = {"repos": [{"repo": "local", "hooks": [local_hook("flowspec-validate"),
                                                     local_hook("flowspec-fmt", args=["--check"])]}]}
    (root / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert run(sys.executable, "-m", "pre_commit", "install").returncode == 0
    run.root = root
    return run


def test_a_bad_spec_is_blocked_and_a_good_one_passes(project):
    spec = project.root / "pipelines" / "etl.flow.yaml"
    spec.parent.mkdir()
    spec.write_text(BAD)
    (project.root / "notes.yaml").write_text("retries: three\n")  # not a spec: the hook leaves it alone
    project("git", "add", "-A")
    blocked = project("git", "commit", "-q", "-m", "bad spec")
    assert blocked.returncode != 0
    out = blocked.stdout + blocked.stderr
    assert "flowspec validate" in out and "Failed" in out
    assert "pipelines/etl.flow.yaml:6:14: error: tasks.only.retries: expected integer" in out
    assert "notes.yaml" not in out
    assert project("git", "rev-parse", "--verify", "-q", "HEAD").returncode != 0  # nothing was committed

    spec.write_text(GOOD)
    project("git", "add", "-A")
    passed = project("git", "commit", "-q", "-m", "good spec")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "flowspec validate" in passed.stderr and "Passed" in passed.stderr  # git shows hook output there
    assert project("git", "rev-parse", "--verify", "-q", "HEAD").returncode == 0


def test_the_fmt_hook_blocks_a_spec_that_is_not_in_the_canonical_layout(project):
    (project.root / "flow.yaml").write_text(UNFORMATTED)
    project("git", "add", "-A")
    blocked = project("git", "commit", "-q", "-m", "unformatted")
    assert blocked.returncode != 0
    assert "would reformat flow.yaml" in blocked.stdout + blocked.stderr
