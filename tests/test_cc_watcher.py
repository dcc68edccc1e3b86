"""The CC watcher against the Cloud Controller + UAA simulator over real TLS (mutual TLS for the
internal API), ending in the NATS state stream as a subscriber reads it."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY
from pydantic import ValidationError

from events import subjects
from events.cc.watcher import CcWatcher, CcWatcherConfig
from events.poller import FatalSourceError
from events.publisher import StatePublisher
from lab.cfsim import Pki, StateView, wait_until
from lab.sim.cc import CcRoute, CloudControllerSimulator

DNS = [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53"}]
PING = [{"protocol": "icmp", "destination": "198.51.100.0/24", "type": 8, "code": -1, "description": "ping"}]


def config(cc: CloudControllerSimulator, pki: Pki, *, internal: bool = True, **overrides: Any) -> CcWatcherConfig:
    settings: dict[str, Any] = {
        "api_url": cc.api_url,
        "uaa_url": cc.uaa_url,
        "client_secret": "s3cret",
        "ca_file": pki.ca,
        "poll_interval": 0.02,
        # CC's stamp is in whole seconds: the confirming listing must come after that second ended.
        "latest_update_settle": 1.1,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    if internal:
        settings |= {
            "internal_url": cc.internal_url,
            "internal_ca_file": pki.ca,
            "internal_cert_file": pki.client,
            "internal_key_file": pki.client,
        }
    return CcWatcherConfig(**(settings | overrides))


def watcher(cc: CloudControllerSimulator, pki: Pki, nc: NATS, **overrides: Any) -> CcWatcher:
    return CcWatcher(config(cc, pki, **overrides), StatePublisher(nc))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"cfnft_watcher_cc_{name}", labels) or 0.0


def set_keys(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules without the keys the message leaves null (CC omits unset keys)."""
    return [{k: v for k, v in rule.items() if v is not None} for rule in rules]


def published(view: StateView, guid: str) -> bool:
    return subjects.security_group(guid) in view.state


async def test_groups_across_pages_end_as_nats_state(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guids = [cc.create_security_group(f"g{i}", DNS, running=i == 0) for i in range(5)]
    async with watcher(cc, pki, nats_client, per_page=2):
        await view.wait_for(lambda s: all(subjects.security_group(g) in s for g in guids), "all five groups")
    pages = [query for route, query in cc.request_log if route is CcRoute.SECURITY_GROUPS][:3]
    assert pages == [{"page": str(n), "per_page": "2"} for n in (1, 2, 3)]
    first = view.group(guids[0])
    assert first is not None and first["globally_enabled"] == {"running": True, "staging": False}
    assert set_keys(first["rules"]) == DNS


async def test_bind_and_unbind_running_and_staging(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guid = cc.create_security_group("ping", PING)

    def spaces(lifecycle: str) -> Any:
        return lambda s: [
            d["guid"]
            for d in s[subjects.security_group(guid)]["security_group"]["relationships"][f"{lifecycle}_spaces"]["data"]
        ]

    async with watcher(cc, pki, nats_client, internal=False):  # binds within one second: list every cycle
        await view.wait_for(lambda s: subjects.security_group(guid) in s, "the group")
        cc.bind_security_group(guid, "space-1", "running")
        await view.wait_for(lambda s: spaces("running")(s) == ["space-1"], "a running binding")
        cc.bind_security_group(guid, "space-2", "staging")
        await view.wait_for(lambda s: spaces("staging")(s) == ["space-2"], "a staging binding")
        cc.unbind_security_group(guid, "space-1", "running")
        await view.wait_for(lambda s: spaces("running")(s) == [], "the running binding gone")
        assert spaces("staging")(view.state) == ["space-2"]
        cc.delete_security_group(guid)
        await view.wait_for(lambda s: s[subjects.security_group(guid)]["security_group"] is None, "the deletion")


async def test_unchanged_asg_latest_update_means_no_listing(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guid = cc.create_security_group("dns", DNS, running=True)
    async with watcher(cc, pki, nats_client):
        await view.wait_for(lambda s: published(view, guid), "the group")
        await wait_until(lambda: cc.requests[CcRoute.SECURITY_GROUPS] == 2, "the confirming listing")
        checks = cc.requests[CcRoute.ASG_LATEST_UPDATE]
        await wait_until(lambda: cc.requests[CcRoute.ASG_LATEST_UPDATE] >= checks + 10, "ten more checks")
        assert cc.requests[CcRoute.SECURITY_GROUPS] == 2

        cc.update_security_group(guid, name="dns-renamed")
        cc.last_update += timedelta(seconds=1)  # a later second than the one listed, whenever this runs
        await view.wait_for(lambda s: view.group(guid)["name"] == "dns-renamed", "the new name")  # type: ignore[index]
        assert cc.requests[CcRoute.SECURITY_GROUPS] == 3


async def test_a_write_within_the_same_second_is_caught_by_the_settle_listing(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """CC's stamp has one-second resolution: a later write may leave it unchanged. The confirming
    listing after `latest_update_settle` still sees it."""
    guid = cc.create_security_group("dns", DNS, running=True)
    async with watcher(cc, pki, nats_client):
        await view.wait_for(lambda s: published(view, guid), "the group")
        stamp = cc.last_update
        cc.update_security_group(guid, name="same-second")
        cc.last_update = stamp  # as if the write landed in the second already reported
        await view.wait_for(lambda s: view.group(guid)["name"] == "same-second", "the write")  # type: ignore[index]


async def test_without_the_internal_endpoint_every_cycle_lists(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guid = cc.create_security_group("dns", DNS, running=True)
    async with watcher(cc, pki, nats_client, internal=False):
        await view.wait_for(lambda s: published(view, guid), "the group")
        await wait_until(lambda: cc.requests[CcRoute.SECURITY_GROUPS] >= 5, "five listings")
    assert cc.requests[CcRoute.ASG_LATEST_UPDATE] == 0


async def test_expiring_tokens_are_refreshed_before_they_expire(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    cc.token_ttl = 1  # refreshed when half of it is left
    guid = cc.create_security_group("dns", DNS, running=True)
    async with watcher(cc, pki, nats_client, internal=False) as w:
        await view.wait_for(lambda s: published(view, guid), "the group")
        await wait_until(lambda: cc.tokens_issued >= 3, "three tokens")
        cc.update_security_group(guid, name="later")
        await view.wait_for(lambda s: view.group(guid)["name"] == "later", "a change after the refreshes")  # type: ignore[index]
        assert isinstance(w, CcWatcher) and w.tokens_fetched == cc.tokens_issued


async def test_a_refused_token_is_replaced_once_and_the_cycle_succeeds(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guid = cc.create_security_group("dns", DNS, running=True)
    async with watcher(cc, pki, nats_client, internal=False):
        await view.wait_for(lambda s: published(view, guid), "the group")
        assert cc.tokens_issued == 1
        errors = metric("errors_total", kind="asg", reason="unauthorized")
        cc.revoke_tokens()
        cc.update_security_group(guid, name="after-revoke")
        await view.wait_for(lambda s: view.group(guid)["name"] == "after-revoke", "the change")  # type: ignore[index]
        assert cc.tokens_issued == 2
        assert metric("errors_total", kind="asg", reason="unauthorized") == errors


async def test_a_failing_page_publishes_nothing_and_the_watcher_recovers(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guids = [cc.create_security_group(f"g{i}", DNS) for i in range(4)]
    async with watcher(cc, pki, nats_client, per_page=2):
        await view.wait_for(lambda s: all(subjects.security_group(g) in s for g in guids), "the groups")
        before = metric("errors_total", kind="asg", reason="http")
        cc.fail(CcRoute.SECURITY_GROUPS, times=5, page=2)
        cc.delete_security_group(guids[0])
        cc.last_update += timedelta(seconds=1)
        await view.wait_for(lambda s: s[subjects.security_group(guids[0])]["security_group"] is None, "g0 deleted")
        assert metric("errors_total", kind="asg", reason="http") - before == 5
    deleted = {subject for subject, doc in view.history if doc["security_group"] is None}
    assert deleted == {subjects.security_group(guids[0])}


async def test_a_listing_that_moved_meanwhile_is_refused_and_retried(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """asg_latest_update moved during the listing: the listing is not published; the retry is."""
    first = cc.create_security_group("first", DNS)
    cc.delay(CcRoute.SECURITY_GROUPS, 0.3)
    before = metric("errors_total", kind="asg", reason="unstable")
    async with watcher(cc, pki, nats_client):
        await wait_until(lambda: cc.requests[CcRoute.SECURITY_GROUPS] == 1, "the first listing in flight")
        second = cc.create_security_group("second", DNS)
        cc.last_update += timedelta(seconds=1)
        await view.wait_for(lambda s: published(view, first) and published(view, second), "both groups")
    assert metric("errors_total", kind="asg", reason="unstable") - before == 1
    assert sorted(s for s, _ in view.history) == sorted(map(subjects.security_group, (first, second)))


async def test_a_bad_rule_is_dropped_and_the_group_still_published(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView, caplog: pytest.LogCaptureFixture
) -> None:
    rules = [*DNS, {"protocol": "tcp", "destination": "192.0.2.1"}]  # tcp without ports
    guid = cc.create_security_group("half-bad", rules, running=True)
    with caplog.at_level(logging.WARNING, logger="events.poller"):
        async with watcher(cc, pki, nats_client):
            await view.wait_for(lambda s: published(view, guid), "the group")
            assert metric("dropped_entries", kind="asg") == 1
    group = view.group(guid)
    assert group is not None and set_keys(group["rules"]) == DNS
    assert any(f"{guid} (half-bad)" in r.getMessage() and "rules[1].ports" in r.getMessage() for r in caplog.records)


async def test_refused_client_credentials_stop_the_watcher_with_a_clear_error(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS
) -> None:
    w = watcher(cc, pki, nats_client, client_secret="wrong", max_config_failures=2)
    with pytest.raises(FatalSourceError, match="UAA refused our client credentials"):
        await w.run()
    assert cc.requests[CcRoute.TOKEN] == 2
    assert cc.requests[CcRoute.SECURITY_GROUPS] == 0


async def test_a_refused_internal_client_certificate_stops_the_watcher(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS
) -> None:
    w = watcher(
        cc,
        pki,
        nats_client,
        internal_cert_file=pki.other_client,
        internal_key_file=pki.other_client,
        max_config_failures=2,
    )
    with pytest.raises(FatalSourceError, match=r"refused our client certificate \(tlsv1 alert unknown ca\)"):
        await w.run()
    assert cc.requests[CcRoute.SECURITY_GROUPS] == 0


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValidationError, match="internal_url needs internal_ca_file"):
        CcWatcherConfig(api_url="https://api", uaa_url="https://uaa", client_secret="x", internal_url="https://cc:9023")
    with pytest.raises(ValidationError, match="must be an https:// URL"):
        CcWatcherConfig(api_url="http://api", uaa_url="https://uaa", client_secret="x")
