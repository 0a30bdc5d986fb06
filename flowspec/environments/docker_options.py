"""The docker environment's options checked at compile time: positioned errors for what the
engine would refuse, before anything runs. Apart from the driver, so that validating a spec
imports neither it nor the shared platform code."""
from __future__ import annotations

import os
import re

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MEMORY = re.compile(r"^([0-9]+)([bkmg]?)$", re.I)
_UNIT = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
MIN_MEMORY = 6 * 1024 ** 2  # the engine refuses less


def option_problems(env: dict) -> list[tuple[tuple, str, str]]:
    """(path below `environment`, message, hint) for each docker option the engine would refuse."""
    out: list[tuple[tuple, str, str]] = []
    mode = env.get("network_mode")
    if isinstance(mode, str) and not _templated(mode):
        name = mode[len("container:"):] if mode.startswith("container:") else mode
        if not _NAME.match(name):
            out.append((("network_mode",), f"'{mode}' is not a network mode",
                        "use bridge, host, none, container:NAME or the name of a Docker network"))
    memory = env.get("mem_limit")
    if memory is not None and not (isinstance(memory, str) and _templated(memory)):
        m = _MEMORY.match(str(memory).strip()) if not isinstance(memory, bool) else None
        if m is None:
            out.append((("mem_limit",), f"'{memory}' is not an amount of memory",
                        "give bytes, or a whole number with b, k, m or g, e.g. 512m"))
        elif int(m.group(1)) * _UNIT[m.group(2).lower()] < MIN_MEMORY:
            out.append((("mem_limit",), f"mem_limit {memory} is below the engine's minimum of 6m", "give at least 6m"))
    cpus = env.get("cpus")
    if isinstance(cpus, (int, float)) and not isinstance(cpus, bool) and 0 < cpus < 0.01:
        out.append((("cpus",), f"cpus {cpus} is below the engine's minimum of 0.01", "give at least 0.01"))
    volumes = env.get("volumes")
    targets: dict[str, str] = {}
    for source, target in (volumes.items() if isinstance(volumes, dict) else ()):
        if not isinstance(target, str) or _templated(source) or _templated(target):
            continue
        bind, _, mode = target.partition(":")
        if not source.startswith("/") and not _NAME.match(source):
            out.append((("volumes", source), f"'{source}': a host path must be absolute (or a volume name)",
                        f"write the whole path, e.g. /srv/{os.path.basename(source.rstrip('/')) or 'data'}"))
        if not bind.startswith("/"):
            out.append((("volumes", source), f"'{target}': the path in the container must be absolute",
                        "e.g. /data, or /data:ro to mount it read-only"))
        elif mode not in ("", "ro", "rw"):
            out.append((("volumes", source), f"'{target}': unknown mount mode '{mode}'", "use :ro or :rw"))
        elif os.path.normpath(bind) in targets:
            out.append((("volumes", source), f"'{source}' and '{targets[os.path.normpath(bind)]}' are both mounted"
                        f" at {os.path.normpath(bind)}", "give each volume its own path in the container"))
        else:
            targets[os.path.normpath(bind)] = source
    return out


def _templated(value: str) -> bool:
    return isinstance(value, str) and "${{" in value


def resolved(options, environ=None) -> dict:
    """The options with their `${{ env.NAME }}` references resolved, where the flow run starts
    (as the Kubernetes and Fargate environments do); volume sources are resolved too."""
    from flowspec import references as refs
    from flowspec.errors import FlowspecError

    lookup = refs.env_lookup(os.environ if environ is None else environ)
    try:
        out = refs.resolve(refs.compile_value(dict(options)), lookup)
        if isinstance(out.get("volumes"), dict):
            out["volumes"] = {refs.resolve(refs.compile_value(k), lookup) if isinstance(k, str) else k: v
                              for k, v in out["volumes"].items()}
    except refs.UnsetEnvError as exc:
        raise FlowspecError(f"environment: {exc}", hint="set it where the flow run starts, or give a fallback"
                            " (${{ env.NAME || 'value' }})") from None
    return out
