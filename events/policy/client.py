"""The calls the policy watcher makes to the policy server's internal API (docs/cf-facts.md §1.2–1.3).

There is no change stamp for security groups among these routes (a `security_groups_last_updated`
is a 404 at the cf-networking-release cf-facts.md reads); the policy watcher's trigger for listing
them is Cloud Controller's (events/cc/stamp.py).

Each method returns the decoded response with its envelope checked (the `next` cursor, the
lists being lists); the entries themselves are left to the lenient parsers in events.models so
that one bad entry costs only that entry. Every failure is a `SourceError` naming the URL.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from events.httpsource import Reason, SourceError, get_json, request_text

API = "/networking/v1/internal"


@dataclass(frozen=True, slots=True)
class SecurityGroupsPage:
    """One page of `/internal/security_groups`: raw group objects, and the `from` of the next page (0: last)."""

    groups: list[object]
    next: int


class PolicyServerClient:
    """Internal API calls over an existing session, with our client certificate in `ssl_context`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, ssl_context: ssl.SSLContext, timeout: float):
        self._session = session
        self._base = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = timeout

    async def policies_last_updated(self) -> int:
        """When c2c (and egress) policies last changed, in Unix nanoseconds."""
        return await self._integer(f"{self._base}{API}/policies_last_updated")

    async def policies(self) -> dict[str, object]:
        """All c2c policies (no `id` filter: the watcher serves every cell), and egress policies
        when the server is old enough to return them."""
        url = f"{self._base}{API}/policies"
        body = await get_json(self._session, url, ssl_context=self._ssl, timeout=self._timeout)
        if not isinstance(body, dict) or not isinstance(body.get("policies"), list):
            raise SourceError(url, Reason.INVALID, "response has no 'policies' list")
        if "egress_policies" in body and not isinstance(body["egress_policies"], list):
            raise SourceError(url, Reason.INVALID, "'egress_policies' is not a list")
        return body

    async def security_groups_page(self, space_guids: Sequence[str], start: int, limit: int) -> SecurityGroupsPage:
        """One page of the groups that are global defaults or bound to one of `space_guids`."""
        query: dict[str, str | int] = {}
        if space_guids:
            query["space_guids"] = ",".join(space_guids)
        if start:
            query["from"] = start
        query["limit"] = limit
        url = f"{self._base}{API}/security_groups?{urlencode(query, safe=',')}"
        body = await get_json(self._session, url, ssl_context=self._ssl, timeout=self._timeout)
        if not isinstance(body, dict) or not isinstance(body.get("security_groups"), list):
            raise SourceError(url, Reason.INVALID, "response has no 'security_groups' list")
        next_from = body.get("next", 0)
        if not isinstance(next_from, int) or isinstance(next_from, bool) or next_from < 0:
            raise SourceError(url, Reason.INVALID, f"'next' is {next_from!r}, not a row id")
        if next_from and next_from <= start:
            # Row ids only grow; a cursor that does not would make the listing loop forever.
            raise SourceError(url, Reason.INVALID, f"'next' {next_from} does not advance past 'from' {start}")
        return SecurityGroupsPage(body["security_groups"], next_from)

    async def _integer(self, url: str) -> int:
        _, body = await request_text(self._session, "GET", url, ssl_context=self._ssl, timeout=self._timeout)
        return _integer(url, body)


def _integer(url: str, body: str) -> int:
    try:
        return int(body.strip())
    except ValueError:
        raise SourceError(url, Reason.INVALID, f"expected an integer, got {body[:40]!r}") from None
