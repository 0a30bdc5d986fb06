"""The `git` storage: the flow's spec and code in a git repository, pinned to one commit at register.

Nothing is built. `register` (and `build`) resolve `ref` to a commit, fetch that commit once to
check that the spec is there and valid, and record the commit in the location; whoever runs the
flow fetches exactly that commit (shallow, by id) into a cache per commit under the flowspec
home and loads the spec and its code from the checkout. A branch moved or force-pushed after
register changes nothing for that version: registering again pins the new commit as a new version.

The git program does the work (no Python git library: every machine that has a repository has
git, and a library would be one more dependency). A credential (`auth`) is only ever a reference,
`${{ secrets.NAME }}` or `${{ env.NAME }}`, resolved where git runs: it reaches git as an HTTP
header in GIT_CONFIG_* environment variables, or as an SSH key in a private temporary file, so it
is never in a command line, a URL, the backend or an error.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flowspec import references as refs
from flowspec.errors import FlowspecError, SpecError
from flowspec.storage.base import Storage

DEFAULT_PATH = "flow.yaml"
SCHEMES = ("https", "http", "ssh", "file", "git")
# `auth` has its own small grammar here: a whole-string reference to a secret or a variable.
AUTH = re.compile(r"^\$\{\{\s*(secrets|env)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
FULL_COMMIT = re.compile(r"^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")
TOKEN_USER = "x-access-token"  # the user name hosted servers accept beside a token (GitHub, Gitea; GitLab ignores it)
# Variables a git hook (pre-commit running `flowspec register`) sets for its own repository.
_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
              "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_PREFIX", "GIT_NAMESPACE", "GIT_SHALLOW_FILE",
              "GIT_QUARANTINE_PATH", "GIT_INTERNAL_SUPER_PREFIX")
STALE_TEMP_S = 3600.0  # a half-made checkout this old was left by a killed process
REREGISTER = "register the flow again (flowspec register FILE) to pin the ref's current commit"


class GitStorage(Storage):
    """Flows as a commit of a git repository. YAML keys: `url` (https, http, ssh, file or git),
    `ref` (a branch, a tag or a full commit id; default the remote's default branch), `path` (the
    spec inside the repository; default: the registered file's own path in its repository when
    it lies in a git work tree, else `flow.yaml`), `auth` (`${{ secrets.NAME }}` or
    `${{ env.NAME }}`: a token for http(s), a private key for ssh)."""

    def build(self, spec) -> dict[str, Any]:
        return pin(spec)

    def locate(self, spec) -> dict[str, Any]:
        return pin(spec)  # nothing is built: `--no-build` pins the commit all the same

    def load(self, location: dict[str, Any]) -> tuple[Any, dict]:
        from flowspec.environments.base import import_callables

        remote = Remote(location["url"], location.get("auth"))
        checkout = ensure_checkout(remote, location["commit"])
        spec = load_spec(remote, checkout, location["commit"], location["spec"])
        return spec, import_callables(spec)


# -- register: options, ref → commit, the location ------------------------------------------------------
def pin(spec) -> dict[str, Any]:
    """Resolve the ref, fetch its commit, check the spec there; the location that pins it."""
    opts = options(spec)
    remote = Remote(opts["url"], opts["auth"])
    commit, ref = remote.resolve(opts["ref"])
    checkout = ensure_checkout(remote, commit)
    committed = load_spec(remote, checkout, commit, opts["path"])
    if committed.name != spec.name:
        raise FlowspecError(f"{remote.shown}: the spec {opts['path']} in commit {commit[:12]} names the flow"
                            f" '{committed.name}', but {spec.path} names it '{spec.name}'",
                            hint="set storage.path to this flow's spec in the repository, or commit and push"
                                 " the spec, then register again")
    if committed.source != spec.source:
        print(f"flowspec: warning: {spec.path} differs from {opts['path']} in commit {commit[:12]}: the flow"
              " runs the committed spec and code (commit and push your changes, then register again)",
              file=sys.stderr)
    # What a run of this version gets: that commit, the credential's reference, and the labels and
    # environment of the file registered (which the backend keeps from it).
    key = json.dumps([opts["url"], commit, opts["path"], opts["auth"], spec.source])
    return {"type": "git", "path": f"{remote.shown} {opts['path']}, commit {commit[:12]} ({ref})",
            "url": opts["url"], "ref": ref, "commit": commit, "spec": opts["path"], "auth": opts["auth"],
            "fingerprint": hashlib.sha256(key.encode()).hexdigest()}


def options(spec) -> dict[str, Any]:
    """url, ref and path with `${{ env.NAME }}` resolved, `auth` kept as its reference; positioned
    errors for what cannot work."""
    raw = dict(spec.storage.options)
    lookup = refs.env_lookup(os.environ)
    diags, out = [], {}
    for name in ("url", "ref", "path"):
        try:
            value = refs.resolve(refs.compile_value(raw.get(name)), lookup)
        except refs.UnsetEnvError as exc:
            diags.append(spec.document.diag(("storage", name), str(exc), "export it before registering"))
            continue
        out[name] = value if value not in ("", None) else None
    out["auth"] = raw.get("auth") or None
    diags += _url_problems(spec, out.get("url"), out["auth"])
    if out.get("path") is not None:
        clean = os.path.normpath(out["path"])
        if os.path.isabs(out["path"]) or clean == ".." or clean.startswith("../"):
            diags.append(spec.document.diag(("storage", "path"), f"'{out['path']}' is not a path inside the repository",
                                            "write it relative to the repository's root, e.g. flows/etl.yaml"))
        out["path"] = clean
    if diags:
        raise SpecError(diags)
    out["path"] = out["path"] or default_path(spec)
    return out


def _url_problems(spec, url: str | None, auth: str | None) -> list:
    diag = spec.document.diag
    if "url" in spec.storage.options and url is None:
        return [diag(("storage", "url"), "url is empty", "give the repository's URL, e.g. https://host/owner/repo.git")]
    if url is None:
        return []
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or "://" not in url:
        return [diag(("storage", "url"), f"'{mask_url(url)}' is not a git URL flowspec can fetch",
                     "write https://, http://, ssh:// (ssh://git@host/owner/repo.git), git:// or file:// URLs")]
    if parts.password is not None:
        return [diag(("storage", "url"), "the URL carries a password", "credentials never go in a URL: write the"
                     " token as storage.auth: ${{ secrets.NAME }}")]
    if auth and parts.scheme not in ("https", "http", "ssh"):
        return [diag(("storage", "auth"), f"auth applies to https, http and ssh URLs, not {parts.scheme}://",
                     "drop auth, or use an https:// or ssh:// URL")]
    return []


def default_path(spec) -> str:
    """The registered file's path in its repository when it lies in a git work tree, else flow.yaml."""
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=spec.base_dir, env=_clean_env(),
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise _no_git() from None
    if done.returncode != 0 or not done.stdout.strip():
        return DEFAULT_PATH
    top = os.path.realpath(done.stdout.strip())
    return os.path.relpath(os.path.realpath(spec.path), top).replace(os.sep, "/")


# -- the checkout: fetched once per commit, atomically ---------------------------------------------------
def cache_root() -> Path:
    from flowspec.backend import flowspec_home

    return flowspec_home() / "git"


def ensure_checkout(remote: Remote, commit: str) -> Path:
    """The folder holding `commit`'s files: from the cache, or fetched into a temporary folder
    and renamed into place (a reader never sees half a checkout; two fetchers race harmlessly)."""
    root = cache_root()
    final = root / commit.lower()
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{commit[:12]}-"))
    try:
        _git(["init", "-q", str(tmp)], "creating a checkout")
        remote.fetch(tmp, commit)
        _git(["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit], "checking out", cwd=tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a rival that got there first: a real problem
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _sweep(root: Path) -> None:
    """Remove half-made checkouts that killed processes left behind."""
    now = time.time()
    for entry in root.glob(".*-*"):
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(entry, ignore_errors=True)


def load_spec(remote: Remote, checkout: Path, commit: str, relpath: str):
    """The compiled spec at `relpath` in the checkout; a FlowspecError naming what is wrong."""
    from flowspec.compile import compile_file

    file = (checkout / relpath).resolve()
    if not file.is_relative_to(checkout.resolve()) or not file.is_file():
        raise FlowspecError(f"{remote.shown}: commit {commit[:12]} has no file {relpath}",
                            hint="set storage.path to the spec's path in the repository (or commit and push"
                                 " the spec there), then register again")
    spec, diags = compile_file(str(file))
    if diags:
        listed = "\n".join(d.text() for d in diags)
        raise FlowspecError(f"{remote.shown}: the spec {relpath} in commit {commit[:12]} is not valid:\n{listed}",
                            hint="fix it in the repository, push, and register again")
    return spec


# -- the remote: git commands with the credential kept out of sight --------------------------------------
class Remote:
    """A repository URL and its credential reference (`${{ secrets.NAME }}` / `${{ env.NAME }}`)."""

    def __init__(self, url: str, auth: str | None) -> None:
        self.url, self.auth = url, auth
        self.scheme = urlsplit(url).scheme
        self.shown = mask_url(url)
        self.secret: str | None = None  # the resolved credential, to mask in anything git prints

    def resolve(self, ref: str | None) -> tuple[str, str]:
        """(commit, the ref's name) for `ref`, or for the remote's default branch."""
        if ref is not None and FULL_COMMIT.match(ref):
            return ref.lower(), ref.lower()[:12]
        if ref is None:
            lines = self.ls_remote("--symref", pattern="HEAD")
            head = [line.split()[0] for line in lines if line.endswith("\tHEAD") and not line.startswith("ref:")]
            branch = [line[5:].split("\t")[0].strip() for line in lines if line.startswith("ref:")]
            if not head:
                raise FlowspecError(f"{self.shown}: the repository has no default branch (is it empty?)",
                                    hint="push a branch to it, or set storage.ref")
            return head[0], branch[0].removeprefix("refs/heads/") if branch else "HEAD"
        found = dict(reversed(line.split("\t", 1)) for line in self.ls_remote() if "\t" in line)
        names = [n for n in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}") if n in found]
        if len(names) > 1:
            raise FlowspecError(f"{self.shown}: the ref '{ref}' is both {' and '.join(names)}",
                                hint=f"write storage.ref as one of them, e.g. refs/tags/{ref}")
        if not names:
            hint = (f"an abbreviated commit id cannot be fetched: write the full id (git rev-parse {ref})"
                    if re.fullmatch(r"[0-9a-fA-F]{4,39}", ref) else _known_refs(found))
            raise FlowspecError(f"{self.shown}: the ref '{ref}' does not exist in the repository", hint=hint)
        return found.get(names[0] + "^{}", found[names[0]]), ref  # an annotated tag: its commit

    def ls_remote(self, *flags: str, pattern: str | None = None) -> list[str]:
        done = self.git(["ls-remote", *flags, self.url, *([pattern] if pattern else [])],
                        "listing the repository's refs")
        return done.stdout.splitlines()

    def fetch(self, folder: Path, commit: str) -> None:
        """Fetch `commit` into the repository at `folder`: by id and shallow when the server allows
        it (hosted servers do), else everything the server advertises."""
        try:
            self.git(["fetch", "-q", "--no-tags", "--depth", "1", self.url, commit], "fetching the commit",
                     cwd=folder)
            return
        except _Refused:
            pass
        self.git(["fetch", "-q", "--no-tags", self.url, "+refs/heads/*:refs/remotes/origin/*",
                  "+refs/tags/*:refs/tags/*"], "fetching the repository", cwd=folder)
        if _git(["cat-file", "-e", f"{commit}^{{commit}}"], "", cwd=folder, check=False).returncode != 0:
            raise _missing_commit(self.shown, commit)

    def git(self, args: list[str], doing: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a git command that talks to the remote, with the credential in the environment."""
        with self.credentials() as env:
            done = _git(args, doing, cwd=cwd, env=env, check=False)
        if done.returncode != 0:
            raise self.explain(done.stderr, doing, args)
        return done

    @contextlib.contextmanager
    def credentials(self) -> Iterator[dict]:
        env = _clean_env()
        if not self.auth:
            yield env
            return
        self.secret = resolve_auth(self.auth)
        if self.scheme == "ssh":
            with _key_file(self.secret) as key:
                # A GIT_SSH_COMMAND of the machine's own is kept: its options come first, and win.
                env["GIT_SSH_COMMAND"] = (f"{env.get('GIT_SSH_COMMAND') or 'ssh'} -i {shlex.quote(key)}"
                                          " -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new")
                yield env
            return
        _require_config_env()
        user, _, token = self.secret.rpartition(":")
        basic = base64.b64encode(f"{user or TOKEN_USER}:{token}".encode()).decode()
        # Scoped to this URL, so that a redirect to another host does not carry it along.
        n = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
        env.update({"GIT_CONFIG_COUNT": str(n + 1), f"GIT_CONFIG_KEY_{n}": f"http.{self.url}.extraHeader",
                    f"GIT_CONFIG_VALUE_{n}": f"Authorization: Basic {basic}"})
        yield env

    def explain(self, stderr: str, doing: str, args: list[str]) -> FlowspecError:
        """A git failure as what happened and what to do, the credential masked."""
        text = self.mask(stderr)
        low = text.lower()
        if args[0] == "fetch" and "--depth" in args and any(s in low for s in _BY_ID_REFUSED):
            return _Refused(text)
        if any(s in low for s in _UNREACHABLE):
            return FlowspecError(f"{self.shown}: cannot reach the git server ({doing}): {_last(text)}",
                                 hint="check the URL, and that the server is up and reachable from this machine")
        if any(s in low for s in _REFUSED):
            what = f"refused the credential from {self.auth}" if self.auth else "wants a credential"
            hint = (f"check that {self.auth} holds a valid token (or key) with read access to the repository"
                    if self.auth else "set storage.auth to ${{ secrets.NAME }} holding a token (https) or a"
                                      " private key (ssh) with read access")
            return FlowspecError(f"{self.shown}: the server {what} (HTTP 401/403 or SSH"
                                 f" denied) while {doing}", hint=hint)
        if any(s in low for s in _NOT_FOUND):
            return FlowspecError(f"{self.shown}: no git repository at this URL ({doing}): {_last(text)}",
                                 hint="check storage.url (a private repository may also answer 'not found' to"
                                      " a missing credential: check storage.auth)")
        return FlowspecError(f"{self.shown}: git failed while {doing}: {_last(text)}",
                             hint="check storage.url and storage.ref, and that this machine can run"
                                  f" `git ls-remote {self.shown}`")

    def mask(self, text: str) -> str:
        for value in filter(None, (self.secret, *(self.secret or "").split(":"))):
            if len(value) >= 4:
                text = text.replace(value, "***")
        return mask_all_urls(text)


class _Refused(FlowspecError):
    """The server would not send a commit by id: fall back to a full fetch."""


_BY_ID_REFUSED = ("allow request for unadvertised object", "not our ref", "unadvertised",
                  "does not support shallow", "couldn't find remote ref", "no such remote ref")
_UNREACHABLE = ("could not resolve host", "failed to connect", "connection refused", "connection timed out",
                "couldn't connect", "unable to connect", "network is unreachable", "no route to host",
                "could not resolve hostname", "connection reset", "unable to look up")
_REFUSED = ("error: 401", "error: 403", "authentication failed", "could not read username",
            "could not read password", "permission denied (publickey", "permission denied, please try again",
            "invalid credentials", "terminal prompts disabled")
_NOT_FOUND = ("error: 404", "not found", "does not appear to be a git repository", "no such file or directory",
              "could not read from remote repository", "not a git repository")


def _missing_commit(shown: str, commit: str) -> FlowspecError:
    return FlowspecError(f"{shown}: the commit {commit} does not exist on the server (deleted, or force-pushed"
                         " away and collected?)",
                         hint=f"{REREGISTER}, or push a ref (a tag) that keeps the commit")


def _known_refs(found: dict[str, str]) -> str:
    names = [n.split("/", 2)[2] for n in found if n.startswith(("refs/heads/", "refs/tags/")) and "^{}" not in n]
    if not names:
        return "the repository has no branch or tag yet: push one"
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"set storage.ref to a branch, a tag or a full commit id; the repository has: {shown}"


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("fatal: ") if lines else "no message"


# -- credentials -----------------------------------------------------------------------------------------
def resolve_auth(reference: str) -> str:
    """The credential an `auth` reference names: a secret (flowspec.secrets) or a variable."""
    match = AUTH.match(reference)
    if match is None:  # the schema refuses anything else; a stored location is checked all the same
        raise FlowspecError(f"storage.auth '{reference}' is not ${{{{ secrets.NAME }}}} or ${{{{ env.NAME }}}}",
                            hint="register the flow with storage.auth written as a reference")
    kind, name = match.groups()
    if kind == "secrets":
        from flowspec import secrets

        return secrets.resolve(name)
    value = os.environ.get(name)
    if value is None:
        raise FlowspecError(f"storage.auth: the environment variable {name} is not set (referenced as"
                            f" {reference})", hint=f"export {name} where the flow is registered and where it runs")
    return value


@contextlib.contextmanager
def _key_file(key: str) -> Iterator[str]:
    """An SSH private key in a file only this user can read, removed afterwards."""
    folder = tempfile.mkdtemp(prefix="flowspec-ssh-")  # mode 0700
    path = os.path.join(folder, "key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key if key.endswith("\n") else key + "\n")  # ssh refuses a key without its last newline
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _require_config_env() -> None:
    """GIT_CONFIG_COUNT (how the header reaches git unseen) exists since git 2.31."""
    out = _git(["--version"], "").stdout
    found = re.search(r"(\d+)\.(\d+)", out)
    if found and tuple(map(int, found.groups())) < (2, 31):
        raise FlowspecError(f"storage.auth over http(s) needs git 2.31 or newer; this machine has {out.strip()}",
                            hint="upgrade git (Debian/Ubuntu: apt-get install git from a recent release)")


# -- helpers ---------------------------------------------------------------------------------------------
def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"  # a missing credential is an error, never a prompt an agent would hang on
    # A server that stops sending mid-fetch fails the fetch after a minute instead of hanging the run.
    env.setdefault("GIT_HTTP_LOW_SPEED_LIMIT", "1")
    env.setdefault("GIT_HTTP_LOW_SPEED_TIME", "60")
    return env


def _git(args: list[str], doing: str, cwd: Path | None = None, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env or _clean_env(), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise _no_git() from None
    if check and done.returncode != 0:
        raise FlowspecError(f"git failed while {doing}: {_last(mask_all_urls(done.stderr))}",
                            hint="check that the flowspec home is writable and has room")
    return done


def _no_git() -> FlowspecError:
    return FlowspecError("git storage needs the git program, which is not installed on this machine",
                         hint="install git (Debian/Ubuntu: apt-get install git; the package is named git)")


def mask_url(url: str) -> str:
    """The URL with any password (or token in the user part of an https URL) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None and not (parts.username and parts.scheme in ("http", "https")):
        return url
    user = "***" if parts.password is None else f"{parts.username}:***"
    host = parts.hostname or ""
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_all_urls(text: str) -> str:
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", lambda m: mask_url(m.group(0)), text)
