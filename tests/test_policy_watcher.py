"""The policy watcher against the policy server simulator over real mutual TLS, ending in the NATS
state stream as a subscriber (an ordered JetStream consumer, last message per subject) reads it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY
from pydantic import SecretStr

from events import subjects
from events.asgsync import ParseCache
from events.cc.stamp import AsgTriggerConfig
from events.messages import ContainerMessage
from events.models import Container, InternalSecurityGroup, SecurityGroup
from events.policy.spaces import ContainerSpaces, StaticSpaces
from events.policy.watcher import AsgSchedule, PolicyWatcher, PolicyWatcherConfig
from events.poller import Backoff, FatalSourceError
from events.problems import Problem, StateError
from events.publisher import StatePublisher
from lab.cfsim import WAIT, StateView, wait_until
from lab.pki import Pki
from lab.sim.cc import CcRoute, CloudControllerSimulator
from lab.sim.policy import C2CPolicySpec, EgressDestinationSpec, PolicyRoute, PolicyServerSimulator

DNS = [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53"}]
WEB = [{"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "443", "description": "web"}]


def config(sim: PolicyServerSimulator, pki: Pki, **overrides: Any) -> PolicyWatcherConfig:
    """Fast intervals and backoff, so a test takes milliseconds per cycle."""
    settings: dict[str, Any] = {
        "url": sim.url,
        "ca_file": pki.client.ca,
        "cert_file": pki.client.cert,
        "key_file": pki.client.key,
        "poll_interval": 0.02,
        "asg_poll_interval": 0.02,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    } | overrides
    return PolicyWatcherConfig(**settings)


def watcher(sim: PolicyServerSimulator, pki: Pki, nc: NATS, spaces: Any = None, **overrides: Any) -> PolicyWatcher:
    return PolicyWatcher(
        config(sim, pki, **overrides), StatePublisher(nc, "policy"), spaces or StaticSpaces({"space-1"})
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"cfnft_watcher_policy_{name}", labels) or 0.0


def sources(policies: list[dict[str, Any]]) -> set[str]:
    return {p["source"]["id"] for p in policies}


async def test_c2c_add_and_remove_end_as_nats_state(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """Policies are grouped by destination app; an app whose last policy goes gets an explicit empty list."""
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b", "tcp", 8080, 8090))
    sim.add_c2c_policy(C2CPolicySpec("app-c", "app-b", "udp", 9000, 9000))
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-d"))
    async with watcher(sim, pki, nats_client):
        await view.wait_for(
            lambda s: subjects.c2c_policies("app-b") in s and subjects.c2c_policies("app-d") in s, "c2c for b and d"
        )
        assert sources(view.c2c("app-b")) == {"app-a", "app-c"}
        tcp = next(p for p in view.c2c("app-b") if p["destination"]["protocol"] == "tcp")
        assert tcp["destination"]["ports"] == {"start": 8080, "end": 8090}
        assert tcp["source"]["tag"] == "0001" and tcp["destination"]["tag"] == "0002"

        sim.remove_c2c_policy(C2CPolicySpec("app-a", "app-d"))
        sim.remove_c2c_policy(C2CPolicySpec("app-c", "app-b", "udp", 9000, 9000))
        await view.wait_for(lambda s: s[subjects.c2c_policies("app-d")]["policies"] == [], "app-d's empty list")
        await view.wait_for(lambda s: len(s[subjects.c2c_policies("app-b")]["policies"]) == 1, "app-b down to one")
        assert sources(view.c2c("app-b")) == {"app-a"}


async def test_unchanged_policies_last_updated_means_no_fetch(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """Only the cheap check is repeated while nothing changes; a change costs exactly one fetch."""
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b"))
    fetches, published = metric("fetches_total", kind="c2c"), metric("published_messages_total", kind="c2c")
    async with watcher(sim, pki, nats_client, asgs=False):
        await view.wait_for(lambda s: subjects.c2c_policies("app-b") in s, "the first policy")
        checks = sim.requests[PolicyRoute.POLICIES_LAST_UPDATED]
        polls = metric("polls_total", kind="c2c")
        await wait_until(lambda: sim.requests[PolicyRoute.POLICIES_LAST_UPDATED] >= checks + 10, "ten more checks")
        assert sim.requests[PolicyRoute.POLICIES] == 1
        assert metric("polls_total", kind="c2c") >= polls + 10
        assert metric("fetches_total", kind="c2c") == fetches + 1
        assert metric("published_messages_total", kind="c2c") == published + 1
        assert metric("source_up", kind="c2c") == 1 and metric("last_success_timestamp_seconds", kind="c2c") > 0

        sim.add_c2c_policy(C2CPolicySpec("app-c", "app-b"))
        await view.wait_for(lambda s: len(s[subjects.c2c_policies("app-b")]["policies"]) == 2, "the second policy")
        checks = sim.requests[PolicyRoute.POLICIES_LAST_UPDATED]
        await wait_until(lambda: sim.requests[PolicyRoute.POLICIES_LAST_UPDATED] >= checks + 5, "five more checks")
        assert sim.requests[PolicyRoute.POLICIES] == 2


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=5.0)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, cap in zip(delays, [1, 2, 4, 5, 5, 5], strict=True):
        assert cap / 2 <= delay <= cap
    backoff.reset()
    assert backoff.next_delay() <= 1.0
    for _ in range(5000):  # hours of an outage at the cap: the delay stays the cap, never an overflow
        delay = backoff.next_delay()
    assert 2.5 <= delay <= 5.0


async def test_resync_fetches_although_nothing_changed(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b"))
    async with watcher(sim, pki, nats_client, asgs=False) as w:
        await view.wait_for(lambda s: subjects.c2c_policies("app-b") in s, "the policy")
        w.resync()
        await wait_until(lambda: sim.requests[PolicyRoute.POLICIES] == 2, "a second fetch after resync()")


async def test_security_group_bind_and_unbind_running_and_staging(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """Bindings show in the published group; a group bound to no watched space is published as deleted."""
    sim.add_security_group("dns", DNS, guid="g-dns", running_default=True, staging_default=True)
    sim.add_security_group("web", WEB, guid="g-web")
    async with watcher(sim, pki, nats_client):
        await view.wait_for(lambda s: subjects.security_group("g-dns") in s, "the default group")
        dns = view.group("g-dns")
        assert dns is not None and dns["globally_enabled"] == {"running": True, "staging": True}
        assert subjects.security_group("g-web") not in view.state  # bound to no space yet

        sim.bind_security_group("g-web", "space-1", "running")
        await view.wait_for(lambda s: subjects.security_group("g-web") in s, "web after its running bind")
        web = view.group("g-web")
        assert web is not None
        assert web["relationships"]["running_spaces"]["data"] == [{"guid": "space-1"}]
        assert web["relationships"]["staging_spaces"]["data"] == []
        assert [r["destination"] for r in web["rules"]] == ["192.0.2.0/24"]

        sim.bind_security_group("g-web", "space-1", "staging")
        await view.wait_for(
            lambda s: (
                s[subjects.security_group("g-web")]["security_group"]["relationships"]["staging_spaces"]["data"]
                == [{"guid": "space-1"}]
            ),
            "web bound for staging too",
        )
        sim.unbind_security_group("g-web", "space-1", "running")
        await view.wait_for(
            lambda s: (
                s[subjects.security_group("g-web")]["security_group"]["relationships"]["running_spaces"]["data"] == []
            ),
            "web unbound for running",
        )
        sim.unbind_security_group("g-web", "space-1", "staging")
        await view.wait_for(lambda s: s[subjects.security_group("g-web")]["security_group"] is None, "web deleted")
        assert view.group("g-dns") is not None


async def test_paging_follows_next_with_a_real_limit(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """Seven groups, two per page: four requests whose `from` is the previous page's `next`."""
    guids = [sim.add_security_group(f"g{i}", DNS, running_default=True) for i in range(7)]
    async with watcher(sim, pki, nats_client, asg_page_size=2):
        await view.wait_for(lambda s: all(subjects.security_group(g) in s for g in guids), "all seven groups")
    listing = [query for route, query in sim.request_log if route is PolicyRoute.SECURITY_GROUPS][:4]
    assert [q.get("from") for q in listing] == [None, "3", "5", "7"]
    assert {q["limit"] for q in listing} == {"2"}
    assert {q["space_guids"] for q in listing} == {"space-1"}


def trigger(cc: CloudControllerSimulator, pki: Pki) -> dict[str, Any]:
    """Settings that make CC's asg_latest_update the trigger of security-group listings."""
    return {
        "asg_trigger": AsgTriggerConfig(
            internal_url=cc.internal_url,
            internal_ca_file=pki.client.ca,
            internal_cert_file=pki.client.cert,
            internal_key_file=pki.client.key,
            uaa_url=cc.uaa_url,
            client_secret=SecretStr("s3cret"),
            ca_file=pki.client.ca,
        ),
        "asg_trigger_interval": 0.02,
        "poll_interval": 60,
    }


def listings(sim: PolicyServerSimulator) -> int:
    return sim.requests[PolicyRoute.SECURITY_GROUPS]


async def test_with_the_cc_trigger_the_policy_server_is_listed_only_until_a_change_arrives(
    sim: PolicyServerSimulator, cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """CC's stamp stands still: no listing at all. It moves: the policy server is listed at the window's
    pace while the asg-syncer has not copied the change yet, then once more to confirm it, and no more."""
    sim.add_security_group("dns", DNS, guid="g-dns", running_default=True)
    cc.add_security_group("dns", DNS, guid="g-dns", running_default=True)
    async with watcher(sim, pki, nats_client, **trigger(cc, pki), asg_poll_interval=0.05, asg_resync_interval=600):
        await view.wait_for(lambda s: subjects.security_group("g-dns") in s, "the group")
        assert listings(sim) == 2  # the first listing, and the second that confirms it
        checks = cc.requests[CcRoute.ASG_LATEST_UPDATE]
        await wait_until(lambda: cc.requests[CcRoute.ASG_LATEST_UPDATE] >= checks + 10, "ten stamp reads")
        assert listings(sim) == 2

        cc.update_security_group("g-dns", name="dns-2")  # CC moved; the syncer has not copied it yet
        await wait_until(lambda: listings(sim) >= 6, "listings while the change is on its way")
        assert view.group("g-dns")["name"] == "dns"  # type: ignore[index]
        sim.update_security_group("g-dns", name="dns-2")  # the syncer's Replace
        await view.wait_for(lambda s: s[subjects.security_group("g-dns")]["security_group"]["name"] == "dns-2", "it")
        after = listings(sim)
        checks = cc.requests[CcRoute.ASG_LATEST_UPDATE]
        await wait_until(lambda: cc.requests[CcRoute.ASG_LATEST_UPDATE] >= checks + 10, "ten stamp reads")
        assert listings(sim) == after  # the window closed with the change


async def test_with_the_cc_trigger_a_safety_listing_catches_what_moved_no_stamp(
    sim: PolicyServerSimulator, cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """A v2 write reaches the policy server without moving CC's stamp: the next safety listing finds it."""
    sim.add_security_group("dns", DNS, guid="g-dns", running_default=True)
    async with watcher(sim, pki, nats_client, **trigger(cc, pki), asg_resync_interval=0.2):
        await view.wait_for(lambda s: subjects.security_group("g-dns") in s, "the group")
        sim.update_security_group("g-dns", name="dns-v2")
        await view.wait_for(
            lambda s: s[subjects.security_group("g-dns")]["security_group"]["name"] == "dns-v2", "the v2 write"
        )


async def test_without_ccs_stamp_the_watcher_lists_at_the_untriggered_pace(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """An older CC answers 404 for asg_latest_update: every asg_poll_interval, as without a trigger."""
    sim.add_security_group("dns", DNS, guid="g-dns", running_default=True)
    async with CloudControllerSimulator(pki.server, client_secret="s3cret", asg_latest_update_endpoint=False) as old:
        async with watcher(sim, pki, nats_client, **trigger(old, pki), asg_poll_interval=0.05):
            await view.wait_for(lambda s: subjects.security_group("g-dns") in s, "the group")
            sim.update_security_group("g-dns", name="dns-2")
            await view.wait_for(
                lambda s: s[subjects.security_group("g-dns")]["security_group"]["name"] == "dns-2", "the change"
            )
            await wait_until(lambda: listings(sim) >= 10, "listings at the poll pace")


async def test_a_listing_that_changed_while_it_was_paged_is_not_published(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """The syncer replaces groups between two pages: the mixed listing (g0 old, g2 new) is refused as
    unstable and listed again; what is published is the state after the change, whole."""
    for n in range(3):
        sim.add_security_group(f"g{n}", DNS, guid=f"g{n}", running_default=True)
    before = metric("errors_total", kind="asg", reason="unstable")
    async with watcher(sim, pki, nats_client, asg_page_size=1, asg_poll_interval=0.05):
        await view.wait_for(lambda s: all(subjects.security_group(f"g{n}") in s for n in range(3)), "three groups")
        sim.delay(PolicyRoute.SECURITY_GROUPS, 0.05)
        seen = len(sim.request_log)
        await wait_until(
            lambda: any(q.get("from") == "2" for _, q in sim.request_log[seen:]), "a listing past its first page"
        )
        sim.update_security_group("g0", name="g0-new")  # already read in this listing
        sim.update_security_group("g2", name="g2-new")  # not read yet
        await view.wait_for(
            lambda s: s[subjects.security_group("g2")]["security_group"]["name"] == "g2-new", "the change"
        )
        await view.wait_for(lambda s: s[subjects.security_group("g0")]["security_group"]["name"] == "g0-new", "g0")
    assert metric("errors_total", kind="asg", reason="unstable") > before
    names = [(s, doc["security_group"]["name"]) for s, doc in view.history if doc.get("kind") == "asg"]
    assert names.index((subjects.security_group("g0"), "g0-new")) < names.index(
        (subjects.security_group("g2"), "g2-new")
    )


def test_asg_schedule_lists_on_a_moved_stamp_within_the_window_and_resyncs_outside() -> None:
    """The trigger logic alone, on a made-up clock."""
    cfg = PolicyWatcherConfig(
        ca_file=Path("ca"),
        cert_file=Path("c"),
        key_file=Path("k"),
        asg_poll_interval=10,
        asg_trigger=AsgTriggerConfig(
            internal_url="https://cc",
            internal_ca_file=Path("ca"),
            internal_cert_file=Path("c"),
            internal_key_file=Path("k"),
            uaa_url="https://uaa",
            client_secret=SecretStr("s"),
        ),
        asg_sync_window=90,
        asg_resync_interval=600,
    )
    schedule = AsgSchedule(cfg)
    t0, t1 = datetime(2024, 10, 24, 16, 13, 44, 1, tzinfo=UTC), datetime(2024, 10, 24, 16, 13, 44, 2, tzinfo=UTC)
    schedule.stamp_read(t0, 0)
    assert schedule.listing_due(0)
    schedule.listed(0, changed=True)  # the first listing: the window closes
    schedule.stamp_read(t0, 5)
    assert not schedule.listing_due(5) and not schedule.listing_due(599) and schedule.listing_due(600)
    schedule.stamp_read(t1, 100)  # moved: look at once, then every asg_poll_interval
    assert schedule.listing_due(100)
    schedule.listed(100, changed=False)  # the syncer has not copied it yet
    assert not schedule.listing_due(105) and schedule.listing_due(110)
    schedule.listed(110, changed=True)  # here it is: the window closes
    assert not schedule.listing_due(120) and schedule.listing_due(710)
    schedule.stamp_read(None, 200)  # CC unreachable or without the endpoint: the untriggered pace
    assert schedule.listing_due(200)


async def test_a_bad_rule_is_dropped_and_the_group_still_published(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {"protocol": "tcp", "destination": "10.0.0.300", "ports": "80"}
    sim.add_security_group("mixed", [WEB[0], bad], guid="g-mixed", running_default=True)
    sim.add_security_group("garbled", [], guid="g-garbled", running_default=True)
    sim.set_rules_string("g-garbled", "[{not json")
    with caplog.at_level(logging.WARNING, logger="events.poller"):
        async with watcher(sim, pki, nats_client):
            await view.wait_for(
                lambda s: subjects.security_group("g-mixed") in s and subjects.security_group("g-garbled") in s,
                "both groups",
            )
            assert metric("dropped_entries", kind="asg") == 2
    mixed = view.group("g-mixed")
    assert mixed is not None and [r["destination"] for r in mixed["rules"]] == ["192.0.2.0/24"]
    garbled = view.group("g-garbled")
    assert garbled is not None and garbled["rules"] == []
    lines = [r.getMessage() for r in caplog.records]
    assert any("g-mixed (mixed)" in line and "rules[1].destination" in line and "10.0.0.300" in line for line in lines)
    assert any("g-garbled (garbled)" in line and "not valid JSON" in line for line in lines)


async def test_server_errors_publish_nothing_partial_and_the_watcher_recovers(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """500s on the policy list and in the middle of a paged listing: no deletion, no empty list; then it catches up."""
    groups = [sim.add_security_group(f"g{i}", DNS, running_default=True) for i in range(3)]
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b"))
    errors_before = metric("errors_total", kind="asg", reason="http") + metric(
        "errors_total", kind="c2c", reason="http"
    )
    async with watcher(sim, pki, nats_client, asg_page_size=1):
        await view.wait_for(lambda s: all(subjects.security_group(g) in s for g in groups), "the three groups")
        await view.wait_for(lambda s: subjects.c2c_policies("app-b") in s, "the policy")
        sim.fail(PolicyRoute.SECURITY_GROUPS, times=6, paged_only=True)
        sim.fail(PolicyRoute.POLICIES, times=6)
        sim.delete_security_group(groups[0])
        sim.add_c2c_policy(C2CPolicySpec("app-c", "app-b"))
        await view.wait_for(lambda s: s[subjects.security_group(groups[0])]["security_group"] is None, "g0 deleted")
        await view.wait_for(lambda s: len(s[subjects.c2c_policies("app-b")]["policies"]) == 2, "the new policy")
    errors_after = metric("errors_total", kind="asg", reason="http") + metric("errors_total", kind="c2c", reason="http")
    assert errors_after - errors_before == 12
    deleted = {subject for subject, doc in view.history if doc.get("kind") == "asg" and doc["security_group"] is None}
    assert deleted == {subjects.security_group(groups[0])}
    assert all(doc["policies"] for _, doc in view.history if doc.get("kind") == "c2c")


async def test_client_certificate_of_another_ca_stops_the_watcher_with_a_clear_error(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    """The server refuses the handshake; the watcher retries a bounded number of times, logs the
    streak once, and stops with one line saying what to fix."""
    w = watcher(
        sim,
        pki,
        nats_client,
        cert_file=pki.client_of_other_ca.cert,
        key_file=pki.client_of_other_ca.key,
        asgs=False,
        max_config_failures=3,
    )
    with caplog.at_level(logging.ERROR, logger="events.poller"), pytest.raises(FatalSourceError) as raised:
        await w.run()
    message = str(raised.value)
    assert "giving up after 3 failures" in message
    assert "refused our client certificate (tlsv1 alert unknown ca)" in message
    assert sim.url in message
    assert sim.requests.total() == 0  # no request ever got past the handshake
    assert len([r for r in caplog.records if "refused our client certificate" in r.getMessage()]) == 1


async def test_egress_policies_of_an_older_policy_server(pki: Pki, nats_client: NATS, view: StateView) -> None:
    async with PolicyServerSimulator(pki.server, egress_policies=True) as sim:
        rules = [EgressDestinationSpec("tcp", "198.51.100.1", "198.51.100.9", 8000, 9000)]
        guid = sim.add_egress_policy("app-a", "partner", rules)
        sim.add_egress_policy(
            "", "ntp", [EgressDestinationSpec("udp", "203.0.113.5", "203.0.113.5", 123, 123)], source_type="default"
        )
        async with watcher(sim, pki, nats_client, asgs=False):
            await view.wait_for(lambda s: len(s.get(subjects.EGRESS_POLICIES, {}).get("policies", [])) == 2, "egress")
            published = view.state[subjects.EGRESS_POLICIES]["policies"]
            partner = next(p for p in published if p["destination"]["name"] == "partner")
            assert partner["source"] == {"id": "app-a", "type": "app"}
            assert partner["destination"]["ips"] == [{"start": "198.51.100.1", "end": "198.51.100.9"}]
            sim.remove_egress_policy(guid)
            await view.wait_for(lambda s: len(s[subjects.EGRESS_POLICIES]["policies"]) == 1, "one egress policy left")


async def test_a_restarted_watcher_deletes_what_vanished_while_it_was_down(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    sim.add_security_group("keep", DNS, guid="g-keep", running_default=True)
    sim.add_security_group("drop", DNS, guid="g-drop", running_default=True)
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b"))
    async with watcher(sim, pki, nats_client):
        await view.wait_for(lambda s: subjects.security_group("g-drop") in s, "the groups")
        await view.wait_for(lambda s: subjects.c2c_policies("app-b") in s, "the policy")
    sim.delete_security_group("g-drop")
    sim.remove_c2c_policy(C2CPolicySpec("app-a", "app-b"))
    async with watcher(sim, pki, nats_client):  # a new publisher: knows only what the stream holds
        await view.wait_for(lambda s: s[subjects.security_group("g-drop")]["security_group"] is None, "g-drop deleted")
        await view.wait_for(lambda s: s[subjects.c2c_policies("app-b")]["policies"] == [], "app-b's empty list")
    assert view.group("g-keep") is not None


async def test_spaces_come_from_the_containers_in_nats(
    sim: PolicyServerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """A group bound to a space is published once a container of that space appears, deleted when it goes."""
    sim.add_security_group("web", WEB, guid="g-web", running_spaces=("space-9",))
    sim.add_security_group("dns", DNS, guid="g-dns", running_default=True)
    publisher = StatePublisher(nats_client, "cells")
    container = Container(handle="h1", ip="10.255.1.2", app_guid="app-a", space_guid="space-9", workload="app")
    async with ContainerSpaces(nats_client) as spaces, watcher(sim, pki, nats_client, spaces):
        await view.wait_for(lambda s: subjects.security_group("g-dns") in s, "the default group")
        assert subjects.security_group("g-web") not in view.state
        await publisher.publish(ContainerMessage(version=1, cell_id="cell-a", handle="h1", container=container))
        await view.wait_for(lambda s: subjects.security_group("g-web") in s, "web, once space-9 has a container")
        await publisher.publish(ContainerMessage(version=2, cell_id="cell-a", handle="h1", container=None))
        await view.wait_for(lambda s: s[subjects.security_group("g-web")]["security_group"] is None, "web deleted")


async def test_container_spaces_are_ready_only_when_complete(nats_client: NATS) -> None:
    """The space set is declared ready only once every container message in the stream was read, so
    the first listing cannot publish the groups of unread spaces as deleted."""
    publisher = StatePublisher(nats_client, "cells")
    spaces = {f"space-{n}" for n in range(300)}
    for n, space in enumerate(sorted(spaces)):
        container = Container(
            handle=f"h{n}", ip=f"10.255.{n // 200}.{n % 200 + 2}", app_guid="a", space_guid=space, workload="app"
        )
        await publisher.publish(ContainerMessage(version=1, cell_id="cell-a", handle=f"h{n}", container=container))
    await publisher.publish(ContainerMessage(version=2, cell_id="cell-a", handle="h0", container=None))
    async with ContainerSpaces(nats_client) as known:
        if known.ready.is_set():
            assert known.spaces() == spaces - {"space-0"}
        await asyncio.wait_for(known.ready.wait(), WAIT)
        assert known.spaces() == spaces - {"space-0"}


def counting_parser(calls: list[str]) -> Callable[[object], tuple[SecurityGroup, list[Problem]]]:
    def parse(raw: object) -> tuple[SecurityGroup, list[Problem]]:
        assert isinstance(raw, dict)
        calls.append(raw["name"])
        return InternalSecurityGroup.parse_lenient(raw)

    return parse


def test_parse_cache_parses_each_raw_group_once_per_change_and_forgets_what_left() -> None:
    """A listing that repeats the last one costs no parsing; a changed or bad group is parsed (and
    refused) as itself; a group the last listing did not hold is forgotten."""
    calls: list[str] = []
    cache = ParseCache(counting_parser(calls))
    raw = {"guid": "g", "name": "a", "rules": "[]", "running_default": True}
    bad = {"guid": "h", "name": "bad", "rules": "[]", "running_default": "maybe"}
    for _ in range(3):
        with cache.listing() as parse:
            assert parse(raw)[0].name == "a"
            for _ in range(2):
                with pytest.raises(StateError, match="running_default"):
                    parse(bad)
    assert calls == ["a", "bad"]
    with cache.listing() as parse:
        assert parse(raw | {"name": "b"})[0].name == "b"  # a listing without "a"
    with cache.listing() as parse:
        parse(raw)
    assert calls == ["a", "bad", "b", "a"]


def test_parse_cache_cannot_grow_past_two_listings_while_listings_keep_failing() -> None:
    """Every attempt sees every group edited and fails on its last page: before, each attempt's
    results stayed (a hundred attempts, a hundred listings' worth)."""
    calls: list[str] = []
    cache = ParseCache(counting_parser(calls))

    def groups(version: int) -> list[dict[str, object]]:
        return [{"guid": f"g{i}", "name": f"v{version}", "rules": "[]", "running_default": True} for i in range(10)]

    with cache.listing() as parse:
        for raw in groups(0):
            parse(raw)
    assert len(cache) == 10
    for attempt in range(1, 101):
        with pytest.raises(OSError), cache.listing() as parse:
            for raw in groups(attempt):
                parse(raw)
            assert len(cache) == 20  # the last successful listing, and this attempt
            raise OSError("the last page failed")
        assert len(cache) == 10
    assert len(calls) == 10 * 101, "every attempt parsed its new versions"
    with cache.listing() as parse:  # the last successful listing is still reused
        for raw in groups(0):
            parse(raw)
    assert len(calls) == 10 * 101 and len(cache) == 10
