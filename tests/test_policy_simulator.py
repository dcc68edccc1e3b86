"""The policy server simulator speaks the internal API as docs/cf-facts.md §1 describes it, in the shapes
of the recorded payloads in tests/fixtures/policy, and those payloads parse with events.models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from events.models import InternalSecurityGroup, parse_internal_policies
from events.tls import client_context
from lab.cfsim import Pki, shape
from lab.sim.policy import C2CPolicySpec, EgressDestinationSpec, PolicyRoute, PolicyServerSimulator

FIXTURES = Path(__file__).parent / "fixtures" / "policy"
API = "/networking/v1/internal"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Api:
    """Raw HTTPS calls with our client certificate: the wire as it is, not as our client reads it."""

    def __init__(self, sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession) -> None:
        self._base = sim.url
        self._ssl = client_context(pki.client_files())
        self._session = session

    async def text(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        async with self._session.request(method, self._base + path, ssl=self._ssl, json=body) as response:
            return response.status, await response.text()

    async def json(self, path: str) -> Any:
        status, text = await self.text("GET", path)
        assert status == 200, text
        return json.loads(text)


@pytest.fixture
async def api(sim: PolicyServerSimulator, pki: Pki) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(sim, pki, session)


def test_recorded_policies_parse() -> None:
    c2c, egress = parse_internal_policies(fixture("internal_policies.json"))
    assert [(p.destination.protocol, p.destination.ports.start, p.destination.ports.end) for p in c2c] == [
        ("tcp", 8080, 8080),
        ("udp", 9000, 9010),
    ]
    assert egress == []
    c2c, egress = parse_internal_policies(fixture("internal_policies_with_egress.json"))
    assert len(c2c) == 1 and [e.destination.name for e in egress] == ["partner-api", "ping-anywhere"]


def test_recorded_security_groups_parse_from_their_rules_strings() -> None:
    dns, backend = (
        InternalSecurityGroup.parse_lenient(g) for g in fixture("internal_security_groups.json")["security_groups"]
    )
    assert dns[1] == [] and backend[1] == []
    assert dns[0].globally_enabled.running and dns[0].globally_enabled.staging
    assert [r.destination for r in backend[0].rules] == ["10.0.11.0/24", "10.0.11.0-10.0.11.255", "192.0.2.10"]
    assert backend[0].rules[0].description == "backends & admin"  # Go's \u0026 escape
    assert backend[0].running_space_guids == {"7f3d9b4e-5b8a-4c1e-9d2f-0a1b2c3d4e5f"}


def test_recorded_bad_rules_are_dropped_one_by_one() -> None:
    half_bad, garbled = fixture("internal_security_groups_bad_rule.json")["security_groups"]
    group, problems = InternalSecurityGroup.parse_lenient(half_bad)
    assert [r.destination for r in group.rules] == ["192.0.2.0/24"]
    assert [p.path for p in problems] == ["rules[1].destination", "rules[2].ports"]
    group, problems = InternalSecurityGroup.parse_lenient(garbled)
    assert group.rules == [] and group.running_space_guids == frozenset()  # Go's null lists
    assert [p.path for p in problems] == ["rules"] and "not valid JSON" in problems[0].message


async def test_policies_match_the_recorded_shape(sim: PolicyServerSimulator, api: Api) -> None:
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b", "tcp", 8080, 8080))
    assert shape(await api.json(f"{API}/policies")) == shape(fixture("internal_policies.json"))


async def test_egress_policies_match_the_recorded_shape(pki: Pki) -> None:
    async with PolicyServerSimulator(pki.server_files(), egress_policies=True) as sim, aiohttp.ClientSession() as s:
        sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b"))
        sim.add_egress_policy("app-a", "partner", [EgressDestinationSpec("tcp", "198.51.100.1", "198.51.100.9", 1, 2)])
        body = await Api(sim, pki, s).json(f"{API}/policies")
    recorded = fixture("internal_policies_with_egress.json")
    assert shape(body) == shape(recorded)
    assert parse_internal_policies(body)[1][0].destination.name == "partner"


async def test_security_groups_match_the_recorded_shape(sim: PolicyServerSimulator, api: Api) -> None:
    rules = [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53", "description": "<dns> & co"}]
    sim.add_security_group("dns", rules, running_default=True, staging_default=True)
    body = await api.json(f"{API}/security_groups")
    assert shape(body) == shape(fixture("internal_security_groups.json") | {"next": 0})
    raw = body["security_groups"][0]["rules"]
    assert "\\u003cdns\\u003e \\u0026 co" in raw  # escaped as Go's encoding/json does
    assert list(json.loads(raw)[0]) == ["protocol", "destination", "ports", "type", "code", "description", "log"]
    assert json.loads(raw)[0] | {"description": ""} == {
        "protocol": "udp",
        "destination": "0.0.0.0/0",
        "ports": "53",
        "type": 0,
        "code": 0,
        "description": "",
        "log": False,
    }


async def test_id_filter_selects_source_or_destination(sim: PolicyServerSimulator, api: Api) -> None:
    sim.add_c2c_policy(C2CPolicySpec("a", "b"))
    sim.add_c2c_policy(C2CPolicySpec("c", "a"))
    sim.add_c2c_policy(C2CPolicySpec("c", "d"))
    body = await api.json(f"{API}/policies?id=a,zzz")
    assert body["total_policies"] == 2
    assert {(p["source"]["id"], p["destination"]["id"]) for p in body["policies"]} == {("a", "b"), ("c", "a")}
    assert (await api.json(f"{API}/policies"))["total_policies"] == 3


async def test_tags_are_upper_hex_padded_to_twice_the_tag_length(pki: Pki) -> None:
    async with PolicyServerSimulator(pki.server_files(), tag_length=1) as sim, aiohttp.ClientSession() as session:
        api = Api(sim, pki, session)
        for n in range(11):
            sim.add_c2c_policy(C2CPolicySpec(f"src-{n}", "dst"))
        tags = {p["source"]["id"]: p["source"]["tag"] for p in (await api.json(f"{API}/policies"))["policies"]}
        assert tags["src-0"] == "01" and tags["src-10"] == "0C"  # "dst" took tag 02
        status, text = await api.text("PUT", f"{API}/tags", {"id": "INGRESS_ROUTER", "type": "router"})
        assert status == 200 and json.loads(text) == {"id": "INGRESS_ROUTER", "type": "router", "tag": "0D"}
        status, text = await api.text("PUT", f"{API}/tags", {"id": "INGRESS_ROUTER", "type": "router"})
        assert json.loads(text)["tag"] == "0D"  # create-or-get


async def test_paging_fetches_limit_plus_one_and_returns_its_id_as_next(sim: PolicyServerSimulator, api: Api) -> None:
    """Rows ordered by id; `from` is inclusive; `next` is the id of the row after the page, 0 at the end."""
    guids = [sim.add_security_group(f"g{i}", [], running_default=True) for i in range(5)]
    sim.delete_security_group(guids[1])  # ids 1,3,4,5 remain: ids have gaps, as in a database

    async def page(query: str) -> tuple[list[str], int]:
        body = await api.json(f"{API}/security_groups?{query}")
        return [g["name"] for g in body["security_groups"]], body["next"]

    assert await page("limit=2") == (["g0", "g2"], 4)
    assert await page("limit=2&from=4") == (["g3", "g4"], 0)
    assert await page("limit=3&from=2") == (["g2", "g3", "g4"], 0)
    assert await page("") == (["g0", "g2", "g3", "g4"], 0)
    assert await page("per_page=1") == (["g0", "g2", "g3", "g4"], 0)  # the VPA's parameter is ignored


async def test_space_guids_select_bound_groups_plus_defaults(sim: PolicyServerSimulator, api: Api) -> None:
    sim.add_security_group("running-default", [], running_default=True)
    sim.add_security_group("staging-default", [], staging_default=True)
    sim.add_security_group("bound-running", [], running_spaces=("s1",))
    sim.add_security_group("bound-staging", [], staging_spaces=("s2",))
    sim.add_security_group("elsewhere", [], running_spaces=("s3",))

    async def names(query: str) -> list[str]:
        return [g["name"] for g in (await api.json(f"{API}/security_groups?{query}"))["security_groups"]]

    assert await names("") == ["running-default", "staging-default"]
    assert await names("space_guids=s1,s2") == ["running-default", "staging-default", "bound-running", "bound-staging"]


async def test_version_segment_is_not_checked(sim: PolicyServerSimulator, api: Api) -> None:
    sim.add_c2c_policy(C2CPolicySpec("a", "b"))
    for version in ("v0", "v1", "v2", "anything"):
        assert (await api.json(f"/networking/{version}/internal/policies"))["total_policies"] == 1


async def test_last_updated_is_a_bare_nanosecond_integer_that_moves_on_change(
    sim: PolicyServerSimulator, api: Api
) -> None:
    _, before = await api.text("GET", f"{API}/policies_last_updated")
    assert before.isdigit() and len(before) >= 19  # nanoseconds since 1970
    sim.add_c2c_policy(C2CPolicySpec("a", "b"))
    _, after = await api.text("GET", f"{API}/policies_last_updated")
    assert int(after) > int(before)


async def test_faults_answer_with_the_servers_error_body(sim: PolicyServerSimulator, api: Api) -> None:
    sim.fail(PolicyRoute.POLICIES, times=1)
    assert await api.text("GET", f"{API}/policies") == (500, '{"error":"database read failed"}')
    assert (await api.text("GET", f"{API}/policies"))[0] == 200
    sim.fail(PolicyRoute.SECURITY_GROUPS, times=1, paged_only=True)
    assert (await api.text("GET", f"{API}/security_groups?limit=1"))[0] == 200
    assert (await api.text("GET", f"{API}/security_groups?limit=1&from=2"))[0] == 500
