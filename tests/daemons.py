"""Running the real reconciler in a test: in this process, with its real endpoints (CNI socket,
/metrics /healthz /readyz), over a real nats-server, against the kernel of a lab cell or FakeNft.

Shared by the tests of hostile input (test_hostile_*.py) and state plane (test_state_plane.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.js.client import JetStreamContext

from cfnft.publish import publish_state
from events import subjects
from events.connect import NatsConfig
from events.models import load_cell_state
from lab.natsserver import free_port
from nft import FakeNft, NftRunner
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from reconciler.endpoint import start_endpoints


@dataclass
class Daemon:
    rec: Reconciler
    kernel: FakeNft | NftRunner
    socket_path: Path
    metrics_url: str

    async def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request to the CNI socket, as the plugin makes it."""
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket_path))) as s:
            async with s.request(method, f"http://cfnft{path}", json=body) as r:
                return r.status, json.loads(await r.text() or "null")

    async def ops(self, path: str) -> tuple[int, Any]:
        """One request to the metrics listener (/readyz, /healthz, /metrics)."""
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{self.metrics_url}{path}") as r:
                text = await r.text()
                return r.status, json.loads(text) if r.content_type == "application/json" else text

    def metric(self, name: str, **labels: str) -> float:
        return self.rec.metrics.registry.get_sample_value(name, labels or None) or 0.0


@contextlib.asynccontextmanager
async def running_daemon(
    tmp_path: Path, nats_url: str | None, *, netns: str | None = None, cell_id: str = "a", **overrides: Any
) -> AsyncIterator[Daemon]:
    """A reconciler for `cell_id`; the kernel of `netns`, else FakeNft; without NATS if `nats_url` is None."""
    port = free_port()
    cfg = ReconcilerConfig(
        cell_id=cell_id,
        nats=NatsConfig(servers=[nats_url or "nats://127.0.0.1:1"], insecure=True),
        netns=netns,
        socket_path=tmp_path / f"{cell_id}.sock",
        state_dir=tmp_path / f"state-{cell_id}",
        metrics_listen=f"127.0.0.1:{port}",
        **{
            "drift_probe_seconds": 0.2,
            "state_check_seconds": 0.3,
            "retry_max_seconds": 0.5,
            "consumer_heartbeat_seconds": 0.5,
            "replay_jitter_seconds": 0.1,
            **overrides,
        },
    )
    kernel: FakeNft | NftRunner = NftRunner(netns=netns) if netns else FakeNft()
    rec = Reconciler(cfg, kernel)
    runners = await start_endpoints(rec, cfg.socket_path, cfg.metrics_listen)
    task = asyncio.create_task(rec.run(with_nats=nats_url is not None))
    try:
        yield Daemon(rec, kernel, cfg.socket_path, f"http://127.0.0.1:{port}")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for r in runners:
            await r.cleanup()
        if isinstance(kernel, NftRunner):
            kernel.close()


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until `predicate()` (sync, or returning an awaitable) is true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def publish_doc(url: str, document: dict[str, Any], prune: bool = False) -> None:
    """Publish a cell state document as `cfnft publish` does (its epoch marker included)."""
    nc = await nats.connect(url)
    try:
        await publish_state(nc, load_cell_state(document), prune=prune)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    """JetStream on a connection of its own, closed afterwards: a test's own requests to the server."""
    nc = await nats.connect(url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def publish_raw(url: str, *messages: tuple[str, object]) -> None:
    """Publish (subject, JSON payload or bytes) pairs as they are, with no model in between: what a
    publisher without our models, or with bad intent, could put on the state stream."""
    async with jetstream(url) as js:
        for subject, payload in messages:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            await js.publish(subject, data, stream=subjects.STATE_STREAM)
