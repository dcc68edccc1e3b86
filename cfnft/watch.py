"""`cfnft watch`: the control-plane watchers (BBS, policy server, Cloud Controller) in one process.

Each enabled watcher publishes whole-state messages through its own StatePublisher. A resync
request on cfnft.resync.all makes every watcher re-list its source and publish the difference.
A watcher that gives up on its source (e.g. its client certificate is refused every time)
ends the process with exit 3 (`FatalSourceError`), so monit restarts it and the failure is
visible; the state it published stays in JetStream and the cells keep enforcing it.

Replicas: each watcher kind runs only while its replica holds the kind's lease
(events/lease.py); the others stand by and take over when the holder stops or stalls. A new
term starts a fresh watcher, which reads back what the stream holds before publishing.

Lost state plane: every `state_check_seconds` each running watcher's publisher looks whether the
stream was deleted, recreated or purged (events/publisher.py `state_plane_lost`); if so the
watcher re-lists its source and publishes its complete view again, and its epoch marker then
tells the cells that the stream is whole again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import REGISTRY, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cfnft.errors import InputError
from events import subjects
from events.bbs.watcher import BbsWatcher, BbsWatcherConfig, BbsWatcherMetrics
from events.cc.watcher import CcWatcher, CcWatcherConfig
from events.connect import NatsConfig, connect
from events.lease import Lease
from events.listen import ListenAddress
from events.permissions import Role, inbox_prefix
from events.policy.spaces import ContainerSpaces
from events.policy.watcher import PolicyWatcher, PolicyWatcherConfig
from events.problems import load_model_file
from events.publisher import StatePublisher

log = logging.getLogger(__name__)


class WatchConfig(BaseModel):
    """`cfnft watch` settings: NATS, and one section per watcher to run (absent = not run)."""

    model_config = ConfigDict(extra="forbid")

    nats: NatsConfig = Field(default_factory=NatsConfig)
    bbs: BbsWatcherConfig | None = Field(None, description="Diego BBS: LRP containers and app instance sets")
    policy: PolicyWatcherConfig | None = Field(None, description="policy server: c2c, egress policies, ASGs")
    cc: CcWatcherConfig | None = Field(None, description="Cloud Controller: ASGs, without the policy server's")
    metrics_listen: ListenAddress | None = Field(
        "127.0.0.1:9302", description="host:port of /metrics and /healthz; empty or null: no listener"
    )
    stream_replicas: int | None = Field(
        None,
        ge=1,
        le=5,
        description="replicas of the state stream, set when the watcher starts (3 on a 3-node cluster); "
        "unset: an existing stream is left as it is, a missing one gets 1",
    )
    lease_seconds: float = Field(15.0, gt=0, description="a watcher's lease expires this long after its last renewal")
    state_check_seconds: float = Field(
        5.0, gt=0, description="how often a watcher checks that the state stream was not deleted, purged or recreated"
    )

    @model_validator(mode="after")
    def _one_asg_source(self) -> WatchConfig:
        if self.cc is not None and self.policy is not None and self.policy.asgs:
            raise ValueError(
                "security groups would come from both the policy server and Cloud Controller, and each watcher "
                "deletes the groups the other published: set policy.asgs to false, or remove cc"
            )
        if self.bbs is None and self.policy is None and self.cc is None:
            raise ValueError("no watcher configured: add a bbs, policy or cc section")
        return self


def load_watch_config(path: Path) -> WatchConfig:
    """The watcher's config file; StateError (every problem, naming file and key) if unusable."""
    return load_model_file(WatchConfig, path, what="watcher config")


class Watcher(Protocol):
    async def run(self) -> None: ...
    def resync(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class LeasedWatcher:
    """One watcher kind under its lease: `make` builds a fresh watcher for each term."""

    name: str
    make: Callable[[StatePublisher], Watcher]
    current: Watcher | None = field(default=None)

    async def run(self, nc: NATS, cfg: WatchConfig) -> None:
        """Watch whenever this replica holds the lease; return when the watcher stops, raise when it fails."""
        lease = Lease(nc, f"watch-{self.name}", ttl=cfg.lease_seconds, replicas=cfg.stream_replicas)
        while True:
            await lease.acquire()
            publisher = StatePublisher(nc, self.name, replicas=cfg.stream_replicas)
            watcher = self.current = self.make(publisher)
            watching = asyncio.create_task(watcher.run(), name=f"watch-{self.name}")
            holding = asyncio.create_task(lease.hold(), name=f"lease-{self.name}")
            guard = asyncio.create_task(_guard(publisher, watcher, cfg.state_check_seconds), name=f"guard-{self.name}")
            try:
                await asyncio.wait((watching, holding), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.stop()
                guard.cancel()
                holding.cancel()
                await asyncio.gather(watching, guard, holding, return_exceptions=True)
                self.current = None
                await lease.release()
            if watching.done() and not watching.cancelled():
                watching.result()  # the watcher ended on its own: a failure is raised, a stop returns
                return
            log.warning("%s: the lease is lost, stopped publishing; standing by", self.name)


async def _guard(publisher: StatePublisher, watcher: Watcher, every: float) -> None:
    """Re-publish everything when the state stream was lost under the watcher."""
    while True:
        await asyncio.sleep(every)
        try:
            lost = await publisher.state_plane_lost()
        except Exception as e:  # NATS trouble: the watcher itself reports it; look again later
            log.debug("state stream check failed: %r", e)
            continue
        if lost:
            watcher.resync()


async def run_watchers(cfg: WatchConfig, only: set[str] | None = None) -> None:
    """Run the configured watchers (or the subset `only`) until one gives up or we are cancelled."""
    configured = {name for name in ("bbs", "policy", "cc") if getattr(cfg, name) is not None}
    chosen = configured if only is None else configured & only
    if not chosen:
        raise InputError(f"the config file has no section for {' or '.join(sorted(only or []))}")
    nc = await connect(cfg.nats, "cfnft-watcher", inbox_prefix(Role.WATCHER))
    kinds: list[LeasedWatcher] = []
    runner = None
    spaces = None
    try:
        if cfg.metrics_listen:
            runner = await _serve_metrics(cfg.metrics_listen)
        if cfg.bbs is not None and "bbs" in chosen:
            bbs, bbs_metrics = cfg.bbs, BbsWatcherMetrics.create()  # one set of metrics for every term
            kinds.append(LeasedWatcher("bbs", lambda publisher: BbsWatcher(bbs, publisher, metrics=bbs_metrics)))
        if cfg.policy is not None and "policy" in chosen:
            policy = cfg.policy
            spaces = ContainerSpaces(nc, replicas=cfg.stream_replicas)
            await spaces.__aenter__()
            kinds.append(LeasedWatcher("policy", lambda publisher: PolicyWatcher(policy, publisher, spaces)))
        if cfg.cc is not None and "cc" in chosen:
            cc = cfg.cc
            kinds.append(LeasedWatcher("cc", lambda publisher: CcWatcher(cc, publisher)))

        async def on_resync(msg: Msg) -> None:
            log.info("resync requested on %s", msg.subject)
            for kind in kinds:
                if kind.current is not None:
                    kind.current.resync()

        await nc.subscribe(subjects.RESYNC_ALL, cb=on_resync)
        log.info("watching: %s", ", ".join(kind.name for kind in kinds))
        tasks = [asyncio.create_task(kind.run(nc, cfg), name=kind.name) for kind in kinds]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if spaces is not None:
            await spaces.__aexit__(None, None, None)
        if runner is not None:
            await runner.cleanup()
        await nc.close()


async def _serve_metrics(listen: str) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"healthy": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    return runner
