"""The load on the policy server at 6,000 security groups: cfnft's policy watcher next to a fleet of
vxlan-policy-agents, measured side by side against the simulator (requests and response bytes it served).

The foundation: 6,000 groups — 10 global defaults, the rest each bound to one to three of 1,000
spaces (a third also for staging), three rules each — and 1,000 cells, each with containers of 10
spaces. What is measured, on the `security_groups` route unless said otherwise:

- the agents: one ASG cycle of every cell — `GET security_groups?per_page=5000&space_guids=<its
  spaces>`, as the agent sends it (the server ignores `per_page`, so one page) — over one mutual-TLS
  session; an agent does that every `asg_poll_interval_seconds` (60), so the fleet's rate is that
  cycle's cost / 60 s. Their c2c check (`policies_last_updated` every 5 s per cell) is shown beside.
- cfnft without a trigger: the real PolicyWatcher (a real nats-server behind it) listing every space
  that has containers, at the old default interval of 1 s, for `period` seconds; from it the cost of
  one listing, and so the rate at any interval.
- cfnft with CC's `asg_latest_update` as the trigger, idle for `period` seconds (safety listings
  aside, nothing reaches the policy server), and through one change: CC's stamp moves, the
  simulated asg-syncer copies the change `syncer_lag` seconds later; listings until it is published.

Everything runs in this process on one event loop, the simulators included, so rates are what the
watcher achieved on this machine while also serving as the policy server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import nats
from prometheus_client import REGISTRY
from pydantic import SecretStr

from events import subjects
from events.asgsync import ASG_SUBJECT_PREFIX
from events.cc.stamp import AsgTriggerConfig
from events.policy.spaces import StaticSpaces
from events.policy.watcher import PolicyWatcher, PolicyWatcherConfig
from events.publisher import StatePublisher
from events.tls import client_context
from lab.natsserver import NatsServer
from lab.pki import Pki, make_pki
from lab.sim.cc import CcRoute, CloudControllerSimulator
from lab.sim.policy import PolicyRoute, PolicyServerSimulator

GROUPS = 6000
DEFAULT_GROUPS = 10
SPACES = 1000
CELLS = 1000
SPACES_PER_CELL = 10
AGENT_ASG_INTERVAL = 60.0  # silk-release jobs/vxlan-policy-agent/spec, asg_poll_interval_seconds
AGENT_C2C_INTERVAL = 5.0  # policy_poll_interval_seconds
API = "/networking/v1/internal"


@dataclass(frozen=True, slots=True)
class Load:
    """What one client puts on the policy server."""

    requests_per_s: float
    bytes_per_s: float


@dataclass(frozen=True, slots=True)
class PolicyLoad:
    groups: int
    cells: int
    listing_requests: int  # one cfnft listing: requests (space batches x pages)
    listing_bytes: int  # ... and response bytes
    agents_asg: Load  # the fleet's ASG polling
    agents_c2c: Load  # the fleet's policies_last_updated checks
    cfnft_untriggered_1s: Load  # measured
    cfnft_triggered_idle: Load  # measured: what reaches the policy server while CC's stamp stands still
    stamp_reads_per_s: float  # ... while CC is asked this often (on CC, not on the policy server)
    change_listings: int  # measured: listings from CC's stamp moving to the change published
    change_seconds: float  # ... and how long that took (syncer lag included)
    syncer_lag: float

    def untriggered(self, interval: float) -> Load:
        return Load(self.listing_requests / interval, self.listing_bytes / interval)

    def triggered(self, changes_per_hour: float, resync_interval: float = 600.0) -> Load:
        """The average with the trigger: listings for each change plus the safety listings."""
        listings_per_s = changes_per_hour * self.change_listings / 3600 + 1 / resync_interval
        return Load(listings_per_s * self.listing_requests, listings_per_s * self.listing_bytes)


def foundation(seed: int = 14) -> tuple[list[tuple[str, list[dict], bool, list[str], list[str]]], list[list[str]]]:
    """The groups (name, rules, default, running spaces, staging spaces) and each cell's spaces."""
    rng = random.Random(seed)
    spaces = [f"space-{n:04d}" for n in range(SPACES)]
    groups = []
    for n in range(GROUPS):
        rules = [
            {"protocol": "tcp", "destination": f"10.{n % 250}.{n // 250}.0/24", "ports": "443,8443"},
            {"protocol": "udp", "destination": "198.51.100.53", "ports": "53", "description": f"dns for group {n}"},
            {"protocol": "icmp", "destination": f"10.{n % 250}.0.0/16", "type": 8, "code": -1},
        ]
        if n < DEFAULT_GROUPS:
            groups.append((f"default-{n}", rules, True, [], []))
            continue
        running = rng.sample(spaces, rng.randint(1, 3))
        staging = running[:1] if n % 3 == 0 else []
        groups.append((f"group-{n}", rules, False, running, staging))
    cells = [rng.sample(spaces, SPACES_PER_CELL) for _ in range(CELLS)]
    return groups, cells


def policy_load(*, period: float = 10.0, syncer_lag: float = 10.0) -> PolicyLoad:
    logging.getLogger("events").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="cfnft-bench-policy-") as tmp, NatsServer(Path(tmp) / "nats") as server:
        return asyncio.run(_measure(Path(tmp), server.url, period, syncer_lag))


async def _measure(tmp: Path, nats_url: str, period: float, syncer_lag: float) -> PolicyLoad:
    pki = make_pki(tmp / "pki")
    groups, cells = foundation()
    async with (
        PolicyServerSimulator(pki.server) as policy,
        CloudControllerSimulator(pki.server, client_secret="bench") as cc,
    ):
        for name, rules, default, running, staging in groups:
            guid = policy.add_security_group(
                name, rules, running_default=default, staging_default=default, running_spaces=tuple(running)
            )
            for space in staging:
                policy.bind_security_group(guid, space, "staging")
            cc.add_security_group(name, rules, guid=guid, running_default=default, staging_default=default)
        agents_asg, agents_c2c = await _agents(policy, pki, cells)
        spaces = StaticSpaces({space for cell in cells for space in cell})
        nc = await nats.connect(nats_url)
        try:
            untriggered, listing = await _untriggered(policy, pki, nc, spaces, period)
            idle, stamp_reads, change = await _triggered(policy, cc, pki, nc, spaces, period, syncer_lag)
        finally:
            await nc.close()
    return PolicyLoad(
        GROUPS, CELLS, *listing, agents_asg, agents_c2c, untriggered, idle, stamp_reads, *change, syncer_lag
    )


async def _agents(policy: PolicyServerSimulator, pki: Pki, cells: Sequence[Sequence[str]]) -> tuple[Load, Load]:
    """One ASG cycle and one c2c check of every cell, as the vxlan-policy-agent makes them."""
    ssl = client_context(pki.client)
    async with aiohttp.ClientSession() as session:
        before = _counted(policy, PolicyRoute.SECURITY_GROUPS)
        for cell_spaces in cells:
            query = urlencode({"per_page": 5000, "space_guids": ",".join(cell_spaces)}, safe=",")
            async with session.get(f"{policy.url}{API}/security_groups?{query}", ssl=ssl) as response:
                await response.read()
        requests, sent = _minus(_counted(policy, PolicyRoute.SECURITY_GROUPS), before)
        before_c2c = _counted(policy, PolicyRoute.POLICIES_LAST_UPDATED)
        async with session.get(f"{policy.url}{API}/policies_last_updated", ssl=ssl) as response:
            await response.read()
        _, check_bytes = _minus(_counted(policy, PolicyRoute.POLICIES_LAST_UPDATED), before_c2c)
    asg = Load(requests / AGENT_ASG_INTERVAL, sent / AGENT_ASG_INTERVAL)
    c2c = Load(len(cells) / AGENT_C2C_INTERVAL, len(cells) * check_bytes / AGENT_C2C_INTERVAL)
    return asg, c2c


def _config(policy: PolicyServerSimulator, pki: Pki, **overrides: object) -> PolicyWatcherConfig:
    assert pki.client.cert is not None and pki.client.key is not None
    settings: dict[str, object] = {
        "url": policy.url,
        "ca_file": pki.client.ca,
        "cert_file": pki.client.cert,
        "key_file": pki.client.key,
        "poll_interval": 3600,  # c2c is not what is measured here
        "request_timeout": 60,
    }
    return PolicyWatcherConfig.model_validate(settings | overrides)


async def _untriggered(
    policy: PolicyServerSimulator, pki: Pki, nc: nats.NATS, spaces: StaticSpaces, period: float
) -> tuple[Load, tuple[int, int]]:
    """Listings every second for about `period` seconds after the first published one: the rate
    achieved, and the cost of one listing (over whole listings only)."""
    config = _config(policy, pki, asg_poll_interval=1.0)
    fetched = _fetches()
    async with PolicyWatcher(config, StatePublisher(nc, "policy"), spaces):
        await _fetched(fetched + 1)  # the first listing and its confirmation are published
        before, started = _counted(policy, PolicyRoute.SECURITY_GROUPS), time.monotonic()
        listings = 0
        while time.monotonic() - started < period or listings == 0:
            listings += 1
            await _fetched(fetched + 1 + listings)
        requests, sent = _minus(_counted(policy, PolicyRoute.SECURITY_GROUPS), before)
        elapsed = time.monotonic() - started
    return Load(requests / elapsed, sent / elapsed), (requests // listings, sent // listings)


async def _triggered(
    policy: PolicyServerSimulator,
    cc: CloudControllerSimulator,
    pki: Pki,
    nc: nats.NATS,
    spaces: StaticSpaces,
    period: float,
    syncer_lag: float,
) -> tuple[Load, float, tuple[int, float]]:
    assert pki.client.cert is not None and pki.client.key is not None
    trigger = AsgTriggerConfig(
        internal_url=cc.internal_url,
        internal_ca_file=pki.client.ca,
        internal_cert_file=pki.client.cert,
        internal_key_file=pki.client.key,
        uaa_url=cc.uaa_url,
        client_secret=SecretStr("bench"),
        ca_file=pki.client.ca,
    )
    config = _config(policy, pki, asg_trigger=trigger)  # every other setting at its default
    fetched = _fetches()
    async with PolicyWatcher(config, StatePublisher(nc, "policy"), spaces):
        await _fetched(fetched + 1)  # the start-up listing and its confirmation are done
        before, started = _counted(policy, PolicyRoute.SECURITY_GROUPS), time.monotonic()
        reads_before = cc.requests[CcRoute.ASG_LATEST_UPDATE]
        await asyncio.sleep(period)
        requests, sent = _minus(_counted(policy, PolicyRoute.SECURITY_GROUPS), before)
        elapsed = time.monotonic() - started
        reads = (cc.requests[CcRoute.ASG_LATEST_UPDATE] - reads_before) / elapsed
        idle = Load(requests / elapsed, sent / elapsed)

        guid = next(iter(policy.security_groups))
        listings_before, changed_at = len(_listings(policy)), time.monotonic()
        cc.update_security_group(guid, name="renamed")  # CC's stamp moves
        await asyncio.sleep(syncer_lag)
        policy.update_security_group(guid, name="renamed")  # the asg-syncer copies it
        await _renamed(nc, guid)
        took = time.monotonic() - changed_at
        await asyncio.sleep(5.0)  # would a listing follow? (the window closed with the change)
    return idle, reads, (len(_listings(policy)) - listings_before, took)


def _listings(policy: PolicyServerSimulator) -> list[dict[str, str]]:
    """The first request of every cfnft listing: the first page (no `from`, a `limit`) of the first batch."""
    first = "space-0000"  # sorted first of every space: the first batch's first guid
    return [
        q
        for r, q in policy.request_log
        if r is PolicyRoute.SECURITY_GROUPS and "from" not in q and "limit" in q and q["space_guids"].startswith(first)
    ]


def _fetches() -> float:
    return REGISTRY.get_sample_value("cfnft_watcher_policy_fetches_total", {"kind": "asg"}) or 0.0


async def _fetched(count: float, timeout: float = 300.0) -> None:
    async with asyncio.timeout(timeout):
        while _fetches() < count:
            await asyncio.sleep(0.1)


def _counted(policy: PolicyServerSimulator, route: PolicyRoute) -> tuple[int, int]:
    return policy.requests[route], policy.bytes_sent[route]


def _minus(after: tuple[int, int], before: tuple[int, int]) -> tuple[int, int]:
    return after[0] - before[0], after[1] - before[1]


async def _renamed(nc: nats.NATS, guid: str, timeout: float = 300.0) -> None:
    js = nc.jetstream()
    async with asyncio.timeout(timeout):
        while b'"renamed"' not in (
            (await js.get_last_msg(subjects.STATE_STREAM, ASG_SUBJECT_PREFIX + guid)).data or b""
        ):
            await asyncio.sleep(0.1)
