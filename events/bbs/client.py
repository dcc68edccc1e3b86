"""A BBS API client: protobuf over HTTPS with mutual TLS, and the SSE event streams.

Every call is a POST whose body is a protobuf request and whose 200 response is a protobuf
message with an `error` field (docs/cf-facts.md §3.1-3.2). The client turns each failure into one
`BbsError` subclass naming the route, so the watcher decides retry policy by type and logs one
clear line: a refused connection or non-200 status is `BbsUnavailableError`, a handshake that
fails is `BbsTlsError` with OpenSSL's reason and what it usually means, a set `error` field is
`BbsApiError`, and undecodable bytes are `BbsProtocolError`.

An event stream is an async context manager (the POST is answered with 200 and the stream is
subscribed when `__aenter__` returns) and an async iterator of `BbsEvent`s. It never ends
normally: when the server ends or cuts it, iteration raises `BbsUnavailableError`. Streams are
read on a connection of their own, framed by events/bbs/chunked.py (see `EventStream` for why).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp
from google.protobuf.message import DecodeError, Message

from events.bbs import bbs_pb2 as pb
from events.bbs.chunked import ChunkDecoder
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
    """One subscription to a BBS event stream; see the module docstring.

    The stream is read over a connection of its own, with HTTP/1.1 framed here rather than by
    aiohttp: BBS writes every chunk header as `<size>;` (an empty chunk extension), which aiohttp's
    compiled parser refuses, after which its stream iterator hangs instead of raising (see
    events/bbs/chunked.py). Owning the few lines of HTTP this needs — one POST, a status line and
    headers, chunked or close-delimited body — makes the watcher read real BBS framing whatever HTTP
    parser the installed aiohttp uses, with no second HTTP client library to ship. The list calls
    keep using aiohttp: their bodies have a Content-Length and no chunk extensions.
    """

    def __init__(self, client: BbsClient, route: str, request: Message | None) -> None:
        self._client = client
        self._route = route
        self._request = request
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._body: _Body | None = None

    async def __aenter__(self) -> Self:
        # No read timeout once subscribed: an idle stream is normal (BBS sends no heartbeats; the
        # watcher's periodic re-list notices a stream that stopped delivering). Connecting, the
        # handshake and the response head are bounded by the client's timeout.
        try:
            async with asyncio.timeout(self._client._timeout):
                self._reader, self._writer = await self._connect()
                self._writer.write(self._request_bytes())
                head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self._close()
            raise BbsProtocolError(self._route, "response head is longer than 64 KiB") from None
        except asyncio.IncompleteReadError:
            self._close()
            raise BbsUnavailableError(self._route, "connection closed before a response head") from None
        except (asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            self._close()
            raise transport_error(self._route, exc) from exc
        try:
            self._body = self._accept(head)
        except BbsError:
            self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def __aiter__(self) -> AsyncIterator[BbsEvent]:
        return self._events()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = urlsplit(self._client._url)
        host = url.hostname or ""
        reader, writer = await asyncio.open_connection(
            host, url.port or 443, ssl=self._client._ssl, server_hostname=self._client._server_name or host
        )
        _keepalive(writer)
        return reader, writer

    def _request_bytes(self) -> bytes:
        body = self._request.SerializeToString() if self._request is not None else b""
        netloc = urlsplit(self._client._url).netloc
        head = (
            f"POST {self._route} HTTP/1.1\r\n"
            f"Host: {netloc}\r\n"
            f"Content-Type: {PROTOBUF}\r\n"
            f"Accept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body

    def _accept(self, head: bytes) -> _Body:
        """Check the response head; return how its body is framed."""
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise BbsProtocolError(self._route, f"not an HTTP/1.x response: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        for line in filter(None, lines):
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if code != "200":
            raise BbsUnavailableError(self._route, f"HTTP {code} {reason}", int(code))
        content_type = headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise BbsProtocolError(self._route, f"Content-Type {content_type!r}, expected {SSE_CONTENT_TYPE!r}")
        codings = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",") if c.strip()]
        if codings and codings[-1] == "chunked":
            return _Body(ChunkDecoder(self._route), None)
        if codings:
            raise BbsProtocolError(self._route, f"unsupported Transfer-Encoding {headers['transfer-encoding']!r}")
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            raise BbsProtocolError(self._route, f"invalid Content-Length {length!r}")
        return _Body(None, int(length) if length is not None else None)

    async def _events(self) -> AsyncIterator[BbsEvent]:
        if self._reader is None or self._body is None:
            raise RuntimeError("iterate an EventStream inside `async with`")
        parser = SseParser()
        try:
            while not self._body.done:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    raise BbsUnavailableError(self._route, "connection closed mid-stream")
                for sse in parser.feed(self._body.feed(data)):
                    event = decode_bbs_event(self._route, sse)
                    if event is not None:
                        yield event
        except (asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            raise transport_error(self._route, exc) from exc
        raise BbsUnavailableError(self._route, "event stream ended by the server")

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()  # drop the connection now: nothing more is read from it
            self._writer = None
        self._reader = None


_READ_SIZE = 1 << 16
# A peer that vanished without a FIN (host down, network partition) is noticed by TCP within about
# a minute, instead of the stream looking idle until the next periodic re-list.
_KEEPALIVE_IDLE, _KEEPALIVE_INTERVAL, _KEEPALIVE_PROBES = 30, 10, 3


def _keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_PROBES)


@dataclass(slots=True)
class _Body:
    """How the stream's body is framed: chunked (BBS), Content-Length, or until the connection closes."""

    chunks: ChunkDecoder | None
    remaining: int | None

    @property
    def done(self) -> bool:
        return self.chunks.done if self.chunks is not None else self.remaining == 0

    def feed(self, data: bytes) -> bytes:
        if self.chunks is not None:
            return self.chunks.feed(data)
        if self.remaining is not None:
            data = data[: self.remaining]
            self.remaining -= len(data)
        return data


def transport_error(route: str, exc: BaseException) -> BbsError:
    """Map an aiohttp/ssl/socket failure to the BbsError that says what happened."""
    cert_error: BaseException | None = None
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
    elif isinstance(exc, ssl.SSLCertVerificationError):
        cert_error = exc
    if cert_error is not None:
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
