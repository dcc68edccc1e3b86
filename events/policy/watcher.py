"""The policy watcher: the policy server's internal API turned into whole-state NATS messages.

Two poll loops (events/poller.py) share one mutual-TLS session:

- **c2c** (every `poll_interval`): `policies_last_updated` is cheap; `/internal/policies` is
  fetched only when it moved, on the first cycle, after an error and on `resync()`. If the cheap
  check itself fails the fetch is made anyway (as the vxlan-policy-agent does). Policies are
  grouped by destination app into `C2CPoliciesMessage`s; an app whose last policy went away gets
  an explicit empty message. When the server returns `egress_policies` (an old policy server with
  dynamic egress), they are published as one `EgressPoliciesMessage`.
- **asg**: `/internal/security_groups` for the spaces that have containers (events/policy/spaces.py),
  read with a real `limit` and followed by `next` until it is 0; then every group is published and
  every vanished one deleted (events/asgsync.py). When to list is the expensive question: a listing
  of thousands of groups is megabytes, and the policy server has no cheap change stamp for groups
  (its routes are tags, policies, policies_last_updated and security_groups, docs/cf-facts.md §1.2).
  - Without `asg_trigger`, the loop lists every `asg_poll_interval`.
  - With `asg_trigger`, it reads Cloud Controller's `asg_latest_update` every `asg_trigger_interval`
    (the stamp the asg-syncer itself polls, events/cc/stamp.py; a few bytes, on CC). The policy
    server only has a change once the syncer copied it, up to the syncer's poll interval later, so
    a moved stamp opens a window of `asg_sync_window` seconds in which the policy server is listed
    every `asg_poll_interval` until a listing shows a change. Outside a window, a safety listing
    runs every `asg_resync_interval` (it also catches v2 writes, which do not move the stamp).
  A new space with containers, an error and `resync()` list at once. lab/bench/policyload.py
  measures the load each way puts on the policy server.

  Paging is not a snapshot: the syncer may replace groups between two pages. A listing that
  differs from what was last published is therefore read a second time and published only if
  both agree (a group listed twice in one listing, in two space batches, must agree too);
  otherwise the cycle fails as unstable and is retried after a backoff, as the CC watcher does.

A cycle builds the complete state before it publishes anything, so a failed call (or one failed
page of a listing) publishes nothing: the last published state stays. An invalid entry (a rule
in a group's rules string, a policy) is left out, logged once with where it was, and counted;
the rest of its group or listing is published. An unknown key is ignored and not counted.

Versions are the publisher's clock, `time.time_ns()` when the cycle's listing completed (the
policy server has no per-object version).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from events import subjects
from events.asgsync import ASG_SUBJECT_PREFIX, ParseCache, collect_security_groups, publish_security_groups
from events.cc.stamp import AsgStamp, AsgTriggerConfig
from events.httpsource import Reason, SourceError
from events.messages import C2CPoliciesMessage, EgressPoliciesMessage, StateKind
from events.models import (
    C2CPolicy,
    EgressPolicy,
    InternalSecurityGroup,
    SecurityGroup,
    StateError,
    parse_internal_policies,
)
from events.policy.client import API, PolicyServerClient
from events.policy.spaces import SpaceSource, StaticSpaces
from events.poller import Backoff, Cycle, DroppedEntries, PollingWatcher, PollLoop, WatcherMetrics
from events.publisher import StatePublisher
from events.tls import TlsFiles, client_context

log = logging.getLogger(__name__)

METRICS = WatcherMetrics.create("cfnft_watcher_policy", "the policy server")

C2C_SUBJECT_PREFIX = subjects.c2c_policies("x")[:-1]


class PolicyWatcherConfig(BaseModel):
    """Where the policy server is, how to authenticate, and how often to poll."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    url: str = "https://policy-server.service.cf.internal:4003"
    """Base URL of the policy server's internal API (BOSH `policy_server.internal_listen_port`)."""
    ca_file: Path
    """CA that signed the policy server's certificate."""
    cert_file: Path
    """Our client certificate (the server requires one signed by its `ca_file`)."""
    key_file: Path
    """Key of `cert_file`."""
    poll_interval: float = Field(default=1.0, gt=0)
    """Seconds between c2c checks (the vxlan-policy-agent's default is 5)."""
    asgs: bool = True
    """Publish security groups from the policy server (dynamic ASGs). Turn off when the CC watcher publishes them."""
    asg_poll_interval: float = Field(default=10.0, gt=0)
    """Seconds between security-group listings: without `asg_trigger`, the longest an ASG change waits here
    (the vxlan-policy-agent's default is 60); with it, the pace of listings inside a sync window."""
    asg_trigger: AsgTriggerConfig | None = None
    """Cloud Controller's `asg_latest_update` (internal API and UAA client), read to list only after a change."""
    asg_trigger_interval: float = Field(default=1.0, gt=0)
    """With `asg_trigger`: seconds between reads of CC's stamp."""
    asg_sync_window: float = Field(default=90.0, gt=0)
    """With `asg_trigger`: seconds after the stamp moved in which the change must reach the policy server
    (the asg-syncer polls CC every 60 s by default, then lists every group from CC)."""
    asg_resync_interval: float = Field(default=600.0, gt=0)
    """With `asg_trigger`: seconds between safety listings while the stamp stands still."""
    asg_page_size: int = Field(default=500, ge=1)
    """`limit` of one `/internal/security_groups` page."""
    space_batch_size: int = Field(default=200, ge=1)
    """Space guids per listing request (keeps URLs short; each batch is paged on its own)."""
    request_timeout: float = Field(default=5.0, gt=0)
    """Seconds for one HTTP request (the vxlan-policy-agent uses 5)."""
    backoff_initial: float = Field(default=0.5, gt=0)
    """First retry delay after an error; doubles per failure (with jitter)."""
    backoff_max: float = Field(default=30.0, gt=0)
    """Longest retry delay."""
    max_config_failures: int = Field(default=5, ge=1)
    """TLS failures in a row (e.g. our client certificate refused) after which the watcher stops."""

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r}: the policy server's internal API is https:// only (mutual TLS)")
        return value.rstrip("/")


class PolicyWatcher(PollingWatcher):
    """Polls the policy server and publishes c2c policies, egress policies and security groups.

    Example::

        async with ContainerSpaces(nc) as spaces, PolicyWatcher(config, StatePublisher(nc, "policy"), spaces):
            await stopped.wait()
    """

    def __init__(
        self,
        config: PolicyWatcherConfig,
        publisher: StatePublisher,
        spaces: SpaceSource | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """`spaces` chooses the spaces to list security groups for (default: none, i.e. only the
        global defaults). `clock` gives message versions, in nanoseconds."""
        super().__init__()
        self.config = config
        self._publisher = publisher
        self._spaces = spaces or StaticSpaces()
        self._clock = clock
        self._ssl = client_context(TlsFiles(config.ca_file, config.cert_file, config.key_file))
        self._session: aiohttp.ClientSession | None = None
        self._client: PolicyServerClient | None = None
        self._c2c_stamp: int | None = None
        self._trigger: AsgStamp | None = None
        self._asg_schedule = AsgSchedule(config)
        self._asg_spaces: frozenset[str] | None = None
        self._asg_listed: dict[str, SecurityGroup] | None = None  # what the last published listing held
        self._asg_parse = ParseCache(InternalSecurityGroup.parse_lenient)
        self._c2c_dropped = DroppedEntries("c2c", METRICS)
        self._egress_dropped = DroppedEntries("egress", METRICS)
        self._asg_dropped = DroppedEntries("asg", METRICS)

    async def _prepare(self) -> None:
        # Learn what earlier runs published, so vanished objects get their deletion even across a restart.
        await self._publisher.load_published(f"{C2C_SUBJECT_PREFIX}>")
        await self._publisher.load_published(subjects.EGRESS_POLICIES)
        if self.config.asgs:
            await self._publisher.load_published(f"{ASG_SUBJECT_PREFIX}>")
        self._session = aiohttp.ClientSession()
        self._client = PolicyServerClient(self._session, self.config.url, self._ssl, self.config.request_timeout)
        if self.config.asgs and self.config.asg_trigger is not None:
            self._trigger = AsgStamp.from_config(self.config.asg_trigger, self._session, self.config.request_timeout)

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _loops(self) -> Sequence[PollLoop]:
        def loop(kind: str, cycle: Cycle, interval: float) -> PollLoop:
            return PollLoop(
                kind,
                cycle,
                interval,
                METRICS,
                self._stopping,
                Backoff(self.config.backoff_initial, self.config.backoff_max),
                self.config.max_config_failures,
            )

        loops = [loop("c2c", self._c2c_cycle, self.config.poll_interval)]
        if self.config.asgs:
            interval = self.config.asg_trigger_interval if self._trigger else self.config.asg_poll_interval
            asg = loop("asg", self._asg_cycle, interval)
            self._spaces.on_change = lambda: asg.wake(full=False)
            loops.append(asg)
        return loops

    @property
    def _api(self) -> PolicyServerClient:
        assert self._client is not None, "PolicyWatcher used before run()"
        return self._client

    # ---- c2c and egress ------------------------------------------------------------------------

    async def _c2c_cycle(self, full: bool) -> None:
        METRICS.polls.labels("c2c").inc()
        try:
            stamp: int | None = await self._api.policies_last_updated()
        except SourceError as exc:
            if exc.reason.is_config_problem:
                raise
            log.debug("c2c: change check failed, fetching anyway: %s", exc)
            stamp = None
        if not full and stamp is not None and stamp == self._c2c_stamp:
            return
        body = await self._api.policies()
        METRICS.fetches.labels("c2c").inc()
        try:
            c2c, egress, problems = parse_internal_policies(body, lenient=True)
        except StateError as err:
            raise SourceError(f"{self.config.url}{API}/policies", Reason.INVALID, err.one_line())
        by_app, unusable = _by_destination(c2c)
        dropped = [p for p in problems if p.dropped]  # an unknown key drops nothing
        self._c2c_dropped.report([str(p) for p in dropped if p.loc[:1] != ("egress_policies",)] + unusable)
        version = self._clock()
        await self._publish_c2c(by_app, version)
        complete: list[StateKind] = ["c2c"]
        if "egress_policies" in body or self._publisher.published_subjects(subjects.EGRESS_POLICIES):
            # An upgraded server stops sending egress policies: that is an explicit "none".
            self._egress_dropped.report([str(p) for p in dropped if p.loc[:1] == ("egress_policies",)])
            await self._publish_egress(egress, version)
            complete.append("egress")
        await self._publisher.mark_complete(complete)  # the stream holds the whole listing now
        self._c2c_stamp = stamp

    async def _publish_c2c(self, by_app: dict[str, list[C2CPolicy]], version: int) -> None:
        for subject in self._publisher.published_subjects(C2C_SUBJECT_PREFIX):
            by_app.setdefault(subject[len(C2C_SUBJECT_PREFIX) :], [])
        sent = await self._publisher.publish_all(
            C2CPoliciesMessage(version=version, destination_app_guid=app, policies=by_app[app])
            for app in sorted(by_app)
        )
        METRICS.published.labels("c2c").inc(len(sent))

    async def _publish_egress(self, policies: list[EgressPolicy], version: int) -> None:
        ordered = sorted({p.model_dump_json(): p for p in policies}.items())
        if await self._publisher.publish(EgressPoliciesMessage(version=version, policies=[p for _, p in ordered])):
            METRICS.published.labels("egress").inc()

    # ---- security groups -------------------------------------------------------------------

    async def _asg_cycle(self, full: bool) -> None:
        METRICS.polls.labels("asg").inc()
        if not self._spaces.ready.is_set():
            log.info("asg: waiting for the complete container state before listing security groups")
            ready = asyncio.ensure_future(self._spaces.ready.wait())
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait((ready, stop), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            stop.cancel()
            if not self._spaces.ready.is_set():
                return
        spaces = self._spaces.spaces()
        now = time.monotonic()
        if self._trigger is not None:
            try:
                self._asg_schedule.stamp_read(await self._trigger.read(), now)
            except SourceError as exc:
                if exc.reason.is_config_problem:
                    raise
                log.debug("asg: CC's stamp could not be read, listing on the untriggered pace: %s", exc)
                self._asg_schedule.stamp_read(None, now)
        if not (full or spaces != self._asg_spaces or self._asg_schedule.listing_due(now)):
            return
        groups = await self._list_security_groups(spaces)
        if groups != self._asg_listed:
            # Paging is not a snapshot: publish a change only once a second listing agrees.
            again = await self._list_security_groups(spaces)
            if again != groups:
                raise SourceError(
                    f"{self.config.url}{API}/security_groups",
                    Reason.UNSTABLE,
                    "security groups changed while they were listed; listing again after a pause",
                )
        METRICS.fetches.labels("asg").inc()
        result = await publish_security_groups(self._publisher, groups, self._clock())
        METRICS.published.labels("asg").inc(result.published + result.deleted)
        self._asg_schedule.listed(now, changed=groups != self._asg_listed)
        self._asg_spaces, self._asg_listed = spaces, groups

    async def _list_security_groups(self, spaces: frozenset[str]) -> dict[str, SecurityGroup]:
        """Every group for `spaces`, across space batches and pages; raises on any failed page, and
        as unstable when a group listed in two batches differs between them."""
        ordered = sorted(spaces)
        size = self.config.space_batch_size
        batches = [ordered[i : i + size] for i in range(0, len(ordered), size)] or [[]]
        groups: dict[str, SecurityGroup] = {}
        problems: dict[str, str] = {}  # keyed, so a default group seen in every batch is reported once
        with self._asg_parse.listing() as parse:
            for batch in batches:
                start = 0
                while True:
                    page = await self._api.security_groups_page(batch, start, self.config.asg_page_size)
                    found: dict[str, SecurityGroup] = {}
                    collect_security_groups(page.groups, parse, found, problems)
                    for guid, group in found.items():
                        if groups.setdefault(guid, group) != group:
                            raise SourceError(
                                f"{self.config.url}{API}/security_groups",
                                Reason.UNSTABLE,
                                f"security group {guid} changed between two requests of one listing",
                            )
                    if page.next == 0:
                        break
                    start = page.next
        self._asg_dropped.report(sorted(problems.values()))
        return groups


class AsgSchedule:
    """When the ASG loop lists, with CC's stamp as the trigger (see the module docstring). Pure: it is
    told what was read and when (monotonic seconds), and answers whether a listing is due."""

    def __init__(self, config: PolicyWatcherConfig) -> None:
        self._config = config
        self._triggered = config.asg_trigger is not None
        self._stamp: datetime | None = None
        self._window_until = float("-inf")
        self._last_listing = float("-inf")

    def stamp_read(self, stamp: datetime | None, now: float) -> None:
        """CC's stamp as just read; None when it is unknown (CC without the endpoint, or CC unreachable):
        then list every `asg_poll_interval`, as without a trigger, until it is known again."""
        self._triggered = stamp is not None
        if stamp is not None and stamp != self._stamp:
            self._window_until = now + self._config.asg_sync_window
            if self._stamp is not None:
                self._last_listing = float("-inf")  # the syncer may be quick: look at once
            self._stamp = stamp

    def listing_due(self, now: float) -> bool:
        since = now - self._last_listing
        if not self._triggered or now < self._window_until:
            return since >= self._config.asg_poll_interval
        return since >= self._config.asg_resync_interval

    def listed(self, now: float, *, changed: bool) -> None:
        """A listing was published; `changed`: it differed from the one before."""
        self._last_listing = now
        if changed:
            self._window_until = now  # the syncer has written: the change is here


def _by_destination(policies: list[C2CPolicy]) -> tuple[dict[str, list[C2CPolicy]], list[str]]:
    """Policies grouped by destination app, each list sorted and duplicate-free (the same policies
    always make the same message); and the problems of policies whose app guid cannot be a subject."""
    by_app: dict[str, dict[str, C2CPolicy]] = defaultdict(dict)
    unusable: list[str] = []
    for i, policy in enumerate(policies):
        app = policy.destination.id
        try:
            subjects.token(app, "destination app guid")
        except ValueError as err:
            unusable.append(f"policies[{i}]: {err}")
            continue
        by_app[app][policy.model_dump_json()] = policy
    return {app: [entries[k] for k in sorted(entries)] for app, entries in by_app.items()}, unusable
