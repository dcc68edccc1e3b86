"""Connecting to NATS, the same way for every cfnft process (reconciler, watchers, CLI)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict, Field

from cfnft.errors import OperationError
from events.tls import TlsFiles, client_context

log = logging.getLogger(__name__)


class NatsConfig(BaseModel):
    """How to reach NATS."""

    model_config = ConfigDict(extra="forbid")

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], description="NATS URLs")
    ca_file: Path | None = Field(None, description="CA bundle to verify the NATS servers (enables TLS)")
    cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="client key for mutual TLS")
    creds_file: Path | None = Field(None, description="NATS credentials file (JWT + nkey)")
    user: str | None = Field(None, description="user name, with password")
    password: str | None = Field(None, description="password, with user")
    connect_timeout_seconds: float = Field(2.0, gt=0, description="timeout of one connection attempt")


class NatsUnavailable(OperationError):
    """A one-shot command could not reach NATS, or NATS refused what it asked: `servers` are the
    URLs tried, `action` what was being done ("connect to", "publish to"), `reason` what happened."""

    def __init__(self, servers: Sequence[str], reason: str, action: str = "connect to") -> None:
        self.servers = list(servers)
        self.reason = reason
        self.action = action
        super().__init__(f"cannot {action} NATS {', '.join(self.servers)}: {reason}")


def _tls(cfg: NatsConfig) -> ssl.SSLContext | None:
    """The TLS context for NATS (TlsConfigError, naming the file, if one cannot be loaded)."""
    if cfg.ca_file is None:
        return None
    return client_context(TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file))


async def connect(
    cfg: NatsConfig,
    name: str,
    *,
    forever: bool = True,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect to NATS. A daemon (`forever`) retries the first connection with backoff and then
    reconnects forever; a one-shot command fails at once with NatsUnavailable."""
    options: dict[str, Any] = dict(  # nats.connect keyword arguments
        servers=cfg.servers,
        tls=_tls(cfg),
        user_credentials=str(cfg.creds_file) if cfg.creds_file else None,
        user=cfg.user,
        password=cfg.password,
        connect_timeout=cfg.connect_timeout_seconds,
        name=name,
    )
    if not forever:
        # Every server once more after its first refusal, then NoServersError. (nats-py 2.16 takes
        # max_reconnect_attempts=0 to mean "no limit" here: the command would wait forever.)
        failed_attempts: list[Exception] = []

        async def attempt_failed(e: Exception) -> None:
            failed_attempts.append(e)

        nc = NATS()
        try:
            await nc.connect(
                **options,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                allow_reconnect=False,
                error_cb=attempt_failed,
            )
        except Exception as e:  # nats-py raises several unrelated types for "cannot connect"
            cause = failed_attempts[-1] if failed_attempts else e  # NoServersError does not say why
            raise NatsUnavailable(cfg.servers, str(cause) or type(cause).__name__) from None
        return nc
    delay = 0.2
    while True:
        try:
            return await nats.connect(
                **options,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            )
        except Exception as e:  # as above
            log.warning("cannot connect to NATS %s: %s; retrying in %.1fs", cfg.servers, e or type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
