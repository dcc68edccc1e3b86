"""The Cloud Controller + UAA simulator speaks CC v3, UAA and CC's internal API as docs/cf-facts.md
§1.5/§2.1 describe them, in the shapes of the recorded payloads in tests/fixtures/cc, and those
payloads parse with events.models."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from events.models import SecurityGroup
from events.tls import TlsFiles, client_context
from lab.cfsim import shape
from lab.pki import Pki
from lab.sim.cc import CcRoute, CloudControllerSimulator

FIXTURES = Path(__file__).parent / "fixtures" / "cc"
RULES = [
    {"protocol": "tcp", "destination": "10.10.10.0/24", "ports": "443,80,8080"},
    {"protocol": "icmp", "destination": "10.10.10.0/24", "type": 8, "code": 0, "description": "ping"},
]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


async def call(session: aiohttp.ClientSession, method: str, url: str, ssl: Any, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, ssl=ssl, **kwargs) as response:
        return response.status, json.loads(await response.text())


async def token(cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession) -> str:
    status, body = await call(
        session,
        "POST",
        f"{cc.uaa_url}/oauth/token",
        client_context(TlsFiles(pki.client.ca)),
        data={"grant_type": "client_credentials"},
        headers={"Authorization": aiohttp.encode_basic_auth("network-policy", "s3cret")},
    )
    assert status == 200, body
    return str(body["access_token"])


async def list_page(
    cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession, query: str, bearer: str | None
) -> tuple[int, Any]:
    headers = {"Authorization": f"bearer {bearer}"} if bearer else {}
    return await call(
        session,
        "GET",
        f"{cc.api_url}/v3/security_groups?{query}",
        client_context(TlsFiles(pki.client.ca)),
        headers=headers,
    )


def test_recorded_resources_parse() -> None:
    page_1, page_2 = fixture("security_groups_page_1.json"), fixture("security_groups_page_2.json")
    group, problems = SecurityGroup.parse_lenient(page_1["resources"][0])
    assert problems == [] and group.globally_enabled.running and not group.globally_enabled.staging
    assert group.staging_space_guids == {"space-guid-1", "space-guid-2"}
    assert [r.protocol for r in group.rules] == ["tcp", "icmp"]
    group, problems = SecurityGroup.parse_lenient(page_2["resources"][0])
    assert [r.ports for r in group.rules] == ["53"]
    assert [p.path for p in problems] == ["rules[1].ports"] and "mixes a list and a range" in problems[0].message


async def test_token_and_listing_match_the_recorded_shapes(
    cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    cc.add_security_group("g0", RULES, running_default=True, staging_spaces=("s1",))
    cc.add_security_group("g1", [{"protocol": "all", "destination": "10.10.11.0-10.10.11.255", "log": True}])
    cc.add_security_group("g2", [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53"}])
    bearer = await token(cc, pki, session)
    assert len(bearer) > 20
    _, first = await list_page(cc, pki, session, "page=1&per_page=2", bearer)
    _, last = await list_page(cc, pki, session, "page=2&per_page=2", bearer)
    assert shape(first) == shape(fixture("security_groups_page_1.json"))
    assert shape(last) == shape(fixture("security_groups_page_2.json"))
    assert first["resources"][0]["rules"] == RULES  # keys CC did not set stay absent


async def test_pagination_object(cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession) -> None:
    for n in range(5):
        cc.add_security_group(f"g{n}", [])
    bearer = await token(cc, pki, session)

    def link(page: int) -> dict[str, str]:
        return {"href": f"{cc.api_url}/v3/security_groups?page={page}&per_page=2"}

    _, middle = await list_page(cc, pki, session, "page=2&per_page=2", bearer)
    assert middle["pagination"] == {
        "total_results": 5,
        "total_pages": 3,
        "first": link(1),
        "last": link(3),
        "next": link(3),
        "previous": link(1),
    }
    assert [r["name"] for r in middle["resources"]] == ["g2", "g3"]
    _, last = await list_page(cc, pki, session, "page=3&per_page=2", bearer)
    assert last["pagination"]["next"] is None and [r["name"] for r in last["resources"]] == ["g4"]
    _, beyond = await list_page(cc, pki, session, "page=9&per_page=2", bearer)
    assert beyond["resources"] == [] and beyond["pagination"]["next"] is None


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("per_page=5001", "Per page must be between 1 and 5000"),
        ("per_page=0", "Per page must be between 1 and 5000"),
        ("page=0", "Page must be greater than 0"),
        ("order_by=name", "Unknown query parameter(s): 'order_by'"),
    ],
)
async def test_bad_query_parameters_are_refused_like_cc(
    cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession, query: str, detail: str
) -> None:
    status, body = await list_page(cc, pki, session, query, await token(cc, pki, session))
    assert status == 400
    assert body["errors"][0]["title"] == "CF-BadQueryParameter" and detail in body["errors"][0]["detail"]


async def test_listing_needs_a_valid_unexpired_token(
    cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    status, body = await list_page(cc, pki, session, "", None)
    assert status == 401 and body["errors"][0]["title"] == "CF-NotAuthenticated"
    status, body = await list_page(cc, pki, session, "", "made-up")
    assert status == 401 and body["errors"][0]["title"] == "CF-InvalidAuthToken"
    cc.token_ttl = 0  # expired on arrival
    status, _ = await list_page(cc, pki, session, "", await token(cc, pki, session))
    assert status == 401
    cc.token_ttl = 600
    bearer = await token(cc, pki, session)
    assert (await list_page(cc, pki, session, "", bearer))[0] == 200
    cc.revoke_tokens()
    assert (await list_page(cc, pki, session, "", bearer))[0] == 401
    assert cc.tokens_issued == 2


async def test_uaa_refuses_bad_client_credentials(
    cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    status, body = await call(
        session,
        "POST",
        f"{cc.uaa_url}/oauth/token",
        client_context(TlsFiles(pki.client.ca)),
        data={"grant_type": "client_credentials"},
        headers={"Authorization": aiohttp.encode_basic_auth("network-policy", "wrong")},
    )
    assert (status, body) == (401, {"error": "unauthorized", "error_description": "Bad credentials"})
    assert cc.tokens_issued == 0


async def test_asg_latest_update_has_nine_fraction_digits_and_moves_on_every_v3_write(
    cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    """Current CC: microsecond precision written with nine fraction digits and +00:00, pretty-printed."""
    mtls = client_context(pki.client)
    url = f"{cc.internal_url}/internal/v4/asg_latest_update"
    status, body = await call(session, "GET", url, mtls)
    assert (status, body) == (200, {"last_update": "1970-01-01T00:00:00.000000000+00:00"})
    async with session.get(url, ssl=mtls) as response:
        assert await response.text() == json.dumps(fixture("asg_latest_update.json") | body, indent=2)
    guid = cc.add_security_group("g", [])
    seen = set()
    for change in (
        lambda: cc.bind_security_group(guid, "s1", "running"),
        lambda: cc.unbind_security_group(guid, "s1", "running"),
        lambda: cc.delete_security_group(guid),
    ):
        change()
        _, body = await call(session, "GET", url, mtls)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}000\+00:00", body["last_update"])
        assert datetime.fromisoformat(body["last_update"]) == cc.last_update
        seen.add(body["last_update"])
    assert len(seen) == 3  # writes within one second each move it


async def test_internal_api_requires_a_client_certificate(
    cc: CloudControllerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ClientOSError, match="certificate required"):
        await call(
            session, "GET", f"{cc.internal_url}/internal/v4/asg_latest_update", client_context(TlsFiles(pki.client.ca))
        )
    assert cc.requests[CcRoute.ASG_LATEST_UPDATE] == 0


async def test_older_cc_answers_404_for_asg_latest_update(pki: Pki, session: aiohttp.ClientSession) -> None:
    async with CloudControllerSimulator(pki.server, asg_latest_update_endpoint=False) as cc:
        status, body = await call(
            session, "GET", f"{cc.internal_url}/internal/v4/asg_latest_update", client_context(pki.client)
        )
    assert status == 404 and body["errors"][0]["title"] == "CF-NotFound"
