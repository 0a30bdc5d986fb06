"""The `docker` storage: the compiled flow in an image, with flowspec and the flow's code.

The image is built from a generated Dockerfile (or the user's, with flowspec's steps after it),
checked in the build by loading the flow with the image's own Python, tagged with a digest of
everything that went into it, and pushed when `registry_url` is set. The engine is the one at
`DOCKER_HOST` (default: the local socket). Also home of the engine helpers the docker
environment shares: `engine()` and `engine_error()`.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from flowspec.errors import FlowspecError, SpecError, require
from flowspec.storage.base import Storage, code_modules, deserialize, serialize

VENV = "/opt/venv"
PYTHON = f"{VENV}/bin/python"
FLOW_DIR = "/flowspec/flow"  # flowspec.inside.FLOW_DIR
WHEELS_IN_IMAGE = "/tmp/flowspec-wheels"
CTX = ".flowspec"  # flowspec's part of the build context (beside a user dockerfile's own files)
WHEELHOUSE_VAR = "FLOWSPEC_WHEELHOUSE"
LABEL = "org.flowspec"
TAG_CHARS = 24
CHECK_PREFIX = "flowspec: build check: "
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- the engine ------------------------------------------------------------------------------------
def engine():
    """A client of the engine at DOCKER_HOST (or the default socket), checked to answer."""
    docker = require("docker", "docker", "the Docker engine (docker storage and environment)")
    try:
        client = docker.from_env(timeout=120)  # asks the engine its API version: it answers, or this fails
    except Exception as exc:  # the SDK wraps socket errors in several types: read its words
        raise engine_error(exc) from None
    return client


class BuildEngine:
    """The engine as a build meets it: `api` answers the two calls every build makes (see
    docker_api: directly when it can, else through the SDK); `sdk`, made when first asked for,
    pulls and pushes with the registry credentials it knows."""

    def __init__(self, may_pull: bool) -> None:
        from flowspec.storage.docker_api import SdkEngine, http_engine

        self._sdk = None
        direct = None if may_pull else http_engine()  # a user's FROM lines may need credentials
        self.api = direct or SdkEngine(self.sdk)

    @property
    def sdk(self):
        if self._sdk is None:
            self._sdk = engine()
        return self._sdk

    def close(self) -> None:
        if self._sdk is not None:
            self._sdk.close()


def engine_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def engine_error(exc: BaseException, doing: str = "") -> FlowspecError:
    """An engine failure in words, with the next step."""
    text = getattr(exc, "explanation", None) or str(exc)  # the engine's words, without the SDK's URL
    host = engine_host()
    what = f" while {doing}" if doing else ""
    if "Permission denied" in text or isinstance(exc, PermissionError):
        return FlowspecError(f"permission denied on the Docker socket at {host}{what}",
                             hint="add your user to the 'docker' group (sudo usermod -aG docker $USER, then log in"
                                  " again), or set DOCKER_HOST to an engine you may use")
    if any(s in text for s in ("No such file", "FileNotFoundError", "Connection refused", "Connection aborted",
                               "connection refused", "Failed to establish")):
        return FlowspecError(f"no Docker engine answers at {host} (DOCKER_HOST){what}",
                             hint="start the engine (e.g. sudo systemctl start docker), or set DOCKER_HOST to its"
                                  " socket, e.g. unix:///var/run/docker.sock")
    if "no space left on device" in text.lower():
        return disk_full(text)
    if "paramiko" in text:  # the SDK reaches ssh:// engines through it
        return FlowspecError(f"the Docker engine at {host} needs SSH support: {_first_line(text)}",
                             hint="pip install paramiko, or set DOCKER_HOST to a local socket or tcp:// address")
    if "client_cert" in text or "ca_cert" in text:  # the SDK's words for a TLS setup it cannot use
        return FlowspecError(f"the TLS settings for the Docker engine at {host} are incomplete: {_first_line(text)}",
                             hint="set DOCKER_CERT_PATH to the folder with ca.pem, cert.pem and key.pem, or unset"
                                  " DOCKER_TLS_VERIFY for an engine without TLS")
    return FlowspecError(f"the Docker engine at {host} failed{what}: {_first_line(text)}",
                         hint="see the engine's log (journalctl -u docker) for details")


def disk_full(text: str) -> FlowspecError:
    return FlowspecError(f"the Docker engine's disk is full: {_first_line(text)}",
                         hint="free space: docker system prune (unused images and build cache), or give the"
                              " engine's data-root more room")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no message)"


def say(text: str) -> None:
    """Progress of a build: stderr, so that --format json keeps stdout to itself."""
    print(text, file=sys.stderr, flush=True)


# -- the storage -----------------------------------------------------------------------------------
class DockerStorage(Storage):
    """Flows in images. YAML keys (`storage:`):

    `image_name` (default: the flow's name), `image_tag` (default: a digest of everything that
    goes into the image), `registry_url` (push there; the image is named `REGISTRY/NAME:TAG`),
    `base_image` (default `python:X.Y-slim` of this Python) or `dockerfile` (relative to the
    spec; flowspec's steps are added after it), `python_dependencies` (pip requirements),
    `files` (local path relative to the spec → absolute path in the image), `env_vars`,
    `build` (default true; false: `image_name` and `image_tag` name an image built before).

    flowspec goes in at this version: from the package index when it is a released install,
    else as a wheel built from its source checkout. With `$FLOWSPEC_WHEELHOUSE` set to a folder
    of wheels, every install in the image comes from that folder alone (`pip --no-index`), for
    engines whose builds have no network.
    """

    def build(self, spec) -> dict[str, Any]:
        opts = spec.storage.options
        if opts.get("build") is False:
            return self.locate(spec)
        payload, fp = serialize(spec)
        plan = BuildPlan(spec, payload, fp)
        engines = BuildEngine(plan.user_dockerfile is not None)
        try:
            return plan.run(engines)
        finally:
            engines.close()

    def locate(self, spec) -> dict[str, Any]:
        """The image to use without a build (locally or in the registry): with `build: false`,
        the one image_name and image_tag name; for `register --no-build` of a spec that builds,
        that tag or else the digest tag a build of this exact spec and code made."""
        opts = spec.storage.options
        missing = [k for k in ("image_name", "image_tag") if not opts.get(k)]
        if missing and opts.get("build") is False:
            raise SpecError([spec.document.diag(("storage", "build"), f"without a build, storage needs "
                                                f"{' and '.join(missing)} to name the image to use",
                                                "add them, or build the image (build: true)")])
        if opts.get("image_tag"):
            ref = image_ref(opts, opts["image_tag"], _slug(spec.name))
        else:
            ref = BuildPlan(spec, *serialize(spec)).ref  # the digest of this spec and code as they are now
        client = engine()
        try:
            image = find_image(client, ref, bool(opts.get("registry_url")))
        finally:
            client.close()
        labels = image.labels or {}
        if f"{LABEL}.payload-sha256" not in labels:
            raise FlowspecError(f"image {ref} holds no flow built by flowspec (it has no {LABEL}.* labels)",
                                hint="build it with flowspec build FILE (docker storage), then use its tag")
        # The flow that runs is the image's: its spec said `build: true`, so it differs from this one.
        say(f"using image {ref} (its flow: fingerprint {labels.get(f'{LABEL}.fingerprint', '?')[:12]})")
        return location(ref, opts, labels, image.id)

    def load(self, location: dict[str, Any]) -> tuple[Any, dict]:
        """The flow from the image's payload (for an environment that runs it outside the image)."""
        client = engine()
        try:
            image = find_image(client, location["image"], bool(location.get("registry_url")))
            container = client.containers.create(image.id, command=["true"])
            try:
                stream, _ = container.get_archive(location.get("payload", f"{FLOW_DIR}/payload.flow"))
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                    data = tar.extractfile(tar.getmembers()[0]).read()
            finally:
                container.remove(force=True)
        except FlowspecError:
            raise
        except Exception as exc:
            raise engine_error(exc, f"reading the flow from image {location['image']}") from None
        finally:
            client.close()
        if hashlib.sha256(data).hexdigest() != location.get("sha256"):
            raise FlowspecError(f"image {location['image']}: its flow payload does not match the recorded sha256",
                                hint="the image was replaced after registration: register the flow again")
        return deserialize(data, location["image"])


def image_ref(opts, tag: str, name: str | None = None) -> str:
    name = opts.get("image_name") or name
    registry = (opts.get("registry_url") or "").rstrip("/")
    registry = re.sub(r"^[a-z]+://", "", registry)
    return f"{registry}/{name}:{tag}" if registry else f"{name}:{tag}"


def location(ref: str, opts, labels: dict, image_id: str) -> dict[str, Any]:
    return {"type": "docker", "image": ref, "image_id": image_id, "registry_url": opts.get("registry_url"),
            "digest": labels.get(f"{LABEL}.digest"), "fingerprint": labels.get(f"{LABEL}.fingerprint"),
            "sha256": labels.get(f"{LABEL}.payload-sha256"), "payload": f"{FLOW_DIR}/payload.flow",
            "python": PYTHON, "path": ref}


def find_image(client, ref: str, in_registry: bool):
    """The image `ref` here, pulled from its registry when it is only there."""
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    except Exception as exc:
        raise engine_error(exc, f"looking for image {ref}") from None
    if in_registry:
        try:
            repo, tag = ref.rsplit(":", 1)
            client.images.pull(repo, tag=tag)
            return client.images.get(ref)
        except Exception as exc:
            raise FlowspecError(f"image {ref} is neither on the engine at {engine_host()} nor in its registry:"
                                f" {_first_line(getattr(exc, 'explanation', None) or str(exc))}",
                                hint="build and push it first (flowspec build FILE with build: true)") from None
    raise FlowspecError(f"image {ref} is not on the engine at {engine_host()}",
                        hint="build it first (flowspec build FILE with build: true), or set registry_url to"
                             " the registry that holds it")


# -- what runs inside the image needs ----------------------------------------------------------------
# Beyond flowspec's own requirements, by the executor or environment that asks: the module the
# build check imports, the flowspec extra that provides it and that extra's distribution (its
# version bounds come from flowspec's own metadata). Only environments that run the flow in the
# image (PLATFORM_TYPES) ask: others only read the payload out of it. The local-dask executor's
# pools are flowspec's own; kubernetes-job and fargate-task run `flowspec.inside`, which needs
# flowspec's requirements and psycopg (always in).
IMAGE_NEEDS: dict[tuple[str, str], tuple[tuple[str, str, str], ...]] = {
    ("executor", "dask"): (("distributed", "dask", "dask[distributed]"),),
    ("environment", "dask-kubernetes"): (("distributed", "dask", "dask[distributed]"),  # its pod runs dask
                                         ("kubernetes", "k8s", "kubernetes")),  # it creates the worker pods
    ("results", "s3"): (("boto3", "aws", "boto3"),),  # the run in the image reads and writes the store
}


@dataclasses.dataclass(frozen=True)
class Need:
    """A package the image must hold for the flow to run in it, and who asks for it."""

    module: str  # what the build check imports
    requirement: str  # what pip installs
    who: str  # "the dask-kubernetes environment"
    where: tuple  # the spec path of what asks (its `type`)


def image_needs(spec) -> list[Need]:
    """What the flow's environment, executor and result store import in the image, each package once."""
    from flowspec.environments.platform import PLATFORM_TYPES

    env = spec.environment.type
    if env not in PLATFORM_TYPES:
        return []
    out: dict[str, Need] = {}
    results = getattr(spec, "results", None)
    for section, kind in (("environment", env), ("executor", spec.executor.type),
                          ("results", results.type if results is not None else None)):
        for module, extra, fallback in IMAGE_NEEDS.get((section, kind), ()):
            if module not in out:
                who = f"the {kind} result store" if section == "results" else f"the {kind} {section}"
                out[module] = Need(module, _extra_requirement(extra, fallback), who, (section, "type"))
    if (where := _secret_param(spec)) is not None and "cryptography" not in out:
        out["cryptography"] = Need("cryptography", _extra_requirement("secrets", "cryptography"),
                                   "a secret parameter", where)
    return list(out.values())


def _secret_param(spec) -> tuple | None:
    """The spec path of a `secret: true` parameter that a run gets from its caller: its value
    reaches the image encrypted and is decrypted there. (One whose default reads a secret is
    resolved there; `${{ secrets.X }}` needs the store's key only when no variable gives it.)"""
    from flowspec.params import reads_secrets

    for name, param in spec.parameters.items():
        if param.secret and not reads_secrets(param.default):
            return ("parameters", name)
    return None


def _extra_requirement(extra: str, fallback: str) -> str:
    """flowspec's requirement line for `fallback`'s distribution in `extra` (with its bounds)."""
    want = req_name(fallback)
    for req in _installed()[0] or ():
        line, _, marker = req.partition(";")
        if _marker_extra(marker) == extra and req_name(line) == want:
            return line.strip()
    return fallback


def _marker_extra(marker: str) -> str | None:
    found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
    return found.group(1) if found else None


def req_name(requirement: str) -> str:
    """A requirement's distribution name, normalized as pip compares them (PEP 503)."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", found.group(1)).lower() if found else requirement.strip().lower()


# -- flowspec itself, and the wheels that go in ------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _installed() -> tuple[list[str] | None, str | None]:
    """flowspec's requirements and its direct_url.json, from its .dist-info folder, found on
    sys.path as importlib.metadata finds it but without importing that (its email parser and
    zipfile cost 10 ms a build). Another layout (an egg-info) is left to importlib.metadata."""
    for entry in sys.path:
        for info in sorted(glob.glob(os.path.join(glob.escape(entry or "."), "flowspec-*.dist-info"))):
            try:
                text = Path(info, "METADATA").read_text(encoding="utf-8")
            except OSError:
                continue
            requires = [line[len("Requires-Dist:"):].strip() for line in text.splitlines()
                        if line.startswith("Requires-Dist:")]
            direct = Path(info, "direct_url.json")
            return requires, direct.read_text(encoding="utf-8") if direct.is_file() else None
    from importlib import metadata

    try:
        dist = metadata.distribution("flowspec")
    except metadata.PackageNotFoundError:
        return None, None  # run from a source tree on PYTHONPATH: flowspec_source() finds it
    return list(dist.requires or ()), dist.read_text("direct_url.json")


def flowspec_source() -> Path | None:
    """The source checkout of the running flowspec, when it is not a released install: the
    tree this module was imported from (so a checkout on PYTHONPATH goes in, not another one
    installed in editable mode), else the folder a local install was made from."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and _not_site(root):
        return root
    direct = _installed()[1]
    if direct:
        info = json.loads(direct)
        if "dir_info" in info and info.get("url", "").startswith("file://"):
            return Path(info["url"][len("file://"):])
    return None


def _not_site(root: Path) -> bool:
    return "site-packages" not in root.parts and "dist-packages" not in root.parts


def source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"] + sorted(p for p in (root / "flowspec").rglob("*")
                                               if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(f"\n--- {path.relative_to(root)}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def checkout_wheel(root: Path, digest: str) -> Path:
    """A wheel of the checkout (cached by its source digest), built from a copy of it."""
    from flowspec.backend import flowspec_home

    cache = flowspec_home() / "cache" / "wheels" / digest[:24]
    found = sorted(cache.glob("flowspec-*.whl")) if cache.is_dir() else []
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(prefix="flowspec-wheel-") as tmp:
        copy = Path(tmp, "src")
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, copy / name)
        shutil.copytree(root / "flowspec", copy / "flowspec", ignore=shutil.ignore_patterns("__pycache__"))
        out = Path(tmp, "out")
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
               "--wheel-dir", str(out), str(copy)]
        if _has_build_backend():
            cmd.insert(4, "--no-build-isolation")  # no need to fetch setuptools from the index
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(out.glob("flowspec-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FlowspecError(f"cannot build a wheel of flowspec from {root}: {proc.stderr.strip()[-2000:]}",
                                hint="install a released flowspec (pip install flowspec), or fix the checkout")
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / wheels[0].name
        shutil.copy2(wheels[0], target)
        return target


def _has_build_backend() -> bool:
    import importlib.util

    try:
        import setuptools
    except ImportError:
        return False
    newer = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit()) >= (70, 1)
    return newer or importlib.util.find_spec("wheel") is not None  # bdist_wheel lives in one of them


# -- one build ---------------------------------------------------------------------------------------
class BuildPlan:
    """Everything that goes into the image of one flow: context files, Dockerfile, digest."""

    def __init__(self, spec, payload: bytes, fp: str) -> None:
        self.spec, self.opts, self.fp = spec, spec.storage.options, fp
        self.python = "%d.%d" % sys.version_info[:2]
        self.files: dict[str, Path | bytes | tuple] = {}  # context path → a file (bytes once digested), or bytes
        self.executable: set[str] = set()  # context paths of files with an execute bit
        self.notes: list[str] = []
        self.needs = image_needs(spec)
        self.user_dockerfile = self._user_dockerfile()
        self._add_flow(payload)
        self._add_user_files()
        self.install = self._add_wheels()
        self.dockerfile = self._dockerfile()
        self.digest = self._digest()
        self.ref = image_ref(self.opts, self.opts.get("image_tag") or self.digest[:TAG_CHARS], _slug(spec.name))

    # -- what goes in --------------------------------------------------------------------------------
    def _diag(self, path: tuple, message: str, hint: str | None = None):
        return self.spec.document.diag(("storage",) + path, message, hint, key=path[0] == "files")

    def _user_dockerfile(self) -> Path | None:
        given = self.opts.get("dockerfile")
        if not given:
            return None
        path = Path(self.spec.base_dir, os.path.expanduser(given))
        if not path.is_file():
            raise SpecError([self._diag(("dockerfile",), f"dockerfile '{given}' not found (looked for {path})",
                                        "the path is relative to the spec's folder")])
        for sub in sorted(path.parent.rglob("*")):  # its folder is its build context
            rel = sub.relative_to(path.parent)
            if sub.is_file() and not rel.parts[0].startswith((".git", CTX)) and "__pycache__" not in rel.parts:
                self.files[rel.as_posix()] = sub
        return path

    def _add_flow(self, payload: bytes) -> None:
        spec = self.spec
        sha = hashlib.sha256(payload).hexdigest()
        self.payload_sha = sha
        flow = f"{CTX}/flow"
        self.files[f"{flow}/payload.flow"] = payload
        self.files[f"{flow}/{os.path.basename(spec.path)}"] = spec.source.encode()
        for rel, module in sorted(code_modules(spec).items()):
            if not rel.startswith(".."):  # code from outside the spec's folder travels in the payload only
                self.files[f"{flow}/{rel}"] = Path(module.__file__)
        env = spec.environment
        # a subflow task calls no function: its child's code is in the payload, loaded by the check too
        targets = [(f"tasks.{t.name}.run", t.run) for t in spec.tasks.values() if t.subflow is None]
        targets += [(f"environment.{k}", v) for k, v in (("on_start", env.on_start), ("on_exit", env.on_exit)) if v]
        manifest = {"python": self.python, "sha256": sha, "fingerprint": self.fp, "flow": spec.name,
                    "versions": {"flowspec": _version("flowspec"), "cloudpickle": _version("cloudpickle")},
                    "targets": targets, "needs": [[n.module, n.requirement, n.who] for n in self.needs]}
        self.files[f"{flow}/manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()

    def _add_user_files(self) -> None:
        self.copies: list[tuple[str, str]] = []
        diags, seen = [], {}
        for i, (src, dest) in enumerate((self.opts.get("files") or {}).items()):
            path = Path(self.spec.base_dir, os.path.expanduser(src))
            if not path.exists():
                diags.append(self._diag(("files", src), f"file '{src}' not found (looked for {path})",
                                        "paths are relative to the spec's folder"))
                continue
            if not dest.startswith("/"):
                diags.append(self._diag(("files", src), f"'{dest}': the path in the image must be absolute",
                                        f"e.g. /flowspec/data/{os.path.basename(src)}"))
                continue
            target = os.path.normpath(dest)
            if target in seen:
                diags.append(self._diag(("files", src), f"'{src}' and '{seen[target]}' both land on {target} in the image",
                                        "give each file its own path in the image"))
                continue
            seen[target] = src
            name = f"{CTX}/files/{i}/{path.name}"
            if path.is_dir():
                for sub in sorted(path.rglob("*")):
                    if sub.is_file():
                        self.files[f"{name}/{sub.relative_to(path).as_posix()}"] = sub
            else:
                self.files[name] = path
            self.copies.append((name, target))
        if diags:
            raise SpecError(diags)

    def _add_wheels(self) -> tuple[list[str], list[str]]:
        """pip arguments of two steps, (dependencies, flowspec): its dependencies (and the user's)
        change rarely and keep their layer when only flowspec's own wheel changes."""
        version = _version("flowspec")
        needed = [n.requirement for n in self.needs]
        deps = [f"cloudpickle=={_version('cloudpickle')}", *_requirements(), *needed,
                *(self.opts.get("python_dependencies") or ())]
        for who in dict.fromkeys(n.who for n in self.needs):
            self.notes.append(f"{who} needs in the image: "
                              + ", ".join(n.requirement for n in self.needs if n.who == who))
        args = ["--no-cache-dir", "--disable-pip-version-check"]
        house = os.environ.get(WHEELHOUSE_VAR)
        if house:
            folder = Path(house)
            wheels = sorted(folder.glob("*.whl"))
            if not wheels:
                raise FlowspecError(f"${WHEELHOUSE_VAR} names {folder}, which holds no wheels",
                                    hint="fill it with pip download --only-binary=:all: ..., or unset it")
            for wheel in wheels:
                if not wheel.name.startswith("flowspec-"):
                    self.files[f"{CTX}/wheels/{wheel.name}"] = wheel
            args += ["--no-index", "--find-links", WHEELS_IN_IMAGE]
            self.notes.append(f"dependencies: from the wheels in ${WHEELHOUSE_VAR} ({folder}), without a package index")
        root = flowspec_source()
        given = sorted(Path(house).glob(f"flowspec-{version}-*.whl")) if house else []
        if given:  # prepared with the others: the same flowspec whatever the checkout does meanwhile
            self.files[f"{CTX}/flowspec/{given[0].name}"] = given[0]
            me = ["--no-deps", f"{WHEELS_IN_IMAGE}/{given[0].name}"]
            self.notes.append(f"flowspec {version}: the wheel {given[0].name} from ${WHEELHOUSE_VAR}")
        elif root is not None:
            self.source = (root, source_digest(root))
            name = f"flowspec-{version}-py3-none-any.whl"
            self.files[f"{CTX}/flowspec/{name}"] = ("wheel", root)  # built only when the image is
            me = ["--no-deps", f"{WHEELS_IN_IMAGE}/{name}"]
            self.notes.append(f"flowspec {version}: a wheel built from the checkout at {root} (not a released version)")
        else:
            me = ["--no-deps", f"flowspec=={version}"]
            self.notes.append(f"flowspec {version}: from the package index (flowspec=={version})")
        return args + deps, args + me

    def _dockerfile(self) -> str:
        py = self.python
        check_py = (f'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "{py}" else '
                    f'"{CHECK_PREFIX}the image has Python " + v + " but the flow was registered with Python {py}:'
                    f' a flow payload loads only in the Python version that made it; build from an image with'
                    f' Python {py} (base_image: python:{py}-slim), or register with Python " + v)')
        if self.user_dockerfile is not None:
            lines = [self.user_dockerfile.read_text().rstrip(), "", "# flowspec's steps"]
        else:
            lines = [f"FROM {self.opts.get('base_image') or f'python:{py}-slim'}"]
        env_vars = self.opts.get("env_vars") or {}
        if env_vars:
            lines.append("ENV " + " ".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(env_vars.items())))
        lines += [f"RUN {json.dumps(['python3', '-c', check_py])}",
                  f"RUN {json.dumps(['python3', '-m', 'venv', VENV])}"]
        pip = f"{VENV}/bin/pip"
        deps, me = self.install
        if any(k.startswith(f"{CTX}/wheels/") for k in self.files):
            lines.append(f"COPY {CTX}/wheels/ {WHEELS_IN_IMAGE}/")
        lines.append(f"RUN {json.dumps([pip, 'install', *deps])}")
        if any(k.startswith(f"{CTX}/flowspec/") for k in self.files):
            lines.append(f"COPY {CTX}/flowspec/ {WHEELS_IN_IMAGE}/")
        lines.append(f"RUN {json.dumps([pip, 'install', *me])}")
        lines += [f"ENV PATH={VENV}/bin:$PATH PYTHONUNBUFFERED=1", f"WORKDIR {FLOW_DIR}"]
        lines += [f"COPY {json.dumps([src, dest])}" for src, dest in self.copies]
        lines += [f"COPY {CTX}/flow/ {FLOW_DIR}/",
                  f"RUN {json.dumps([PYTHON, '-m', 'flowspec.inside', '--check', FLOW_DIR])}"]
        return "\n".join(lines) + "\n"

    def _digest(self) -> str:
        digest = hashlib.sha256(b"flowspec-docker-image-1\n" + self.dockerfile.encode())
        for name in sorted(self.files):
            value = self.files[name]
            digest.update(f"\n--- {name}\n".encode())
            if isinstance(value, tuple):  # flowspec's own wheel: its source stands for it
                digest.update(self.source[1].encode())
                continue
            if isinstance(value, Path):
                if os.stat(value).st_mode & 0o111:  # COPY keeps the mode: a script stays runnable
                    self.executable.add(name)
                    digest.update(b"+x")
                value = self.files[name] = value.read_bytes()  # read once: the context sends these bytes
            digest.update(hashlib.sha256(value).digest())
        return digest.hexdigest()

    def labels(self) -> dict[str, str]:
        return {f"{LABEL}.digest": self.digest, f"{LABEL}.fingerprint": self.fp,
                f"{LABEL}.payload-sha256": self.payload_sha, f"{LABEL}.flow": self.spec.name}

    # -- building --------------------------------------------------------------------------------------
    def run(self, engines: BuildEngine) -> dict[str, Any]:
        image = self.existing(engines.api)
        up_to_date = image is not None
        if up_to_date:
            say(f"image {self.ref} is up to date (digest {self.digest[:12]}): nothing to build")
        else:
            for note in self.notes:
                say(note)
            self.check_base(engines)
            image = self.build(engines.api)
        if self.opts.get("registry_url") and not (up_to_date and self.in_registry(engines.sdk)):
            self.push(engines.sdk)
        return location(self.ref, self.opts, image.labels or self.labels(), image.id)

    def existing(self, api):
        image = _image(api, self.ref, f"looking for image {self.ref}")
        return image if image is not None and image.labels.get(f"{LABEL}.digest") == self.digest else None

    def in_registry(self, client) -> bool:
        """Whether the registry has this tag already (then an unchanged build pushes nothing)."""
        try:
            client.api.inspect_distribution(self.ref)
            return True
        except Exception:
            return False

    def check_base(self, engines: BuildEngine) -> None:
        """The base image must be on the engine or pullable: say so before a build starts."""
        if self.user_dockerfile is not None:
            return  # its FROM lines are its own; the engine reports a missing one
        base = self.opts.get("base_image") or f"python:{self.python}-slim"
        if _image(engines.api, base, f"looking for the base image {base}") is not None:
            return
        say(f"pulling the base image {base}")
        try:
            repo, _, tag = base.rpartition(":") if ":" in base.rsplit("/", 1)[-1] else (base, "", "latest")
            engines.sdk.images.pull(repo, tag=tag)
        except Exception as exc:
            raise FlowspecError(
                f"base image {base} is not on the engine at {engine_host()} and cannot be pulled:"
                f" {_first_line(getattr(exc, 'explanation', None) or str(exc))}",
                hint="pull or load it first (docker pull / docker load), or set storage.base_image to an image"
                     " the engine has") from None

    def context(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", copybufsize=1 << 20) as tar:  # wheels of MBs: large copies
            entries = dict(self.files)
            # The labels name the digest, so they come after it was taken: one LABEL step, last.
            labels = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(self.labels().items()))
            entries["Dockerfile.flowspec"] = (self.dockerfile + f"LABEL {labels}\n").encode()
            for name in sorted(entries):
                data = entries[name]  # bytes: the digest read every file (see _digest)
                if isinstance(data, tuple):  # flowspec's own wheel, built now that the image is
                    data = checkout_wheel(*self.source).read_bytes()
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0  # mtime 0: the layer cache keys on content
                info.mode = 0o755 if name in self.executable else 0o644
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def build(self, api):
        say(f"building image {self.ref}")
        context = self.context()
        step: deque = deque(maxlen=40)  # the current step's output, shown when it fails
        checks: list[str] = []
        try:
            for chunk in api.build(context, self.ref, "Dockerfile.flowspec"):
                if "stream" in chunk:
                    text = _ANSI.sub("", chunk["stream"])  # the engine colours a step's stderr
                    for line in text.splitlines():
                        if line.startswith("Step "):
                            step.clear()
                        step.append(line)
                        if line.startswith(CHECK_PREFIX):
                            checks.append(line[len(CHECK_PREFIX):])
                    if text.strip():
                        say(text.rstrip("\n"))
                elif "error" in chunk:
                    raise self.failure(chunk["error"], list(step), checks)
        except FlowspecError:
            raise
        except Exception as exc:
            raise engine_error(exc, f"building {self.ref}") from None
        image = _image(api, self.ref, f"looking for image {self.ref}")
        if image is None:
            raise FlowspecError(f"the build of {self.ref} ended without an image of that name",
                                hint="see the engine's log (journalctl -u docker): something removed it meanwhile")
        return image

    def failure(self, error: str, step: list[str], checks: list[str]) -> FlowspecError:
        if checks and not any("loads in this image" in c for c in checks):
            return FlowspecError("the build check failed: the flow does not load in the image:\n  "
                                 + "\n  ".join(checks) + f"\nimage {self.ref} was neither tagged nor pushed",
                                 hint="fix the cause above and build again")
        if "no space left on device" in error.lower():
            return disk_full(error)
        head = step[0] if step else "a build step"
        missing = _pip_missing(step) if f"{VENV}/bin/pip" in head else None  # flowspec's step, not a dockerfile's
        if missing:
            return self.uninstallable(missing)
        if "python3" in head and ("not found" in error or "127" in error or any("not found" in s for s in step)):
            found = re.search(r'exec: "python3": [^:]*', error)
            return FlowspecError(f"the base image has no python3: {found.group(0) if found else _first_line(error)}",
                                 hint=f"use a base image with Python {self.python} and its venv module")
        if "pull access denied" in error or "manifest unknown" in error or "not found" in error and head.startswith(
                "Step 1/"):
            return FlowspecError(f"a FROM image cannot be found or pulled: {_first_line(error)}",
                                 hint="pull or load it first, or name an image the engine has")
        shown = [line for line in step[1:] if line.strip() and not line.startswith(" ---> Running in ")]
        output = "\n    ".join(shown) if shown else "(no output)"
        return FlowspecError(f"the image build failed at {head}: {_first_line(error)}\n  its output:\n    {output}"
                             f"\nimage {self.ref} was neither tagged nor pushed",
                             hint="fix that step (python_dependencies, files, dockerfile) and build again")

    def uninstallable(self, missing: str) -> FlowspecError:
        """pip found no distribution for `missing`: at the spec line that asked for it, if one did."""
        house = os.environ.get(WHEELHOUSE_VAR)
        if house:
            hint = (f"add its wheel (and its dependencies') to ${WHEELHOUSE_VAR}: pip download --only-binary=:all:"
                    f" --python-version {self.python} --dest {house} '{missing.split(' (from')[0]}'")
        else:
            hint = "check its name and version; the engine's builds need the package index (or set" \
                   f" ${WHEELHOUSE_VAR} to a folder of wheels)"
        message = f"pip cannot install {missing} in the image: no distribution of it was found"
        asked = req_name(missing)
        deps = self.opts.get("python_dependencies") or ()
        for i, dep in enumerate(deps):
            if dep.strip() == missing or req_name(dep) == asked:
                return SpecError([self._diag(("python_dependencies", i), message, hint)])
        for need in self.needs:
            if need.requirement == missing or req_name(need.requirement) == asked:
                return SpecError([self.spec.document.diag(need.where, f"{need.who} needs {need.requirement} in the"
                                                          f" image, and pip cannot install {missing} there: no"
                                                          " distribution of it was found", hint)])
        return FlowspecError(f"{message}\nimage {self.ref} was neither tagged nor pushed", hint=hint)

    def push(self, client) -> None:
        repo, tag = self.ref.rsplit(":", 1)
        say(f"pushing {self.ref}")
        try:
            for chunk in client.api.push(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise push_error(self.ref, chunk["error"])
        except FlowspecError:
            raise
        except Exception as exc:
            raise push_error(self.ref, str(exc)) from None


def _pip_missing(output: list[str]) -> str | None:
    """The requirement pip could not find, as it printed it (with `(from PARENT)` when it is a
    dependency of another), or None when pip failed otherwise."""
    for line in output:
        found = re.search(r"Could not find a version that satisfies the requirement (.+?) \(from versions", line)
        if found:
            return found.group(1).strip()
    for line in output:
        found = re.search(r"No matching distribution found for (\S.*)$", line)
        if found:
            return found.group(1).strip()
    return None


def _image(api, ref: str, doing: str):
    """The image `ref` (id and labels), or None when the engine has none of that name."""
    try:
        return api.image(ref)
    except Exception as exc:  # a socket's or the SDK's error: read its words
        raise engine_error(exc, doing) from None


def push_error(ref: str, error: str) -> FlowspecError:
    low = error.lower()
    registry = ref.split("/", 1)[0]
    if any(s in low for s in ("connection refused", "no such host", "dial tcp", "i/o timeout", "connect:")):
        return FlowspecError(f"cannot push {ref}: the registry {registry} cannot be reached: {_first_line(error)}",
                             hint="check registry_url and that the registry is running")
    if any(s in low for s in ("unauthorized", "authentication required", "denied", "no basic auth credentials",
                              "auth credentials")):
        return FlowspecError(f"cannot push {ref}: the registry {registry} refused the credentials: {_first_line(error)}",
                             hint=f"log in first: docker login {registry}")
    return FlowspecError(f"cannot push {ref} to {registry}: {_first_line(error)}",
                         hint="check registry_url and the registry's log")


def _version(name: str) -> str:
    """The version of flowspec or cloudpickle here: what the image must hold to load the payload."""
    if name == "flowspec":
        from flowspec import __version__
    else:
        import cloudpickle

        __version__ = cloudpickle.__version__
    return __version__


def _requirements() -> list[str]:
    """flowspec's own requirements, with those of its `postgres` extra (a container reaches a
    PostgreSQL backend with it)."""
    requires = _installed()[0]
    if requires is None:
        raise FlowspecError("flowspec is not installed here (no flowspec-*.dist-info on sys.path), so the"
                            " packages it needs in the image are unknown",
                            hint="install it: pip install flowspec, or pip install -e CHECKOUT for a source tree")
    out = []
    for req in requires:
        name, _, marker = req.partition(";")
        if not marker.strip() or _marker_extra(marker) == "postgres":
            out.append(name.strip())
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "flow"
