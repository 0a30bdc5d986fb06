"""The test suite leaves the user's flowspec home and backend alone: a pytest session of tests
that run flows, started with FLOWSPEC_HOME and FLOWSPEC_BACKEND pointing at a home and a
database that hold a run already, changes nothing in either."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests that run flows through the CLI without choosing a home or backend themselves.
FLOW_RUNNING_TESTS = [
    "tests/acceptance/test_run_cli.py::test_hello_flow_logs_each_child_with_its_index",
    "tests/acceptance/test_run_cli.py::test_every_example_runs_with_the_expected_result[hello-flow]",
]


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root`: its kind, size, mode and modification time."""
    seen = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        seen[str(path.relative_to(root))] = (path.is_dir(), st.st_size, st.st_mode, st.st_mtime_ns)
    return seen


def _plant(cli, repo: Path, home: Path, database: Path) -> None:
    """A home and a backend database as a user's would be: one run in each."""
    for env in ({"FLOWSPEC_HOME": str(home), "FLOWSPEC_BACKEND": ""},
                {"FLOWSPEC_HOME": str(home), "FLOWSPEC_BACKEND": f"sqlite://{database}"}):
        done = cli("run", repo / "examples/hello-flow/flow.yaml", env=env, cwd=home.parent)
        assert done.rc == 0, done.output
    assert (home / "flowspec.db").is_file() and database.is_file()


@pytest.mark.slow
def test_a_session_leaves_the_users_home_and_backend_untouched(cli, repo, tmp_path):
    home, database = tmp_path / "user-home" / ".flowspec", tmp_path / "user-db" / "runs.db"
    home.mkdir(parents=True)
    database.parent.mkdir()
    _plant(cli, repo, home, database)
    before = {"home": _snapshot(home), "backend": _snapshot(database.parent)}

    env = {**os.environ, "FLOWSPEC_HOME": str(home), "FLOWSPEC_BACKEND": f"sqlite://{database}"}
    env.pop("PYTHONWARNINGS", None)
    session = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "--basetemp", str(tmp_path / "basetemp"), *FLOW_RUNNING_TESTS],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert session.returncode == 0, session.stdout[-3000:] + session.stderr[-3000:]
    assert f"{len(FLOW_RUNNING_TESTS)} passed" in session.stdout, session.stdout[-3000:]

    after = {"home": _snapshot(home), "backend": _snapshot(database.parent)}
    changed = [f"{place}/{name}" for place in before
               for name in sorted(before[place].keys() | after[place].keys())
               if before[place].get(name) != after[place].get(name)]
    assert not changed, f"the test session changed the user's flowspec home or backend: {changed}"
