"""The reconciler's local HTTP endpoints.

On a unix socket, for the CNI plugin (it must work whether or not NATS is reachable):

    POST   /v1/containers            {"container": <Container>, "timeout_seconds": 5, "net_out_rules": [...]}
                                     registers the container and answers once its rules are
                                     committed: 200, or 503 when the commit did not happen in time;
                                     400 when the kernel could not take it (reconciler/admission.py),
                                     409 when it was committed without it (e.g. its address is
                                     outside the overlay): then it is unregistered again.
                                     `net_out_rules` (optional): Garden NetOutRules from CNI's
                                     runtimeConfig, kept as the container's `net_out_rules`
    DELETE /v1/containers/<handle>   forgets it (idempotent) and answers once committed;
                                     `?timeout_seconds=` as for POST (0-120]
    GET    /v1/containers/<handle>   CHECK: {"ok": bool, "problems": [...]} read from the kernel;
                                     `?ip=A` also reports a registration under another address
    POST   /v1/gc                    {"valid_handles": [...]}: forget every registered container not listed
    GET    /v1/status                the reconciler's status (see Reconciler.status)

On TCP (`metrics_listen`), for operators and monit: /metrics, /healthz, /readyz. `/readyz` is
200 once the kernel enforces the current desired state, else 503 with the reason; both name
what is left out (`dropped`).

Deletions the CNI plugin could not deliver (the reconciler was down) wait as files in
`<socket_path>.pending-del/` (cni/pending.py); they are drained once the reconciler is ready,
then every second, and a registration of the same handle supersedes its pending deletion.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cni import pending
from events.models import Container, NetOutRule
from nft.objects import Ruleset
from reconciler.admission import Limits, container_problems
from reconciler.check import container_problems as kernel_problems
from reconciler.daemon import Reconciler

log = logging.getLogger(__name__)


class CellFacade(Protocol):
    """What the CNI endpoint needs of its cell's reconciler (reconciler/daemon.py `Reconciler`)."""

    @property
    def limits(self) -> Limits: ...
    @property
    def registrations_loaded(self) -> bool: ...
    @property
    def registered(self) -> Mapping[str, Container]: ...
    @property
    def generation(self) -> int: ...
    @property
    def committed_generation(self) -> int: ...
    @property
    def not_ready_reason(self) -> str | None: ...
    def register(self, container: Container) -> int: ...
    def unregister(self, handle: str) -> int: ...
    async def wait_committed(self, generation: int, timeout: float) -> None: ...
    def enforced(self, handle: str) -> bool: ...
    def left_out_reason(self, what: str) -> str | None: ...
    def local(self, handle: str) -> Container | None: ...
    async def read_kernel(self) -> Ruleset | None: ...
    def status(self) -> dict[str, object]: ...


MAX_TIMEOUT_SECONDS = 120.0


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    container: Container
    timeout_seconds: float = Field(5.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    net_out_rules: list[NetOutRule] = Field(default_factory=list)

    def full_container(self) -> Container:
        """The container with the Garden NetOutRules of the request as its `net_out_rules`."""
        if not self.net_out_rules:
            return self.container
        rules = [*self.container.net_out_rules, *self.net_out_rules]
        return self.container.model_copy(update={"net_out_rules": rules})


class GcRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    valid_handles: list[str]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"timeout_seconds {text!r} is not a number") from None
    if not 0 < value <= MAX_TIMEOUT_SECONDS:  # also refuses nan and inf
        raise ValueError(f"timeout_seconds {text!r} is outside (0, {MAX_TIMEOUT_SECONDS:g}]")
    return value


def drain_pending_deletions(rec: CellFacade, socket_path: Path) -> list[str]:
    """Unregister the handles the CNI plugin left pending; only once the saved registrations are
    loaded, because before that they would come back."""
    if not rec.registrations_loaded:
        return []
    handles = pending.pending_handles(socket_path)
    for handle in handles:
        rec.unregister(handle)
        pending.forget(socket_path, handle)
    if handles:
        log.info(
            "unregistered %d containers deleted while the reconciler was away: %s", len(handles), ", ".join(handles)
        )
    return handles


def _drop_stale_holders(rec: CellFacade, container: Container) -> None:
    """The connectivity plugin just gave `container` its addresses, so another registration holding one
    of them is stale (its DEL was lost); two holders of one address would make the state invalid."""
    mine = {container.ip, container.ipv6} - {None}
    for handle, other in list(rec.registered.items()):
        if handle != container.handle and mine & {other.ip, other.ipv6}:
            log.warning(
                "container %s takes over an address of registered container %s; unregistering that",
                container.handle,
                handle,
                extra={"handle": handle},
            )
            rec.unregister(handle)


def cni_app(rec: CellFacade, socket_path: Path | None = None) -> web.Application:
    """The CNI endpoint; with `socket_path`, pending deletions next to it are drained too."""

    def drain() -> None:
        if socket_path is not None:
            drain_pending_deletions(rec, socket_path)

    async def register(request: web.Request) -> web.Response:
        try:
            req = RegisterRequest.model_validate_json(await request.read())
        except ValidationError as e:
            first = e.errors()[0]
            return _error(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        container = req.full_container()
        refused = container_problems(container, rec.limits)
        if refused:
            log.error(
                "refusing container %s: %s", container.handle, "; ".join(refused), extra={"handle": container.handle}
            )
            return _error(400, f"container {container.handle}: {'; '.join(refused)}")
        if socket_path is not None:
            pending.forget(socket_path, container.handle)  # this ADD is newer than any DEL left pending
        _drop_stale_holders(rec, container)
        gen = rec.register(container)
        log.info(
            "container %s (%s, app %s) registered by CNI",
            req.container.handle,
            req.container.ip,
            req.container.app_guid,
            extra={"handle": req.container.handle, "app_guid": req.container.app_guid},
        )
        try:
            await rec.wait_committed(gen, req.timeout_seconds)
        except asyncio.TimeoutError:
            return _error(
                503,
                f"rules of container {req.container.handle} not committed within "
                f"{req.timeout_seconds}s ({rec.not_ready_reason or 'ready'})",
            )
        if not rec.enforced(container.handle):
            # Committed without it: the rules of the cell are live, but not this container's. Say why,
            # and leave nothing behind (the runtime's DEL after a failed ADD may never come).
            why = rec.left_out_reason(f"container {container.handle}") or "left out of the ruleset"
            rec.unregister(container.handle)
            return _error(409, f"container {container.handle} cannot be enforced: {why}")
        return web.json_response({"handle": req.container.handle, "committed_generation": rec.committed_generation})

    async def unregister(request: web.Request) -> web.Response:
        handle = request.match_info["handle"]
        try:
            timeout = _timeout(request.query.get("timeout_seconds", "5"))
        except ValueError as e:
            return _error(400, str(e))
        gen = rec.unregister(handle)
        log.info("container %s removed by CNI", handle, extra={"handle": handle})
        try:
            await rec.wait_committed(gen, timeout)
        except asyncio.TimeoutError:
            return _error(503, f"removal of container {handle} not committed yet; it will be")
        return web.json_response({"handle": handle})

    async def check(request: web.Request) -> web.Response:
        handle = request.match_info["handle"]
        container = rec.local(handle)
        if container is None:
            return web.json_response({"ok": False, "problems": [f"container {handle} is not known to the reconciler"]})
        kernel = await rec.read_kernel()
        problems = kernel_problems(container, kernel)
        expected_ip = request.query.get("ip")
        if expected_ip is not None and expected_ip != str(container.ip):
            problems.append(f"container {handle} is registered with address {container.ip}, not {expected_ip}")
        return web.json_response({"ok": not problems, "problems": problems})

    async def gc(request: web.Request) -> web.Response:
        try:
            req = GcRequest.model_validate_json(await request.read())
        except ValidationError as e:
            return _error(400, str(e.errors()[0]["msg"]))
        valid = set(req.valid_handles)
        removed = [h for h in list(rec.registered) if h not in valid]
        gen = rec.generation
        for h in removed:
            gen = rec.unregister(h)
        try:
            await rec.wait_committed(gen, 10)
        except asyncio.TimeoutError:
            return _error(503, "garbage collection not committed yet; it will be")
        return web.json_response({"removed": removed})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(rec.status())

    async def drain_periodically(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(1.0)
                try:
                    drain()
                except OSError as e:
                    log.error("cannot drain pending CNI deletions: %s", e)

        task = asyncio.create_task(loop(), name="pending-deletions")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app = web.Application()
    if socket_path is not None:
        app.cleanup_ctx.append(drain_periodically)
    app.router.add_post("/v1/containers", register)
    app.router.add_delete("/v1/containers/{handle}", unregister)
    app.router.add_get("/v1/containers/{handle}", check)
    app.router.add_post("/v1/gc", gc)
    app.router.add_get("/v1/status", status)
    return app


def ops_app(rec: Reconciler) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(rec.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        if rec.fatal is not None:
            return _error(500, f"failed: {rec.fatal}")
        return web.json_response({"healthy": True})

    async def readyz(request: web.Request) -> web.Response:
        reason = rec.not_ready_reason
        body = {"ready": reason is None, "dropped": rec.board.entries()}
        if reason is not None:
            return web.json_response({**body, "error": f"not ready: {reason}"}, status=503)
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_endpoints(rec: Reconciler, socket_path: Path, metrics_listen: str | None) -> list[web.AppRunner]:
    """Start the CNI socket and (unless None) the metrics listener; the caller cleans up the runners."""
    runners = []
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    cni = web.AppRunner(cni_app(rec, socket_path), access_log=None)
    await cni.setup()
    await web.UnixSite(cni, str(socket_path)).start()
    # Whoever can register containers can choose a container's policy: only root (the CNI plugin
    # runs as root under Garden) may connect.
    os.chmod(socket_path, 0o600)
    runners.append(cni)
    if metrics_listen:
        host, _, port = metrics_listen.rpartition(":")
        ops = web.AppRunner(ops_app(rec), access_log=None)
        await ops.setup()
        await web.TCPSite(ops, host or "127.0.0.1", int(port)).start()
        runners.append(ops)
    log.info("CNI endpoint on %s, metrics on %s", socket_path, metrics_listen or "(off)")
    return runners
