"""NATS publish -> kernel commit on a full cell, and the reconciler's memory there.

Latency: a real nats-server, the reconciler in this process (so the commit moment is known
exactly), `NftRunner` in a namespace. Each sample publishes one whole-state c2c message that
adds or removes one policy, and ends when the reconciler has committed the transaction that
contains it. Memory: the same full cell served by a `cfnft reconcile` process of its own,
VmRSS read from /proc once it is ready.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from cfnft.publish import publish_state
from events.connect import NatsConfig
from events.messages import C2CPoliciesMessage
from events.models import C2CPolicy, CellState, load_cell_state
from lab.bench.incremental import Latencies
from lab.bench.kernel import namespace
from lab.bench.process import reconcile_process, rss, write_config
from lab.bench.running import in_sync, wait_until
from lab.natsserver import NatsServer
from nft import NftRunner
from reconciler.compact import StoredPolicies
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler


def end_to_end(doc: dict, changes: int = 200) -> tuple[Latencies, int]:
    with tempfile.TemporaryDirectory(prefix="cfnft-bench-") as tmp, NatsServer(Path(tmp) / "nats") as server:
        latencies = asyncio.run(_latencies(doc, changes, server.url, Path(tmp)))
        rss = _reconciler_rss(server.url, Path(tmp), doc["cell_id"])
    return latencies, rss


async def _latencies(doc: dict, changes: int, url: str, tmp: Path) -> Latencies:
    state = load_cell_state(doc)
    nc = await nats.connect(url)
    await publish_state(nc, state)
    with namespace("e2e") as ns, NftRunner(netns=ns) as runner:
        cfg = ReconcilerConfig(
            cell_id=state.cell_id,
            nats=NatsConfig(servers=[url], insecure=True),
            netns=ns,
            socket_path=tmp / "e2e.sock",
            state_dir=tmp / "state",
            drift_probe_seconds=3600,
        )
        try:
            async with in_sync(Reconciler(cfg, runner)) as rec:
                js = nc.jetstream()

                async def publish(msg: C2CPoliciesMessage) -> None:
                    await js.publish(msg.subject(), msg.model_dump_json().encode())

                samples = [await publish_to_commit(rec, state, i, publish) for i in range(changes)]
        finally:
            await nc.close()
    return Latencies(samples)


def c2c_change(state: CellState, i: int, port: int = 7777) -> C2CPoliciesMessage:
    """Change i: the c2c policies of the first container's app, with one extra policy (to `port`) on even i."""
    target = state.containers[0].app_guid
    existing = [p for p in state.c2c_policies if p.destination.id == target]
    extra = C2CPolicy.model_validate(
        {
            "source": {"id": state.containers[1].app_guid},
            "destination": {"id": target, "protocol": "tcp", "ports": {"start": port, "end": port}},
        }
    )
    policies = existing + ([extra] if i % 2 == 0 else [])
    return C2CPoliciesMessage(version=time.time_ns(), destination_app_guid=target, policies=policies)


async def committed(rec: Reconciler, msg: C2CPoliciesMessage) -> None:
    """Until the reconciler holds `msg`'s policies and has committed the transaction that contains them.
    (By content: the store orders messages by stream sequence, and each change differs from the last.)"""
    wanted = StoredPolicies.of(msg.policies)
    await wait_until(lambda: rec.store.c2c.get(msg.destination_app_guid) == wanted)
    generation = rec.generation
    await wait_until(lambda: rec.committed_generation >= generation)


async def publish_to_commit(
    rec: Reconciler, state: CellState, i: int, publish: Callable[[C2CPoliciesMessage], Awaitable[None]]
) -> float:
    """Seconds from publishing change i to the kernel commit that enforces it."""
    msg = c2c_change(state, i)
    t0 = time.perf_counter()
    await publish(msg)
    await committed(rec, msg)
    return time.perf_counter() - t0


def _reconciler_rss(url: str, tmp: Path, cell_id: str) -> int:
    with namespace("rss") as ns:
        config = tmp / "rss.json"
        port = write_config(config, cell_id, url, ns)
        with reconcile_process(config, port, timeout=120) as reconciler:
            return rss(reconciler.pid)
