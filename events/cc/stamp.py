"""Cloud Controller's `asg_latest_update`: when a v3 security-group write last happened.

The asg-syncer reads it on CC's internal, mutual-TLS API with a UAA token and lists security
groups only when it moved (docs/cf-facts.md §1.5). cfnft reads it for the same reason, in two
places: the CC watcher before and after each listing, and the policy watcher as the trigger of
its security-group listings (`PolicyWatcherConfig.asg_trigger`).

The value is RFC 3339 in both of the forms CC has written: `2020-02-22T11:00:00Z` (one-second
resolution, older CC) and `2024-10-24T16:13:44.123456000+00:00` (current CC: nine fraction digits,
microsecond precision). An older CC without the endpoint answers 404: the stamp is unknown, so
every cycle must list.
"""

from __future__ import annotations

import re
import ssl
from datetime import datetime
from pathlib import Path
from typing import Self

import aiohttp
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from events.cc.client import UaaTokenSource
from events.httpsource import Reason, SourceError, decode_json, request_text
from events.tls import TlsFiles, client_context

PATH = "/internal/v4/asg_latest_update"
# RFC 3339 date-time: fraction digits of any length, `Z` or a numeric offset.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d+))?(?:[Zz]|[+-]\d\d:\d\d)")


def parse_last_update(url: str, body: object) -> datetime:
    """The `last_update` of an asg_latest_update body, as an aware datetime (microseconds kept)."""
    value = body.get("last_update") if isinstance(body, dict) else None
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None or value is None:
        raise SourceError(url, Reason.INVALID, f"'last_update' is {value!r}, not an RFC 3339 time")
    fraction = match.group(1)
    if fraction is not None and len(fraction) > 6:
        if fraction[6:].strip("0"):
            raise SourceError(url, Reason.INVALID, f"'last_update' {value!r} is finer than CC's microseconds")
        value = value.replace(f".{fraction}", f".{fraction[:6]}", 1)
    return datetime.fromisoformat(value.replace("z", "Z"))


class AsgTriggerConfig(BaseModel):
    """How to read CC's `asg_latest_update`: its internal API (mutual TLS) and a UAA client, as the
    asg-syncer does. Field docstrings are the reference documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    internal_url: str
    """CC's internal API, e.g. https://cloud-controller-ng.service.cf.internal:9023."""
    internal_ca_file: Path
    """CA of the internal API's certificate."""
    internal_cert_file: Path
    """Our client certificate for the internal API."""
    internal_key_file: Path
    """Its key."""
    uaa_url: str
    """UAA, e.g. https://uaa.sys.example.com."""
    client_id: str = "network-policy"
    """UAA client (the asg-syncer uses `network-policy`)."""
    client_secret: SecretStr
    """Its secret."""
    ca_file: Path | None = None
    """CA of UAA's certificate; the system trust store when unset."""

    @field_validator("internal_url", "uaa_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r}: must be an https:// URL")
        return value.rstrip("/")


class AsgStamp:
    """Reads `asg_latest_update` over an existing session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        internal_url: str,
        ssl_context: ssl.SSLContext,
        tokens: UaaTokenSource,
        timeout: float,
    ) -> None:
        self._session = session
        self.url = internal_url.rstrip("/") + PATH
        self._ssl = ssl_context
        self._tokens = tokens
        self._timeout = timeout

    @classmethod
    def from_config(cls, config: AsgTriggerConfig, session: aiohttp.ClientSession, timeout: float) -> Self:
        uaa_ssl = client_context(TlsFiles(config.ca_file)) if config.ca_file else ssl.create_default_context()
        internal = TlsFiles(config.internal_ca_file, config.internal_cert_file, config.internal_key_file)
        tokens = UaaTokenSource(
            session, config.uaa_url, config.client_id, config.client_secret.get_secret_value(), uaa_ssl, timeout
        )
        return cls(session, config.internal_url, client_context(internal), tokens, timeout)

    async def read(self) -> datetime | None:
        """CC's stamp; None if CC lacks the endpoint (404), which means: always list."""
        status, text = await request_text(
            self._session,
            "GET",
            self.url,
            ssl_context=self._ssl,
            timeout=self._timeout,
            headers={"Authorization": f"bearer {await self._tokens.token()}"},
            ok=(200, 404),
        )
        return None if status == 404 else parse_last_update(self.url, decode_json(self.url, text))
