"""`cfnft watch`: the control-plane watchers (BBS, policy server, Cloud Controller) in one process.

Each enabled watcher publishes whole-state messages through its own StatePublisher. A resync
request on cfnft.resync.all makes every watcher re-list its source and publish the difference.
A watcher that gives up on its source (e.g. its client certificate is refused every time)
ends the process with exit 3 (`FatalSourceError`), so monit restarts it and the failure is
visible; the state it published stays in JetStream and the cells keep enforcing it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from nats.aio.msg import Msg
from prometheus_client import REGISTRY, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cfnft.errors import InputError
from events import subjects
from events.bbs.watcher import BbsWatcher, BbsWatcherConfig
from events.cc.watcher import CcWatcher, CcWatcherConfig
from events.connect import NatsConfig, connect
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


async def run_watchers(cfg: WatchConfig, only: set[str] | None = None) -> None:
    """Run the configured watchers (or the subset `only`) until one gives up or we are cancelled."""
    configured = {name for name in ("bbs", "policy", "cc") if getattr(cfg, name) is not None}
    chosen = configured if only is None else configured & only
    if not chosen:
        raise InputError(f"the config file has no section for {' or '.join(sorted(only or []))}")
    nc = await connect(cfg.nats, "cfnft-watcher", inbox_prefix(Role.WATCHER))
    watchers: list[BbsWatcher | PolicyWatcher | CcWatcher] = []
    runner = None
    try:
        if cfg.metrics_listen:
            runner = await _serve_metrics(cfg.metrics_listen)
        spaces = None

        def publisher() -> StatePublisher:
            return StatePublisher(nc, replicas=cfg.stream_replicas)

        if cfg.bbs is not None and "bbs" in chosen:
            watchers.append(BbsWatcher(cfg.bbs, publisher()))
        if cfg.policy is not None and "policy" in chosen:
            spaces = ContainerSpaces(nc)
            await spaces.__aenter__()
            watchers.append(PolicyWatcher(cfg.policy, publisher(), spaces))
        if cfg.cc is not None and "cc" in chosen:
            watchers.append(CcWatcher(cfg.cc, publisher()))

        async def on_resync(msg: Msg) -> None:
            log.info("resync requested on %s", msg.subject)
            for w in watchers:
                w.resync()

        await nc.subscribe(subjects.RESYNC_ALL, cb=on_resync)
        log.info("watching: %s", ", ".join(type(w).__name__ for w in watchers))
        tasks = [asyncio.create_task(w.run(), name=type(w).__name__) for w in watchers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for w in watchers:
                w.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            if spaces is not None:
                await spaces.__aexit__(None, None, None)
    finally:
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
