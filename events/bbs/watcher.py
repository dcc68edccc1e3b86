"""`BbsWatcher`: Diego BBS's LRPs turned into container states per cell and app instance sets on NATS.

Concurrency: `run()` is one task. Per connection it opens the lrp_instances event stream, and a
reader task moves decoded events into a queue; `run()` alone lists, applies events to the
`LrpView` and publishes, so the view has one writer. `resync()` puts a marker in that queue.

Per connection (the stream has no replay, so every (re)connect re-lists):
1. subscribe to `/v1/events/lrp_instances.r1` (all cells) and start queueing its events;
2. list desired LRPs and actual LRPs, replace the view with them;
3. apply the events that queued up meanwhile (the view skips ones older than the listing);
4. publish the difference to what is on NATS: new and changed objects, explicit deletions for
   objects that are gone (null container, empty address list);
5. then per event: apply, republish the containers of the touched process guid and the touched
   apps' instance sets.
Before the first listing, `StatePublisher.load_published` tells what an earlier run left on NATS,
so a restarted watcher publishes only differences and deletes what vanished while it was away.

A stream that stops delivering: BBS sends no heartbeats, so an idle stream and a stalled one (BBS
hung, a proxy holding a dead upstream, connection open and no byte ever again) look the same on
the wire. As an informer resyncs, the watcher therefore re-lists every `relist_interval` while it
follows the stream and publishes what differs from what it had published: that bounds how long a
silent stall can hide a change, and costs an idle foundation one listing per interval. What a re-list
changes is drift (`cfnft_watcher_bbs_drift_total`). Drift alone does not prove the stream dead: an
event BBS emitted just before the listing may still be on its way. So drift makes the stream
suspect, and a suspect stream that delivers no event at all within `request_timeout` is given up and
re-subscribed (`cfnft_watcher_bbs_stream_restarts_total{reason="stalled"}`, which also counts
restarts after failures under their error kind). A peer that vanished without closing is found
sooner, by TCP keepalive on the stream's connection (events/bbs/client.py).

What is published (see events/bbs/view.py for the rules):
- `cfnft.state.container.<cell>.<instance guid>`: a RUNNING LRP instance with an overlay address,
  EVACUATING copies (on their old cell until BBS removes them) and SUSPECT ones included;
- `cfnft.state.app.<app guid>`: addresses of all those instances of the app, on all cells; an
  evacuating copy keeps its address in the set until BBS removes it, beside its replacement's
  once that runs (both are live).
Containers are published only for LRPs. Tasks and staging tasks are BBS tasks, and BBS never
learns a task container's address (docs/cf-facts.md §3.5-3.6: tasks have a cell, no net info), while
a container state needs one. Their containers are registered on their cell by the CNI plugin,
which has the address, the network properties and the rules from Garden (docs/cf-facts.md §4). This
watcher therefore neither lists nor follows tasks, and owns only container subjects whose
container has workload `app`: it never deletes a task or staging container someone else published.

Versions: BBS's modification tags are (epoch guid, index) pairs, comparable only within one
record, and a container or app set spans records. Each message's version is the publisher's
clock in nanoseconds, forced to grow within this process. Two replicas may run: they publish the
same whole-state content (a lagging one briefly repeats an older state until it sees the same
event), and StatePublisher sends nothing when the content is unchanged.

Failures: a list or stream failure (refused, reset, HTTP 5xx, BBS's `error` field, undecodable
data) drops the connection and publishes nothing: the last published state stays, so cells keep
enforcing it. The watcher backs off (exponential with jitter, capped), logs one line per attempt
with the reason, and counts it. TLS failures are the one exception to retrying forever: after
`max_tls_failures` in a row (a refused client certificate is configuration, not weather) `run()`
raises `FatalSourceError`, as the policy and CC watchers do, so the supervisor can report it.
Anything unexpected (a bug) is logged with its traceback, counted, and retried the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from nats.errors import Error as NatsError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events import subjects
from events.bbs.client import BbsClient, EventStream
from events.bbs.errors import BbsError, BbsTlsError
from events.bbs.sse import BbsEvent
from events.bbs.view import Affected, ContainerKey, LrpView
from events.messages import AppInstancesMessage, ContainerMessage
from events.models import Container, Workload
from events.poller import Backoff, FatalSourceError
from events.publisher import StatePublisher
from events.tls import TlsFiles, client_context

log = logging.getLogger(__name__)

_CONTAINER_PREFIX = f"{subjects.STATE_PREFIX}.container."
_APP_PREFIX = f"{subjects.STATE_PREFIX}.app."


class BbsWatcherConfig(BaseModel):
    """How to reach BBS and how patiently. Field docstrings are the reference documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    url: str = "https://bbs.service.cf.internal:8889"
    """BBS's API URL."""
    ca_file: Path
    """PEM CA that signed BBS's server certificate."""
    cert_file: Path
    """PEM client certificate BBS accepts (signed by the CA BBS trusts)."""
    key_file: Path
    """PEM private key of `cert_file`."""
    server_name: str | None = None
    """Name BBS's certificate must carry, when `url` names an address (e.g. bbs.service.cf.internal)."""
    request_timeout: float = Field(default=10.0, gt=0)
    """Seconds for one list call, and for an event stream to be answered."""
    backoff_initial: float = Field(default=0.5, gt=0)
    """Seconds before the first retry after a failure; doubles per failure in a row."""
    backoff_max: float = Field(default=30.0, gt=0)
    """Upper bound of the retry delay."""
    max_tls_failures: int = Field(default=5, ge=1)
    """TLS handshake failures in a row after which the watcher gives up (`FatalSourceError`)."""
    relist_interval: float = Field(default=60.0, gt=0)
    """Seconds between re-lists while following the event stream: the longest a silently stalled stream
    can hide a change (BBS sends no heartbeats), at one desired and actual LRP listing per interval."""


@dataclass(frozen=True, slots=True)
class BbsWatcherMetrics:
    """The watcher's Prometheus metrics, prefixed `cfnft_watcher_bbs_`."""

    events: Counter
    relists: Counter
    drift: Counter
    stream_restarts: Counter
    errors: Counter
    published: Counter
    connected: Gauge
    containers: Gauge
    apps: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> BbsWatcherMetrics:
        """Register the metrics in `registry` (a registry holds each name once: one watcher per registry)."""
        p = "cfnft_watcher_bbs"
        return cls(
            events=Counter(f"{p}_events_total", "Events received from BBS", ["event"], registry=registry),
            relists=Counter(f"{p}_relists_total", "Full listings of desired and actual LRPs", registry=registry),
            drift=Counter(
                f"{p}_drift_total",
                "Messages a re-list made while following the stream (state the events had not delivered)",
                registry=registry,
            ),
            stream_restarts=Counter(
                f"{p}_stream_restarts_total",
                "Event streams given up after being followed: stalled, or the error kind that ended them",
                ["reason"],
                registry=registry,
            ),
            errors=Counter(f"{p}_errors_total", "Failures talking to BBS or NATS", ["kind"], registry=registry),
            published=Counter(f"{p}_published_total", "State messages sent to NATS", ["kind"], registry=registry),
            connected=Gauge(f"{p}_connected", "1 while following BBS's event stream in sync", registry=registry),
            containers=Gauge(f"{p}_containers", "Container states currently published", registry=registry),
            apps=Gauge(f"{p}_apps", "Apps with a non-empty instance set currently published", registry=registry),
        )


class _Resync:
    """Queue marker: re-list now."""


_RESYNC = _Resync()
_QueueItem = BbsEvent | BbsError | _Resync


class BbsWatcher:
    """Follows BBS and publishes LRP container states and app instance sets (module docstring).

    watcher = BbsWatcher(config, StatePublisher(nc, "bbs"))
    task = asyncio.create_task(watcher.run())
    await watcher.in_sync.wait()     # the first listing is published
    """

    def __init__(
        self,
        config: BbsWatcherConfig,
        publisher: StatePublisher,
        *,
        metrics: BbsWatcherMetrics | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.in_sync = asyncio.Event()
        """Set once the first listing has been published."""
        self._publisher = publisher
        self._metrics = metrics or BbsWatcherMetrics.create()
        self._clock = clock
        self._view = LrpView()
        self._version = 0
        self._queue: asyncio.Queue[_QueueItem] | None = None
        # What is on NATS that we own: container subject -> process guid (None: found at startup),
        # and apps whose published instance set is not empty.
        self._live: dict[str, str | None] = {}
        self._live_by_process: dict[str | None, set[str]] = {}
        self._live_apps: set[str] = set()
        self._known_problems: set[str] = set()
        self._loaded = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""

    def resync(self) -> None:
        """Re-list BBS now and publish the difference (an operator's resync request)."""
        if self._queue is not None:
            self._queue.put_nowait(_RESYNC)

    def stop(self) -> None:
        """Make `run()` return (the published state stays as it is)."""
        self._stopping.set()

    async def __aenter__(self) -> BbsWatcher:
        self._task = asyncio.create_task(self.run(), name="BbsWatcher")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The background task of `async with` (to await a FatalSourceError)."""
        return self._task

    async def run(self) -> None:
        """Watch until `stop()`. Raises TlsConfigError for unreadable TLS files, and FatalSourceError
        after `max_tls_failures` refused handshakes in a row."""
        watch = asyncio.create_task(self._watch(), name="BbsWatcher.watch")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait((watch, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not watch.done():
                watch.cancel()
            await asyncio.gather(watch, stopping, return_exceptions=True)
        if not watch.cancelled() and watch.exception() is not None:
            raise watch.exception()  # type: ignore[misc]

    async def _watch(self) -> None:
        cfg = self.config
        ssl_context = client_context(TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file))
        backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        async with BbsClient(cfg.url, ssl_context, server_name=cfg.server_name, timeout=cfg.request_timeout) as bbs:
            tls_failures = 0
            while True:
                try:
                    if not self._loaded:
                        await self._load_published()
                    await self._follow(bbs)
                    # It returns only for a stream that went silent: re-subscribe (and re-list) now.
                    self._metrics.stream_restarts.labels(reason="stalled").inc()
                    self._metrics.connected.set(0)
                    log.warning(
                        "BBS's event stream delivered nothing within %.1f s after a re-list found drift: "
                        "re-subscribing",
                        cfg.request_timeout,
                    )
                    continue
                except (BbsError, NatsError, asyncio.TimeoutError) as err:
                    kind = err.kind if isinstance(err, BbsError) else "nats"
                    tls_failures = tls_failures + 1 if isinstance(err, BbsTlsError) else 0
                    delay = self._failed(backoff, kind, _describe(err))
                    if tls_failures >= cfg.max_tls_failures:
                        raise FatalSourceError("bbs", tls_failures, str(err)) from err
                except Exception as err:
                    # A bug must not end the watch: log it with its traceback, count it, back off, retry.
                    log.exception("unexpected failure following BBS")
                    delay = self._failed(backoff, "internal", f"unexpected {err!r}")
                finally:
                    self._queue = None
                log.error("%s; keeping the last published state, retrying in %.2f s", self._last_error, delay)
                await asyncio.sleep(delay)

    def _failed(self, backoff: Backoff, kind: str, text: str) -> float:
        if self._queue is not None:  # it had been in sync: a new streak of failures starts
            backoff.reset()
            self._metrics.stream_restarts.labels(reason=kind).inc()
        self._metrics.connected.set(0)
        self._metrics.errors.labels(kind=kind).inc()
        self._last_error = text
        return backoff.next_delay()

    async def _follow(self, bbs: BbsClient) -> None:
        """One connection: subscribe, list, publish, then apply events until the stream fails
        (raises) or goes silent while a re-list found drift (returns)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        async with bbs.lrp_instance_events() as stream:
            queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
            reader = asyncio.create_task(_read(stream, queue), name="bbs-event-reader")
            try:
                await self._relist(bbs, queue)
                self._queue = queue
                self._metrics.connected.set(1)
                relist_at = loop.time() + cfg.relist_interval
                suspect_until: float | None = None  # drift seen: the stream must deliver something by then
                while True:
                    deadline = relist_at if suspect_until is None else min(relist_at, suspect_until)
                    items = await _next_items(queue, deadline)
                    if not items and suspect_until is not None and loop.time() >= suspect_until:
                        return
                    affected = Affected()
                    for item in items or [_RESYNC]:
                        if isinstance(item, BbsEvent):
                            suspect_until = None
                            affected.merge(self._apply(item))
                            continue
                        await self._publish_affected(affected)  # what came before is true: keep it
                        affected = Affected()
                        if isinstance(item, BbsError):
                            raise item
                        drift, delivered = await self._relist(bbs, queue)
                        relist_at = loop.time() + cfg.relist_interval
                        if delivered:
                            suspect_until = None
                        if drift:
                            self._metrics.drift.inc(drift)
                            log.warning("a re-list found %d message(s) the event stream had not delivered", drift)
                            if not delivered and suspect_until is None:
                                suspect_until = loop.time() + cfg.request_timeout
                    await self._publish_affected(affected)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _load_published(self) -> None:
        """Learn which container and app subjects an earlier run of a BBS watcher left live on NATS."""
        containers = await self._publisher.load_published(_CONTAINER_PREFIX + ">")
        apps = await self._publisher.load_published(_APP_PREFIX + ">")
        for subject, data in containers.items():
            try:
                message = ContainerMessage.model_validate_json(data)
            except ValidationError:
                continue  # not ours to judge; the reconcilers report it
            if message.container is not None and message.container.workload is Workload.APP:
                self._own(subject, None)
        for subject, data in apps.items():
            try:
                app = AppInstancesMessage.model_validate_json(data)
            except ValidationError:
                continue
            if app.addresses:
                self._live_apps.add(app.app_guid)
        self._loaded = True
        log.info("found %d LRP containers and %d app instance sets on NATS", len(self._live), len(self._live_apps))

    async def _relist(self, bbs: BbsClient, queue: asyncio.Queue[_QueueItem]) -> tuple[int, int]:
        """List desired and actual LRPs, apply the events queued meanwhile, publish the difference.
        Returns how many messages changed NATS, and how many events the stream delivered meanwhile."""
        desired = await bbs.desired_lrps()
        actual = await bbs.actual_lrps()
        self._metrics.relists.inc()
        problems = self._view.reset(desired, actual)
        delivered = 0
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, BbsError):
                raise item  # events were lost: this listing cannot be brought up to date
            if isinstance(item, BbsEvent):
                delivered += 1
                self._metrics.events.labels(event=item.name).inc()
                problems += self._view.apply(item)[1]
        self._report(problems, replace=True)
        changed = await self._publish_all()
        log.info(
            "listed %d desired and %d actual LRPs: %d containers, %d apps with instances",
            len(desired),
            len(actual),
            len(self._live),
            len(self._live_apps),
        )
        return changed, delivered

    def _apply(self, event: BbsEvent) -> Affected:
        self._metrics.events.labels(event=event.name).inc()
        affected, problems = self._view.apply(event)
        self._report(problems)
        return affected

    # ---- publishing --------------------------------------------------------------------------

    async def _publish_all(self) -> int:
        """Make NATS hold the view, the listing pipelined (a foundation's worth of containers and apps
        at once); returns how many messages that took."""
        containers = self._view.all_containers()
        owners: dict[str, str] = {}
        messages: list[ContainerMessage | AppInstancesMessage] = []
        for (cell_id, handle), (process_guid, container) in containers.items():
            version = self._next_version()
            messages.append(ContainerMessage(version=version, cell_id=cell_id, handle=handle, container=container))
            owners[messages[-1].subject()] = process_guid
        apps = {app: self._view.app_addresses(app) for app in sorted(self._view.apps() | self._live_apps)}
        for app_guid, addresses in apps.items():
            if addresses or app_guid in self._live_apps:  # else: never published, nothing to delete
                version = self._next_version()
                messages.append(AppInstancesMessage(version=version, app_guid=app_guid, addresses=addresses))
        sent = await self._publisher.publish_all(messages)
        for message in sent:
            self._metrics.published.labels(kind=message.kind).inc()
        changed = len(sent)
        for subject, process_guid in owners.items():
            self._own(subject, process_guid)
        self._live_apps = {app for app, addresses in apps.items() if addresses}
        wanted = {subjects.container(cell_id, handle) for cell_id, handle in containers}
        for subject in sorted(set(self._live) - wanted):
            changed += await self._delete_container(subject)
        await self._publisher.mark_complete(("container", "app"))  # the stream holds our whole view now
        self.in_sync.set()
        self._update_gauges()
        return changed

    async def _publish_affected(self, affected: Affected) -> None:
        wanted: set[str] = set()
        for process_guid in sorted(affected.process_guids):
            for (cell_id, handle), container in self._view.containers(process_guid).items():
                wanted.add(subjects.container(cell_id, handle))
                await self._publish_container(cell_id, handle, process_guid, container)
        for app_guid in sorted(affected.apps):
            await self._publish_app(app_guid)
        gone = {s for pg in affected.process_guids for s in self._live_by_process.get(pg, ())} - wanted
        for subject in sorted(gone):
            await self._delete_container(subject)
        self._update_gauges()

    async def _publish_container(self, cell_id: str, handle: str, process_guid: str, container: Container) -> bool:
        message = ContainerMessage(version=self._next_version(), cell_id=cell_id, handle=handle, container=container)
        sent = await self._publisher.publish(message)
        if sent:
            self._metrics.published.labels(kind="container").inc()
        self._own(message.subject(), process_guid)
        return sent

    async def _delete_container(self, subject: str) -> bool:
        cell_id, handle = _container_key(subject)
        message = ContainerMessage(version=self._next_version(), cell_id=cell_id, handle=handle, container=None)
        sent = await self._publisher.publish(message)
        if sent:
            self._metrics.published.labels(kind="container").inc()
        process_guid = self._live.pop(subject)
        self._live_by_process[process_guid].discard(subject)
        if not self._live_by_process[process_guid]:
            del self._live_by_process[process_guid]
        return sent

    async def _publish_app(self, app_guid: str) -> bool:
        addresses = self._view.app_addresses(app_guid)
        if not addresses and app_guid not in self._live_apps:
            return False  # never published, nothing to delete
        message = AppInstancesMessage(version=self._next_version(), app_guid=app_guid, addresses=addresses)
        sent = await self._publisher.publish(message)
        if sent:
            self._metrics.published.labels(kind="app").inc()
        if addresses:
            self._live_apps.add(app_guid)
        else:
            self._live_apps.discard(app_guid)
        return sent

    def _own(self, subject: str, process_guid: str | None) -> None:
        previous = self._live.get(subject, process_guid)
        if subject in self._live and previous != process_guid:
            self._live_by_process[previous].discard(subject)
        self._live[subject] = process_guid
        self._live_by_process.setdefault(process_guid, set()).add(subject)

    def _next_version(self) -> int:
        self._version = max(self._version + 1, self._clock())
        return self._version

    def _update_gauges(self) -> None:
        self._metrics.containers.set(len(self._live))
        self._metrics.apps.set(len(self._live_apps))

    def _report(self, problems: list[str], *, replace: bool = False) -> None:
        """Log each problem in BBS's data once while it persists (`replace`: these are all of them now)."""
        for text in problems:
            if text not in self._known_problems:
                log.warning("%s", text)
        self._known_problems = set(problems) if replace else self._known_problems | set(problems)


async def _next_items(queue: asyncio.Queue[_QueueItem], deadline: float) -> list[_QueueItem]:
    """Everything queued, waiting until `deadline` (loop time) for the first item; [] if none came."""
    if queue.empty():
        try:
            async with asyncio.timeout_at(deadline):
                return [await queue.get(), *_drain(queue)]
        except TimeoutError:
            return []
    return _drain(queue)


def _drain(queue: asyncio.Queue[_QueueItem]) -> list[_QueueItem]:
    items: list[_QueueItem] = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _read(stream: EventStream, queue: asyncio.Queue[_QueueItem]) -> None:
    """Move events into `queue`; the stream's failure goes in last."""
    try:
        async for event in stream:
            queue.put_nowait(event)
    except BbsError as err:
        queue.put_nowait(err)


def _container_key(subject: str) -> ContainerKey:
    cell_id, handle = subject.removeprefix(_CONTAINER_PREFIX).split(".", 1)
    return cell_id, handle


def _describe(err: BaseException) -> str:
    if isinstance(err, BbsError):
        return str(err)
    return f"NATS: {type(err).__name__}: {err}"
