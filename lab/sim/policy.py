"""A simulator of the policy server's internal API (docs/cf-facts.md §1), over mutual TLS, byte for byte.

It serves exactly the routes `policy-server-internal` registers (cf-networking-release
`policy-server/cmd/policy-server-internal/main.go`, at the commit cf-facts.md names):

    PUT /networking/v1/internal/tags                         create-or-get a tag: {"id","tag","type"}
    GET /networking/:version/internal/policies               {"total_policies","policies"} (+ historical egress)
    GET /networking/:version/internal/policies_last_updated  bare integer, Unix nanoseconds
    GET /networking/:version/internal/security_groups        {"next","security_groups"}, rules as a JSON string

and answers as that Go server does:

- every handler's reply, JSON or integer, goes out without a Content-Type of its own, so Go sniffs
  `text/plain; charset=utf-8`, and with `Strict-Transport-Security: max-age=31536000` (HSTSHandler
  wraps every internal handler);
- errors are `{"error": "<description>"}` as `fmt.Sprintf` writes them (a space after the colon,
  the description not escaped), e.g. "invalid value for 'from' parameter" (handlers/asgs_index.go);
- any other path is the router's `404 page not found`, and a known path with another method
  `405 Method Not Allowed` with `Allow` (bmizerany/pat, Go's http.NotFound and http.Error), neither
  with HSTS. In particular `security_groups_last_updated` is a 404.

It is driven by a scenario API (plain Python methods) that plays the external API and the
asg-syncer: add and remove c2c policies, edit security groups (lab/sim/asgs.py, shared with the Cloud
Controller simulator), and inject faults. Groups are rows with an increasing id, so `from`, `limit`
and `next` behave like the store's (limit+1 rows fetched, `next` = id of the extra row). With
`egress_policies=True` it is a server from before cf-networking 3.6.0, whose `/internal/policies`
also carried dynamic egress policies in their historical internal shape (cf-facts.md §1.7).
Like the real internal routes, `:version` is not checked.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from aiohttp import web

from events.tls import CF_TLS12_CIPHERS, TlsFiles, server_context
from lab.sim.asgs import SecurityGroupRow, SecurityGroupScenario
from lab.sim.server import HttpsSite, SimulatedServer

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
# What Go's http.DetectContentType makes of a JSON or integer body, and what HSTSHandler sets (one year).
GO_SNIFFED_TEXT = "text/plain; charset=utf-8"
HSTS = "max-age=31536000"
# strconv.Atoi: an optional sign and ASCII digits, nothing else (no spaces, no underscores), within int64.
_ATOI = re.compile(r"[+-]?[0-9]+")


class PolicyRoute(StrEnum):
    """The internal routes, for request counting and fault injection."""

    POLICIES = "policies"
    POLICIES_LAST_UPDATED = "policies_last_updated"
    SECURITY_GROUPS = "security_groups"
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
    source_id: str  # "" for a `default` source: the store's column, never null
    source_type: Literal["app", "space", "default"]
    destination_guid: str
    destination_name: str
    rules: list[EgressDestinationSpec]
    app_lifecycle: Literal["running", "staging", "all"]


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
    """What the policy DB holds besides security groups. Change it through the simulator's methods."""

    policies: list[C2CPolicySpec] = field(default_factory=list)
    egress: list[_Egress] = field(default_factory=list)
    tags: dict[str, _Tag] = field(default_factory=dict)
    policies_last_updated: int = 0


def go_json(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact, with <, >, &, U+2028 and U+2029 escaped as \\uXXXX."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


class PolicyServerSimulator(SimulatedServer, SecurityGroupScenario):
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
        self._site = HttpsSite(self._app(), server_context(tls, tls12_ciphers=tls12_ciphers), host, port)
        SimulatedServer.__init__(self, self._site)
        SecurityGroupScenario.__init__(self)
        self.state = PolicyServerState()
        self.requests: Counter[PolicyRoute] = Counter()
        """Requests per route that reached a handler (faults included)."""
        self.bytes_sent: Counter[PolicyRoute] = Counter()
        """Response body bytes per route: what the watchers cost the server."""
        self.request_log: list[tuple[PolicyRoute, dict[str, str]]] = []
        self._tag_length = tag_length
        self._egress_enabled = egress_policies
        self._faults: dict[PolicyRoute, _Fault] = {}
        self._delays: dict[PolicyRoute, float] = {}
        self._rules_overrides: dict[str, str] = {}
        self._next_tag_id = 1
        self._bump_policies()

    @property
    def url(self) -> str:
        return self._site.url

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
        source_id: str,
        destination_name: str,
        rules: list[EgressDestinationSpec],
        *,
        source_type: Literal["app", "space", "default"] = "app",
        app_lifecycle: Literal["running", "staging", "all"] = "all",
    ) -> str:
        """Create a dynamic egress policy to a new destination (`source_id` "" for a default source);
        returns the policy guid."""
        guid = str(uuid.uuid4())
        egress = _Egress(guid, source_id, source_type, str(uuid.uuid4()), destination_name, rules, app_lifecycle)
        self.state.egress.append(egress)
        self._bump_policies()
        return guid

    def remove_egress_policy(self, guid: str) -> None:
        self.state.egress = [e for e in self.state.egress if e.guid != guid]
        self._bump_policies()

    # ---- scenario: faults ---------------------------------------------------------------------

    def set_rules_string(self, guid: str, raw: str) -> None:
        """Fault: serve `raw` as the group's rules string (e.g. something that is not JSON, which the
        asg-syncer never writes) for as long as the group exists."""
        self.security_group(guid)
        self._rules_overrides[guid] = raw

    def fail(self, route: PolicyRoute, times: int = 1, status: int = 500, *, paged_only: bool = False) -> None:
        """Answer the next `times` requests to `route` with `status` and the server's "database read
        failed" body. `paged_only`: only requests with `from` > 0 fail (an error in the middle of a listing)."""
        self._faults[route] = _Fault(status, times, paged_only)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    def delay(self, route: PolicyRoute, seconds: float) -> None:
        """Sleep `seconds` before answering each request to `route` (0 to stop)."""
        self._delays[route] = seconds

    # ---- internals ------------------------------------------------------------------------------

    def _security_groups_changed(self, guid: str | None) -> None:
        super()._security_groups_changed(guid)
        if guid is None:  # a deletion: its fault goes with it
            self._rules_overrides = {g: raw for g, raw in self._rules_overrides.items() if g in self.security_groups}

    def _rules_string(self, row: SecurityGroupRow) -> str:
        if row.guid in self._rules_overrides:
            return self._rules_overrides[row.guid]
        return go_json([{key: rule.get(key, zero) for key, zero in _RULE_KEYS_AND_ZEROS} for rule in row.rules])

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

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/networking/{version}/internal/policies", self._policies, allow_head=False)
        app.router.add_get(
            "/networking/{version}/internal/policies_last_updated", self._policies_last_updated, allow_head=False
        )
        app.router.add_get("/networking/{version}/internal/security_groups", self._security_groups, allow_head=False)
        app.router.add_put("/networking/v1/internal/tags", self._tags)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = _ROUTE_BY_SUFFIX.get(request.path.rsplit("/", 1)[-1])
        try:
            if route is not None:
                self.requests[route] += 1
                self.request_log.append((route, dict(request.query)))
                if seconds := self._delays.get(route):
                    await asyncio.sleep(seconds)
                fault = self._faults.get(route)
                paged = (_atoi(request.query.get("from")) or 0) > 0
                if fault and fault.remaining > 0 and (paged or not fault.paged_only):
                    fault.remaining -= 1
                    return _error(fault.status, "database read failed")
            response = await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            response = _go_plain(405, "Method Not Allowed", {"Allow": ", ".join(sorted(exc.allowed_methods))})
        except web.HTTPNotFound:
            response = _go_plain(404, "404 page not found")
        if route is not None and isinstance(response, web.Response) and response.body is not None:
            self.bytes_sent[route] += len(response.body)  # type: ignore[arg-type]
        return response

    async def _policies(self, request: web.Request) -> web.Response:
        ids = set(request.query["id"].split(",")) if "id" in request.query else None
        selected = [p for p in self.state.policies if ids is None or p.source_app in ids or p.destination_app in ids]
        body: dict[str, Any] = {
            "total_policies": len(selected),
            "policies": [self._policy_json(p) for p in selected],
        }
        if self._egress_enabled:
            egress = [e for e in self.state.egress if ids is None or e.source_type == "default" or e.source_id in ids]
            entries = [_egress_json(e, rule) for e in egress for rule in e.rules]
            if entries:  # both keys were omitempty
                body["total_egress_policies"] = len(entries)
                body["egress_policies"] = entries
        return _ok(go_json(body))

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
        return _ok(str(self.state.policies_last_updated))

    async def _security_groups(self, request: web.Request) -> web.Response:
        spaces = set(request.query["space_guids"].split(",")) if "space_guids" in request.query else set()
        start, limit = _atoi(request.query.get("from")), _atoi(request.query.get("limit"))
        if start is None:
            return _error(500, "invalid value for 'from' parameter")
        if limit is None:
            return _error(500, "invalid value for 'limit' parameter")
        rows = [
            row
            for row in self.security_group_rows()
            if row.staging_default
            or row.running_default
            or spaces.intersection(row.staging_spaces)
            or spaces.intersection(row.running_spaces)
        ]
        if start > 0:
            rows = [row for row in rows if row.id >= start]
        next_id = 0
        if limit > 0:
            # The store asks the DB for limit+1 rows: the extra row's id is the next page's `from`.
            if len(rows) > limit:
                next_id = rows[limit].id
            rows = rows[:limit]
        return _ok(
            go_json(
                {
                    "next": next_id,
                    "security_groups": [
                        {
                            "guid": row.guid,
                            "name": row.name,
                            "rules": self._rules_string(row),
                            "staging_default": row.staging_default,
                            "running_default": row.running_default,
                            "staging_space_guids": row.staging_spaces,
                            "running_space_guids": row.running_spaces,
                        }
                        for row in rows
                    ],
                }
            )
        )

    async def _tags(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            guid, type_ = body.get("id", ""), body.get("type", "")
        except (ValueError, AttributeError):
            return _error(400, "failed parsing request body")
        if not isinstance(guid, str) or not isinstance(type_, str):
            return _error(400, "failed parsing request body")
        tag = self._tag_for(guid, type_)
        return _ok(go_json({"id": guid, "tag": self._tag_text(guid), "type": tag.type}))


_ROUTE_BY_SUFFIX = {route.value: route for route in PolicyRoute}


def _atoi(value: str | None) -> int | None:
    """A query integer as the handler reads it: absent is 0; anything strconv.Atoi refuses is None."""
    if value is None:
        return 0
    if not _ATOI.fullmatch(value) or not -(2**63) <= int(value) < 2**63:
        return None
    return int(value)


def _egress_json(e: _Egress, rule: EgressDestinationSpec) -> dict[str, Any]:
    """One rule of a destination in the historical internal shape (api.InternalEgressPolicy at
    cf-networking-release 90b2ad56^): no policy id, `source.id` always present, `description` and
    `ports` omitted when empty, `icmp_type`/`icmp_code` only for icmp."""
    source: dict[str, Any] = {"id": e.source_id, "type": e.source_type}
    destination: dict[str, Any] = {"id": e.destination_guid, "name": e.destination_name, "protocol": rule.protocol}
    if rule.port_start is not None:
        destination["ports"] = [{"start": rule.port_start, "end": rule.port_end or rule.port_start}]
    destination["ips"] = [{"start": rule.ip_start, "end": rule.ip_end}]
    if rule.protocol == "icmp":
        destination["icmp_type"] = rule.icmp_type
        destination["icmp_code"] = rule.icmp_code
    return {"source": source, "destination": destination, "app_lifecycle": e.app_lifecycle}


def _ok(text: str) -> web.Response:
    return web.Response(text=text, headers={"Content-Type": GO_SNIFFED_TEXT, "Strict-Transport-Security": HSTS})


def _error(status: int, description: str) -> web.Response:
    """httperror.ErrorResponse: the description spliced in with fmt.Sprintf, not JSON-encoded."""
    return web.Response(
        status=status,
        text=f'{{"error": "{description}"}}',
        headers={"Content-Type": GO_SNIFFED_TEXT, "Strict-Transport-Security": HSTS},
    )


def _go_plain(status: int, text: str, extra: dict[str, str] | None = None) -> web.Response:
    """Go's http.Error (and http.NotFound): plain text with a newline, nosniff."""
    headers = {"Content-Type": GO_SNIFFED_TEXT, "X-Content-Type-Options": "nosniff", **(extra or {})}
    return web.Response(status=status, text=text + "\n", headers=headers)
