"""The calls the CC watcher makes: a UAA token and Cloud Controller's v3 security groups
(docs/cf-facts.md §1.5, §2.1). CC's internal `asg_latest_update` is events/cc/stamp.py.

Token: OAuth2 client credentials (HTTP basic client authentication), cached and refreshed
before it expires — when less than `min(refresh_margin, expires_in / 2)` is left — and, once,
when CC answers 401 anyway (clock skew, revocation).

Listing: follow `pagination.next.href` until it is null. CC builds those links from its own
external URL, which need not be the address we were configured with (an internal load balancer),
so only the path and query of a link are used, joined to our `api_url`. A listing whose
`total_results` changes between pages, or that returns a guid twice, moved under us (offset
paging skips or repeats a row when one is created or deleted meanwhile) and is refused.
"""

from __future__ import annotations

import base64
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import aiohttp

from events.httpsource import Reason, SourceError, decode_json, get_json, request_text


@dataclass(slots=True)
class _Token:
    value: str
    refresh_at: float


class UaaTokenSource:
    """Client-credentials access tokens from UAA, cached until close to expiry."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        uaa_url: str,
        client_id: str,
        client_secret: str,
        ssl_context: ssl.SSLContext,
        timeout: float,
        refresh_margin: float = 60.0,
    ) -> None:
        self._session = session
        self._url = uaa_url.rstrip("/") + "/oauth/token"
        self._auth = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._ssl = ssl_context
        self._timeout = timeout
        self._margin = refresh_margin
        self._token: _Token | None = None
        self.fetched = 0

    async def token(self) -> str:
        """A token that is valid for a while yet."""
        if self._token is None or time.monotonic() >= self._token.refresh_at:
            self._token = await self._fetch()
        return self._token.value

    def invalidate(self) -> None:
        """Forget the cached token (CC refused it)."""
        self._token = None

    async def _fetch(self) -> _Token:
        asked_at = time.monotonic()
        try:
            _, text = await request_text(
                self._session,
                "POST",
                self._url,
                ssl_context=self._ssl,
                timeout=self._timeout,
                headers={"Authorization": self._auth, "Accept": "application/json"},
                data={"grant_type": "client_credentials"},
            )
        except SourceError as exc:
            if exc.status == 401:
                raise SourceError(self._url, Reason.CREDENTIALS, f"UAA refused our client credentials: {exc.detail}")
            raise
        body = decode_json(self._url, text)
        token = body.get("access_token") if isinstance(body, dict) else None
        expires_in = body.get("expires_in") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            raise SourceError(self._url, Reason.INVALID, "token response lacks access_token or a positive expires_in")
        self.fetched += 1
        return _Token(token, asked_at + expires_in - min(self._margin, expires_in / 2))


class CloudControllerClient:
    """v3 security groups, with a bearer token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        api_ssl: ssl.SSLContext,
        tokens: UaaTokenSource,
        timeout: float,
        per_page: int,
    ) -> None:
        self._session = session
        self._api = api_url.rstrip("/")
        self._api_ssl = api_ssl
        self._tokens = tokens
        self._timeout = timeout
        self._per_page = per_page

    async def security_groups(self) -> list[object]:
        """Every security group resource (raw v3 JSON objects), across all pages."""
        path = "/v3/security_groups?" + urlencode({"page": 1, "per_page": self._per_page})
        resources: list[object] = []
        seen_paths: set[str] = set()
        total: int | None = None
        while True:
            url = self._api + path
            seen_paths.add(path)
            body = await self._get_authorized(url)
            page_resources, page_total, next_href = _page(url, body)
            if total is not None and page_total != total:
                raise SourceError(url, Reason.UNSTABLE, f"total_results went from {total} to {page_total} while paging")
            total = page_total
            resources += page_resources
            if next_href is None:
                break
            parts = urlsplit(next_href)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            if path in seen_paths:
                raise SourceError(url, Reason.INVALID, f"pagination.next points back to {next_href}")
        guids = [r.get("guid") for r in resources if isinstance(r, dict)]
        if len(set(guids)) != len(guids) or len(resources) != total:
            raise SourceError(
                self._api + "/v3/security_groups",
                Reason.UNSTABLE,
                f"listing changed while paging: got {len(resources)} resources "
                f"({len(set(guids))} distinct), total_results says {total}",
            )
        return resources

    async def _get_authorized(self, url: str) -> object:
        try:
            return await self._get(url)
        except SourceError as exc:
            if exc.reason is not Reason.UNAUTHORIZED:
                raise
        # CC refused a token we thought valid (revoked, clocks apart): one fresh token, one retry.
        self._tokens.invalidate()
        return await self._get(url)

    async def _get(self, url: str) -> object:
        headers = {"Authorization": f"bearer {await self._tokens.token()}", "Accept": "application/json"}
        return await get_json(self._session, url, ssl_context=self._api_ssl, timeout=self._timeout, headers=headers)


def _page(url: str, body: object) -> tuple[list[object], int, str | None]:
    if not isinstance(body, dict) or not isinstance(body.get("resources"), list):
        raise SourceError(url, Reason.INVALID, "response has no 'resources' list")
    pagination = body.get("pagination")
    if not isinstance(pagination, dict) or not isinstance(pagination.get("total_results"), int):
        raise SourceError(url, Reason.INVALID, "response has no 'pagination.total_results'")
    next_link = pagination.get("next")
    if next_link is None:
        return body["resources"], pagination["total_results"], None
    href = next_link.get("href") if isinstance(next_link, dict) else None
    if href == "":
        # The asg-syncer treats an empty href as the end too.
        return body["resources"], pagination["total_results"], None
    if not isinstance(href, str):
        raise SourceError(url, Reason.INVALID, f"pagination.next is {next_link!r}, not a link")
    return body["resources"], pagination["total_results"], href
