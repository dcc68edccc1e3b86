"""NATS publish -> kernel commit on a full cell, and the reconciler's memory there.

Latency: a real nats-server, the reconciler in this process (so the commit moment is known
exactly), `NftRunner` in a namespace. Each sample publishes one whole-state c2c message that
adds or removes one policy, and ends when the reconciler has committed the transaction that
contains it. Memory: the same full cell served by a `cfnft reconcile` process of its own,
VmRSS read from /proc once it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nats

from cfnft.publish import publish_state
from events.connect import NatsConfig
from events.messages import C2CPoliciesMessage
from events.models import C2CPolicy, load_cell_state
from lab.bench.incremental import Latencies
from lab.bench.kernel import namespace
from lab.natsserver import NatsServer, free_port
from nft import NftRunner
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler


def end_to_end(doc: dict, changes: int = 200) -> tuple[Latencies, int]:
    with tempfile.TemporaryDirectory(prefix="cfnft-bench-") as tmp, NatsServer(Path(tmp) / "nats") as server:
        latencies = asyncio.run(_latencies(doc, changes, server.url, Path(tmp)))
        rss = _reconciler_rss(server.url, Path(tmp), doc["cell_id"])
    return latencies, rss


async def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the reconciler did not get there in time")
        await asyncio.sleep(0.0002)


async def _latencies(doc: dict, changes: int, url: str, tmp: Path) -> Latencies:
    state = load_cell_state(doc)
    nc = await nats.connect(url)
    await publish_state(nc, state)
    with namespace("e2e") as ns, NftRunner(netns=ns) as runner:
        cfg = ReconcilerConfig(
            cell_id=state.cell_id,
            nats=NatsConfig(servers=[url]),
            netns=ns,
            socket_path=tmp / "e2e.sock",
            state_dir=tmp / "state",
            drift_probe_seconds=3600,
        )
        rec = Reconciler(cfg, runner)
        task = asyncio.create_task(rec.run())
        try:
            await _wait(lambda: rec.ready)
            js = nc.jetstream()
            target = state.containers[0].app_guid
            existing = [p for p in state.c2c_policies if p.destination.id == target]
            extra = C2CPolicy.model_validate(
                {
                    "source": {"id": state.containers[1].app_guid},
                    "destination": {"id": target, "protocol": "tcp", "ports": {"start": 7777, "end": 7777}},
                }
            )
            samples = []
            for i in range(changes):
                policies = existing + ([extra] if i % 2 == 0 else [])
                msg = C2CPoliciesMessage(version=time.time_ns(), destination_app_guid=target, policies=policies)
                subject = msg.subject()
                t0 = time.perf_counter()
                await js.publish(subject, msg.model_dump_json().encode())
                await _wait(lambda: rec.store.versions.get(subject) == msg.version)
                generation = rec.generation
                await _wait(lambda: rec.committed_generation >= generation)
                samples.append(time.perf_counter() - t0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await nc.close()
    return Latencies(samples)


def _reconciler_rss(url: str, tmp: Path, cell_id: str) -> int:
    port = free_port()
    with namespace("rss") as ns:
        config = tmp / "rss.json"
        config.write_text(
            json.dumps(
                {
                    "cell_id": cell_id,
                    "nats": {"servers": [url]},
                    "netns": ns,
                    "socket_path": str(tmp / "rss.sock"),
                    "state_dir": str(tmp / "rss-state"),
                    "metrics_listen": f"127.0.0.1:{port}",
                }
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "cfnft.cli", "reconcile", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                        break
                except OSError:
                    time.sleep(0.2)
            else:
                raise TimeoutError("the reconciler process did not become ready")
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
        finally:
            proc.terminate()
            proc.wait(timeout=10)
