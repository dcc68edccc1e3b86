"""SSL contexts for the mutual-TLS links to CF components (BBS, policy server, CC internal API).

CF's servers require a client certificate signed by their CA and accept TLS 1.2 and 1.3 only
(docs/cf-facts.md §1.1). The same rules are used by our simulators, so a test that passes against
them exercises the handshake the real servers perform.

Problems loading a file raise `TlsConfigError` (an `InputError`) naming the role and path, so a
bad config is one clear line, not an OpenSSL traceback.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cfnft.errors import InputError

# What the CF mutualtls helper allows for TLS 1.2 (TLS 1.3 suites are not configurable there either).
CF_TLS12_CIPHERS = "ECDHE-RSA-AES128-GCM-SHA256"


class TlsConfigError(InputError):
    """A CA, certificate or key file could not be loaded: `role` says which file it was meant to
    be, `path` where it was looked for, `reason` what OpenSSL or the file system said."""

    def __init__(self, role: str, path: Path, reason: str) -> None:
        super().__init__(f"TLS {role} {path}: {reason}")
        self.role = role
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for one TLS endpoint: the CA that signs the peer, and our own certificate and key.

    For a client, `cert`/`key` are the client certificate presented to the server (required by
    mutual-TLS servers); for a server they are the server certificate.
    """

    ca: Path
    cert: Path | None = None
    key: Path | None = None


def server_context(
    files: TlsFiles, *, require_client_cert: bool = True, tls12_ciphers: str | None = None
) -> ssl.SSLContext:
    """A server context: TLS 1.2+, our certificate, and (by default) a client certificate
    required and verified against `files.ca`. `tls12_ciphers` restricts TLS 1.2 suites
    (e.g. `CF_TLS12_CIPHERS`, which needs an RSA server key)."""
    if files.cert is None or files.key is None:
        raise TlsConfigError("server certificate", files.cert or Path("-"), "a server needs both cert and key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls12_ciphers is not None:
        ctx.set_ciphers(tls12_ciphers)
    _load_chain(ctx, files.cert, files.key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, files.ca)
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context: TLS 1.2+, the server verified against `files.ca` (hostname included),
    and our client certificate presented when `files.cert`/`files.key` are set."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(ctx, files.ca)
    if (files.cert is None) != (files.key is None):
        raise TlsConfigError("client certificate", files.cert or files.key or Path("-"), "cert and key go together")
    if files.cert is not None and files.key is not None:
        _load_chain(ctx, files.cert, files.key)
    return ctx


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError("CA", ca, _reason(exc)) from exc


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            "certificate/key", cert, f"not a readable PEM certificate with its matching key {key}: {_reason(exc)}"
        ) from exc


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
