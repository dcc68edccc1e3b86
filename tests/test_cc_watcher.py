"""The CC watcher against the Cloud Controller + UAA simulator over real TLS (mutual TLS for the
internal API), ending in the NATS state stream as a subscriber reads it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY
from pydantic import ValidationError

from events import subjects
from events.cc.stamp import parse_last_update
from events.cc.watcher import CcWatcher, CcWatcherConfig
from events.httpsource import Reason, SourceError
from events.poller import FatalSourceError
from events.publisher import StatePublisher
from lab.cfsim import StateView, wait_until
from lab.pki import Pki
from lab.sim.cc import CcRoute, CloudControllerSimulator

DNS = [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53"}]
PING = [{"protocol": "icmp", "destination": "198.51.100.0/24", "type": 8, "code": -1, "description": "ping"}]


def config(cc: CloudControllerSimulator, pki: Pki, *, internal: bool = True, **overrides: Any) -> CcWatcherConfig:
    settings: dict[str, Any] = {
        "api_url": cc.api_url,
        "uaa_url": cc.uaa_url,
        "client_secret": "s3cret",
        "ca_file": pki.client.ca,
        "poll_interval": 0.02,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    if internal:
        settings |= {
            "internal_url": cc.internal_url,
            "internal_ca_file": pki.client.ca,
            "internal_cert_file": pki.client.cert,
            "internal_key_file": pki.client.key,
        }
    return CcWatcherConfig(**(settings | overrides))


def watcher(cc: CloudControllerSimulator, pki: Pki, nc: NATS, **overrides: Any) -> CcWatcher:
    return CcWatcher(config(cc, pki, **overrides), StatePublisher(nc, "cc"))


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
    guids = [cc.add_security_group(f"g{i}", DNS, running_default=i == 0) for i in range(5)]
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
    guid = cc.add_security_group("ping", PING)

    def spaces(lifecycle: str) -> Any:
        return lambda s: [
            d["guid"]
            for d in s[subjects.security_group(guid)]["security_group"]["relationships"][f"{lifecycle}_spaces"]["data"]
        ]

    async with watcher(cc, pki, nats_client):
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
    """One listing per change of CC's microsecond stamp, however quickly writes follow each other."""
    guid = cc.add_security_group("dns", DNS, running_default=True)
    async with watcher(cc, pki, nats_client):
        await view.wait_for(lambda s: published(view, guid), "the group")
        checks = cc.requests[CcRoute.ASG_LATEST_UPDATE]
        await wait_until(lambda: cc.requests[CcRoute.ASG_LATEST_UPDATE] >= checks + 10, "ten more checks")
        assert cc.requests[CcRoute.SECURITY_GROUPS] == 1

        for n in range(3):  # within a second: CC's stamp moves with each
            cc.update_security_group(guid, name=f"dns-{n}")
            await view.wait_for(lambda s, n=n: view.group(guid)["name"] == f"dns-{n}", f"name {n}")  # type: ignore[index]
        assert cc.requests[CcRoute.SECURITY_GROUPS] == 4


async def test_without_the_internal_endpoint_every_cycle_lists(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guid = cc.add_security_group("dns", DNS, running_default=True)
    async with watcher(cc, pki, nats_client, internal=False):
        await view.wait_for(lambda s: published(view, guid), "the group")
        await wait_until(lambda: cc.requests[CcRoute.SECURITY_GROUPS] >= 5, "five listings")
    assert cc.requests[CcRoute.ASG_LATEST_UPDATE] == 0


async def test_expiring_tokens_are_refreshed_before_they_expire(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    cc.token_ttl = 1  # refreshed when half of it is left
    guid = cc.add_security_group("dns", DNS, running_default=True)
    async with watcher(cc, pki, nats_client, internal=False) as w:
        await view.wait_for(lambda s: published(view, guid), "the group")
        await wait_until(lambda: cc.tokens_issued >= 3, "three tokens")
        cc.update_security_group(guid, name="later")
        await view.wait_for(lambda s: view.group(guid)["name"] == "later", "a change after the refreshes")  # type: ignore[index]
        assert isinstance(w, CcWatcher) and w.tokens_fetched == cc.tokens_issued


async def test_a_refused_token_is_replaced_once_and_the_cycle_succeeds(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    guid = cc.add_security_group("dns", DNS, running_default=True)
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
    guids = [cc.add_security_group(f"g{i}", DNS) for i in range(4)]
    async with watcher(cc, pki, nats_client, per_page=2):
        await view.wait_for(lambda s: all(subjects.security_group(g) in s for g in guids), "the groups")
        before = metric("errors_total", kind="asg", reason="http")
        cc.fail(CcRoute.SECURITY_GROUPS, times=5, page=2)
        cc.delete_security_group(guids[0])
        await view.wait_for(lambda s: s[subjects.security_group(guids[0])]["security_group"] is None, "g0 deleted")
        assert metric("errors_total", kind="asg", reason="http") - before == 5
    deleted = {subject for subject, doc in view.history if doc["security_group"] is None}
    assert deleted == {subjects.security_group(guids[0])}


async def test_a_listing_that_moved_meanwhile_is_refused_and_retried(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView
) -> None:
    """asg_latest_update moved during the listing: the listing is not published; the retry is."""
    first = cc.add_security_group("first", DNS)
    cc.delay(CcRoute.SECURITY_GROUPS, 0.3)
    before = metric("errors_total", kind="asg", reason="unstable")
    async with watcher(cc, pki, nats_client):
        await wait_until(lambda: cc.requests[CcRoute.SECURITY_GROUPS] == 1, "the first listing in flight")
        second = cc.add_security_group("second", DNS)
        await view.wait_for(lambda s: published(view, first) and published(view, second), "both groups")
    assert metric("errors_total", kind="asg", reason="unstable") - before == 1
    assert sorted(s for s, _ in view.history) == sorted(map(subjects.security_group, (first, second)))


async def test_a_bad_rule_is_dropped_and_the_group_still_published(
    cc: CloudControllerSimulator, pki: Pki, nats_client: NATS, view: StateView, caplog: pytest.LogCaptureFixture
) -> None:
    rules = [*DNS, {"protocol": "tcp", "destination": "192.0.2.1"}]  # tcp without ports
    guid = cc.add_security_group("half-bad", rules, running_default=True)
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
        internal_cert_file=pki.client_of_other_ca.cert,
        internal_key_file=pki.client_of_other_ca.key,
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-10-24T16:13:44.123456000+00:00", datetime(2024, 10, 24, 16, 13, 44, 123456, tzinfo=UTC)),
        ("2020-02-22T11:00:00Z", datetime(2020, 2, 22, 11, 0, 0, tzinfo=UTC)),
        ("1970-01-01T00:00:00.000000000+00:00", datetime(1970, 1, 1, tzinfo=UTC)),
        ("2024-10-24T18:13:44.5+02:00", datetime(2024, 10, 24, 16, 13, 44, 500000, tzinfo=UTC)),
    ],
)
def test_asg_latest_update_in_both_of_ccs_formats(text: str, expected: datetime) -> None:
    """Current CC's nine fraction digits and older CC's whole seconds with Z both parse, exactly."""
    assert parse_last_update("u", {"last_update": text}) == expected


@pytest.mark.parametrize("value", ["2024-10-24 16:13:44Z", "2024-10-24T16:13:44", "2024-10-24T16:13:44.123456789Z", 5])
def test_asg_latest_update_that_is_not_cc_rfc3339_is_invalid(value: object) -> None:
    with pytest.raises(SourceError) as info:
        parse_last_update("u", {"last_update": value})
    assert info.value.reason is Reason.INVALID
