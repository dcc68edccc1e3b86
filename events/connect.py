"""Connecting to NATS, the same way for every cfnft process (reconciler, watchers, CLI).

Production NATS uses TLS and credentials (design.md §6): `connect` refuses a configuration without
both unless `insecure` is set, which exists for labs and logs a warning. Every secret is a file
(CA, client key, credentials, password), never a value in a config file or on a command line, and
none is ever logged. With TLS, the client starts the TLS handshake before anything else
(`tls_handshake_first`), so no server or middlebox can talk it into sending the password in clear.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cfnft.errors import InputError, OperationError
from events.tls import TlsFiles, client_context

log = logging.getLogger(__name__)


class NatsConfig(BaseModel):
    """How to reach NATS, and as whom."""

    model_config = ConfigDict(extra="forbid")

    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS URLs, e.g. every node of the cluster; the client moves to another when one fails",
    )
    ca_file: Path | None = Field(None, description="CA bundle to verify the NATS servers (enables TLS)")
    cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="client key for mutual TLS")
    tls_handshake_first: bool = Field(
        True, description="start TLS before the NATS greeting (nats-server >= 2.10.4 with tls.handshake_first)"
    )
    creds_file: Path | None = Field(None, description="NATS credentials file (JWT + nkey; needs the nkeys package)")
    user: str | None = Field(None, description="user name, with password_file")
    password_file: Path | None = Field(None, description="file holding the password of `user`")
    insecure: bool = Field(False, description="allow NATS without TLS or credentials (labs only; logs a warning)")
    connect_timeout_seconds: float = Field(2.0, gt=0, description="timeout of one connection attempt")

    @field_validator("servers")
    @classmethod
    def _no_secrets_in_urls(cls, servers: list[str]) -> list[str]:
        for url in servers:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            if parts.username or parts.password:
                raise ValueError("credentials in a server URL would end up in logs: use user and password_file")
        return servers

    @model_validator(mode="after")
    def _pairs(self) -> NatsConfig:
        if (self.user is None) != (self.password_file is None):
            raise ValueError("user and password_file go together")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("cert_file needs ca_file (TLS to NATS)")
        return self

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def has_credentials(self) -> bool:
        return self.user is not None or self.creds_file is not None


class NatsConfigError(InputError):
    """The NATS settings cannot be used: insecure without saying so, or an unreadable secret."""


class NatsUnavailable(OperationError):
    """A one-shot command could not reach NATS, or NATS refused what it asked: `servers` are the
    URLs tried, `action` what was being done ("connect to", "publish to"), `reason` what happened."""

    def __init__(self, servers: Sequence[str], reason: str, action: str = "connect to") -> None:
        self.servers = list(servers)
        self.reason = reason
        self.action = action
        super().__init__(f"cannot {action} NATS {', '.join(self.servers)}: {reason}")


def missing_security(cfg: NatsConfig) -> list[str]:
    """What a production connection needs and `cfg` lacks (empty: TLS and credentials are set)."""
    return [what for what, ok in (("TLS (ca_file)", cfg.tls), ("credentials", cfg.has_credentials)) if not ok]


def check_usable(cfg: NatsConfig) -> None:
    """Raise NatsConfigError (or TlsConfigError) unless `cfg` can connect: TLS and credentials (or
    `insecure`), loadable TLS files and a readable password. Does not connect."""
    missing = missing_security(cfg)
    if missing and not cfg.insecure:
        raise NatsConfigError(
            f"NATS needs {' and '.join(missing)}: set nats.ca_file, and nats.user with nats.password_file "
            f"(or nats.creds_file); or --nats-insecure (nats.insecure: true) for a lab"
        )
    _tls(cfg)
    _password(cfg)


def _tls(cfg: NatsConfig) -> ssl.SSLContext | None:
    """The TLS context for NATS (TlsConfigError, naming the file, if one cannot be loaded)."""
    if cfg.ca_file is None:
        return None
    return client_context(TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file))


def _password(cfg: NatsConfig) -> str | None:
    if cfg.password_file is None:
        return None
    try:
        password = cfg.password_file.read_text().strip()
    except OSError as e:
        raise NatsConfigError(f"NATS password file {cfg.password_file}: {e.strerror or e}") from None
    if not password:
        raise NatsConfigError(f"NATS password file {cfg.password_file} is empty")
    return password


def _options(cfg: NatsConfig, name: str, inbox_prefix: str) -> dict[str, Any]:
    """nats.connect keyword arguments."""
    tls = _tls(cfg)
    return dict(
        servers=cfg.servers,
        tls=tls,
        tls_handshake_first=tls is not None and cfg.tls_handshake_first,
        user_credentials=str(cfg.creds_file) if cfg.creds_file else None,
        user=cfg.user,
        password=_password(cfg),
        connect_timeout=cfg.connect_timeout_seconds,
        name=name,
        inbox_prefix=inbox_prefix,
    )


class ServerErrors:
    """What the server said went wrong on a connection: `refused` is the last refusal (a permissions
    violation, an authorization failure), which explains a request that went unanswered;
    `last` is the last error of any kind (a failed connection attempt says why it failed)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.refused: str | None = None
        self.last: Exception | None = None

    async def record(self, e: Exception) -> None:
        self.last = e
        text = str(e) or type(e).__name__
        if "permissions violation" in text.lower() or "authorization" in text.lower():
            self.refused = text
            log.error("NATS refused %s: %s", self._name, text)
        else:  # connection trouble: the reconnect loop handles it, a one-shot command reports it
            log.debug("NATS (%s): %s", self._name, text)


async def connect(
    cfg: NatsConfig,
    name: str,
    inbox_prefix: str,
    *,
    forever: bool = True,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    errors: ServerErrors | None = None,
) -> NATS:
    """Connect to NATS as `name`, with replies and deliveries under `inbox_prefix` (the role's, see
    events/permissions.py). A daemon (`forever`) retries the first connection with backoff and then
    reconnects forever, to whichever server of `cfg.servers` answers; a one-shot command fails at
    once with NatsUnavailable. Raises NatsConfigError or TlsConfigError for settings that cannot work."""
    check_usable(cfg)
    if cfg.insecure:
        missing = missing_security(cfg)
        log.warning(
            "%s: NATS in insecure mode%s: for labs only, anyone who can reach NATS may read and write policy",
            name,
            f" (without {' and '.join(missing)})" if missing else "",
        )
    options = _options(cfg, name, inbox_prefix)
    errors = errors or ServerErrors(name)
    if not forever:
        # Every server once more after its first refusal, then NoServersError. (nats-py 2.16 takes
        # max_reconnect_attempts=0 to mean "no limit" here: the command would wait forever.)
        nc = NATS()
        try:
            await nc.connect(
                **options,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                allow_reconnect=False,
                error_cb=errors.record,
            )
        except Exception as e:  # nats-py raises several unrelated types for "cannot connect"
            cause = errors.last or e  # NoServersError does not say why
            raise NatsUnavailable(cfg.servers, str(cause) or type(cause).__name__) from None
        return nc
    delay = 0.2
    while True:
        try:
            return await nats.connect(
                **options,
                error_cb=errors.record,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            )
        except Exception as e:  # as above
            log.warning("cannot connect to NATS %s: %s; retrying in %.1fs", cfg.servers, e or type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
