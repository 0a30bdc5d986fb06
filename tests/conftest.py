"""What every test gets: a flowspec home and backend of its own, never the user's.

flowspec keeps its backend (runs, flows, agents) in `$FLOWSPEC_HOME` (default `~/.flowspec`) or
at `$FLOWSPEC_BACKEND`. A test that ran `flowspec` with the user's environment would add its runs
to the user's `runs list`, or to the database FLOWSPEC_BACKEND names. So each test runs with
FLOWSPEC_HOME set to an empty folder of its own and FLOWSPEC_BACKEND unset, in `os.environ`
itself: the `flowspec` commands, agents and servers a test starts inherit both. A test or
fixture that sets its own values (monkeypatch, or an `env` passed to a child) still wins: it
sets them after this fixture did.

HOME is left alone: the test cache (`$XDG_CACHE_HOME/flowspec-tests`, else
`~/.cache/flowspec-tests`) holds the Debian base image and the wheels between sessions.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# What flowspec reads to find the user's backend; set per test below.
HOME_VARIABLE = "FLOWSPEC_HOME"
BACKEND_VARIABLE = "FLOWSPEC_BACKEND"


def _isolate(monkeypatch: pytest.MonkeyPatch, home: str) -> None:
    monkeypatch.setenv(HOME_VARIABLE, home)
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)


@pytest.fixture(scope="session", autouse=True)
def _session_flowspec_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For what session fixtures start before or between tests (servers, clusters, workers)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate(monkeypatch, str(tmp_path_factory.mktemp("session-flowspec-home")))
        yield


@pytest.fixture(autouse=True)
def _own_flowspec_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's flowspec home: a folder apart from `tmp_path`, which stays the test's alone."""
    _isolate(monkeypatch, str(tmp_path_factory.mktemp("flowspec-home")))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say up front when the platform tests will use the contributor's own engine or cluster."""
    given = {"DOCKER_HOST": "docker tests use the engine at", "KUBECONFIG": "k8s tests use the cluster of"}
    return [f"{what} {name}={os.environ[name]} (they start none)" for name, what in given.items()
            if os.environ.get(name)]
