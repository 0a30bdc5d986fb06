"""Acceptance tests run the real `flowspec` command in a child process, as a user would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@dataclass
class CliResult:
    """What one `python -m flowspec ...` run left behind."""

    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _command(args) -> list[str]:
    return [sys.executable, "-m", "flowspec", *map(str, args)]


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)  # pytest's warning filters must not leak into the child
    # pytest's name for the running test: with a large parameter in it, the environment alone
    # would pass the kernel's limit on one variable (E2BIG), and the child has no use for it.
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra or {})
    return env


def run_cli(*args, cwd: Path | str | None = None, env: dict | None = None, timeout: float = 30) -> CliResult:
    """Run `python -m flowspec ARGS...`; fail the test if it does not finish within `timeout`."""
    start = time.monotonic()
    proc = subprocess.run(_command(args), cwd=cwd or REPO, env=_env(env), capture_output=True, text=True,
                          timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def start_cli(*args, cwd: Path | str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `python -m flowspec ARGS...` in the background (for tests that send it signals).

    SIGINT is reset to its default in the child: a shell that started these tests in the
    background may have set it to ignored, and an ignored SIGINT is inherited across exec."""
    return subprocess.Popen(_command(args), cwd=cwd or REPO, env=_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture(scope="session")
def cli():
    """`cli("validate", path)` → CliResult: runs the command to its end."""
    return run_cli


@pytest.fixture(scope="session")
def cli_start():
    """`cli_start("run", path)` → Popen: a running command, to signal and then `communicate()`."""
    return start_cli


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (commands run from there by default, with relative paths)."""
    return REPO
