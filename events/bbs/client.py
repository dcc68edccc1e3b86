"""A BBS API client: protobuf over HTTPS with mutual TLS, and the SSE event streams.

Every call is a POST whose body is a protobuf request and whose 200 response is a protobuf
message with an `error` field (docs/cf-facts.md §3.1-3.2). The client turns each failure into one
`BbsError` subclass naming the route, so the watcher decides retry policy by type and logs one
clear line: a refused connection or non-200 status is `BbsUnavailableError`, a handshake that
fails is `BbsTlsError` with OpenSSL's reason and what it usually means, a set `error` field is
`BbsApiError`, and undecodable bytes are `BbsProtocolError`.

An event stream is an async context manager (the POST is answered with 200 and the stream is
subscribed when `__aenter__` returns) and an async iterator of `BbsEvent`s. It never ends
normally: when the server closes it, iteration raises `BbsUnavailableError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

import aiohttp
from google.protobuf.message import DecodeError, Message

from events.bbs import bbs_pb2 as pb
from events.bbs.errors import BbsApiError, BbsError, BbsProtocolError, BbsTlsError, BbsUnavailableError
from events.bbs.sse import CONTENT_TYPE as SSE_CONTENT_TYPE
from events.bbs.sse import BbsEvent, SseParser, decode_bbs_event

if TYPE_CHECKING:
    from aiohttp.client import _RequestContextManager  # aiohttp's name for what ClientSession.post returns

PROTOBUF = "application/x-protobuf"

# ActualLRP.state values (bbs models/actual_lrp.go).
UNCLAIMED = "UNCLAIMED"
CLAIMED = "CLAIMED"
RUNNING = "RUNNING"
CRASHED = "CRASHED"

ACTUAL_LRPS = "/v1/actual_lrps/list"
DESIRED_LRPS = "/v1/desired_lrps/list.r3"
TASKS = "/v1/tasks/list.r3"
LRP_INSTANCE_EVENTS = "/v1/events/lrp_instances.r1"
TASK_EVENTS = "/v1/events/tasks.r1"

# OpenSSL reasons that mean "the server did not accept our client certificate".
_CLIENT_CERT_REJECTED = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}

R = TypeVar("R", bound=Message)


class BbsClient:
    """One BBS endpoint.

    `server_name` is the name the server certificate must carry when `url` uses an address
    (e.g. url https://10.0.16.5:8889, server_name bbs.service.cf.internal); by default the
    host in `url` is checked. `timeout` bounds each list call, not the event streams.

        async with BbsClient(url, client_context(files)) as bbs:
            lrps = await bbs.actual_lrps()
            async with bbs.lrp_instance_events() as stream:
                async for event in stream:
                    ...
    """

    def __init__(
        self, url: str, ssl_context: ssl.SSLContext, *, server_name: str | None = None, timeout: float = 10.0
    ) -> None:
        self._url = url.rstrip("/")
        self._ssl = ssl_context
        self._server_name = server_name
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # A fresh connection per reconnect attempt matters less than not leaking one per call.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        return self._session

    async def actual_lrps(self, *, domain: str = "", cell_id: str = "") -> list[pb.ActualLRP]:
        """Every actual LRP (ordinary, evacuating and suspect ones alike), optionally filtered."""
        request = pb.ActualLRPsRequest(domain=domain, cell_id=cell_id)
        response = await self._call(ACTUAL_LRPS, request, pb.ActualLRPsResponse)
        return list(response.actual_lrps)

    async def desired_lrps(self, *, domain: str = "") -> list[pb.DesiredLRP]:
        """Every desired LRP, optionally of one domain (CF apps are in `cf-apps`)."""
        response = await self._call(DESIRED_LRPS, pb.DesiredLRPsRequest(domain=domain), pb.DesiredLRPsResponse)
        return list(response.desired_lrps)

    async def tasks(self, *, domain: str = "", cell_id: str = "") -> list[pb.Task]:
        """Every task, optionally filtered by domain (`cf-tasks`, `cf-app-staging`) or cell."""
        response = await self._call(TASKS, pb.TasksRequest(domain=domain, cell_id=cell_id), pb.TasksResponse)
        return list(response.tasks)

    def lrp_instance_events(self, cell_id: str = "") -> EventStream:
        """Desired-LRP, actual-instance and crash events; `cell_id` filters only the instance ones."""
        return EventStream(self, LRP_INSTANCE_EVENTS, pb.EventsByCellId(cell_id=cell_id))

    def task_events(self) -> EventStream:
        """Task created/changed/removed events."""
        return EventStream(self, TASK_EVENTS, None)

    async def _call(self, route: str, request: Message, response_type: type[R]) -> R:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with self._post(route, request, timeout) as resp:
                if resp.status != 200:
                    raise BbsUnavailableError(route, f"HTTP {resp.status} {resp.reason}", resp.status)
                body = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            raise transport_error(route, exc) from exc
        response = response_type()
        try:
            response.ParseFromString(body)
        except DecodeError as exc:
            raise BbsProtocolError(route, f"response is not a {response_type.DESCRIPTOR.name} ({exc})") from None
        if response.HasField("error"):
            error: pb.Error = getattr(response, "error")
            raise BbsApiError(route, pb.Error.Type.Name(error.type), error.message)
        return response

    def _post(self, route: str, request: Message | None, timeout: aiohttp.ClientTimeout) -> _RequestContextManager:
        """The POST as aiohttp's request object: use it with `async with`, or await it."""
        body = request.SerializeToString() if request is not None else b""
        return self._http().post(
            self._url + route,
            data=body,
            headers={"Content-Type": PROTOBUF, "Accept": PROTOBUF},
            timeout=timeout,
            server_hostname=self._server_name,
        )


class EventStream:
    """One subscription to a BBS event stream; see the module docstring."""

    def __init__(self, client: BbsClient, route: str, request: Message | None) -> None:
        self._client = client
        self._route = route
        self._request = request
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> Self:
        # No total timeout: an idle stream is normal. Connecting and the response head are bounded.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._client._timeout)
        try:
            response = await asyncio.wait_for(
                self._client._post(self._route, self._request, timeout), timeout=self._client._timeout
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            raise transport_error(self._route, exc) from exc
        if response.status != 200:
            response.release()
            raise BbsUnavailableError(self._route, f"HTTP {response.status} {response.reason}", response.status)
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            response.release()
            got = response.headers.get("Content-Type")
            raise BbsProtocolError(self._route, f"Content-Type {got!r}, expected {SSE_CONTENT_TYPE!r}")
        self._response = response
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.close()  # drop the connection: a stream cannot be returned to the pool
            self._response = None

    def __aiter__(self) -> AsyncIterator[BbsEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[BbsEvent]:
        if self._response is None:
            raise RuntimeError("iterate an EventStream inside `async with`")
        parser = SseParser()
        try:
            async for chunk in self._response.content.iter_any():
                for sse in parser.feed(chunk):
                    event = decode_bbs_event(self._route, sse)
                    if event is not None:
                        yield event
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            raise transport_error(self._route, exc) from exc
        raise BbsUnavailableError(self._route, "event stream closed by the server")


def transport_error(route: str, exc: BaseException) -> BbsError:
    """Map an aiohttp/ssl/socket failure to the BbsError that says what happened."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "reason", None) or "CERTIFICATE_VERIFY_FAILED"
        detail = getattr(cert_error, "verify_message", None) or str(cert_error)
        return BbsTlsError(route, reason, f"BBS's server certificate was not accepted: {detail}")
    ssl_error = _find_ssl_error(exc)
    if ssl_error is not None:
        reason = ssl_error.reason or type(ssl_error).__name__
        if reason in _CLIENT_CERT_REJECTED:
            hint = "BBS rejected our client certificate (is it signed by the CA BBS trusts, and not expired?)"
        else:
            hint = str(ssl_error)
        return BbsTlsError(route, reason, hint)
    if isinstance(exc, asyncio.TimeoutError):
        return BbsUnavailableError(route, "timed out")
    return BbsUnavailableError(route, f"{type(exc).__name__}: {exc}")


def _find_ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ssl.SSLError behind `exc`, looking through aiohttp's wrappers and exception chains."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ssl.SSLError):
            return exc
        inner = getattr(exc, "os_error", None)
        if isinstance(inner, ssl.SSLError):
            return inner
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
