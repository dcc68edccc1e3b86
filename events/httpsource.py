"""Calling a CF HTTP API and turning every way it can fail into one `SourceError`.

The watchers must tell an operator *why* a source is unusable in one line: the server's
certificate is not trusted, the server refused our client certificate, nothing listens, a
timeout, an HTTP error (with the start of its body), or a body that is not what the API
documents. `SourceError.reason` is a short word for metrics labels; `str()` is the log line.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from enum import StrEnum

import aiohttp

from cfnft.errors import OperationError

_BODY_EXCERPT = 200


class Reason(StrEnum):
    """Why a call failed; the `reason` label of the watchers' error metrics."""

    TLS = "tls"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    HTTP = "http"
    UNAUTHORIZED = "unauthorized"
    CREDENTIALS = "credentials"
    INVALID = "invalid"
    UNSTABLE = "unstable"

    @property
    def is_config_problem(self) -> bool:
        """Failures no retry will fix: our certificate or credentials are refused."""
        return self in (Reason.TLS, Reason.CREDENTIALS)


class SourceError(OperationError):
    """A call to a CF API failed. `url` is what was called, `reason` the class of failure,
    `detail` what happened, `status` the HTTP status when there was a response."""

    def __init__(self, url: str, reason: Reason, detail: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.reason = reason
        self.detail = detail
        self.status = status


async def request_text(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    ssl_context: ssl.SSLContext,
    timeout: float,
    headers: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
    ok: tuple[int, ...] = (200,),
) -> tuple[int, str]:
    """Make one request and return (status, body). Raises SourceError for a transport failure or
    a status not in `ok` (401 as UNAUTHORIZED, so token holders can refresh and retry once)."""
    try:
        async with session.request(
            method,
            url,
            ssl=ssl_context,
            headers=headers,
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.text()
            status = response.status
    except aiohttp.ClientConnectorCertificateError as exc:
        problem = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
        raise SourceError(
            url, Reason.TLS, f"server certificate rejected (check ca_file and the URL's host): {problem}"
        ) from exc
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        raise SourceError(url, Reason.TLS, f"TLS handshake failed: {_ssl_reason(exc)}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise SourceError(url, Reason.CONNECT, f"cannot connect: {exc.os_error.strerror or exc.os_error}") from exc
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise SourceError(url, Reason.TIMEOUT, f"no complete answer within {timeout:g} s") from exc
    except aiohttp.ClientOSError as exc:
        if isinstance(exc.__cause__, ssl.SSLError):
            # A TLS 1.3 server checks our certificate after the handshake looks finished to us, so its
            # refusal arrives as an alert on the first read.
            raise SourceError(url, Reason.TLS, _refused(exc.__cause__)) from exc
        raise SourceError(url, Reason.CONNECT, f"connection failed: {exc.strerror or exc}") from exc
    except aiohttp.ClientError as exc:
        raise SourceError(url, Reason.CONNECT, f"connection failed: {exc}") from exc
    if status not in ok:
        reason = Reason.UNAUTHORIZED if status == 401 else Reason.HTTP
        raise SourceError(url, reason, f"HTTP {status}: {_excerpt(body)}", status)
    return status, body


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    ssl_context: ssl.SSLContext,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> object:
    """GET `url` and decode its JSON body (the caller checks its shape); a body that is not JSON is an INVALID
    SourceError."""
    _, body = await request_text(session, "GET", url, ssl_context=ssl_context, timeout=timeout, headers=headers)
    return decode_json(url, body)


def decode_json(url: str, body: str) -> object:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise SourceError(url, Reason.INVALID, f"body is not JSON ({exc.msg} at {exc.pos}): {_excerpt(body)}") from exc


def _refused(exc: ssl.SSLError) -> str:
    reason = _ssl_reason(exc)
    if "ALERT" in reason.upper():
        return (
            f"server refused our client certificate ({reason}): check cert_file/key_file "
            "and that they are signed by the CA the server trusts"
        )
    return f"TLS error: {reason}"


def _ssl_reason(exc: BaseException) -> str:
    # aiohttp's SSL errors subclass ssl.SSLError without its fields; OpenSSL's reason is on the cause.
    for candidate in (exc, getattr(exc, "os_error", None), exc.__cause__):
        reason = getattr(candidate, "reason", None)
        if isinstance(candidate, ssl.SSLError) and isinstance(reason, str):
            return reason.lower().replace("_", " ")
    return str(exc)


def _excerpt(body: str) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= _BODY_EXCERPT else flat[: _BODY_EXCERPT - 1] + "…"
