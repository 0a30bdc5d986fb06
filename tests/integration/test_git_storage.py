"""The `git` storage through the CLI, against real git: a token-protected `git http-backend`
server on loopback and `file://` repositories. Registering pins the ref's commit; agents fetch
exactly that commit (on their own machine: their own FLOWSPEC_HOME) into a cache per commit; a
force-pushed branch does not change a registered version; every failure says what is wrong and
what to do, and the token appears in no output and nowhere in the backend."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from git_fixtures import Repo, git, git_server, ssh_server  # noqa: F401  (git_server, ssh_server: fixtures)

pytestmark = pytest.mark.integration

TASKS = """
from flowspec import context

VERSION = "{version}"

def hello():
    context.logger.info("hello from version %s", VERSION)
    return VERSION
"""


def spec(url: str, name: str = "gitflow", **storage) -> str:
    storage = {"type": "git", "url": url, **storage}
    return json.dumps({"version": 1, "name": name, "tasks": {"hi": {"run": "tasks:hello"}},
                       "storage": storage})  # JSON is YAML


class Machine:
    """The CLI with its own FLOWSPEC_HOME (its own git cache) on a shared SQLite backend."""

    def __init__(self, root: Path, name: str, secret: str | None = None, **env: str) -> None:
        self.root = root
        self.env = {**os.environ, "FLOWSPEC_HOME": str(root / name), "FLOWSPEC_BACKEND": f"sqlite://{root / 'fs.db'}",
                    **env}
        self.env.pop("PYTHONWARNINGS", None)
        self.env.pop("FLOWSPEC_SECRET_GIT_TOKEN", None)
        if secret is not None:
            self.env["FLOWSPEC_SECRET_GIT_TOKEN"] = secret
        self.log = root / f"agent-{name}.log"

    @property
    def cache(self) -> Path:
        return Path(self.env["FLOWSPEC_HOME"]) / "git"

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowspec", *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        done = self.cli(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def fails(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode != 0, done.stdout
        out = done.stdout + done.stderr
        assert "Traceback" not in out, out
        return out

    def register(self, file: Path) -> dict:
        return json.loads(self.ok("register", file, "--format", "json").stdout)

    def agent(self) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "flowspec", "agent", "start", "--poll-interval", "0.1"],
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.root)

    def watch(self, name: str = "gitflow") -> subprocess.CompletedProcess:
        return self.cli("run", "--name", name, "--watch", timeout=120)


def stop(agent: subprocess.Popen) -> None:
    agent.terminate()
    try:
        agent.wait(20)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def backend_dump(root: Path) -> str:
    with sqlite3.connect(root / "fs.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(str(row) for t in tables for row in db.execute(f"SELECT * FROM {t}"))


def flow_repo(root: Path, url_of, name: str = "flows", folder: str = "", by_id: bool = True, **storage) -> Repo:
    """A repository holding the flow (at `folder`), version 1, pushed to main."""
    repo = Repo(root, name, by_id=by_id)
    prefix = f"{folder}/" if folder else ""
    repo.commit({f"{prefix}tasks.py": TASKS.format(version="v1"),
                 f"{prefix}flow.yaml": spec(url_of(repo), **storage)}, "v1")
    repo.push()
    return repo


# -- register pins a commit; agents run exactly it ---------------------------------------------------------
@pytest.mark.slow
def test_an_agent_runs_the_registered_commit_and_a_force_push_changes_nothing(tmp_path, git_server):
    """Over HTTP with a token, the spec in a sub-folder of the repository, registered from a
    checkout (so `path` defaults to the spec's own path there): the agent, on another machine,
    fetches the pinned commit once and reuses it; a force-push of the branch changes nothing for
    the registered version; registering again pins the new commit as a new version."""
    repo = flow_repo(tmp_path, lambda r: git_server.url(r.name), folder="etl",
                     auth="${{ secrets.GIT_TOKEN }}")
    v1 = repo.head()
    admin = Machine(tmp_path, "admin", secret=git_server.token)
    worker = Machine(tmp_path, "worker", secret=git_server.token)
    registered = admin.register(repo.work / "etl" / "flow.yaml")
    storage = registered["storage"]
    assert (registered["version"], storage["commit"], storage["ref"]) == (1, v1, "main")
    assert storage["spec"] == "etl/flow.yaml"
    assert storage["auth"] == "${{ secrets.GIT_TOKEN }}"  # the reference, never its value
    agent = worker.agent()
    try:
        before = git_server.fetches()
        done = worker.watch()
        assert done.returncode == 0, done.stdout + done.stderr + worker.log.read_text()
        assert "hello from version v1" in done.stdout + done.stderr
        assert git_server.fetches() > before and (worker.cache / v1 / "etl" / "tasks.py").is_file()

        fetched = git_server.fetches()  # a second run of the same version: from the cache
        assert worker.watch().returncode == 0
        assert git_server.fetches() == fetched

        repo.commit({"etl/tasks.py": TASKS.format(version="v2")}, "rewritten", amend=True)
        repo.push(force=True)
        shutil.rmtree(worker.cache)  # a fresh machine fetches the old commit by its id
        done = worker.watch()
        assert done.returncode == 0 and "hello from version v1" in done.stdout + done.stderr, done.stderr

        again = admin.register(repo.work / "etl" / "flow.yaml")
        assert (again["version"], again["storage"]["commit"]) == (2, repo.head())
        assert admin.register(repo.work / "etl" / "flow.yaml")["version"] == 2  # unchanged: kept
        done = worker.watch()
        assert done.returncode == 0 and "hello from version v2" in done.stdout + done.stderr, done.stderr
    finally:
        stop(agent)
    assert git_server.token not in backend_dump(tmp_path)
    assert git_server.token not in worker.log.read_text()
    assert all(ok for _, _, ok in git_server.requests)
    assert git_server.exposed == []  # in no command line while git talked to the server


@pytest.mark.slow
def test_file_urls_tags_and_commit_ids(tmp_path):
    """A file:// repository, the spec registered from a file outside any checkout (path defaults
    to flow.yaml), with ref as an annotated tag and as a full commit id; build reports the commit."""
    repo = flow_repo(tmp_path, Repo.file_url)
    v1 = repo.head()
    repo.tag("release-1")
    repo.commit({"tasks.py": TASKS.format(version="v2")}, "v2")
    repo.push()
    outside = tmp_path / "outside"
    outside.mkdir()
    machine = Machine(tmp_path, "home")
    for name, ref, commit in (("by-tag", "release-1", v1), ("by-id", repo.head(), repo.head()),
                              ("by-default", None, repo.head())):
        file = outside / f"{name}.yaml"
        file.write_text(spec(repo.file_url(), name=name, **({"ref": ref} if ref else {})))
        # The committed spec names its flow `gitflow`: a different name is refused, saying why.
        assert "names the flow 'gitflow'" in machine.fails("register", file)
        file.write_text(spec(repo.file_url(), **({"ref": ref} if ref else {})))
        done = machine.ok("build", file, "--format", "json")
        built = json.loads(done.stdout)
        assert (built["commit"], built["spec"]) == (commit, "flow.yaml")
        if ref:  # this file is not the committed spec: what runs is the commit's
            assert f"differs from flow.yaml in commit {commit[:12]}: the flow runs the committed spec" in done.stderr
        assert machine.ok("build", file).stdout.startswith(
            f"Resolved (nothing to build) flow 'gitflow': git {repo.file_url()} flow.yaml, commit {commit[:12]}")
    file.write_text(spec(repo.file_url(), ref="release-1"))
    assert machine.register(file)["storage"]["commit"] == v1
    agent = machine.agent()
    try:
        done = machine.watch()
        assert done.returncode == 0 and "hello from version v1" in done.stdout + done.stderr, done.stderr
    finally:
        stop(agent)


@pytest.mark.slow
def test_file_subflows_run_from_the_pinned_commit(tmp_path):
    """A flow whose `flow: FILE` children (one in a sub-folder, one beside it, each with a `tasks`
    module of its own) are in the repository: registered from a checkout that is then removed, it
    runs on an agent of another machine, every child from the fetched commit."""
    repo = Repo(tmp_path, "subflows")
    top = json.loads(spec(repo.file_url()))
    top.update(tasks={"per": {"flow": "child", "map": {"x": [1, 2]}}},
               outputs={"per": "${{ tasks.per }}"})
    child = {"version": 1, "name": "child", "parameters": {"x": {"type": "integer"}},
             "tasks": {"hi": {"run": "tasks:double", "with": {"x": "${{ params.x }}"}},
                       "deeper": {"flow": "../grand.yaml", "with": {"x": "${{ tasks.hi }}"}}},
             "outputs": {"y": "${{ tasks.deeper.z }}"}}
    grand = {"version": 1, "name": "grand", "parameters": {"x": {"type": "integer"}},
             "tasks": {"g": {"run": "gtasks:plus", "with": {"x": "${{ params.x }}"}}},
             "outputs": {"z": "${{ tasks.g }}"}}
    repo.commit({"flow.yaml": json.dumps(top), "child/flow.yaml": json.dumps(child),
                 "child/tasks.py": "def double(x):\n    return 2 * x\n", "grand.yaml": json.dumps(grand),
                 "gtasks.py": "def plus(x):\n    return x + 100\n"}, "v1")
    repo.push()
    admin, worker = Machine(tmp_path, "admin"), Machine(tmp_path, "worker")
    assert admin.register(repo.work / "flow.yaml")["version"] == 1
    shutil.rmtree(repo.work)
    agent = worker.agent()
    try:
        done = worker.watch()
        assert done.returncode == 0, done.stdout + done.stderr + worker.log.read_text()
    finally:
        stop(agent)
    runs = json.loads(worker.ok("runs", "list", "--format", "json").stdout)
    top_run = next(r for r in runs if r["flow"] == "gitflow")
    shown = json.loads(worker.ok("runs", "show", top_run["id"], "--format", "json").stdout)
    assert shown["outputs"] == {"per": [{"y": 102}, {"y": 104}]}


def test_a_server_that_refuses_fetches_by_id_gets_a_full_fetch(tmp_path, git_server):
    """Protocol v0 and no uploadpack.allowAnySHA1InWant: a commit below the branch's tip is not
    sent by id, so the whole branch is fetched and the commit taken from it."""
    repo = flow_repo(tmp_path, lambda r: git_server.url(r.name), by_id=False, auth="${{ env.MY_GIT_TOKEN }}")
    v1 = repo.head()
    repo.commit({"README": "more"}, "v2")
    repo.push()
    machine = Machine(tmp_path, "home", MY_GIT_TOKEN=git_server.token, GIT_CONFIG_COUNT="1",
                      GIT_CONFIG_KEY_0="protocol.version", GIT_CONFIG_VALUE_0="0")
    file = tmp_path / "flow.yaml"
    file.write_text(spec(git_server.url("flows"), ref=v1, auth="${{ env.MY_GIT_TOKEN }}"))
    assert json.loads(machine.ok("build", file, "--format", "json").stdout)["commit"] == v1
    assert git(*"log -1 --format=%H".split(), cwd=machine.cache / v1) == v1


# -- errors ----------------------------------------------------------------------------------------------
def test_a_refused_or_missing_token_is_a_clear_error_that_never_shows_the_token(tmp_path, git_server):
    repo = flow_repo(tmp_path, lambda r: git_server.url(r.name), auth="${{ secrets.GIT_TOKEN }}")
    file = repo.work / "flow.yaml"
    wrong = "wrong-Yt5pQ2-token"
    out = Machine(tmp_path, "wrong", secret=wrong).fails("register", file)
    assert f"{git_server.url('flows')}: the server refused the credential from ${{{{ secrets.GIT_TOKEN }}}}" in out
    assert "hint: check that ${{ secrets.GIT_TOKEN }} holds a valid token" in out
    assert wrong not in out and git_server.token not in out
    out = Machine(tmp_path, "unset").fails("register", file)
    assert "the secret 'GIT_TOKEN' is not set: it was looked for in the environment variable" \
           " FLOWSPEC_SECRET_GIT_TOKEN" in out
    file.write_text(spec(git_server.url("flows")))  # no auth at all
    out = Machine(tmp_path, "none").fails("register", file)
    assert "the server wants a credential" in out and "set storage.auth to ${{ secrets.NAME }}" in out
    assert not (tmp_path / "fs.db").exists() or "gitflow" not in backend_dump(tmp_path)


@pytest.mark.slow
def test_an_agent_with_a_wrong_token_fails_the_run_saying_so(tmp_path, git_server):
    repo = flow_repo(tmp_path, lambda r: git_server.url(r.name), auth="${{ secrets.GIT_TOKEN }}")
    Machine(tmp_path, "admin", secret=git_server.token).register(repo.work / "flow.yaml")
    wrong = "wrong-Yt5pQ2-token"
    worker = Machine(tmp_path, "worker", secret=wrong)
    agent = worker.agent()
    try:
        done = worker.watch()
    finally:
        stop(agent)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "the server refused the credential from ${{ secrets.GIT_TOKEN }}" in out, out
    everything = out + worker.log.read_text() + backend_dump(tmp_path)
    assert wrong not in everything and git_server.token not in everything


def test_an_unknown_ref_a_missing_path_and_an_unreachable_server(tmp_path, git_server):
    repo = flow_repo(tmp_path, lambda r: git_server.url(r.name), auth="${{ secrets.GIT_TOKEN }}")
    repo.tag("v1.0")
    machine = Machine(tmp_path, "home", secret=git_server.token)
    file = tmp_path / "flow.yaml"
    file.write_text(spec(git_server.url("flows"), ref="no-such-branch", auth="${{ secrets.GIT_TOKEN }}"))
    out = machine.fails("register", file)
    assert f"{git_server.url('flows')}: the ref 'no-such-branch' does not exist in the repository" in out
    assert "the repository has: main, v1.0" in out
    file.write_text(spec(git_server.url("flows"), ref=repo.head()[:10], auth="${{ secrets.GIT_TOKEN }}"))
    assert f"an abbreviated commit id cannot be fetched: write the full id (git rev-parse {repo.head()[:10]})" \
        in machine.fails("register", file)
    file.write_text(spec(git_server.url("flows"), path="flows/missing.yaml", auth="${{ secrets.GIT_TOKEN }}"))
    out = machine.fails("register", file)
    assert f"commit {repo.head()[:12]} has no file flows/missing.yaml" in out and "set storage.path" in out
    file.write_text(spec(git_server.url("nothing-here"), auth="${{ secrets.GIT_TOKEN }}"))
    assert "no git repository at this URL" in machine.fails("register", file)
    port = git_server.port
    git_server.close()
    file.write_text(spec(f"http://127.0.0.1:{port}/flows.git"))
    out = machine.fails("build", file)
    assert f"http://127.0.0.1:{port}/flows.git: cannot reach the git server" in out
    assert "check the URL, and that the server is up" in out


@pytest.mark.slow
def test_a_commit_that_no_longer_exists_fails_the_run_naming_it(tmp_path):
    repo = flow_repo(tmp_path, Repo.file_url)
    gone = repo.head()
    machine = Machine(tmp_path, "admin")
    machine.register(repo.work / "flow.yaml")
    repo.commit({"tasks.py": TASKS.format(version="v2")}, "rewritten", amend=True)
    repo.push(force=True)
    repo.collect_garbage()
    worker = Machine(tmp_path, "worker")
    agent = worker.agent()
    try:
        done = worker.watch()
    finally:
        stop(agent)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"{repo.file_url()}: the commit {gone} does not exist on the server" in out
    assert "register the flow again" in out


def test_spec_mistakes_are_named_at_their_line_and_column(tmp_path):
    machine = Machine(tmp_path, "home")
    file = tmp_path / "flow.yaml"
    base = "version: 1\nname: x\ntasks: {a: {run: 'tasks:hello'}}\nstorage:\n  type: git\n"
    cases = {
        "  url: https://h/r.git\n  auth: ghp_literalTokenValue\n":
            ("flow.yaml:7:9: error: storage.auth", "write the credential as a reference"),
        "  url: git@github.com:owner/repo.git\n":
            ("flow.yaml:6:8: error: storage.url", "expected an https://, http://, ssh://"),
        "  url: https://me:${{ env.PW }}@h/r.git\n":
            ("storage.url: the URL carries a password", "storage.auth: ${{ secrets.NAME }}"),
        "  url: file:///srv/r.git\n  auth: ${{ secrets.T }}\n":
            ("storage.auth: auth applies to https, http and ssh URLs", "drop auth"),
        "  url: https://h/r.git\n  path: ../elsewhere.yaml\n":
            ("storage.path: '../elsewhere.yaml' is not a path inside the repository", "relative to the repository"),
    }
    for text, (where, hint) in cases.items():
        file.write_text(base + text)
        out = machine.fails("register", file, ) if "PW" not in text else Machine(tmp_path, "h", PW="pw").fails(
            "register", file)
        assert where in out and hint in out, (text, out)
    file.write_text(base + "  url: https://h/r.git\n  auth: ${{ secrets.GIT_TOKEN }}\n")
    assert machine.ok("validate", file).returncode == 0
    assert "  auth: ${{ secrets.GIT_TOKEN }}\n" in machine.ok("plan", file).stdout  # the reference, as written


def test_without_git_installed_the_error_names_the_package(tmp_path):
    file = tmp_path / "flow.yaml"
    file.write_text(spec("file:///srv/r.git"))
    empty = tmp_path / "bin"
    empty.mkdir()
    out = Machine(tmp_path, "home", PATH=str(empty)).fails("register", file)
    assert "git storage needs the git program, which is not installed" in out
    assert "apt-get install git" in out


def test_an_ssh_key_reaches_ssh_only_as_a_private_file(tmp_path):
    """No SSH server here: the connection is refused, and the key is in no output and left
    nowhere on disk."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-Hq3Lm9\n-----END OPENSSH PRIVATE KEY-----"
    file = tmp_path / "flow.yaml"
    file.write_text(spec(f"ssh://git@127.0.0.1:{port}/flows.git", auth="${{ env.DEPLOY_KEY }}"))
    machine = Machine(tmp_path, "home", DEPLOY_KEY=key, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    started = time.monotonic()
    out = machine.fails("register", file)
    assert time.monotonic() - started < 60
    assert f"ssh://git@127.0.0.1:{port}/flows.git: cannot reach the git server" in out, out
    assert "not-a-real-key" not in out
    assert list((tmp_path / "tmp").iterdir()) == []  # the key file and its folder are gone


@pytest.mark.slow
def test_over_ssh_with_a_deploy_key_from_a_secret(tmp_path, ssh_server):
    """A real sshd on loopback: the key from ${{ secrets.DEPLOY_KEY }} lets register and the
    agent in; another key is refused, saying so; the key is in no output and no file is left."""
    repo = flow_repo(tmp_path, ssh_server.url, auth="${{ secrets.DEPLOY_KEY }}")
    common = {"GIT_SSH_COMMAND": ssh_server.client_command(), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    admin = Machine(tmp_path, "admin", FLOWSPEC_SECRET_DEPLOY_KEY=ssh_server.key(), **common)
    assert admin.register(repo.work / "flow.yaml")["storage"]["commit"] == repo.head()
    worker = Machine(tmp_path, "worker", FLOWSPEC_SECRET_DEPLOY_KEY=ssh_server.key(), **common)
    agent = worker.agent()
    try:
        done = worker.watch()
    finally:
        stop(agent)
    assert done.returncode == 0 and "hello from version v1" in done.stdout + done.stderr, done.stderr
    other = Machine(tmp_path, "other", FLOWSPEC_SECRET_DEPLOY_KEY=ssh_server.key("other_key"), **common)
    out = other.fails("build", repo.work / "flow.yaml")
    assert f"{ssh_server.url(repo)}: the server refused the credential from ${{{{ secrets.DEPLOY_KEY }}}}" in out
    body = ssh_server.key().splitlines()[1]
    everything = out + worker.log.read_text() + backend_dump(tmp_path)
    assert body not in everything and ssh_server.key("other_key").splitlines()[1] not in everything
    assert list((tmp_path / "tmp").iterdir()) == []  # each key file and its folder removed


def test_git_protocol_urls_and_agents_racing_for_one_commit(tmp_path):
    """`git daemon` serves git://; four builds on one empty cache at once all succeed, and the
    cache ends with one checkout of the commit and no half-made folder."""
    import socket

    repo = flow_repo(tmp_path, lambda r: "git://127.0.0.1/unused.git")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--listen=127.0.0.1", f"--port={port}", "--export-all",
                               "--reuseaddr", f"--base-path={tmp_path / 'repos'}", str(tmp_path / "repos")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        file = tmp_path / "flow.yaml"
        file.write_text(spec(f"git://127.0.0.1:{port}/flows.git", ref="main"))
        machine = Machine(tmp_path, "home")
        command = [sys.executable, "-m", "flowspec", "build", str(file), "--format", "json"]
        builds = [subprocess.Popen(command, env=machine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(4)]
        answers = [(b.wait(90), *b.communicate()) for b in builds]
        assert all(rc == 0 for rc, _, _ in answers), answers
        assert {json.loads(out)["commit"] for _, out, _ in answers} == {repo.head()}
        assert sorted(p.name for p in machine.cache.iterdir()) == [repo.head()]
        assert machine.register(file)["storage"]["commit"] == repo.head()
        unchanged = machine.ok("register", file, "--no-build").stdout
        assert unchanged.startswith("Flow 'gitflow' in project 'default' is unchanged")
    finally:
        daemon.terminate()
        daemon.wait(10)
