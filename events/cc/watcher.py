"""The CC watcher: Cloud Controller's v3 security groups turned into whole-state NATS messages.

For foundations whose policy server does not sync ASGs (no policy-server-asg-syncer), this
watcher does the syncer's job and publishes straight to NATS. One poll loop, every `poll_interval`:

1. With `internal_url` configured, read CC's `asg_latest_update` (mutual TLS, events/cc/stamp.py).
   If it equals the value read before the last successful listing, nothing else happens. A 404
   (an older CC) means "unknown": always list.
2. List `GET /v3/security_groups` with a UAA token, following `pagination.next` (events/cc/client.py).
3. With the internal endpoint, read `asg_latest_update` again; if it moved the listing is refused
   as unstable (as the asg-syncer does) and retried after a backoff.
4. Publish every group and delete vanished ones (events/asgsync.py, shared with the policy watcher).

Current CC keeps the stamp to the microsecond, so every write moves it and an unchanged stamp means
nothing changed. (CC before that kept it to the second, where a second write within the same second
left it unchanged; cfnft no longer lists again to cover that case.)

A failed call publishes nothing. An invalid rule is dropped from its group (logged once, counted);
a group whose own fields are invalid is left out, and so, if it was published before, deleted.
Versions are the publisher's clock, `time.time_ns()`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Self

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from events.asgsync import ASG_SUBJECT_PREFIX, ParseCache, collect_security_groups, publish_security_groups
from events.cc.client import CloudControllerClient, UaaTokenSource
from events.cc.stamp import AsgStamp
from events.httpsource import Reason, SourceError
from events.models import SecurityGroup
from events.poller import Backoff, DroppedEntries, PollingWatcher, PollLoop, WatcherMetrics
from events.publisher import StatePublisher
from events.tls import TlsFiles, client_context

log = logging.getLogger(__name__)

METRICS = WatcherMetrics.create("cfnft_watcher_cc", "Cloud Controller")


class CcWatcherConfig(BaseModel):
    """Where Cloud Controller and UAA are, the client credentials, and how often to poll."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    api_url: str
    """Cloud Controller's API, e.g. https://api.sys.example.com."""
    uaa_url: str
    """UAA, e.g. https://uaa.sys.example.com."""
    client_id: str = "network-policy"
    """UAA client with `cloud_controller.admin_read_only` (the asg-syncer uses `network-policy`)."""
    client_secret: SecretStr
    """Its secret."""
    ca_file: Path | None = None
    """CA for the API and UAA certificates; the system trust store when unset."""
    internal_url: str | None = None
    """CC's internal API (mutual TLS), e.g. https://cloud-controller-ng.service.cf.internal:9023, for the
    cheap `asg_latest_update` check. Unset: list every cycle."""
    internal_ca_file: Path | None = None
    """CA of the internal API's certificate."""
    internal_cert_file: Path | None = None
    """Our client certificate for the internal API."""
    internal_key_file: Path | None = None
    """Its key."""
    poll_interval: float = Field(default=1.0, gt=0)
    """Seconds between cycles (the asg-syncer's default is 60)."""
    per_page: int = Field(default=5000, ge=1, le=5000)
    """Groups per page (CC allows at most 5000; the asg-syncer asks for 5000)."""
    request_timeout: float = Field(default=30.0, gt=0)
    """Seconds for one HTTP request (a page of 5000 groups takes CC a while)."""
    token_refresh_margin: float = Field(default=60.0, ge=0)
    """Fetch a new token when less than this (or half its lifetime) is left."""
    backoff_initial: float = Field(default=0.5, gt=0)
    """First retry delay after an error; doubles per failure (with jitter)."""
    backoff_max: float = Field(default=30.0, gt=0)
    """Longest retry delay."""
    max_config_failures: int = Field(default=5, ge=1)
    """TLS or credential failures in a row after which the watcher stops."""

    @field_validator("api_url", "uaa_url", "internal_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError(f"{value!r}: must be an https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _internal_tls(self) -> Self:
        files = (self.internal_ca_file, self.internal_cert_file, self.internal_key_file)
        if self.internal_url is not None and None in files:
            raise ValueError("internal_url needs internal_ca_file, internal_cert_file and internal_key_file")
        return self


class CcWatcher(PollingWatcher):
    """Polls Cloud Controller and publishes its security groups.

    Example::

        async with CcWatcher(config, StatePublisher(nc, "cc")):
            await stopped.wait()
    """

    def __init__(
        self, config: CcWatcherConfig, publisher: StatePublisher, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        super().__init__()
        self.config = config
        self._publisher = publisher
        self._clock = clock
        self._api_ssl = client_context(TlsFiles(config.ca_file)) if config.ca_file else ssl.create_default_context()
        self._internal_ssl: ssl.SSLContext | None = None
        if config.internal_url is not None:
            assert config.internal_ca_file is not None  # checked by the config model
            self._internal_ssl = client_context(
                TlsFiles(config.internal_ca_file, config.internal_cert_file, config.internal_key_file)
            )
        self._session: aiohttp.ClientSession | None = None
        self._client: CloudControllerClient | None = None
        self._stamp: AsgStamp | None = None
        self._tokens: UaaTokenSource | None = None
        self._listed_stamp: datetime | None = None
        self._dropped = DroppedEntries("asg", METRICS)
        self._parse_group = ParseCache(SecurityGroup.parse_lenient)

    @property
    def tokens_fetched(self) -> int:
        """How many UAA tokens this watcher has fetched."""
        return self._tokens.fetched if self._tokens is not None else 0

    async def _prepare(self) -> None:
        await self._publisher.load_published(f"{ASG_SUBJECT_PREFIX}>")
        session = aiohttp.ClientSession()
        self._session = session
        config = self.config
        self._tokens = UaaTokenSource(
            session,
            config.uaa_url,
            config.client_id,
            config.client_secret.get_secret_value(),
            self._api_ssl,
            config.request_timeout,
            config.token_refresh_margin,
        )
        self._client = CloudControllerClient(
            session, config.api_url, self._api_ssl, self._tokens, config.request_timeout, config.per_page
        )
        if config.internal_url is not None and self._internal_ssl is not None:
            self._stamp = AsgStamp(
                session, config.internal_url, self._internal_ssl, self._tokens, config.request_timeout
            )

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _loops(self) -> Sequence[PollLoop]:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        return [
            PollLoop(
                "asg",
                self._cycle,
                self.config.poll_interval,
                METRICS,
                self._stopping,
                backoff,
                self.config.max_config_failures,
            )
        ]

    async def _cycle(self, full: bool) -> None:
        assert self._client is not None, "CcWatcher used before run()"
        METRICS.polls.labels("asg").inc()
        stamp: datetime | None = None
        if self._stamp is not None:
            stamp = await self._stamp.read()
            if not full and stamp is not None and stamp == self._listed_stamp:
                return
        resources = await self._client.security_groups()
        if self._stamp is not None and stamp is not None and (after := await self._stamp.read()) != stamp:
            raise SourceError(
                self._stamp.url,
                Reason.UNSTABLE,
                f"security groups changed while they were listed ({stamp.isoformat()} -> {after})",
            )
        METRICS.fetches.labels("asg").inc()
        groups = self._parse(resources)
        result = await publish_security_groups(self._publisher, groups, self._clock())
        METRICS.published.labels("asg").inc(result.published + result.deleted)
        self._listed_stamp = stamp

    def _parse(self, resources: list[object]) -> dict[str, SecurityGroup]:
        groups: dict[str, SecurityGroup] = {}
        problems: dict[str, str] = {}
        with self._parse_group.listing() as parse:
            collect_security_groups(resources, parse, groups, problems)
        self._dropped.report(sorted(problems.values()))
        return groups
