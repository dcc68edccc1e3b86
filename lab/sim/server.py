"""The one HTTPS server lifecycle of the simulators: an aiohttp application on an ephemeral port.

The simulators of CF components (policy server, Cloud Controller, UAA, BBS) are real HTTPS
servers so that the watchers under test run their production TLS and HTTP code. Each is a
`SimulatedServer`: one or more `HttpsSite`s started and stopped together, usable with `async with`.
Binding the socket ourselves (port 0) lets the kernel pick a free port with no race, and the URL
is known before the first request.

One deliberate deviation from a plain `web.SockSite`: when a server-side TLS handshake fails
(a client certificate from the wrong CA, or none), asyncio closes the connection without sending
the alert OpenSSL queued, so the client only sees "server disconnected". The Go servers of CF send
the alert and the client reports e.g. "tlsv1 alert unknown ca". We flush the alert first, so a
watcher's handling of a rejected client certificate is tested against what it will really see.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from asyncio import sslproto
from types import TracebackType
from typing import Any, Self

from aiohttp import web

# Go's net/http accepts request lines and headers up to 1 MiB (MaxHeaderBytes); aiohttp's default
# is 8 KiB. The real servers take long `space_guids=` / `id=` lists, so the simulators must too.
_MAX_LINE = 1 << 20


class _AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's server-side TLS, but a failed handshake sends its alert before the close."""

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            self._process_outgoing()
        super()._on_handshake_complete(handshake_exc)


class HttpsSite:
    """One aiohttp application served over TLS on `host`, port chosen by the kernel unless given."""

    def __init__(
        self, app: web.Application, ssl_context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._app = app
        self._ssl = ssl_context
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> str:
        """Start serving; returns the base URL (`https://host:port`)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        runner = web.AppRunner(self._app, access_log=None, max_line_size=_MAX_LINE, max_field_size=_MAX_LINE)
        await runner.setup()
        loop = asyncio.get_running_loop()
        http = runner.server
        assert http is not None  # set by setup()

        def protocol() -> Any:
            return _AlertingSSLProtocol(loop, http(), self._ssl, None, server_side=True)

        self._server = await loop.create_server(protocol, sock=sock)
        self._runner = runner
        self.url = f"https://{self._host}:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class SimulatedServer:
    """Base of the simulators: the sites they serve, started in order and stopped together.

    Subclasses pass their sites to `__init__` and extend `stop()` to end what they hold open."""

    def __init__(self, *sites: HttpsSite) -> None:
        self._sites = sites

    async def start(self) -> None:
        for site in self._sites:
            await site.start()

    async def stop(self) -> None:
        for site in self._sites:
            await site.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
