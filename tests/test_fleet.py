"""Fleet-wide realization: `cfnft status --all` / `--object` over several real reconcilers on one
nats-server, and the programming-latency metric observing a publish.

The reconcilers run in-process on the in-memory kernel (FakeNft): what is measured here is what
each cell reports having committed, not packets (those are tests/test_reconciler.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys

import nats
import pytest

from cfnft.publish import publish_state
from events.connect import NatsConfig
from events.messages import SecurityGroupMessage
from events.models import SecurityGroup, load_cell_state
from nft import FakeNft
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from tests.test_reconciler import eventually


def group(dest):
    return {
        "guid": "public",
        "name": "public",
        "rules": [{"protocol": "tcp", "destination": dest, "ports": "443"}],
        "globally_enabled": {"running": True},
    }


def cell_doc(cell, n):
    return {
        "cell_id": cell,
        "containers": [
            {"handle": f"{cell}-c", "ip": f"10.255.{n}.2", "app_guid": "app-web", "space_guid": "s", "workload": "app"}
        ],
        "security_groups": [group("192.0.2.10")],
    }


@contextlib.asynccontextmanager
async def reconcilers(url, tmp_path, cells):
    recs, tasks = {}, []
    for cell in cells:
        cfg = ReconcilerConfig(
            cell_id=cell,
            nats=NatsConfig(servers=[url], insecure=True),
            socket_path=tmp_path / f"{cell}.sock",
            state_dir=tmp_path / cell,
            give_up_after_failures=1000,
            retry_max_seconds=0.2,
        )
        recs[cell] = Reconciler(cfg, FakeNft())
        tasks.append(asyncio.create_task(recs[cell].run()))
    try:
        yield recs
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def cfnft(url, *args):
    argv = [
        sys.executable,
        "-m",
        "cfnft.cli",
        "status",
        "--nats-url",
        url,
        "--nats-insecure",
        "--timeout",
        "0.5",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True)


def latency_count(rec):
    return rec.metrics.registry.get_sample_value("cfnft_programming_latency_seconds_count") or 0.0


async def test_status_all_and_object_report_in_sync_lagging_and_unreachable_cells(nats_server, tmp_path):
    nc = await nats.connect(nats_server.url)
    try:
        for n, cell in enumerate(("a", "b", "c"), start=1):  # "c" has containers but no reconciler
            await publish_state(nc, load_cell_state(cell_doc(cell, n)))
        async with reconcilers(nats_server.url, tmp_path, ["a", "b"]) as recs:
            await eventually(lambda: all(r.ready for r in recs.values()), what="both cells in sync")
            base = await asyncio.to_thread(cfnft, nats_server.url, "--object", "asg:public")
            assert base.returncode == 1 and "enforced on 2 of 3 cells" in base.stdout, base.stdout
            assert "unreachable: c" in base.stdout

            recs["b"].runner.fail_next(10_000)  # cell b's kernel refuses every change from now on
            before = latency_count(recs["a"])
            edited = SecurityGroup.model_validate(group("192.0.2.11"))
            edit = SecurityGroupMessage(guid="public", security_group=edited)
            ack = await nc.jetstream().publish(edit.subject(), edit.model_dump_json().encode())  # no observed_at
            version = ack.seq  # an object's version is the stream sequence of its last message
            await eventually(
                lambda: recs["a"].committed_generation == recs["a"].generation and recs["b"].dataplane.failures > 1
            )

            everything = await asyncio.to_thread(cfnft, nats_server.url, "--all")
            lines = everything.stdout.splitlines()
            assert everything.returncode == 1, everything.stderr
            assert lines[0].split()[:3] == ["a", "in", "sync"], lines
            assert lines[1].split()[:2] == ["b", "lagging"] and "1 change not committed" in lines[1], lines
            assert lines[2].split()[:2] == ["c", "unreachable"], lines
            assert lines[3] == "1 of 3 cells in sync"

            one = await asyncio.to_thread(cfnft, nats_server.url, "--object", "asg:public", "--json")
            answer = json.loads(one.stdout)
            assert answer["version"] == version and answer["cells"]["a"]["enforced"]["version"] == version
            text = await asyncio.to_thread(cfnft, nats_server.url, "--object", "asg:public")
            assert f"asg.public version {version}: enforced on 1 of 3 cells" in text.stdout
            assert "lagging: b (not this version yet)" in text.stdout and "unreachable: c" in text.stdout
            assert latency_count(recs["a"]) == before, "a message without observed_at is not a latency sample"

            # A publish through the publisher carries the time it was observed: one latency sample.
            await publish_state(nc, load_cell_state(cell_doc("a", 1) | {"security_groups": [group("192.0.2.12")]}))
            await eventually(lambda: latency_count(recs["a"]) == before + 1, what="a latency sample")
            assert recs["a"].metrics.registry.get_sample_value("cfnft_programming_latency_seconds_sum") < 60

            recs["b"].runner.heal()  # the kernel accepts again: b catches up by itself
            await eventually(lambda: recs["b"].ready, what="b in sync")
            healed = await asyncio.to_thread(cfnft, nats_server.url, "--all", "--expect", "a")
            assert healed.stdout.splitlines()[1].split()[:3] == ["b", "in", "sync"], healed.stdout
    finally:
        await nc.close()


@pytest.mark.parametrize("spec", ["asg:", "space:x"])
def test_bad_object_specs_are_bad_input(spec):
    proc = subprocess.run(
        [sys.executable, "-m", "cfnft.cli", "status", "--object", spec], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "expected asg:GUID" in proc.stderr and "Traceback" not in proc.stderr
