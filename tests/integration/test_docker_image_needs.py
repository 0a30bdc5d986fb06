"""What a flow's environment and executor import in its image goes in without being asked for:
a dask-kubernetes flow without `python_dependencies` gets dask's distributed and the kubernetes
client, the build check imports them, and one that cannot be installed or imported fails the
build naming it. A real engine (Debian's dockerd on a private socket), through the CLI."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

CODE = "def hello(name='World'):\n    return f'hello {name}'\n"


def write(folder: Path, base: str, environment: str, storage: str = "") -> Path:
    """A flow without python_dependencies (unless `storage` says so) for `environment`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tasks.py").write_text(CODE)
    spec = folder / "flow.yaml"
    spec.write_text(f"version: 1\nname: {folder.name}\ntasks:\n  hello:\n    run: tasks:hello\n"
                    f"storage:\n  type: docker\n  base_image: {base}\n{storage}environment:\n{environment}")
    return spec


@pytest.fixture
def dask_wheels(tmp_path: Path, k8s_wheelhouse: Path, wheelhouse: Path) -> Path:
    """Wheels with dask and kubernetes in, and this checkout's flowspec wheel."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for wheel in [*k8s_wheelhouse.glob("*.whl"), *wheelhouse.glob("flowspec-*.whl")]:
        os.symlink(wheel.resolve(), folder / wheel.name)
    return folder


def run_in(docker_flows, image: str, *command: str) -> str:
    import docker

    with contextlib.closing(docker.DockerClient(base_url=docker_flows.env["DOCKER_HOST"])) as c:
        return c.containers.run(image, list(command), remove=True).decode()


def test_a_dask_kubernetes_image_holds_distributed_and_kubernetes_unasked(docker_flows, dask_wheels):
    env = {**docker_flows.env, "FLOWSPEC_WHEELHOUSE": str(dask_wheels)}
    spec = write(docker_flows.root / "dk-needs", docker_flows.base, "  type: dask-kubernetes\n")
    proc = docker_flows.cli("build", str(spec), "--format", "json", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "the dask-kubernetes environment needs in the image: dask[distributed]>=" in proc.stderr
    assert "module 'distributed'" not in proc.stderr
    image = json.loads(proc.stdout)["image"]
    out = run_in(docker_flows, image, "python", "-c", "import distributed, kubernetes; print('imported')")
    assert out.strip() == "imported"
    again = docker_flows.cli("build", str(spec), "--format", "json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["image"] == image, again.stderr
    assert "nothing to build" in again.stderr
    # the same flow on the docker environment needs neither: another image, without them
    docker_spec = write(docker_flows.root / "dk-needs", docker_flows.base, "  type: docker\n")
    plain = docker_flows.cli("build", str(docker_spec), "--format", "json", env=env, timeout=900)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["image"] != image
    out = run_in(docker_flows, json.loads(plain.stdout)["image"], "python", "-c",
                 "import importlib.util as u; print(u.find_spec('distributed'), u.find_spec('kubernetes'))")
    assert out.strip() == "None None"


def test_the_dask_executor_in_a_container_gets_distributed(docker_flows, dask_wheels):
    env = {**docker_flows.env, "FLOWSPEC_WHEELHOUSE": str(dask_wheels)}
    folder = docker_flows.root / "dask-exec"
    spec = write(folder, docker_flows.base, "  type: docker\n")
    spec.write_text(spec.read_text().replace("storage:", "executor:\n  type: dask\nstorage:"))
    proc = docker_flows.cli("build", str(spec), "--format", "json", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "the dask executor needs in the image: dask[distributed]>=" in proc.stderr
    out = run_in(docker_flows, json.loads(proc.stdout)["image"], "python", "-c", "import distributed; print('ok')")
    assert out.strip() == "ok"


def test_a_need_that_cannot_be_installed_fails_the_build_at_its_line(docker_flows):
    # the session's wheelhouse holds flowspec's own dependencies only: no dask, no kubernetes
    spec = write(docker_flows.root / "dk-nowheel", docker_flows.base, "  type: dask-kubernetes\n")
    proc = docker_flows.cli("build", str(spec), timeout=900)
    assert proc.returncode == 1, proc.stderr
    assert (f"{spec}:10:9: error: environment.type: the dask-kubernetes environment needs dask[distributed]>="
            in proc.stderr), proc.stderr
    assert "and pip cannot install dask[distributed]>=" in proc.stderr
    assert "hint: add its wheel (and its dependencies') to $FLOWSPEC_WHEELHOUSE: pip download" in proc.stderr
    assert "Traceback" not in proc.stderr
    # a python_dependencies entry that no wheel provides is named at its own line and column
    spec = write(docker_flows.root / "nowheel", docker_flows.base, "  type: docker\n",
                 storage="  python_dependencies: [pyyaml, no-such-package-here>=1.0]\n")
    proc = docker_flows.cli("build", str(spec), timeout=900)
    assert proc.returncode == 1, proc.stderr
    assert (f"{spec}:9:33: error: storage.python_dependencies[1]: pip cannot install no-such-package-here>=1.0 in"
            " the image" in proc.stderr), proc.stderr


def test_a_need_that_does_not_import_fails_the_build_check_naming_it(docker_flows, dask_wheels):
    # an installed kubernetes client that cannot be imported (its package replaced by a file)
    env = {**docker_flows.env, "FLOWSPEC_WHEELHOUSE": str(dask_wheels)}
    folder = docker_flows.root / "dk-broken"
    folder.mkdir()
    (folder / "broken.py").write_text("raise ImportError('broken on purpose')\n")
    site = "/opt/venv/lib/python3.11/site-packages"
    spec = write(folder, docker_flows.base, "  type: dask-kubernetes\n",
                 storage=f"  files:\n    broken.py: {site}/kubernetes/__init__.py\n")
    proc = docker_flows.cli("build", str(spec), env=env, timeout=900)
    assert proc.returncode == 1, proc.stderr
    assert ("the dask-kubernetes environment needs the Python package kubernetes>=26.1 (module 'kubernetes') in the"
            " image, but it does not import: ImportError: broken on purpose" in proc.stderr), proc.stderr
    assert "neither tagged nor pushed" in proc.stderr
