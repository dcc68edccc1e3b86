"""A faithful simulator of the policy server's internal API (docs/cf-facts.md §1), over mutual TLS.

It serves what `policy-server-internal` serves, in the same wire format:

    GET /networking/:version/internal/policies                  {"total_policies", "policies"} (+ egress when enabled)
    GET /networking/:version/internal/policies_last_updated     bare integer, Unix nanoseconds
    GET /networking/:version/internal/security_groups           {"next", "security_groups"}, rules as a JSON string
    GET /networking/:version/internal/security_groups_last_updated  bare integer (newer servers only)
    PUT /networking/v1/internal/tags                            create-or-get a tag

and is driven by a scenario API (plain Python methods) that plays the parts of the external API
and the asg-syncer: add/remove c2c policies, create/update/bind/delete security groups, and
inject faults. Security groups are rows with an increasing id, as in the policy DB, so `from`,
`limit` and `next` behave exactly like the store (limit+1 rows fetched, `next` = id of the extra row).

Like the real internal routes, `:version` is not checked.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from aiohttp import web

from events.tls import CF_TLS12_CIPHERS, TlsFiles, server_context
from lab.sim.server import HttpsSite

Lifecycle = Literal["running", "staging"]

# The seven keys the asg-syncer writes for every rule (it re-marshals CC rules through a Go struct
# without omitempty), with the zero values Go gives to the ones CC omitted.
_RULE_KEYS_AND_ZEROS: tuple[tuple[str, Any], ...] = (
    ("protocol", ""),
    ("destination", ""),
    ("ports", ""),
    ("type", 0),
    ("code", 0),
    ("description", ""),
    ("log", False),
)


class PolicyRoute(StrEnum):
    """The internal routes, for request counting and fault injection."""

    POLICIES = "policies"
    POLICIES_LAST_UPDATED = "policies_last_updated"
    SECURITY_GROUPS = "security_groups"
    SECURITY_GROUPS_LAST_UPDATED = "security_groups_last_updated"
    TAGS = "tags"


@dataclass(frozen=True, slots=True)
class C2CPolicySpec:
    """One c2c policy as an operator creates it: source app → destination app, protocol, port range."""

    source_app: str
    destination_app: str
    protocol: Literal["tcp", "udp"] = "tcp"
    start_port: int = 8080
    end_port: int = 8080


@dataclass(frozen=True, slots=True)
class EgressDestinationSpec:
    """One destination rule of a (historical) dynamic egress destination."""

    protocol: Literal["tcp", "udp", "icmp", "all"]
    ip_start: str
    ip_end: str
    port_start: int | None = None
    port_end: int | None = None
    icmp_type: int = -1
    icmp_code: int = -1


@dataclass(slots=True)
class _Egress:
    guid: str
    source_id: str | None
    source_type: Literal["app", "space", "default"]
    destination_guid: str
    destination_name: str
    rules: list[EgressDestinationSpec]
    app_lifecycle: Literal["running", "staging", "all"]


@dataclass(slots=True)
class _SecurityGroupRow:
    id: int
    guid: str
    name: str
    rules: list[dict[str, Any]]
    staging_default: bool
    running_default: bool
    staging_spaces: list[str]
    running_spaces: list[str]
    rules_override: str | None = None

    def rules_string(self) -> str:
        if self.rules_override is not None:
            return self.rules_override
        full = [{key: rule.get(key, zero) for key, zero in _RULE_KEYS_AND_ZEROS} for rule in self.rules]
        return go_json(full)


@dataclass(slots=True)
class _Fault:
    status: int
    remaining: int
    paged_only: bool


@dataclass(slots=True)
class _Tag:
    id: int
    type: str


@dataclass(slots=True)
class PolicyServerState:
    """What the policy DB holds. Exposed for assertions; change it through the simulator's methods."""

    policies: list[C2CPolicySpec] = field(default_factory=list)
    egress: list[_Egress] = field(default_factory=list)
    security_groups: dict[str, _SecurityGroupRow] = field(default_factory=dict)
    tags: dict[str, _Tag] = field(default_factory=dict)
    policies_last_updated: int = 0
    security_groups_last_updated: int = 0


def go_json(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact, with <, > and & escaped as \\u00XX."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class PolicyServerSimulator:
    """The policy server internal API over mutual TLS, plus a scenario API.

    Example::

        async with PolicyServerSimulator(TlsFiles(ca, server_cert, server_key)) as sim:
            sim.add_c2c_policy(C2CPolicySpec("app-a", "app-b", "tcp", 8080, 8080))
            guid = sim.add_security_group("dns", [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53"}],
                                          running_default=True)
            ... # point a watcher at sim.url
    """

    def __init__(
        self,
        tls: TlsFiles,
        *,
        tag_length: int = 2,
        egress_policies: bool = False,
        tls12_ciphers: str | None = CF_TLS12_CIPHERS,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`egress_policies=True` makes it behave like a policy server before cf-networking 3.6.0, which
        also returned dynamic egress policies from `/internal/policies`."""
        self.state = PolicyServerState()
        self.requests: Counter[PolicyRoute] = Counter()
        self.request_log: list[tuple[PolicyRoute, dict[str, str]]] = []
        self._tag_length = tag_length
        self._egress_enabled = egress_policies
        self._faults: dict[PolicyRoute, _Fault] = {}
        self._delays: dict[PolicyRoute, float] = {}
        self._next_tag_id = 1
        self._next_sg_id = 1
        self._site = HttpsSite(self._app(), server_context(tls, tls12_ciphers=tls12_ciphers), host, port)
        self._bump_policies()
        self._bump_security_groups()

    @property
    def url(self) -> str:
        return self._site.url

    async def start(self) -> str:
        return await self._site.start()

    async def stop(self) -> None:
        await self._site.stop()

    async def __aenter__(self) -> PolicyServerSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- scenario: c2c policies -------------------------------------------------------------

    def add_c2c_policy(self, policy: C2CPolicySpec) -> None:
        """Create a policy (idempotent, like the external API)."""
        if not (1 <= policy.start_port <= policy.end_port <= 65535):
            raise ValueError(f"c2c policy ports {policy.start_port}-{policy.end_port}: need 1 <= start <= end <= 65535")
        self._tag_for(policy.source_app, "app")
        self._tag_for(policy.destination_app, "app")
        if policy not in self.state.policies:
            self.state.policies.append(policy)
            self._bump_policies()

    def remove_c2c_policy(self, policy: C2CPolicySpec) -> None:
        if policy in self.state.policies:
            self.state.policies.remove(policy)
            self._bump_policies()

    def add_egress_policy(
        self,
        source_id: str | None,
        destination_name: str,
        rules: list[EgressDestinationSpec],
        *,
        source_type: Literal["app", "space", "default"] = "app",
        app_lifecycle: Literal["running", "staging", "all"] = "all",
    ) -> str:
        """Create a dynamic egress policy to a new destination; returns the policy guid."""
        guid = str(uuid.uuid4())
        egress = _Egress(guid, source_id, source_type, str(uuid.uuid4()), destination_name, rules, app_lifecycle)
        self.state.egress.append(egress)
        self._bump_policies()
        return guid

    def remove_egress_policy(self, guid: str) -> None:
        self.state.egress = [e for e in self.state.egress if e.guid != guid]
        self._bump_policies()

    # ---- scenario: security groups (what the asg-syncer writes) ----------------------------

    def add_security_group(
        self,
        name: str,
        rules: list[dict[str, Any]],
        *,
        guid: str | None = None,
        running_default: bool = False,
        staging_default: bool = False,
        running_spaces: tuple[str, ...] = (),
        staging_spaces: tuple[str, ...] = (),
    ) -> str:
        """Insert a group (CC rule objects, keys omitted as CC omits them); returns its guid.
        The rules are stored without validation, as the syncer stores what CC gives it."""
        guid = guid or str(uuid.uuid4())
        if guid in self.state.security_groups:
            raise ValueError(f"security group {guid} already exists")
        self.state.security_groups[guid] = _SecurityGroupRow(
            self._next_sg_id,
            guid,
            name,
            [dict(r) for r in rules],
            staging_default,
            running_default,
            list(staging_spaces),
            list(running_spaces),
        )
        self._next_sg_id += 1
        self._bump_security_groups()
        return guid

    def update_security_group(
        self,
        guid: str,
        *,
        name: str | None = None,
        rules: list[dict[str, Any]] | None = None,
        running_default: bool | None = None,
        staging_default: bool | None = None,
    ) -> None:
        """Change a group in place (the row keeps its id, as the syncer's upsert does)."""
        row = self._group(guid)
        if name is not None:
            row.name = name
        if rules is not None:
            row.rules = [dict(r) for r in rules]
            row.rules_override = None
        if running_default is not None:
            row.running_default = running_default
        if staging_default is not None:
            row.staging_default = staging_default
        self._bump_security_groups()

    def bind_security_group(self, guid: str, space_guid: str, lifecycle: Lifecycle) -> None:
        spaces = self._spaces(guid, lifecycle)
        if space_guid not in spaces:
            spaces.append(space_guid)
        self._bump_security_groups()

    def unbind_security_group(self, guid: str, space_guid: str, lifecycle: Lifecycle) -> None:
        spaces = self._spaces(guid, lifecycle)
        if space_guid in spaces:
            spaces.remove(space_guid)
        self._bump_security_groups()

    def delete_security_group(self, guid: str) -> None:
        self._group(guid)
        del self.state.security_groups[guid]
        self._bump_security_groups()

    def set_rules_string(self, guid: str, raw: str) -> None:
        """Fault: store `raw` verbatim as the group's rules string (e.g. a list holding one bad rule,
        or something that is not JSON at all)."""
        self._group(guid).rules_override = raw
        self._bump_security_groups()

    # ---- scenario: faults ---------------------------------------------------------------------

    def fail(self, route: PolicyRoute, times: int = 1, status: int = 500, *, paged_only: bool = False) -> None:
        """Answer the next `times` requests to `route` with `status` and the server's error body.
        `paged_only`: only requests with `from` > 0 fail (an error in the middle of a listing)."""
        self._faults[route] = _Fault(status, times, paged_only)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    def delay(self, route: PolicyRoute, seconds: float) -> None:
        """Sleep `seconds` before answering each request to `route` (0 to stop)."""
        self._delays[route] = seconds

    # ---- internals ------------------------------------------------------------------------------

    def _group(self, guid: str) -> _SecurityGroupRow:
        try:
            return self.state.security_groups[guid]
        except KeyError:
            raise KeyError(f"no security group {guid} in the policy server simulator") from None

    def _spaces(self, guid: str, lifecycle: Lifecycle) -> list[str]:
        row = self._group(guid)
        return row.running_spaces if lifecycle == "running" else row.staging_spaces

    def _tag_for(self, guid: str, type_: str) -> _Tag:
        tag = self.state.tags.get(guid)
        if tag is None:
            if self._next_tag_id >= 16 ** (2 * self._tag_length):
                raise RuntimeError(f"tag space of length {self._tag_length} exhausted")
            tag = _Tag(self._next_tag_id, type_)
            self.state.tags[guid] = tag
            self._next_tag_id += 1
        return tag

    def _tag_text(self, guid: str) -> str:
        return f"{self.state.tags[guid].id:0{2 * self._tag_length}X}"

    def _bump_policies(self) -> None:
        self.state.policies_last_updated = max(time.time_ns(), self.state.policies_last_updated + 1)

    def _bump_security_groups(self) -> None:
        self.state.security_groups_last_updated = max(time.time_ns(), self.state.security_groups_last_updated + 1)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/networking/{version}/internal/policies", self._policies)
        app.router.add_get("/networking/{version}/internal/policies_last_updated", self._policies_last_updated)
        app.router.add_get("/networking/{version}/internal/security_groups", self._security_groups)
        app.router.add_get(
            "/networking/{version}/internal/security_groups_last_updated", self._security_groups_last_updated
        )
        app.router.add_put("/networking/v1/internal/tags", self._tags)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = _ROUTE_BY_SUFFIX.get(request.path.rsplit("/", 1)[-1])
        if route is None:
            return await handler(request)
        self.requests[route] += 1
        self.request_log.append((route, dict(request.query)))
        if seconds := self._delays.get(route):
            await asyncio.sleep(seconds)
        fault = self._faults.get(route)
        if fault and fault.remaining > 0 and (not fault.paged_only or int(request.query.get("from", "0") or 0) > 0):
            fault.remaining -= 1
            return _error(fault.status, "database read failed")
        return await handler(request)

    async def _policies(self, request: web.Request) -> web.Response:
        ids = set(request.query["id"].split(",")) if "id" in request.query else None
        selected = [p for p in self.state.policies if ids is None or p.source_app in ids or p.destination_app in ids]
        body: dict[str, Any] = {
            "total_policies": len(selected),
            "policies": [self._policy_json(p) for p in selected],
        }
        if self._egress_enabled:
            egress = [
                e
                for e in self.state.egress
                if ids is None or e.source_type == "default" or (e.source_id is not None and e.source_id in ids)
            ]
            entries = [_egress_json(e, rule) for e in egress for rule in e.rules]
            body["total_egress_policies"] = len(entries)
            body["egress_policies"] = entries
        return _json(body)

    def _policy_json(self, p: C2CPolicySpec) -> dict[str, Any]:
        return {
            "source": {"id": p.source_app, "tag": self._tag_text(p.source_app)},
            "destination": {
                "id": p.destination_app,
                "tag": self._tag_text(p.destination_app),
                "protocol": p.protocol,
                "ports": {"start": p.start_port, "end": p.end_port},
            },
        }

    async def _policies_last_updated(self, request: web.Request) -> web.Response:
        return web.Response(text=str(self.state.policies_last_updated))

    async def _security_groups_last_updated(self, request: web.Request) -> web.Response:
        return web.Response(text=str(self.state.security_groups_last_updated))

    async def _security_groups(self, request: web.Request) -> web.Response:
        spaces = set(request.query["space_guids"].split(",")) if "space_guids" in request.query else set()
        try:
            start = int(request.query.get("from", "0"))
            limit = int(request.query.get("limit", "0"))
        except ValueError:
            # The real handler answers a bad integer with a 500 and this description.
            return _error(500, "invalid value for 'from' or 'limit' parameter")
        rows = sorted(
            (
                row
                for row in self.state.security_groups.values()
                if row.staging_default
                or row.running_default
                or spaces.intersection(row.staging_spaces)
                or spaces.intersection(row.running_spaces)
            ),
            key=lambda row: row.id,
        )
        if start > 0:
            rows = [row for row in rows if row.id >= start]
        next_id = 0
        if limit > 0:
            # The store asks the DB for limit+1 rows: the extra row's id is the next page's `from`.
            if len(rows) > limit:
                next_id = rows[limit].id
            rows = rows[:limit]
        return _json(
            {
                "next": next_id,
                "security_groups": [
                    {
                        "guid": row.guid,
                        "name": row.name,
                        "rules": row.rules_string(),
                        "staging_default": row.staging_default,
                        "running_default": row.running_default,
                        "staging_space_guids": row.staging_spaces,
                        "running_space_guids": row.running_spaces,
                    }
                    for row in rows
                ],
            }
        )

    async def _tags(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            guid, type_ = body["id"], body["type"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "missing or invalid id or type")
        tag = self._tag_for(guid, type_)
        return _json({"id": guid, "type": tag.type, "tag": self._tag_text(guid)})


_ROUTE_BY_SUFFIX = {
    "policies": PolicyRoute.POLICIES,
    "policies_last_updated": PolicyRoute.POLICIES_LAST_UPDATED,
    "security_groups": PolicyRoute.SECURITY_GROUPS,
    "security_groups_last_updated": PolicyRoute.SECURITY_GROUPS_LAST_UPDATED,
    "tags": PolicyRoute.TAGS,
}


def _egress_json(e: _Egress, rule: EgressDestinationSpec) -> dict[str, Any]:
    source: dict[str, Any] = {"type": e.source_type}
    if e.source_id is not None:
        source["id"] = e.source_id
    destination: dict[str, Any] = {
        "id": e.destination_guid,
        "name": e.destination_name,
        "protocol": rule.protocol,
        "ips": [{"start": rule.ip_start, "end": rule.ip_end}],
        "icmp_type": rule.icmp_type,
        "icmp_code": rule.icmp_code,
    }
    if rule.port_start is not None:
        destination["ports"] = [{"start": rule.port_start, "end": rule.port_end or rule.port_start}]
    return {"source": source, "destination": destination, "app_lifecycle": e.app_lifecycle}


def _json(body: Any) -> web.Response:
    return web.Response(text=go_json(body), content_type="application/json")


def _error(status: int, description: str) -> web.Response:
    return web.Response(status=status, text=go_json({"error": description}), content_type="application/json")
