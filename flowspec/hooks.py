"""State hooks that ship with flowspec, for `on_success` / `on_failure` / `on_retry`:

    on_failure: {run: flowspec.hooks:webhook, with: {url: "${{ env.ALERT_URL }}"}}
    on_failure: {run: flowspec.hooks:slack, with: {url: "${{ env.SLACK_WEBHOOK }}"}}

Each receives the run's state dict (see docs/flow-yaml.md, "Hooks") and POSTs once, with a
timeout: no retry, so that a down endpoint costs one timeout per state, never a storm. A failure
raises, and the runner logs it with its traceback; the run's states do not change. Standard
library only (urllib).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 10.0
STATE_EMOJI = {"Success": ":white_check_mark:", "Cached": ":white_check_mark:", "Failed": ":x:", "TimedOut": ":hourglass:",
               "TriggerFailed": ":no_entry:", "Retrying": ":repeat:"}


class HookError(RuntimeError):
    """The endpoint refused the request or could not be reached."""


def webhook(info: dict, url: str, timeout: float = DEFAULT_TIMEOUT_S, headers: dict | None = None) -> int:
    """POST `info` as JSON to `url`; returns the HTTP status."""
    return post_json(url, info, timeout, headers)


def slack(info: dict, url: str, timeout: float = DEFAULT_TIMEOUT_S, channel: str | None = None) -> int:
    """Post a Slack incoming-webhook message about `info` to `url`: the flow, the task (and its
    run name), the state and message, and a link to the run when FLOWSPEC_UI_URL is set."""
    payload: dict = {"text": slack_text(info)}
    if channel:
        payload["channel"] = channel
    return post_json(url, payload, timeout)


def slack_text(info: dict) -> str:
    state = info.get("state")
    what = f"flow *{info.get('flow')}*"
    if info.get("task"):
        task = info["task"]
        if info.get("run_name") is not None:
            task += f"[{info['run_name']}]"
        elif info.get("map_index") is not None:
            task += f"[{info['map_index']}]"
        what = f"task *{task}* of " + what
    text = f"{STATE_EMOJI.get(state, ':information_source:')} {what}: *{state}*"
    if info.get("message"):
        text += f"\n> {info['message']}"
    ui = os.environ.get("FLOWSPEC_UI_URL")
    if ui and info.get("run_id"):
        text += f"\n<{ui.rstrip('/')}/runs/{info['run_id']}|run {info['run_id'][:8]}>"
    return text


def post_json(url: str, payload, timeout: float = DEFAULT_TIMEOUT_S, headers: dict | None = None) -> int:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise HookError(f"url must be an http:// or https:// address, got {url!r}")
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "flowspec",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        raise HookError(f"POST {_shown(url)}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HookError(f"POST {_shown(url)}: {reason}") from None


def _shown(url: str) -> str:
    """The address without its path: a Slack webhook's path is its secret."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.path not in ("", "/") else url
