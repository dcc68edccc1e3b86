"""CNI ADD latency on a full cell: the plugin process from start to exit, which includes the
reconciler committing the new container's rules (ADD answers only then)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import nats

from cfnft.publish import publish_state
from events.connect import NatsConfig
from events.models import load_cell_state
from lab.bench.cniprocess import AddReport, StartupReport, measure_add_latency, measure_startup
from lab.bench.kernel import namespace
from lab.bench.running import in_sync
from lab.natsserver import NatsServer
from nft import NftRunner
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from reconciler.endpoint import start_endpoints


def cni_add_latency(doc: dict, containers: int = 100) -> tuple[AddReport, StartupReport]:
    startup = measure_startup(20)
    with tempfile.TemporaryDirectory(prefix="cfnft-bench-") as tmp, NatsServer(Path(tmp) / "nats") as server:
        return asyncio.run(_adds(doc, containers, server.url, Path(tmp))), startup


async def _adds(doc: dict, containers: int, url: str, tmp: Path) -> AddReport:
    state = load_cell_state(doc)
    nc = await nats.connect(url)
    await publish_state(nc, state)
    await nc.close()
    socket = tmp / "cni.sock"
    with namespace("cni") as ns, NftRunner(netns=ns) as runner:
        cfg = ReconcilerConfig(
            cell_id=state.cell_id,
            nats=NatsConfig(servers=[url], insecure=True),
            netns=ns,
            socket_path=socket,
            state_dir=tmp / "state",
            metrics_listen="",
            drift_probe_seconds=3600,
        )
        rec = Reconciler(cfg, runner)
        sites = await start_endpoints(rec, socket, None)
        try:
            async with in_sync(rec, timeout=120):
                return await asyncio.to_thread(
                    measure_add_latency,
                    str(socket),
                    containers,
                    app_guid=state.containers[0].app_guid,
                    space_guid=state.containers[0].space_guid,
                )
        finally:
            for site in sites:
                await site.cleanup()
