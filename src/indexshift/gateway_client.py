"""Talking to a running gateway (not to a cluster): its admin API under ``ADMIN_PREFIX``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from indexshift import read_rollout
from indexshift.errors import BadInput, ExitCode, IndexshiftError
from indexshift.gateway_protocol import ADMIN_PREFIX, Mode
from indexshift.wal import LogGap as LogGap  # noqa: PLC0414  # re-exported: /log's error

JSON = dict[str, Any]


class GatewayUnreachable(IndexshiftError):
    exit_code = ExitCode.UNREACHABLE



# -- talking to a running gateway (not to a cluster) -----------------------------------------


def gateway_call(gateway_url: str, method: str, sub: str, body: JSON | None = None,
                  timeout: float = 10) -> JSON:
    url = gateway_url.rstrip("/") + ADMIN_PREFIX + sub
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            decoded: JSON = json.loads(response.read())
            return decoded
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read())["error"]["reason"]
        except (ValueError, KeyError, TypeError):
            reason = exc.reason
        raise BadInput(f"the gateway at {gateway_url} answered {exc.code}: {reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise GatewayUnreachable(
            f"no gateway answers at {gateway_url} ({getattr(exc, 'reason', exc)})",
            hint="check --gateway (the gateway's --listen address) and that it runs",
        ) from exc


def set_mode(gateway_url: str, mode: Mode | str) -> JSON:
    """Switch a running gateway to ``normal`` or ``read-only``; its answer (mode, previous,
    queued writes)."""
    try:
        wanted = Mode(mode)
    except ValueError as exc:
        raise BadInput(f"mode must be normal or read-only, got {mode!r}") from exc
    return gateway_call(gateway_url, "PUT", "/mode", {"mode": wanted.value})


def gateway_status(gateway_url: str) -> JSON:
    """The JSON status of a running gateway: mode, log positions, lag, queue, upstream."""
    return gateway_call(gateway_url, "GET", "/status")


def start_rollout(gateway_url: str, alias: str, blue: str, green: str,
                  share: float | None = None, *, steps: Sequence[float] | str = (),
                  step_seconds: float | None = None,
                  thresholds: Mapping[str, float] | None = None) -> JSON:
    """Send ``share`` percent of the alias's reads to ``green`` (the rest to ``blue``) on a
    running gateway, optionally climbing through ``steps``; the rollout as the gateway shows
    it. Called again for the same blue and green, it changes the share. ``steps`` may be the
    text of ``--steps`` ("1,10,100"), checked with the rest of the request."""
    body: JSON = {"alias": alias, "blue": blue, "green": green,
                  "steps": steps if isinstance(steps, str) else list(steps),
                  "thresholds": dict(thresholds or {})}
    if share is not None:
        body["share"] = share
    if step_seconds is not None:
        body["step_seconds"] = step_seconds
    read_rollout.spec_from_json(body)  # a bad request fails here, before anything is sent
    return gateway_call(gateway_url, "POST", f"/rollout/{quote(alias, safe='')}", body)


def stop_rollout(gateway_url: str, alias: str) -> JSON:
    """End the alias's read rollout: its reads reach the alias again. Its last state."""
    return gateway_call(gateway_url, "DELETE", f"/rollout/{quote(alias, safe='')}")


def rollout_status(gateway_url: str, alias: str | None = None) -> JSON:
    """One alias's read rollout (share, phase, window, history), or every rollout."""
    return gateway_call(gateway_url, "GET",
                         "/rollout" + (f"/{quote(alias, safe='')}" if alias else ""))


def wait_until_drained(gateway_url: str, timeout: float = 60, interval: float = 0.1) -> JSON:
    """Poll the gateway until every logged write is applied; its last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = gateway_status(gateway_url)
        if status["wal"]["pending"] == 0 and status["queue"]["writes"] == 0:
            return status
        if time.monotonic() > deadline:
            raise IndexshiftError(
                f"the gateway still owes upstream {status['wal']['pending']} writes after "
                f"{timeout} s (head seq {status['queue']['head_seq']}: "
                f"{status['queue']['head_error']})")
        time.sleep(interval)


