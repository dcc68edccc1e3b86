"""A faithful simulator of Cloud Controller's security-group API and UAA's token endpoint.

Three HTTPS servers, as in a real foundation:

    UAA        POST /oauth/token                       client_credentials grant, HTTP basic client auth
    CC (v3)    GET  /v3/security_groups?page&per_page  bearer token required; v3 pagination object
    CC (internal, mutual TLS)
               GET  /internal/v4/asg_latest_update     {"last_update": "<RFC 3339, nine fraction digits>"}

A scenario API (plain methods, lab/sim/asgs.py, shared with the policy-server simulator) creates,
updates, binds, unbinds and deletes groups. Every such write goes through "v3", so it moves
`asg_latest_update` (docs/cf-facts.md §1.5). Current CC stores that stamp with microsecond precision
(Sequel's microsecond_timestamp_precision plugin on AsgLatestUpdate) and renders it with nine
fraction digits, e.g. `2024-10-24T16:13:44.123456000+00:00`; so does this simulator.

Only the `page` and `per_page` query parameters are implemented; others are refused with CC's
400 error, so a watcher that starts relying on one will notice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aiohttp import web

from events.tls import TlsFiles, server_context
from lab.sim.asgs import SecurityGroupRow, SecurityGroupScenario
from lab.sim.server import HttpsSite, SimulatedServer

MAX_PER_PAGE = 5000
DEFAULT_PER_PAGE = 50


class CcRoute(StrEnum):
    """The simulated endpoints, for request counting and fault injection."""

    TOKEN = "token"
    SECURITY_GROUPS = "security_groups"
    ASG_LATEST_UPDATE = "asg_latest_update"


@dataclass(slots=True)
class _Fault:
    status: int
    remaining: int
    page: int | None


def _rfc3339(moment: datetime) -> str:
    """How v3 presenters write created_at/updated_at: seconds, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def asg_latest_update_text(moment: datetime) -> str:
    """How current CC writes `last_update`: nine fraction digits, of which the last three are 0."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000+00:00")


class CloudControllerSimulator(SimulatedServer, SecurityGroupScenario):
    """Cloud Controller (external v3 API and internal mTLS API) plus UAA, with a scenario API.

    Example::

        async with CloudControllerSimulator(TlsFiles(ca, cert, key), client_secret="s3cret") as cc:
            guid = cc.add_security_group("dns", [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53"}],
                                         running_default=True)
            cc.bind_security_group(guid, "space-1", "staging")
            ... # point a watcher at cc.uaa_url, cc.api_url, cc.internal_url
    """

    def __init__(
        self,
        tls: TlsFiles,
        *,
        client_id: str = "network-policy",
        client_secret: str = "network-policy-secret",
        token_ttl: int = 43199,
        asg_latest_update_endpoint: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        """`tls.cert`/`tls.key` serve all three servers; `tls.ca` verifies client certificates on the
        internal API. `asg_latest_update_endpoint=False` answers it with 404, like an older CC."""
        self._uaa = HttpsSite(self._uaa_app(), server_context(tls, require_client_cert=False), host)
        self._api = HttpsSite(self._api_app(), server_context(tls, require_client_cert=False), host)
        self._internal = HttpsSite(self._internal_app(), server_context(tls), host)
        SimulatedServer.__init__(self, self._uaa, self._api, self._internal)
        SecurityGroupScenario.__init__(self)
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.tokens_issued = 0
        self.requests: Counter[CcRoute] = Counter()
        self.request_log: list[tuple[CcRoute, dict[str, str]]] = []
        self.last_update = datetime.fromtimestamp(0, UTC)
        self._latest_update_endpoint = asg_latest_update_endpoint
        self._tokens: dict[str, float] = {}
        self._faults: dict[CcRoute, _Fault] = {}
        self._delays: dict[CcRoute, float] = {}

    @property
    def uaa_url(self) -> str:
        return self._uaa.url

    @property
    def api_url(self) -> str:
        return self._api.url

    @property
    def internal_url(self) -> str:
        return self._internal.url

    # ---- scenario: tokens and faults ------------------------------------------------------------

    def revoke_tokens(self) -> None:
        """Make every token issued so far invalid (as if it had expired)."""
        self._tokens.clear()

    def fail(self, route: CcRoute, times: int = 1, status: int = 500, *, page: int | None = None) -> None:
        """Answer the next `times` requests to `route` with `status`; with `page`, only requests for that page."""
        self._faults[route] = _Fault(status, times, page)

    def delay(self, route: CcRoute, seconds: float) -> None:
        self._delays[route] = seconds

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    # ---- internals -----------------------------------------------------------------------------

    def _security_groups_changed(self, guid: str | None) -> None:
        super()._security_groups_changed(guid)
        self.last_update = datetime.now(UTC)  # AsgLatestUpdate.renew on every v3 write

    def _uaa_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/oauth/token", self._token)
        return app

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v3/security_groups", self._list_security_groups)
        return app

    def _internal_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/internal/v4/asg_latest_update", self._asg_latest_update)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = _ROUTE_BY_PATH.get(request.path)
        if route is None:
            return await handler(request)
        self.requests[route] += 1
        self.request_log.append((route, dict(request.query)))
        if seconds := self._delays.get(route):
            await asyncio.sleep(seconds)
        fault = self._faults.get(route)
        if fault and fault.remaining > 0 and (fault.page is None or request.query.get("page") == str(fault.page)):
            fault.remaining -= 1
            if route is CcRoute.TOKEN:
                return _json({"error": "server_error", "error_description": "simulated failure"}, fault.status)
            return _cc_error(fault.status, "UnknownError", 10001, "An unknown error occurred.")
        return await handler(request)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, client_secret = _basic_auth(request.headers.get("Authorization", ""))
        if client_id is None:
            client_id, client_secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            return _json({"error": "unauthorized", "error_description": "Bad credentials"}, 401)
        if form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type", "error_description": "only client_credentials"}, 400)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.token_ttl
        self.tokens_issued += 1
        return _json(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_ttl,
                "scope": "cloud_controller.admin_read_only",
                "jti": uuid.uuid4().hex,
            }
        )

    def _authorized(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            return _cc_error(401, "CF-NotAuthenticated", 10002, "Authentication error")
        expiry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.monotonic():
            return _cc_error(401, "CF-InvalidAuthToken", 1000, "Invalid Auth Token")
        return None

    async def _list_security_groups(self, request: web.Request) -> web.Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        unknown = sorted(set(request.query) - {"page", "per_page"})
        if unknown:
            detail = f"Unknown query parameter(s): '{', '.join(unknown)}'. Valid parameters are: 'page', 'per_page'"
            return _cc_error(400, "CF-BadQueryParameter", 10005, detail)
        try:
            page = int(request.query.get("page", "1"))
            per_page = int(request.query.get("per_page", str(DEFAULT_PER_PAGE)))
        except ValueError:
            return _cc_error(400, "CF-BadQueryParameter", 10005, "The query parameter is invalid: page and per_page")
        if page < 1:
            return _cc_error(
                400, "CF-BadQueryParameter", 10005, "The query parameter is invalid: Page must be greater than 0"
            )
        if not 1 <= per_page <= MAX_PER_PAGE:
            return _cc_error(
                400,
                "CF-BadQueryParameter",
                10005,
                f"The query parameter is invalid: Per page must be between 1 and {MAX_PER_PAGE}",
            )
        ordered = self.security_group_rows()
        total_pages = max(1, math.ceil(len(ordered) / per_page))
        chunk = ordered[(page - 1) * per_page : page * per_page]

        def href(n: int) -> dict[str, str]:
            return {"href": f"{self.api_url}/v3/security_groups?page={n}&per_page={per_page}"}

        return _json(
            {
                "pagination": {
                    "total_results": len(ordered),
                    "total_pages": total_pages,
                    "first": href(1),
                    "last": href(total_pages),
                    "next": href(page + 1) if page < total_pages else None,
                    "previous": href(page - 1) if page > 1 else None,
                },
                "resources": [self._resource(g) for g in chunk],
            }
        )

    def _resource(self, g: SecurityGroupRow) -> dict[str, Any]:
        return {
            "guid": g.guid,
            "created_at": _rfc3339(g.created_at),
            "updated_at": _rfc3339(g.updated_at),
            "name": g.name,
            "globally_enabled": {"running": g.running_default, "staging": g.staging_default},
            "rules": g.rules,
            "relationships": {
                "staging_spaces": {"data": [{"guid": s} for s in g.staging_spaces]},
                "running_spaces": {"data": [{"guid": s} for s in g.running_spaces]},
            },
            "links": {"self": {"href": f"{self.api_url}/v3/security_groups/{g.guid}"}},
        }

    async def _asg_latest_update(self, request: web.Request) -> web.Response:
        if not self._latest_update_endpoint:
            return _cc_error(404, "CF-NotFound", 10000, "Unknown request")
        # CC renders this one with MultiJson pretty-printing.
        body = json.dumps({"last_update": asg_latest_update_text(self.last_update)}, indent=2)
        return web.Response(text=body, content_type="application/json")


_ROUTE_BY_PATH = {
    "/oauth/token": CcRoute.TOKEN,
    "/v3/security_groups": CcRoute.SECURITY_GROUPS,
    "/internal/v4/asg_latest_update": CcRoute.ASG_LATEST_UPDATE,
}


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, password


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _cc_error(status: int, title: str, code: int, detail: str) -> web.Response:
    return _json({"errors": [{"detail": detail, "title": title, "code": code}]}, status)
