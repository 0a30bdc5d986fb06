"""Editor support, tested with a real client of the real server.

yaml-language-server (the server behind VS Code's YAML extension, Neovim's yamlls, Helix, ...)
is installed from the npm registry into a cache folder and driven over stdio by the small LSP
client below. It must find flowspec's schema through the `# yaml-language-server: $schema=`
modeline, and then report the schema-level errors at the same places as `flowspec validate`,
complete keys with the schema's descriptions, and show them on hover.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowspec.loader import load_file
from flowspec.schema import SCHEMA_PATH, check, load_schema

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*/flow.yaml"))
PACKAGE = "yaml-language-server@1"
SETTINGS = {"yaml": {"schemaStore": {"enable": False}, "validate": True, "hover": True, "completion": True}}
pytestmark = pytest.mark.integration


def _cache_dir() -> Path:
    root = os.environ.get("FLOWSPEC_TEST_CACHE") or Path.home() / ".cache" / "flowspec-tests"
    return Path(root) / "yaml-language-server"


@pytest.fixture(scope="session")
def server_command() -> list[str]:
    """`node .../yaml-language-server --stdio`, installed from npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("npm (and node) not found: install Node.js, e.g. `apt-get install npm`, to run this test")
    cache = _cache_dir()
    script = cache / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
    if not script.exists():
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), PACKAGE],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not script.exists():
            pytest.fail(f"`npm install {PACKAGE}` failed (is the npm registry reachable?):\n{done.stderr[-2000:]}")
    return [node, str(script), "--stdio"]


class LspClient:
    """A minimal Language Server Protocol client over a child process's stdin/stdout."""

    def __init__(self, command: list[str], root: Path) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.inbox: queue.Queue = queue.Queue()
        self.diagnostics: dict[str, list] = {}
        self._ids = 0
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": {
            "workspace": {"configuration": True},
            "textDocument": {"hover": {"contentFormat": ["markdown", "plaintext"]},
                             "completion": {"completionItem": {"documentationFormat": ["markdown", "plaintext"]}},
                             "publishDiagnostics": {}}}})
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": SETTINGS})

    # -- wire ------------------------------------------------------------------------------------
    def _send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        with self._write_lock:
            self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.proc.stdin.flush()

    def _read_message(self) -> dict | None:
        length = None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return None
            if not line.strip():
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return json.loads(self.proc.stdout.read(length))

    def _read_loop(self) -> None:
        while (message := self._read_message()) is not None:
            if "method" in message and "id" in message:  # the server asks the client
                self._send({"id": message["id"], "result": self._answer(message)})
            else:
                self.inbox.put(message)

    @staticmethod
    def _answer(request: dict):
        if request["method"] == "workspace/configuration":
            return [SETTINGS.get(item.get("section"), {}) for item in request["params"]["items"]]
        return None  # client/registerCapability, window/workDoneProgress/create, ...

    # -- protocol --------------------------------------------------------------------------------
    def notify(self, method: str, params: dict) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict, timeout: float = 30):
        self._ids += 1
        ident = self._ids
        self._send({"id": ident, "method": method, "params": params})
        return self._wait(lambda m: m.get("id") == ident, timeout).get("result")

    def _wait(self, wanted, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError("yaml-language-server did not answer in time") from None
            if message.get("method") == "textDocument/publishDiagnostics":
                self.diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]
            if wanted(message):
                return message

    def open(self, path: Path, text: str | None = None) -> list[dict]:
        """Open a document; return the diagnostics the server publishes for it."""
        uri = path.as_uri()
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "yaml", "version": 1, "text": path.read_text() if text is None else text}})
        self._wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                   and m["params"]["uri"] == uri, 30)
        return self.diagnostics[uri]

    def at(self, method: str, path: Path, line: int, character: int):
        return self.request(f"textDocument/{method}", {"textDocument": {"uri": path.as_uri()},
                                                         "position": {"line": line, "character": character}})

    def close(self) -> None:
        try:
            self.request("shutdown", {}, timeout=10)
            self.notify("exit", {})
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdin.close()
            self._reader.join(timeout=5)
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def lsp(server_command):
    client = LspClient(server_command, REPO)
    yield client
    client.close()


def validate_positions(path: Path) -> set[tuple[int, int]]:
    done = subprocess.run([sys.executable, "-m", "flowspec", "validate", "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=60)
    return {(d["line"], d["column"]) for d in json.loads(done.stdout)}


def lsp_positions(diagnostics: list[dict]) -> set[tuple[int, int]]:
    return {(d["range"]["start"]["line"] + 1, d["range"]["start"]["character"] + 1) for d in diagnostics}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_examples_are_clean_for_the_editor_and_for_validate(lsp, path: Path):
    assert path.read_text().startswith("# yaml-language-server: $schema=")
    assert lsp.open(path) == []
    assert validate_positions(path) == set()


BROKEN = """\
# yaml-language-server: $schema={schema}
version: 2
name: broken
colour: blue
tasks:
  fetch:
    run: not a callable
    retries: three
    trigger: sometimes
    timeout: 5 minutes
  1bad:
    description: no run
  load:
    run: etl:load
    with:
      rows: ${{{{ tasks.fecth }}}}
executor:
  type: local-dask
  workers: 0
  address: tcp://scheduler:8786
storage:
  type: s3
environment:
  labels: [dev, dev]
  env:
    A: [1]
"""


def test_the_editor_marks_the_schema_errors_where_validate_does(lsp, tmp_path: Path):
    path = tmp_path / "flow.yaml"
    path.write_text(BROKEN.format(schema=Path(SCHEMA_PATH).resolve().as_uri()))
    from_editor = lsp_positions(lsp.open(path))
    schema_level = {(d.line, d.column) for d in check(load_file(str(path)))}
    from_validate = validate_positions(path)
    assert len(schema_level) >= 12
    assert schema_level < from_validate  # validate adds semantic errors: the misspelt task reference
    assert from_editor == schema_level


def _documentation(item: dict) -> str:
    doc = item.get("documentation") or ""
    return doc.get("value", "") if isinstance(doc, dict) else doc


def test_completion_and_hover_come_from_the_schema(lsp, tmp_path: Path):
    path = tmp_path / "flow.yaml"
    text = (f"# yaml-language-server: $schema={Path(SCHEMA_PATH).resolve().as_uri()}\n"
            "version: 1\nname: x\ntasks:\n  a:\n    run: m:f\n    retries: 1\n    \n"
            "executor:\n  type: local-dask\n  \n")
    path.write_text(text)
    lsp.open(path)
    defs = load_schema()["$defs"]
    task_keys = {item["label"]: _documentation(item) for item in lsp.at("completion", path, 7, 4)["items"]}
    assert task_keys["timeout"] == defs["task"]["properties"]["timeout"]["description"]
    assert task_keys["trigger"] == defs["task"]["properties"]["trigger"]["description"]
    # Completion follows the `if/then` branch chosen by `type`: local-dask's own keys.
    executor_keys = {item["label"] for item in lsp.at("completion", path, 10, 2)["items"]}
    assert executor_keys == {"scheduler", "workers"}
    hover = lsp.at("hover", path, 6, 6)["contents"]
    assert defs["task"]["properties"]["retries"]["description"] in hover["value"]
