"""Browser tests of `flowspec ui`: Debian's chromium driven by Playwright (pytest-playwright),
against a real `flowspec ui` process over a real backend holding runs made by `flowspec run`."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, run_cli

CHROMIUM = os.environ.get("FLOWSPEC_TEST_CHROMIUM", "/usr/bin/chromium")
FLOWS = Path(__file__).parent / "flows"
MISSING = []
try:
    import playwright  # noqa: F401
    import pytest_playwright  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:
    MISSING.append(f"the Python package '{exc.name}' is missing: pip install \"flowspec[ui]\" playwright pytest-playwright")
if not shutil.which(CHROMIUM):
    MISSING.append(f"no browser at {CHROMIUM}: install the Debian package `chromium` (apt-get install chromium)")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if MISSING and "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="; ".join(MISSING)))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "chromium_sandbox": False,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     "--disable-sync"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


class UI:
    """A running `flowspec ui`: its URL, process and backend."""

    def __init__(self, proc: subprocess.Popen, url: str, backend: str, home: Path) -> None:
        self.proc, self.url, self.backend, self.home = proc, url, backend, home

    def stop(self) -> str:
        """Stop it; returns what it wrote to stderr."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        return self.errors.read_text()

    @property
    def errors(self) -> Path:
        return self.home / f"ui-{self.proc.pid}.stderr"


def start_ui(backend: str, home: Path, *flags: str, env: dict | None = None) -> UI:
    """`flowspec ui --port 0 ...`, once it says where it serves."""
    environ = {**os.environ, "FLOWSPEC_HOME": str(home), **(env or {})}
    environ.pop("PYTHONWARNINGS", None)
    errors = home / "ui.stderr"
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "flowspec", "ui", "--port", "0", "--backend", backend, *flags],
                                cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    found = re.search(r"serving (http://\S+?)/? ", line)
    ui = UI(proc, found.group(1) if found else "", backend, home)
    errors.rename(ui.errors)
    if not found:
        raise AssertionError(f"flowspec ui did not start: {line}{ui.stop()}")
    return ui


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A SQLite backend with real runs (see `make_world`)."""
    root = tmp_path_factory.mktemp("ui-world")
    return make_world(root, str(root / "flowspec.db"))


def make_world(root: Path, db: str) -> dict:
    """Fill the backend `db` with real runs: a failed run of a flow with hostile names,
    parameters and log lines and a mapped task; a registered flow in two versions; a run
    waiting on labels no agent has; a concurrency limit."""
    home = root / "home"
    home.mkdir()
    env = {"FLOWSPEC_HOME": str(home)}
    flow = root / "hostile"
    shutil.copytree(FLOWS / "hostile", flow)
    done = run_cli("run", flow / "flow.yaml", "--backend", db, env=env, timeout=60)
    assert done.rc == 1, done.output  # a child fails on purpose
    assert run_cli("register", flow / "flow.yaml", "--backend", db, "--label", "gpu", env=env).rc == 0
    spec = (flow / "flow.yaml").read_text()
    (flow / "flow.yaml").write_text(spec.replace("default: 6", "default: 40"))
    assert run_cli("register", flow / "flow.yaml", "--backend", db, "--label", "gpu", env=env).rc == 0
    waiting = run_cli("run", "--name", "hostile-flow", "--backend", db, env=env)
    assert waiting.rc == 0, waiting.output
    assert run_cli("concurrency-limit", "set", "gpu", "1", "--backend", db, env=env).rc == 0
    import json

    failed = json.loads(run_cli("runs", "list", "--backend", db, "--state", "Failed", "--format", "json",
                                env=env).stdout)
    return {"root": root, "home": home, "db": str(db), "env": env, "failed": failed[0]["id"],
            "waiting": waiting.stdout.strip().splitlines()[-1]}


@pytest.fixture(scope="session")
def ui(world):
    server = start_ui(world["db"], world["home"])
    yield server
    server.stop()


@pytest.fixture
def watched(page):
    """The page, failing the test on any console error, uncaught exception or dialog."""
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text} at {msg.location}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    yield page
    assert not problems, problems


@pytest.fixture
def shots(request):
    """Where screenshots go: the test's artifact folder (kept by pytest under its basetemp)."""
    folder = Path(request.config._tmp_path_factory.getbasetemp()) / "ui-screenshots"
    folder.mkdir(exist_ok=True)

    def shot(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        docs = os.environ.get("FLOWSPEC_UI_DOCS_SHOTS")  # set to docs/ui to refresh the docs' pictures
        if docs:
            shutil.copy(path, Path(docs) / path.name)
        return path
    return shot
