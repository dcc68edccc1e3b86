"""The polling machinery shared by the policy-server and Cloud Controller watchers.

Concurrency: a `PollingWatcher` runs one `PollLoop` task per kind of object (for the policy
watcher: c2c and ASGs) inside one TaskGroup. Each loop awaits its own cycle function, then sleeps
for its interval (or a backoff after an error) on an event that `resync()` and `stop()` set, so
both take effect at once. Nothing else awaits the loops; `run()` returns when `stop()` was called,
or raises `FatalSourceError` when a loop gave up.

Failure rules, the same for every source:
- a cycle that raises published nothing (cycles build the whole state before publishing);
- the next cycle after an error is a full one (cheap change checks are skipped);
- errors back off exponentially with jitter, and a streak of the same error is logged once;
- a refused client certificate or refused credentials is a configuration problem no retry will
  fix: after `max_config_failures` in a row the watcher stops with `FatalSourceError` (one clear
  line for the operator; the supervisor restarts it) rather than hammer a server forever.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from nats.errors import Error as NatsError
from prometheus_client import Counter, Gauge

from cfnft.errors import OperationError
from events.httpsource import SourceError

log = logging.getLogger(__name__)


class FatalSourceError(OperationError):
    """A watcher gave up on its source (e.g. its client certificate is refused every time):
    `source` names the watcher and what it polls, `failures` how many attempts failed in a row,
    `last_error` the last of them (it says which URL or route, and why)."""

    def __init__(self, source: str, failures: int, last_error: str) -> None:
        self.source = source
        self.failures = failures
        self.last_error = last_error
        super().__init__(f"{source}: giving up after {failures} failures in a row: {last_error}")


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with jitter: each delay is drawn from [cap/2, cap], where cap
    doubles per failure from `initial` up to `maximum`. Replicas failing together spread out, and
    no delay is ever near zero."""

    initial: float = 0.5
    maximum: float = 30.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        # The exponent is bounded: a long outage must not overflow the float (2**1024) and end the caller.
        cap = min(self.maximum, self.initial * 2 ** min(self.failures - 1, 64))
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True, slots=True)
class WatcherMetrics:
    """One watcher's Prometheus metrics, all labelled by `kind` (c2c, egress, asg).

    Create one per watcher module at import time (the default registry refuses duplicates)."""

    polls: Counter
    fetches: Counter
    errors: Counter
    published: Counter
    dropped_entries: Gauge
    last_success: Gauge
    up: Gauge

    @classmethod
    def create(cls, prefix: str, source: str) -> WatcherMetrics:
        return cls(
            polls=Counter(f"{prefix}_polls_total", f"Poll cycles against {source}", ["kind"]),
            fetches=Counter(f"{prefix}_fetches_total", f"Full listings fetched from {source}", ["kind"]),
            errors=Counter(f"{prefix}_errors_total", f"Failed poll cycles against {source}", ["kind", "reason"]),
            published=Counter(f"{prefix}_published_messages_total", "State messages published to NATS", ["kind"]),
            dropped_entries=Gauge(
                f"{prefix}_dropped_entries",
                f"Invalid entries (rules, policies, groups) of {source} left out of the last listing",
                ["kind"],
            ),
            last_success=Gauge(
                f"{prefix}_last_success_timestamp_seconds",
                f"When a poll cycle against {source} last succeeded",
                ["kind"],
            ),
            up=Gauge(f"{prefix}_source_up", f"1 while the last poll cycle against {source} succeeded", ["kind"]),
        )


Cycle = Callable[[bool], Awaitable[None]]


@dataclass(slots=True)
class PollLoop:
    """Calls `cycle(full)` every `interval` seconds until stopped. `full` is True on the first
    run, after an error and after `wake(full=True)`."""

    kind: str
    cycle: Cycle
    interval: float
    metrics: WatcherMetrics
    stopping: asyncio.Event
    backoff: Backoff = field(default_factory=Backoff)
    max_config_failures: int = 5
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _full: bool = True
    _config_failures: int = 0
    _last_error: str | None = None

    def wake(self, *, full: bool) -> None:
        """Run the next cycle now; a full one if `full`."""
        self._full = self._full or full
        self._wake.set()

    async def run(self) -> None:
        while not self.stopping.is_set():
            full, self._full = self._full, False
            try:
                await self.cycle(full)
            except SourceError as exc:
                delay = self._failed(exc.reason.value, str(exc), config=exc.reason.is_config_problem)
                self._full = True
            except NatsError as exc:
                delay = self._failed("nats", f"publishing to NATS failed: {exc!r}", config=False)
                self._full = True
            except Exception as exc:
                # A bug must not end the watch: log it with its traceback, count it, back off, retry.
                log.exception("%s: cycle failed unexpectedly", self.kind)
                delay = self._failed("internal", f"unexpected {exc!r}", config=False)
                self._full = True
            else:
                self._succeeded()
                delay = self.interval
            await self._sleep(delay)

    def _failed(self, reason: str, text: str, *, config: bool) -> float:
        self.metrics.errors.labels(self.kind, reason).inc()
        self.metrics.up.labels(self.kind).set(0)
        delay = self.backoff.next_delay()
        if text != self._last_error:
            log.error("%s: %s (keeping the last published state; retrying in %.1f s)", self.kind, text, delay)
            self._last_error = text
        else:
            log.debug("%s: still failing: %s", self.kind, text)
        if config:
            self._config_failures += 1
            if self._config_failures >= self.max_config_failures:
                raise FatalSourceError(self.kind, self._config_failures, text)
        else:
            self._config_failures = 0
        return delay

    def _succeeded(self) -> None:
        if self._last_error is not None:
            log.info("%s: source is back after %d failed cycle(s)", self.kind, self.backoff.failures)
        self._last_error = None
        self._config_failures = 0
        self.backoff.reset()
        self.metrics.up.labels(self.kind).set(1)
        self.metrics.last_success.labels(self.kind).set(time.time())

    async def _sleep(self, seconds: float) -> None:
        if self.stopping.is_set():
            return
        self._wake.clear()
        stop = asyncio.ensure_future(self.stopping.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((stop, wake), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()


class PollingWatcher:
    """Base of the polling watchers: lifecycle (`run`, `stop`, `async with`) and `resync()`.

    Subclasses implement `_prepare()` (e.g. read what was published before) and `_loops()`.
    """

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._loops_running: Sequence[PollLoop] = ()
        self._task: asyncio.Task[None] | None = None

    async def _prepare(self) -> None:
        """Runs once before the loops start."""

    def _loops(self) -> Sequence[PollLoop]:
        raise NotImplementedError

    async def _close(self) -> None:
        """Runs once after the loops ended (release sessions)."""

    async def run(self) -> None:
        """Poll until `stop()`; raises FatalSourceError if a loop gives up."""
        try:
            await self._prepare()
            self._loops_running = self._loops()
            try:
                async with asyncio.TaskGroup() as group:
                    for loop in self._loops_running:
                        group.create_task(loop.run(), name=f"{type(self).__name__}.{loop.kind}")
            except BaseExceptionGroup as group:
                # A loop gave up (the TaskGroup cancelled the others): surface its error, unwrapped.
                fatal = [e for e in group.exceptions if isinstance(e, FatalSourceError)]
                if not fatal:
                    raise
                raise fatal[0] from None
        finally:
            await self._close()

    def stop(self) -> None:
        self._stopping.set()

    def resync(self) -> None:
        """Re-list everything now and republish what differs from what was published."""
        for loop in self._loops_running:
            loop.wake(full=True)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=type(self).__name__)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._task is not None:
            await self._task


class DroppedEntries:
    """Reports the invalid entries a listing left out: each is logged once while it stays bad
    (not once per poll), and the `dropped_entries` gauge holds the current count."""

    def __init__(self, kind: str, metrics: WatcherMetrics) -> None:
        self._kind = kind
        self._metrics = metrics
        self._known: set[str] = set()

    def report(self, problems: Sequence[str]) -> None:
        for text in problems:
            if text not in self._known:
                log.warning("%s: left out an invalid entry: %s", self._kind, text)
        self._known = set(problems)
        self._metrics.dropped_entries.labels(self._kind).set(len(problems))
