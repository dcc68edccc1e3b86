"""The cell reconciler against a real nats-server, a real kernel and real packets.

The reconciler runs in-process (an asyncio task, `NftRunner` inside the cell namespace) except
where a test needs a real process to kill; state is published with `cfnft.publish`, exactly as
watchers and operators publish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import nats
import pytest

from cfnft.publish import publish_state
from events import subjects
from events.connect import NatsConfig
from events.messages import SecurityGroupMessage
from events.models import load_cell_state
from lab.natsserver import wait_connection
from lab.netlab import Lab, Outcome, assert_reachability, probe_many
from nft import NftRunner
from reconciler.compile import TABLE
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from tests.running import running

OPEN, REJECTED = Outcome.OPEN, Outcome.REJECTED
WEB, API = "app-web", "app-api"


def sg(guid, dest, ports="80", running=True, spaces=()):
    return {
        "guid": guid,
        "name": guid,
        "rules": [{"protocol": "tcp", "destination": dest, "ports": ports}],
        "globally_enabled": {"running": running, "staging": False},
        "relationships": {"running_spaces": {"data": [{"guid": s} for s in spaces]}},
    }


def c2c(src, dst, port):
    return {"source": {"id": src}, "destination": {"id": dst, "protocol": "tcp", "ports": {"start": port, "end": port}}}


def state_doc(cell_name, ctrs, groups=(), policies=(), space="space-1"):
    return {
        "cell_id": cell_name,
        "containers": [
            {"handle": name, "ip": str(c.ip), "app_guid": app, "space_guid": space, "workload": "app"}
            for name, (c, app) in ctrs.items()
        ],
        "security_groups": list(groups),
        "c2c_policies": list(policies),
    }


async def publish(url, doc, prune=False):
    nc = await nats.connect(url)
    try:
        await publish_state(nc, load_cell_state(doc), prune=prune)
    finally:
        await nc.close()


async def eventually(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(predicate) if not asyncio.iscoroutinefunction(predicate) else await predicate()
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def reachable(netns, target, outcome):
    """A predicate for `eventually`: the probe currently gives `outcome`."""
    from lab.netlab import probe_many

    return lambda: probe_many(netns, [target], timeout=0.3)[0].outcome is outcome


@pytest.fixture
def cell_lab():
    with Lab(ipv6=False) as lab:
        cell = lab.add_cell("a")
        lab.add_internet()
        web, api = cell.add_container("web0"), cell.add_container("api0")
        api.listen(tcp=[8080])
        yield lab, cell, {"web0": (web, WEB), "api0": (api, API)}


@contextlib.asynccontextmanager
async def running_reconciler(url, cell, tmp_path, **overrides):
    cfg = ReconcilerConfig(
        cell_id=cell.cell_name,
        nats=NatsConfig(servers=[url], insecure=True),
        netns=cell.name,
        socket_path=tmp_path / f"{cell.cell_name}.sock",
        state_dir=tmp_path / f"state-{cell.cell_name}",
        drift_probe_seconds=0.2,
        consumer_heartbeat_seconds=0.5,
        **overrides,
    )
    runner = NftRunner(netns=cell.name)
    try:
        async with running(Reconciler(cfg, runner)) as rec:
            yield rec
    finally:
        runner.close()


async def test_published_state_is_enforced_and_changes_take_effect_live(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web, api = ctrs["web0"][0], ctrs["api0"][0]
    doc = state_doc("a", ctrs, [sg("public", "192.0.2.10")])
    await publish(nats_server.url, doc)
    async with running_reconciler(nats_server.url, cell, tmp_path) as rec:
        await eventually(lambda: rec.ready, what="in sync")
        await asyncio.to_thread(
            assert_reachability,
            web,
            {
                ("tcp", "192.0.2.10", 80): OPEN,
                ("tcp", "192.0.2.11", 80): REJECTED,
                ("tcp", str(api.ip), 8080): REJECTED,
            },
        )
        # A security group edit reaches the running container: no restart, no CNI call.
        doc["security_groups"] = [sg("public", "192.0.2.11")]
        await publish(nats_server.url, doc)
        await eventually(reachable(web, ("tcp", "192.0.2.11", 80), OPEN), what="edited ASG enforced")
        await asyncio.to_thread(assert_reachability, web, {("tcp", "192.0.2.10", 80): REJECTED})
        # A c2c policy toggles app-to-app traffic.
        doc["c2c_policies"] = [c2c(WEB, API, 8080)]
        await publish(nats_server.url, doc)
        await eventually(reachable(web, ("tcp", str(api.ip), 8080), OPEN), what="c2c policy enforced")
        doc["c2c_policies"] = []
        await publish(nats_server.url, doc)
        await eventually(reachable(web, ("tcp", str(api.ip), 8080), REJECTED), what="c2c policy removed")
        assert rec.metrics.registry.get_sample_value("cfnft_event_to_enforced_seconds_count") > 0


async def test_table_flushed_or_deleted_from_outside_is_repaired(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    await publish(nats_server.url, state_doc("a", ctrs, [sg("public", "192.0.2.10")]))
    async with running_reconciler(nats_server.url, cell, tmp_path) as rec:
        await eventually(lambda: rec.ready, what="in sync")
        cell.run(["nft", "flush", "table", "inet", "cfnft"])
        await eventually(reachable(web, ("tcp", "192.0.2.10", 80), OPEN), timeout=5, what="repair after flush")
        await eventually(reachable(web, ("tcp", "192.0.2.11", 80), REJECTED), timeout=5, what="deny after flush")
        cell.run(["nft", "delete", "table", "inet", "cfnft"])
        await eventually(reachable(web, ("tcp", "192.0.2.11", 80), REJECTED), timeout=5, what="repair after delete")
        assert rec.metrics.registry.get_sample_value("cfnft_drift_repairs_total") >= 2


async def test_malformed_message_is_skipped_and_the_rest_keeps_working(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    await publish(nats_server.url, state_doc("a", ctrs, [sg("public", "192.0.2.10")]))
    async with running_reconciler(nats_server.url, cell, tmp_path) as rec:
        await eventually(lambda: rec.ready, what="in sync")
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.publish(subjects.security_group("broken"), b'{"kind":"asg","version":1,"guid":"broken","x":1}')
        good = SecurityGroupMessage(
            version=time.time_ns(),
            guid="other",
            security_group=load_cell_state(
                {"containers": [], "security_groups": [sg("other", "192.0.2.12")]}
            ).security_groups[0],
        )
        await js.publish(good.subject(), good.model_dump_json().encode())
        # One bad rule in a group costs that rule only: the group's good rule is enforced.
        mixed = sg("mixed", "192.0.2.14")
        mixed["rules"].insert(0, {"protocol": "tcp", "destination": "192.0.2.15", "ports": "90-80"})
        raw = {"kind": "asg", "version": time.time_ns(), "guid": "mixed", "security_group": mixed}
        await js.publish(subjects.security_group("mixed"), json.dumps(raw).encode())
        await nc.close()
        await eventually(reachable(web, ("tcp", "192.0.2.12", 80), OPEN), what="good message after a bad one")
        await eventually(reachable(web, ("tcp", "192.0.2.14", 80), OPEN), what="good rule of a group with a bad one")
        assert rec.metrics.registry.get_sample_value("cfnft_bad_messages_total") == 2


async def test_nats_outage_keeps_enforcing_and_catches_up(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    doc = state_doc("a", ctrs, [sg("public", "192.0.2.10")])
    await publish(nats_server.url, doc)
    async with running_reconciler(nats_server.url, cell, tmp_path) as rec:
        await eventually(lambda: rec.ready, what="in sync")
        await asyncio.to_thread(nats_server.stop)
        await eventually(lambda: not rec.nc.is_connected, what="reconciler notices the outage")
        await asyncio.to_thread(
            assert_reachability, web, {("tcp", "192.0.2.10", 80): OPEN, ("tcp", "192.0.2.11", 80): REJECTED}
        )
        # Bring NATS back and change things before the reconciler has reconnected.
        await asyncio.to_thread(nats_server.start)
        doc["security_groups"] = [sg("public", "192.0.2.11"), sg("second", "192.0.2.13")]
        await publish(nats_server.url, doc)
        doc["security_groups"] = [sg("public", "192.0.2.11")]
        doc["c2c_policies"] = [c2c(WEB, API, 8080)]
        await publish(nats_server.url, doc, prune=True)
        await wait_connection(rec.nc, connected=True)
        api = ctrs["api0"][0]
        # Every change published during the outage arrives.
        await eventually(reachable(web, ("tcp", str(api.ip), 8080), OPEN), what="c2c added during the outage")
        await eventually(reachable(web, ("tcp", "192.0.2.13", 80), REJECTED), what="group deleted during the outage")
        await eventually(reachable(web, ("tcp", "192.0.2.10", 80), REJECTED), what="group edited during the outage")
        await asyncio.to_thread(assert_reachability, web, {("tcp", "192.0.2.11", 80): OPEN})
        # Caught up by resuming where it was, the deletion included, not by replaying the stream.
        samples = rec.metrics.registry.get_sample_value
        assert samples("cfnft_stream_full_replays_total") == 1
        assert (samples("cfnft_stream_resumes_total") or 0) >= 1


async def test_two_reconcilers_enforce_only_their_own_cells(nats_server, tmp_path):
    with Lab(ipv6=False) as lab:
        a, b = lab.add_cell("a"), lab.add_cell("b")
        lab.add_internet()
        wa, wb = a.add_container("wa"), b.add_container("wb")
        bound = sg("bound", "192.0.2.10", running=False, spaces=["space-1"])
        await publish(nats_server.url, state_doc("a", {"wa": (wa, WEB)}, [bound]))
        await publish(nats_server.url, state_doc("b", {"wb": (wb, API)}, [bound], space="space-2"))
        async with (
            running_reconciler(nats_server.url, a, tmp_path) as ra,
            running_reconciler(nats_server.url, b, tmp_path) as rb,
        ):
            await eventually(lambda: ra.ready and rb.ready, what="both in sync")
            assert ra.store.summary()["containers"] == 1 and rb.store.summary()["containers"] == 1
            await asyncio.to_thread(assert_reachability, wa, {("tcp", "192.0.2.10", 80): OPEN})
            await asyncio.to_thread(assert_reachability, wb, {("tcp", "192.0.2.10", 80): REJECTED})
            kernel_b = NftRunner(netns=b.name)
            try:
                egress_b = kernel_b.read(TABLE).elements["egress4"]
            finally:
                kernel_b.close()
            assert {e.key[0].start for e in egress_b.values()} == {wb.ip}


def _spawn_reconciler(url, cell, tmp_path, metrics_port, **extra):
    cfg = extra | {
        "cell_id": cell.cell_name,
        "nats": {"servers": [url], "insecure": True},
        "netns": cell.name,
        "socket_path": str(tmp_path / "r.sock"),
        "state_dir": str(tmp_path / "state"),
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "drift_probe_seconds": 0.2,
    }
    path = tmp_path / "reconciler.json"
    path.write_text(json.dumps(cfg))
    return subprocess.Popen(
        [sys.executable, "-m", "cfnft.cli", "reconcile", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "reconciler.log", "a"),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def _metric(port, name):
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _ready(port):
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


async def _ready_process(url, cell, ctrs, tmp_path):
    """A `cfnft reconcile` process of its own, ready on a published state (group `public` allows 192.0.2.10)."""
    from lab.natsserver import free_port

    await publish(url, state_doc("a", ctrs, [sg("public", "192.0.2.10")]))
    port = free_port()
    proc = _spawn_reconciler(url, cell, tmp_path, port)
    try:
        await eventually(lambda: _ready(port), timeout=20, what="reconciler ready")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, port


async def test_kill_9_keeps_rules_and_restart_writes_nothing_when_nothing_changed(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    proc, port = await _ready_process(nats_server.url, cell, ctrs, tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await asyncio.to_thread(
            assert_reachability, web, {("tcp", "192.0.2.10", 80): OPEN, ("tcp", "192.0.2.11", 80): REJECTED}
        )
        before = cell.run(["nft", "-a", "-s", "list", "table", "inet", "cfnft"]).stdout
        stop = threading.Event()
        seen: list[tuple[Outcome, Outcome]] = []

        def probe_loop():
            while not stop.is_set():
                r = probe_many(web, [("tcp", "192.0.2.11", 80), ("tcp", "192.0.2.10", 80)], timeout=0.3)
                seen.append((r[0].outcome, r[1].outcome))

        prober = threading.Thread(target=probe_loop)
        prober.start()
        try:
            proc = _spawn_reconciler(nats_server.url, cell, tmp_path, port)
            await eventually(lambda: _ready(port), timeout=20, what="restarted reconciler ready")
        finally:
            stop.set()
            prober.join()
        assert seen and all(denied is REJECTED and allowed is OPEN for denied, allowed in seen), seen
        assert _metric(port, 'cfnft_reconcile_duration_seconds_count{outcome="changed"}') == 0
        after = cell.run(["nft", "-a", "-s", "list", "table", "inet", "cfnft"]).stdout
        assert before == after, "a restart with nothing changed must not write the kernel"
    finally:
        proc.kill()
        proc.wait()


async def test_sigterm_saves_the_last_commit_so_a_restart_without_nats_enforces_it(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    proc, port = await _ready_process(nats_server.url, cell, ctrs, tmp_path)
    try:
        # Two changes in a row: the second is committed within the save loop's second, so only the
        # way out of a stopped reconciler writes it.
        for allowed in (["192.0.2.10", "192.0.2.11"], ["192.0.2.11"]):
            await publish(nats_server.url, state_doc("a", ctrs, [sg("public", ",".join(allowed))]))
            await eventually(reachable(web.name, ("tcp", "192.0.2.11", 80), OPEN), what="the change enforced")
        await eventually(reachable(web.name, ("tcp", "192.0.2.10", 80), REJECTED), what="the last change enforced")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        proc.kill()
        proc.wait()
    nats_server.stop()
    cell.run(["nft", "delete", "table", "inet", "cfnft"])
    proc = _spawn_reconciler(nats_server.url, cell, tmp_path, port)
    try:
        await eventually(lambda: _ready(port), timeout=20, what="restarted without NATS, ready on the saved state")
        await asyncio.to_thread(
            assert_reachability, web, {("tcp", "192.0.2.11", 80): OPEN, ("tcp", "192.0.2.10", 80): REJECTED}
        )
    finally:
        proc.kill()
        proc.wait()


async def test_status_answers_and_resync_repairs_element_drift_the_cheap_probe_cannot_see(
    nats_server, cell_lab, tmp_path
):
    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    await publish(nats_server.url, state_doc("a", ctrs, [sg("public", "192.0.2.10")]))
    async with running_reconciler(nats_server.url, cell, tmp_path, full_check_seconds=3600) as rec:
        await eventually(lambda: rec.ready, what="in sync")

        def cli(*args):
            return subprocess.run(
                [sys.executable, "-m", "cfnft.cli", *args, "--nats-url", nats_server.url, "--nats-insecure"],
                capture_output=True,
                text=True,
                timeout=30,
            )

        status = await asyncio.to_thread(cli, "status", "--cell", "a")
        assert status.returncode == 0, status.stderr
        body = json.loads(status.stdout)
        assert body["in_sync"] is True and body["state"]["containers"] == 2 and body["table"]["elements"] > 0
        missing = await asyncio.to_thread(cli, "status", "--cell", "nope", "--timeout", "0.5")
        assert missing.returncode == 3 and "no reconciler for cell nope" in missing.stderr

        # An element deleted behind our back: the structure probe cannot see it, a resync can.
        cell.run(["nft", "delete", "element", "inet", "cfnft", "sg-public-ports4", "{ 192.0.2.10 . 6 . 80 }"])
        await eventually(reachable(web, ("tcp", "192.0.2.10", 80), REJECTED), what="the deletion bites")
        resync = await asyncio.to_thread(cli, "resync", "--cell", "a")
        assert resync.returncode == 0, resync.stderr
        await eventually(reachable(web, ("tcp", "192.0.2.10", 80), OPEN), what="resync repaired the element")
