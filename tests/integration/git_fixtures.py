"""A real git server on loopback: bare repositories served by `git http-backend` (CGI) behind a
small HTTP server that wants a token, and the repositories' own working copies to commit and
(force-)push from. Every request is logged, so a test can tell whether a client fetched."""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_TERMINAL_PROMPT": "0"}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout.strip()


class Repo:
    """A bare repository (what the server serves) and a working copy that pushes to it."""

    def __init__(self, root: Path, name: str, by_id: bool = True) -> None:
        self.name = name
        self.bare = root / "repos" / f"{name}.git"
        self.work = root / "work" / name
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "-b", "main", str(self.bare))
        if by_id:  # as hosted servers: any commit may be fetched by its id, shallow
            for key in ("allowAnySHA1InWant", "allowReachableSHA1InWant", "allowFilter"):
                git("config", f"uploadpack.{key}", "true", cwd=self.bare)
        git("config", "http.receivepack", "true", cwd=self.bare)
        self.work.mkdir(parents=True)
        git("init", "-q", "-b", "main", cwd=self.work)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    def commit(self, files: dict[str, str], message: str = "change", amend: bool = False) -> str:
        """Write the files, commit (or amend the last commit) and return the commit id."""
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, *(["--amend"] if amend else []), cwd=self.work)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self, branch: str = "main", force: bool = False) -> None:
        git("push", "-q", *(["--force"] if force else []), "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)

    def tag(self, name: str) -> None:
        git("tag", "-a", "-m", name, name, cwd=self.work)
        git("push", "-q", "origin", f"refs/tags/{name}", cwd=self.work)

    def collect_garbage(self) -> None:
        """Drop the server's unreachable objects now (what a force-push leaves, in time)."""
        git("reflog", "expire", "--expire=now", "--all", cwd=self.bare)
        git("gc", "-q", "--prune=now", cwd=self.bare)

    def file_url(self) -> str:
        return self.bare.as_uri()


class GitHttpServer:
    """`git http-backend` behind an HTTP server on 127.0.0.1 that wants `token` (Basic, as user or
    password, or Bearer) when one is set. `requests` logs (method, path, authorized) of each request."""

    def __init__(self, root: Path, token: str | None) -> None:
        self.root, self.token = root / "repos", token
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str, bool]] = []
        self.exposed: list[str] = []  # command lines that held the token while a client talked to us
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def fetches(self) -> int:
        """How many pack requests (the ones that send objects) the server answered."""
        return sum(1 for method, path, ok in self.requests if method == "POST" and path.endswith("git-upload-pack"))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def look_for_token(self) -> None:
        """Scan every process's command line (the git client is running now) for the token."""
        if self.token is None:
            return
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # the process ended meanwhile
                continue
            if self.token in text:
                self.exposed.append(text)

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        kind, _, value = (header or "").partition(" ")
        if kind == "Bearer":
            return value == self.token
        if kind == "Basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False
            return self.token in (user, password)
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the test reads `requests` instead
                pass

            def do_GET(self) -> None:
                self.serve()

            def do_POST(self) -> None:
                self.serve()

            def serve(self) -> None:
                server.look_for_token()
                ok = server.authorized(self.headers.get("Authorization"))
                parts = urlsplit(self.path)
                server.requests.append((self.command, parts.path, ok))
                body = self.read_body()
                if not ok:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": parts.path, "QUERY_STRING": parts.query, "REQUEST_METHOD": self.command,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_USER": "flowspec", "REMOTE_ADDR": "127.0.0.1"}
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
                head, _, payload = done.stdout.partition(b"\r\n\r\n" if b"\r\n\r\n" in done.stdout else b"\n\n")
                headers = [line.split(":", 1) for line in head.decode("latin-1").splitlines() if ":" in line]
                status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() != "status":
                        self.send_header(key, value.strip())
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        return Handler


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    """A token-protected git server on loopback; its repositories live under tmp_path/repos."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: apt-get install git")
    server = GitHttpServer(tmp_path, token="tok-Zq8xW3-not-a-real-token")
    yield server
    server.close()


class SshServer:
    """sshd on 127.0.0.1 that lets in one client key, for the current user: git over ssh:// to
    the bare repositories of this machine. Its host key is new each time: clients keep it in a
    known_hosts file of the test (`client_command`)."""

    def __init__(self, root: Path) -> None:
        import socket
        import time

        self.dir = root / "sshd"
        self.dir.mkdir()
        for name in ("host_key", "client_key", "other_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True)
        shutil.copy(self.dir / "client_key.pub", self.dir / "authorized_keys")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        (self.dir / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host_key'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
            f"PermitRootLogin prohibit-password\nPidFile {self.dir / 'sshd.pid'}\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        self.log = open(self.dir / "sshd.log", "wb")
        self.proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f",
                                      str(self.dir / "sshd_config")], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()}")

    def key(self, name: str = "client_key") -> str:
        return (self.dir / name).read_text()

    def url(self, repo: Repo) -> str:
        import getpass

        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}{repo.bare}"

    def client_command(self) -> str:
        """A GIT_SSH_COMMAND that keeps host keys in this test's folder, not the user's."""
        return f"ssh -o UserKnownHostsFile={self.dir / 'known_hosts'}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[SshServer]:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if sshd is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH's server is not installed: apt-get install openssh-server")
    server = SshServer(tmp_path)
    yield server
    server.close()
