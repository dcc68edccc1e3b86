"""ADD, DEL, CHECK, STATUS and GC against the cell's reconciler. Each returns the result to print, or None.

ADD returns only once the reconciler has committed the container's rules to the kernel, so the
app never runs a moment without its security groups. If that does not happen in time (or the
reconciler cannot be reached), ADD fails with code 11 and takes the registration back first,
so a failed ADD leaves nothing behind. DEL never fails for want of the reconciler: what it cannot
hand over it records as a pending deletion (cni/pending.py).
"""

from __future__ import annotations

import sys

from cni import pending
from cni.client import Answer, BadAnswer, ReconcilerClient, Unreachable
from cni.config import PluginConfig
from cni.errors import CniError, Code
from cni.garden import registration
from cni.invocation import Invocation
from cni.result import container_addresses, convert_result, require_prev_result, with_nameservers

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~5 ms of every start)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Command = Callable[[Invocation, PluginConfig, ReconcilerClient], "dict[str, Any] | None"]

# How long the undo of a failed ADD waits: it only needs the reconciler to record the removal.
_UNDO_TIMEOUT = 0.5
_STATUS_TIMEOUT = 5.0
_GC_TIMEOUT = 15.0  # the reconciler waits up to 10s for the GC commit


def _answer_error(answer: Answer) -> str:
    return str(answer.body.get("error") or answer.body)


def _take_back(client: ReconcilerClient, handle: str) -> None:
    """Undo a registration that may or may not have reached the reconciler."""
    try:
        if client.unregister(handle, _UNDO_TIMEOUT).status in (200, 503):
            return
    except (Unreachable, BadAnswer):
        pass
    try:
        pending.record(client.socket_path, handle)
    except OSError as e:
        # The runtime's DEL, which always follows a failed ADD, records it again.
        print(f"cfnft-cni: cannot record the pending deletion of {handle}: {e}", file=sys.stderr)


def add(inv: Invocation, cfg: PluginConfig, client: ReconcilerClient) -> dict[str, Any]:
    prev = require_prev_result(inv.conf)
    addresses = container_addresses(prev)
    result = convert_result(prev, inv.cni_version, inv.cni_version)
    body = registration(inv.container_id, inv.conf, addresses)
    try:
        answer = client.register(body, cfg.timeout_seconds)
    except Unreachable as e:
        _take_back(client, inv.container_id)
        raise CniError(Code.TRY_AGAIN_LATER, "the cfnft reconciler is unreachable", str(e)) from None
    except BadAnswer as e:
        _take_back(client, inv.container_id)
        raise CniError(Code.BAD_ANSWER, "unexpected answer from the cfnft reconciler", str(e)) from None
    if answer.status == 200:
        return with_nameservers(result, cfg.dns_servers)
    if answer.status in (400, 409):  # refused: 400 before registering, 409 unregistered again after the commit
        raise CniError(
            Code.INVALID_CONFIG, f"the cfnft reconciler refused container {inv.container_id}", _answer_error(answer)
        )
    _take_back(client, inv.container_id)
    if answer.status == 503:
        raise CniError(
            Code.TRY_AGAIN_LATER,
            f"rules of container {inv.container_id} not committed within {cfg.timeout_seconds:g}s",
            _answer_error(answer),
        )
    raise CniError(Code.BAD_ANSWER, f"the cfnft reconciler answered HTTP {answer.status} to ADD", _answer_error(answer))


def delete(inv: Invocation, cfg: PluginConfig, client: ReconcilerClient) -> None:
    try:
        answer = client.unregister(inv.container_id, cfg.timeout_seconds)
        if answer.status in (200, 503):  # 503: recorded, committed soon
            return None
        reason = f"HTTP {answer.status}: {_answer_error(answer)}"
    except (Unreachable, BadAnswer) as e:
        reason = str(e)
    try:
        pending.record(cfg.socket_path, inv.container_id)
    except OSError as e:
        raise CniError(
            Code.TRY_AGAIN_LATER,
            f"cannot remove the rules of container {inv.container_id}",
            f"reconciler: {reason}; recording the pending deletion: {e}",
        ) from None
    print(
        f"cfnft-cni: DEL {inv.container_id}: reconciler not available ({reason}); deletion left pending",
        file=sys.stderr,
    )
    return None


def check(inv: Invocation, cfg: PluginConfig, client: ReconcilerClient) -> None:
    addresses = container_addresses(require_prev_result(inv.conf))
    try:
        answer = client.check(inv.container_id, addresses.ipv4, cfg.timeout_seconds)
    except Unreachable as e:
        raise CniError(Code.TRY_AGAIN_LATER, "the cfnft reconciler is unreachable", str(e)) from None
    except BadAnswer as e:
        raise CniError(Code.BAD_ANSWER, "unexpected answer from the cfnft reconciler", str(e)) from None
    if answer.status != 200 or not isinstance(answer.body.get("ok"), bool):
        raise CniError(
            Code.BAD_ANSWER, f"the cfnft reconciler answered HTTP {answer.status} to CHECK", _answer_error(answer)
        )
    if not answer.body["ok"]:
        problems = answer.body.get("problems") or ["(no detail)"]
        raise CniError(
            Code.RULES_MISSING,
            f"rules of container {inv.container_id} are not in place",
            "; ".join(str(p) for p in problems),
        )
    return None


def status(inv: Invocation, cfg: PluginConfig, client: ReconcilerClient) -> None:
    try:
        answer = client.status(_STATUS_TIMEOUT)
    except (Unreachable, BadAnswer) as e:
        raise CniError(Code.NOT_AVAILABLE, "the cfnft reconciler is unreachable", str(e)) from None
    if answer.status != 200:
        raise CniError(
            Code.NOT_AVAILABLE, f"the cfnft reconciler answered HTTP {answer.status} to STATUS", _answer_error(answer)
        )
    b = answer.body
    # Changes in flight are normal on a busy cell; degraded means no complete state was ever
    # committed (never in sync) or the commits are failing now.
    serving = b.get("last_commit_at") is not None and b.get("consecutive_failures") == 0
    if b.get("in_sync") is not True and not serving:
        raise CniError(
            Code.DEGRADED,
            "the cfnft reconciler is not in sync",
            f"nats_connected={b.get('nats_connected')} last_commit_at={b.get('last_commit_at')}"
            f" consecutive_failures={b.get('consecutive_failures')}",
        )
    return None


def _valid_handles(conf: dict[str, Any]) -> list[str]:
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if key in conf:
            attachments = conf[key]
            break
    else:
        # Never read a missing list as an empty one: that would remove every container's rules.
        raise CniError(
            Code.INVALID_CONFIG, "GC needs cni.dev/valid-attachments", "the runtime sent no list of valid attachments"
        )
    if not isinstance(attachments, list):
        raise CniError(Code.INVALID_CONFIG, f"{key} must be a list", repr(attachments)[:200])
    handles = set()
    for n, a in enumerate(attachments):
        if not isinstance(a, dict) or not isinstance(a.get("containerID"), str) or not a["containerID"]:
            raise CniError(Code.INVALID_CONFIG, f"{key}[{n}] must be an object with a containerID", repr(a)[:200])
        handles.add(a["containerID"])
    return sorted(handles)


def gc(inv: Invocation, cfg: PluginConfig, client: ReconcilerClient) -> None:
    handles = _valid_handles(inv.conf)
    try:
        answer = client.gc(handles, _GC_TIMEOUT)
    except Unreachable as e:
        raise CniError(Code.TRY_AGAIN_LATER, "the cfnft reconciler is unreachable", str(e)) from None
    except BadAnswer as e:
        raise CniError(Code.BAD_ANSWER, "unexpected answer from the cfnft reconciler", str(e)) from None
    if answer.status == 503:
        return None  # recorded; the commit follows
    if answer.status != 200:
        raise CniError(
            Code.BAD_ANSWER, f"the cfnft reconciler answered HTTP {answer.status} to GC", _answer_error(answer)
        )
    return None


COMMANDS: dict[str, Command] = {"ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc}
