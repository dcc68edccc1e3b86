"""The policy server simulator speaks the internal API as the real Go server does (docs/cf-facts.md §1):
its routes and no others, its headers, its error bodies, the shapes of the recorded payloads in
tests/fixtures/policy (which parse with events.models), historical egress included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from events.asgsync import collect_security_groups
from events.models import InternalSecurityGroup, SecurityGroup, parse_internal_policies
from events.tls import client_context
from lab.cfsim import shape
from lab.pki import Pki
from lab.sim.policy import (
    GO_SNIFFED_TEXT,
    HSTS,
    C2CPolicySpec,
    EgressDestinationSpec,
    PolicyRoute,
    PolicyServerSimulator,
)

FIXTURES = Path(__file__).parent / "fixtures" / "policy"
API = "/networking/v1/internal"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Api:
    """Raw HTTPS calls with our client certificate: the wire as it is, not as our client reads it."""

    def __init__(self, sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession) -> None:
        self._base = sim.url
        self._ssl = client_context(pki.client)
        self._session = session

    async def text(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        status, _, text = await self.response(method, path, body)
        return status, text

    async def response(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], str]:
        async with self._session.request(method, self._base + path, ssl=self._ssl, json=body) as response:
            return response.status, dict(response.headers), await response.text()

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
        ("tcp", 9090, 9090),
    ]
    assert egress == []
    c2c, egress = parse_internal_policies(fixture("internal_policies_with_egress.json"))
    assert len(c2c) == 3 and [e.destination.name for e in egress] == ["postgres", "ping"]
    assert egress[1].source.type == "default" and egress[1].source.id == ""


def test_recorded_security_groups_parse_from_their_rules_strings() -> None:
    dns, payments, mirror = (
        InternalSecurityGroup.parse_lenient(g) for g in fixture("internal_security_groups.json")["security_groups"]
    )
    assert dns[1] == payments[1] == mirror[1] == []
    assert dns[0].globally_enabled.running and dns[0].globally_enabled.staging
    assert [r.destination for r in payments[0].rules] == [
        "203.0.113.0/24",
        "192.0.2.10-192.0.2.20",
        "203.0.113.1",
        "198.51.100.0/25,2001:db8:1::/48",
        "192.0.2.200",
    ]
    assert mirror[0].rules[0].description == "apt & pip mirror"  # Go's \u0026 escape
    assert payments[0].running_space_guids == {"5d0c9b1e-2f3a-4c5d-8e7f-0a1b2c3d4e5f"}


def test_bad_rules_are_dropped_one_by_one() -> None:
    """Hand-made (the asg-syncer stores only what CC validated, as valid JSON): what the lenient parser
    does with a bad rule, and with a rules string that is not JSON."""
    rules = [
        {"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "443"},
        {"protocol": "tcp", "destination": "10.0.0.300", "ports": "80"},
        {"protocol": "udp", "destination": "198.51.100.0/24", "ports": "9000-8000"},
    ]
    group = {"guid": "g", "name": "half-bad", "rules": json.dumps(rules), "running_default": True}
    parsed, problems = InternalSecurityGroup.parse_lenient(
        group | {"staging_space_guids": [], "running_space_guids": []}
    )
    assert [r.destination for r in parsed.rules] == ["192.0.2.0/24"]
    assert [p.path for p in problems] == ["rules[1].destination", "rules[2].ports"]
    parsed, problems = InternalSecurityGroup.parse_lenient(group | {"rules": '[{"protocol":'})
    assert parsed.rules == [] and [p.path for p in problems] == ["rules"] and "not valid JSON" in problems[0].message


def test_an_unknown_key_is_ignored_and_not_counted_as_dropped() -> None:
    """A newer server may add keys: the entry is kept, and the problem says nothing was dropped."""
    raw = fixture("internal_security_groups.json")["security_groups"][0]
    rules = json.loads(raw["rules"])
    rules[0]["priority"] = 7
    groups: dict[str, SecurityGroup] = {}
    problems: dict[str, str] = {}
    collect_security_groups(
        [raw | {"rules": json.dumps(rules), "created_by": "syncer"}],
        InternalSecurityGroup.parse_lenient,
        groups,
        problems,
    )
    assert problems == {} and len(groups[raw["guid"]].rules) == 2
    body = fixture("internal_policies.json")
    body["policies"][0]["destination"]["priority"] = 1
    c2c, _, found = parse_internal_policies(body | {"generation": 2}, lenient=True)
    assert len(c2c) == 3 and [str(p) for p in found] == [
        "generation: unknown key",
        "policies[0].destination.priority: unknown key",
    ]
    assert not any(p.dropped for p in found)


async def test_policies_match_the_recorded_shape(sim: PolicyServerSimulator, api: Api) -> None:
    sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b", "tcp", 8080, 8080))
    assert shape(await api.json(f"{API}/policies")) == shape(fixture("internal_policies.json"))


async def test_egress_policies_have_the_historical_internal_shape(pki: Pki) -> None:
    """One entry per destination rule; source.id always there ("" for default); icmp fields for icmp only;
    no egress keys at all while there are no egress policies (both were omitempty)."""
    async with PolicyServerSimulator(pki.server, egress_policies=True) as sim, aiohttp.ClientSession() as s:
        api = Api(sim, pki, s)
        sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b"))
        assert list(await api.json(f"{API}/policies")) == ["total_policies", "policies"]
        sim.add_egress_policy("app-a", "partner", [EgressDestinationSpec("tcp", "198.51.100.1", "198.51.100.9", 1, 2)])
        sim.add_egress_policy(
            "",
            "ping",
            [EgressDestinationSpec("icmp", "203.0.113.1", "203.0.113.1", icmp_type=8)],
            source_type="default",
        )
        body = await api.json(f"{API}/policies")
    recorded = fixture("internal_policies_with_egress.json")
    assert shape(body) == shape(recorded)
    tcp, icmp = body["egress_policies"]
    assert list(tcp["destination"]) == ["id", "name", "protocol", "ports", "ips"]
    assert icmp["source"] == {"id": "", "type": "default"}
    assert (icmp["destination"]["icmp_type"], icmp["destination"]["icmp_code"]) == (8, -1)
    assert list(recorded["egress_policies"][1]["destination"]) == [
        "id",
        "name",
        "description",
        "protocol",
        "ips",
        "icmp_type",
        "icmp_code",
    ]
    assert [e.destination.name for e in parse_internal_policies(body)[1]] == ["partner", "ping"]


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
    async with PolicyServerSimulator(pki.server, tag_length=1) as sim, aiohttp.ClientSession() as session:
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
    assert await api.text("GET", f"{API}/policies") == (500, '{"error": "database read failed"}')
    assert (await api.text("GET", f"{API}/policies"))[0] == 200
    sim.fail(PolicyRoute.SECURITY_GROUPS, times=1, paged_only=True)
    assert (await api.text("GET", f"{API}/security_groups?limit=1"))[0] == 200
    assert (await api.text("GET", f"{API}/security_groups?limit=1&from=2"))[0] == 500


async def test_replies_carry_gos_sniffed_content_type_and_hsts(sim: PolicyServerSimulator, api: Api) -> None:
    """Handlers set no Content-Type, so Go sniffs text/plain for JSON and integers alike; HSTSHandler
    wraps every handler, so error replies carry it too."""
    sim.fail(PolicyRoute.POLICIES, times=1)
    for path in ("policies", "policies", "policies_last_updated", "security_groups?limit=x"):
        status, headers, _ = await api.response("GET", f"{API}/{path}")
        assert headers["Content-Type"] == GO_SNIFFED_TEXT == "text/plain; charset=utf-8", (path, status)
        assert headers["Strict-Transport-Security"] == "max-age=31536000", (path, status)
    status, headers, text = await api.response("PUT", f"{API}/tags", {"id": "app-a", "type": "app"})
    assert (status, headers["Content-Type"], headers["Strict-Transport-Security"]) == (200, GO_SNIFFED_TEXT, HSTS)
    assert list(json.loads(text)) == ["id", "tag", "type"]  # api.Tag's field order


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("from=x", '{"error": "invalid value for \'from\' parameter"}'),
        ("from=", '{"error": "invalid value for \'from\' parameter"}'),
        ("from=1_0", '{"error": "invalid value for \'from\' parameter"}'),
        ("limit=ten", '{"error": "invalid value for \'limit\' parameter"}'),
        ("from=x&limit=ten", '{"error": "invalid value for \'from\' parameter"}'),
    ],
)
async def test_bad_from_and_limit_get_the_handlers_own_500s(api: Api, query: str, body: str) -> None:
    """strconv.Atoi's refusals, one error body per parameter, `from` checked first (handlers/asgs_index.go)."""
    assert await api.text("GET", f"{API}/security_groups?{query}") == (500, body)


async def test_only_the_real_routes_exist(api: Api) -> None:
    """security_groups_last_updated is not a route of the internal server: the router's plain 404, no HSTS.
    A known path with another method is the router's 405 with Allow."""
    for path in (f"{API}/security_groups_last_updated", "/networking/v1/internal/nope", "/"):
        status, headers, text = await api.response("GET", path)
        assert (status, text, headers["Content-Type"]) == (404, "404 page not found\n", GO_SNIFFED_TEXT), path
        assert headers["X-Content-Type-Options"] == "nosniff" and "Strict-Transport-Security" not in headers
    status, headers, text = await api.response("GET", f"{API}/tags")
    assert (status, headers["Allow"], text) == (405, "PUT", "Method Not Allowed\n")
    status, headers, _ = await api.response("PUT", f"{API}/policies", {})
    assert (status, headers["Allow"]) == (405, "GET")
    status, _, _ = await api.response("PUT", "/networking/v0/internal/tags", {"id": "a", "type": "app"})
    assert status == 404  # tags is registered for v1 only


async def test_tags_refuse_a_body_that_is_not_a_json_object(api: Api) -> None:
    assert await api.text("PUT", f"{API}/tags", "{not json") == (400, '{"error": "failed parsing request body"}')
