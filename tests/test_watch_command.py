"""`cfnft watch` as an operator runs it: a process with a config file, against the simulators."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import nats
import pytest

from events import subjects
from events.publisher import StatePublisher
from lab.pki import make_pki
from lab.sim.bbs import BbsSimulator
from lab.sim.policy import C2CPolicySpec, PolicyServerSimulator

pytestmark = pytest.mark.nats


def cfnft(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnft.cli", *args], capture_output=True, text=True, timeout=30, **kw)


def test_a_config_taking_asgs_from_two_sources_is_refused(tmp_path):
    path = tmp_path / "w.json"
    files = {"ca_file": "/x", "cert_file": "/x", "key_file": "/x"}
    path.write_text(
        json.dumps({"policy": files, "cc": {"api_url": "https://a", "uaa_url": "https://u", "client_secret": "s"}})
    )
    out = cfnft("watch", "--config", str(path))
    assert out.returncode == 2 and "both the policy server and Cloud Controller" in out.stderr
    assert "Traceback" not in out.stderr


async def test_watch_publishes_bbs_and_policy_state_and_answers_resync(nats_server, tmp_path):
    pki = make_pki(tmp_path / "pki", "bbs.service.cf.internal")
    client = pki.client
    async with BbsSimulator(pki.server) as bbs, PolicyServerSimulator(pki.server) as policy:
        tls = {"ca_file": str(client.ca), "cert_file": str(client.cert), "key_file": str(client.key)}
        config = tmp_path / "watcher.json"
        config.write_text(
            json.dumps(
                {
                    "nats": {"servers": [nats_server.url], "insecure": True},
                    "metrics_listen": "",
                    "bbs": {"url": bbs.url, **tls},
                    "policy": {"url": policy.url, **tls, "poll_interval": 0.1, "asg_poll_interval": 0.1},
                }
            )
        )
        pg = bbs.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
        policy.add_c2c_policy(C2CPolicySpec("app-2", "app-1", "tcp", 8080, 8080))
        proc = subprocess.Popen(
            [sys.executable, "-m", "cfnft.cli", "watch", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "watch.log", "w"),
        )
        nc = await nats.connect(nats_server.url)
        try:
            publisher = StatePublisher(nc, "test-reader")

            async def published(prefix: str) -> set[str]:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    found = {s for s in await publisher.load_published() if s.startswith(prefix)}
                    if found:
                        return found
                    await asyncio.sleep(0.2)
                raise AssertionError(f"nothing on {prefix}: {(tmp_path / 'watch.log').read_text()[-2000:]}")

            containers = await published(f"{subjects.STATE_PREFIX}.container.cell-a.")
            instance = bbs.instance(pg, 0).actual_lrp_instance_key.instance_guid
            assert containers == {subjects.container("cell-a", instance)}
            assert await published(subjects.c2c_policies("app-1")) == {subjects.c2c_policies("app-1")}
            await nc.publish(subjects.RESYNC_ALL, b'{"reason": "test"}')
            await nc.flush()
            deadline = time.monotonic() + 10
            while "resync requested" not in (tmp_path / "watch.log").read_text():
                assert time.monotonic() < deadline, "the watcher did not take the resync request"
                await asyncio.sleep(0.1)
            assert proc.poll() is None, "the watcher keeps running"
        finally:
            await nc.close()
            proc.terminate()
            proc.wait(timeout=10)
