"""What runs inside a flow's image: `python -m flowspec.inside RUN_ID` or `--check DIR`.

RUN_ID: run one flow run recorded in the backend at `$FLOWSPEC_BACKEND`, from the payload that
docker storage baked into the image (`$FLOWSPEC_FLOW_LOCATION` says where it is and its sha256).
The watcher outside (an agent's child process, or `flowspec run FILE`) has moved the run to
Running before starting the image; here the run must be Running (a run found Cancelling ends
Cancelled without starting; any other state is left as it is, exit 1). The payload is checked
against the location (sha256, and the registered flow's fingerprint), then the flow runs with a
Recorder (task states, log lines, heartbeat), and the final state is set here, with the exit
code: 0 Success, 1 Failed, 130 Cancelled. SIGTERM (docker stop) cancels the run as Ctrl-C would.

--check DIR: the build check, run by the image build with the image's Python: the Python
version, flowspec and cloudpickle versions against the registering ones, the packages the flow's
environment and executor import in the image (the manifest's `needs`), every `run` callable
and hook imported from the flow's code in DIR, then the payload loaded. Each problem is printed
with its cause; exit 1 fails the build (so the image is neither tagged nor pushed).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from flowspec.errors import FlowspecError

FLOW_DIR = "/flowspec/flow"  # where docker storage puts the payload, manifest, spec and code
PAYLOAD, MANIFEST = "payload.flow", "manifest.json"


# -- the build check ---------------------------------------------------------------------------
def check(folder: str) -> list[str]:
    """Problems that would stop the flow from loading here, each naming its cause."""
    manifest = json.loads(Path(folder, MANIFEST).read_text())
    here = "%d.%d" % sys.version_info[:2]
    if here != manifest["python"]:
        return [f"the image has Python {here} but the flow was registered with Python {manifest['python']}:"
                f" a flow's payload loads only in the Python version that made it; build from an image with"
                f" Python {manifest['python']} (base_image: python:{manifest['python']}-slim), or register"
                f" the flow with Python {here}"]
    problems = [_version_problem(name, want) for name, want in manifest["versions"].items()]
    problems = [p for p in problems if p] or [p for p in map(_need_problem, manifest.get("needs", ())) if p]
    if problems:
        return problems
    from flowspec.callables import CallableError, add_import_path, load_callable

    add_import_path(folder)
    for key, target in manifest["targets"]:
        where = target.rpartition(":")[0]
        try:
            if not (where.endswith(".py") or "/" in where):
                importlib.import_module(where)  # first plainly: a missing module keeps its traceback
            load_callable(target, folder)
        except ModuleNotFoundError as exc:
            problems.append(f"{key}: {target}: module '{exc.name}' is not installed in the image"
                            f" ({importer(exc)} imports it): add it to storage.python_dependencies")
        except CallableError as exc:
            problems.append(f"{key}: {target}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        except Exception as exc:
            problems.append(f"{key}: {target}: importing it failed: {type(exc).__name__}: {exc}"
                            f" ({importer(exc)})")
    if not problems:
        try:
            load_payload(str(Path(folder, PAYLOAD)), manifest["sha256"])
        except FlowspecError as exc:
            problems.append(str(exc))
    return problems


def _version_problem(name: str, want: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have == want:
        return None
    return (f"the flow was registered with {name} {want} but the image has "
            f"{name + ' ' + have if have else 'no ' + name}: pin {name}=={want} in the image"
            + (" (a payload pickled by one cloudpickle may not load with another)" if name == "cloudpickle" else ""))


def _need_problem(need: list) -> str | None:
    """A package the flow's environment or executor imports in the image, imported here first so
    that a missing one fails the build rather than the run."""
    module, requirement, who = need
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install fails in many ways: its words name the cause
        return (f"{who} needs the Python package {requirement} (module '{module}') in the image, but it does not"
                f" import: {type(exc).__name__}: {exc}: install it there (flowspec adds it to the image's"
                f" requirements; check storage.python_dependencies and the dockerfile for what keeps it out)")
    return None


def importer(exc: BaseException) -> str:
    """file:line of the statement that raised (the import), outside Python's import machinery."""
    where = "?"
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith("<frozen") and "/flowspec/inside.py" not in name:
            where = f"{name.removeprefix(FLOW_DIR + '/')}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def load_payload(path: str, sha256: str):
    """(FlowSpec, callables) from the payload file, checked against its recorded sha256."""
    from flowspec.storage.base import deserialize

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FlowspecError(f"{path}: the image holds no flow payload ({exc.strerror})",
                            hint="build the image with flowspec (docker storage), or register again") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise FlowspecError(f"{path}: the payload in the image has sha256 {actual}, not {sha256} as recorded",
                            hint="the image was changed after it was built: register the flow again")
    return deserialize(data, path)


# -- a flow run ----------------------------------------------------------------------------------
def run(run_id: str) -> int:
    from flowspec.backend import open_backend
    from flowspec.recorder import EXIT_CODES, Recorder, interrupt_self, outcome_of, run_message

    location = json.loads(os.environ.get("FLOWSPEC_FLOW_LOCATION") or "{}")
    with open_backend() as backend:
        current = backend.get_run(run_id)
        if current is None or current.state != "Running":
            return not_running(backend, run_id, current)
        if backend.has_task_states(run_id):  # e.g. a Job's next pod, after the first was evicted
            print(f"flowspec: run {run_id} has started before (its task states are recorded): it is not run twice",
                  file=sys.stderr)
            return 1
        recorder = Recorder(backend, run_id, on_cancel=interrupt_self)
        signal.signal(signal.SIGTERM, _on_sigterm)
        recorder.start()
        outputs = None
        try:
            result = execute(backend, current, location, recorder)
            state, message, outputs = result.state, run_message(result), result.outputs
        except (Exception, KeyboardInterrupt) as exc:
            state, message = outcome_of(exc)
            if isinstance(exc, KeyboardInterrupt):
                message = _stop_reason(backend, run_id)
            elif not isinstance(exc, FlowspecError):
                traceback.print_exc()
        code = EXIT_CODES.get(state, 1)
        recorder.finish(state, message, code, outputs)
        return code


def execute(backend, current, location: dict, recorder):
    import dataclasses

    from flowspec.environments.base import run_in_process
    from flowspec.params import resolve_parameters

    folder = os.path.dirname(location.get("payload") or f"{FLOW_DIR}/{PAYLOAD}")
    spec, callables = load_payload(location.get("payload") or f"{FLOW_DIR}/{PAYLOAD}", location.get("sha256", ""))
    flow = backend.get_flow_by_id(current.flow_id) if current.flow_id is not None else None
    if flow is not None and flow.storage.get("fingerprint") not in (None, location.get("fingerprint")):
        raise FlowspecError(f"this image holds flow fingerprint {location.get('fingerprint')}, but run {current.id}"
                            f" is of a flow with fingerprint {flow.storage.get('fingerprint')}",
                            hint="register the flow again, then start a new run")
    # The watcher resolved environment.env already (where the agent's values are) and passed the
    # result in: applying it again here would undo flowspec's own variables. Only the variables
    # that hold a secret are resolved here, where the flow runs (flowspec.run_refs).
    from flowspec import references as refs
    from flowspec.run_refs import SERVICE_KINDS
    from flowspec.secrets import decrypt_params

    inside_env = {k: v for k, v in spec.environment.env.items()
                  if any(ref.kind in SERVICE_KINDS for _, ref in refs.iter_refs({k: v}))}
    spec = dataclasses.replace(spec, base_dir=folder, path=os.path.join(folder, os.path.basename(spec.path)),
                               environment=dataclasses.replace(spec.environment, env=inside_env))
    os.chdir(folder)
    given = decrypt_params(current.parameters)  # secret parameters are stored encrypted
    params = resolve_parameters(spec.parameters, {}, None, list(given.items()))
    # An environment that sets something up around the run in here says so with `run_inside`
    # (dask-kubernetes: the run's Dask cluster); the others run the flow in this process.
    from flowspec.drivers import load_driver

    # A restart (`flowspec runs restart`) reuses kept results by the plan kept with its run.
    from flowspec import restart

    inside = getattr(load_driver("environment", spec.environment.type), "run_inside", None)
    with restart.of_run(backend.run_link(current.id), spec.name):
        if inside is not None:
            return inside(spec, params, (recorder,), current.id, callables)
        return run_in_process(spec, params, (recorder,), current.id, callables, keep_results=False)


def not_running(backend, run_id: str, current) -> int:
    if current is not None and current.state == "Cancelling":
        backend.set_run_state(run_id, "Cancelled", "cancelled before it started", expected_from={"Cancelling"},
                              exit_code=130)
        return 130
    state = current.state if current is not None else "not in the backend"
    print(f"flowspec: run {run_id} is {state}, not Running: not starting it", file=sys.stderr)
    return 1


def _stop_reason(backend, run_id: str) -> str:
    try:
        run = backend.get_run(run_id)
    except FlowspecError:
        run = None
    if run is not None and run.state == "Cancelling":
        return "cancelled by the user"
    return "stopped by SIGTERM (its watcher was interrupted, or the container was stopped)"


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m flowspec.inside", description=__doc__.splitlines()[0])
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the flow run to run")
    p.add_argument("--check", metavar="DIR", help="the build check of the flow in DIR")
    args = p.parse_args(argv)
    if args.check:
        problems = check(args.check)
        for problem in problems:
            print(f"flowspec: build check: {problem}", file=sys.stderr)
        if not problems:
            print("flowspec: build check: the flow loads in this image")
        return 1 if problems else 0
    if not args.run_id:
        p.error("give RUN_ID or --check DIR")
    from flowspec import logs

    logs.configure()
    try:
        return run(args.run_id)
    except FlowspecError as exc:  # the backend itself failed: nothing can be recorded
        print(f"flowspec: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
