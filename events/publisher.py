"""Publishing whole-state messages into the JetStream state stream.

`StatePublisher` owns the stream definition (created on first use, idempotently, with the
configured number of replicas) and suppresses messages whose content equals what it last
published on the same subject, so a watcher can republish its whole view every cycle and NATS
only sees changes. The version is not part of that comparison: a re-list that finds nothing new
publishes nothing.

`publish` counts a message only once the stream has acknowledged it. While a clustered stream
elects a new leader (a node was lost), or the client moves to another server, it retries for up
to `publish_retry_seconds`: a change is never dropped because of a failover, and one that was
stored but whose acknowledgement was lost is stored again, which readers ignore.

`publish_all` pipelines: up to `window` publishes wait for their acknowledgement at once, so a
large listing (the initial publish of a foundation) goes at the speed of NATS, not of round
trips. One connection delivers in order, so a subject's messages reach the stream in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable
from typing import TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy, DiscardPolicy, PubAck, StorageType, StreamConfig
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError

from events import subjects
from events.messages import Message

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# Every cell reads through six consumers of its own (events/permissions.py: cell_consumers), and
# nats-server 2.15 limits a stream that sets no limit to 1,000 consumers (-1 no longer means
# unlimited): room for about 8,000 cells and their watchers.
MAX_CONSUMERS = 50_000


def state_stream_config(replicas: int = 1) -> StreamConfig:
    """The stream that holds the current state: one message kept per subject."""
    return StreamConfig(
        name=subjects.STATE_STREAM,
        subjects=[subjects.STATE_WILDCARD],
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_consumers=MAX_CONSUMERS,
        description="cfnft desired state: last whole-state message per object",
    )


# What a failover looks like to a publisher: no answer, no stream leader yet, the client reconnecting.
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    NoStreamResponseError,
    ServiceUnavailableError,
)


async def ensure_state_stream(nc: NATS, replicas: int | None = None) -> None:
    """Create the state stream if it is missing, with `replicas` (1 if not given). Given, an existing
    stream's replica count is changed to it (JetStream moves the data); not given, it is left alone.
    A stream with room for fewer consumers than MAX_CONSUMERS gets that room."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(subjects.STATE_STREAM)
    except NotFoundError:
        await js.add_stream(state_stream_config(replicas or 1))
        log.info("created JetStream stream %s with %d replica(s)", subjects.STATE_STREAM, replicas or 1)
        return
    config = info.config
    changes = []
    if replicas is not None and config.num_replicas != replicas:
        changes.append(f"replicas {config.num_replicas} -> {replicas}")
        config.num_replicas = replicas
    if (config.max_consumers or 0) < MAX_CONSUMERS:
        changes.append(f"max consumers {config.max_consumers} -> {MAX_CONSUMERS}")
        config.max_consumers = MAX_CONSUMERS
    if changes:
        await js.update_stream(config)
        log.info("JetStream stream %s: %s", subjects.STATE_STREAM, ", ".join(changes))


class StatePublisher:
    """Publishes messages to the state stream, skipping ones identical to the last on their subject."""

    def __init__(
        self,
        nc: NATS,
        replicas: int | None = None,
        window: int = 256,
        ack_timeout: float = 5.0,
        publish_retry_seconds: float = 30.0,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(publish_async_max_pending=window)
        self._replicas = replicas
        self._window = window
        self._ack_timeout = ack_timeout
        self._retry_seconds = publish_retry_seconds
        self._last: dict[str, str] = {}
        self._ready = False

    async def _ensure(self) -> None:
        if not self._ready:
            await ensure_state_stream(self._nc, self._replicas)
            self._ready = True

    async def load_published(self, subject_filter: str = subjects.STATE_WILDCARD) -> dict[str, bytes]:
        """Read back what the stream holds now (last message per subject), so a restarted
        watcher publishes only differences and can publish deletions for objects that vanished."""
        await self._ensure()
        found: dict[str, bytes] = {}
        sub = await self._js.subscribe(
            subject_filter,
            stream=subjects.STATE_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            # num_pending leaves out what was already delivered to this client, so it can read 0
            # with messages waiting here: go by what has been delivered as well.
            info = await sub.consumer_info()
            if info.num_pending or (info.delivered is not None and info.delivered.consumer_seq):
                while True:
                    msg = await sub.next_msg(timeout=5)
                    found[msg.subject] = msg.data
                    if msg.metadata.num_pending == 0:
                        break
        finally:
            await sub.unsubscribe()
        for subject, data in found.items():
            self._last[subject] = _content_key(data)
        return found

    async def publish(self, message: Message) -> bool:
        """Publish `message` unless its content equals the last one on its subject. Returns whether it was sent."""
        await self._ensure()
        subject = message.subject()
        if message.observed_at is None:  # the callers publish what they have just observed
            message = message.model_copy(update={"observed_at": time.time()})
        data = message.model_dump_json().encode()
        key = _content_key(data)
        if self._last.get(subject) == key:
            return False
        await self._publish_acknowledged(subject, data)
        self._last[subject] = key
        log.debug("published %s version %d", subject, message.version)
        return True

    async def _publish_acknowledged(self, subject: str, data: bytes) -> None:
        started = time.monotonic()
        delay = 0.05
        retries = 0
        while True:
            try:
                await self._js.publish(subject, data, stream=subjects.STATE_STREAM)
            except _TRANSIENT as e:
                if time.monotonic() + delay > started + self._retry_seconds:
                    raise
                if not retries:
                    log.warning(
                        "publishing %s: %s; retrying for up to %.0fs (a NATS failover?)",
                        subject,
                        str(e) or type(e).__name__,
                        self._retry_seconds,
                    )
                retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if retries:
                log.info("published %s after %d retries, %.1fs", subject, retries, time.monotonic() - started)
            return

    async def publish_all(self, messages: Iterable[M]) -> list[M]:
        """Publish every message whose content differs from the last on its subject, with up to
        `window` acknowledgements outstanding; of several on one subject, only the last. Returns the
        messages sent (as given: without the observation time each is published with, unless it has
        one). If any publish fails or is not acknowledged in time, raises its error once none is
        outstanding any more; the acknowledged ones count as published."""
        await self._ensure()
        # Everything is serialized first, then sent in one tight loop: publishes interleaved with
        # work go out one socket write each, and their acks come back one by one.
        batch: dict[str, tuple[M, bytes, str]] = {}
        now = time.time()
        for message in messages:
            subject = message.subject()
            stamped = message if message.observed_at is not None else message.model_copy(update={"observed_at": now})
            data = stamped.model_dump_json().encode()
            key = _content_key(data)
            batch.pop(subject, None)  # a later message on the same subject replaces an earlier one
            if self._last.get(subject) != key:
                batch[subject] = (message, data, key)
        sent: list[tuple[M, str, str, asyncio.Future[PubAck]]] = []
        failure: BaseException | None = None
        oldest = 0
        try:
            for subject, (message, data, key) in batch.items():
                # A full window waits for its oldest ack (JetStream acks in order), here rather than
                # in nats-py, whose timed wait costs a task per message.
                while self._js.publish_async_pending() >= self._window:
                    while sent[oldest][3].done():
                        oldest += 1
                    _, late = await asyncio.wait([sent[oldest][3]], timeout=self._ack_timeout)
                    if late:
                        raise TimeoutError(f"no acknowledgement within {self._ack_timeout}s")
                ack = await self._js.publish_async(subject, data, stream=subjects.STATE_STREAM)
                sent.append((message, subject, key, ack))
        except Exception as e:  # the connection, or a window that stays full: settle what is out first
            failure = e
        settled = await self._settle([ack for _, _, _, ack in sent])
        for (_, subject, key, _), outcome in zip(sent, settled):
            if outcome is None:
                self._last[subject] = key
        failure = failure or next((outcome for outcome in settled if outcome is not None), None)
        if failure is not None:
            raise failure
        log.debug("published %d messages", len(sent))
        return [message for message, _, _, _ in sent]

    async def _settle(self, acks: list[asyncio.Future[PubAck]]) -> list[BaseException | None]:
        """Wait for the acknowledgements (giving up on the ones not there in time); per ack, its error or None."""
        if acks:
            _, late = await asyncio.wait(acks, timeout=self._ack_timeout)
            for ack in late:
                ack.cancel()  # frees its place in the window
        out: list[BaseException | None] = []
        for ack in acks:
            if ack.cancelled():
                out.append(TimeoutError(f"no acknowledgement within {self._ack_timeout}s"))
            else:
                out.append(ack.exception())
        return out

    def published_subjects(self, prefix: str) -> set[str]:
        return {s for s in self._last if s.startswith(prefix)}


_STAMPS_FIRST = re.compile(rb'\{"version":\d+,"observed_at":(?:null|[-+.eE0-9]+),')


def _content_key(data: bytes) -> str:
    """The message without its version and observation time: what decides whether anything changed.

    Our messages serialize with those two first (`{"version":N,"observed_at":T,...`), so cutting
    them off is the key, at no cost per message; anything else is compared as canonical JSON."""
    head = _STAMPS_FIRST.match(data)
    if head is not None:
        return "{" + data[head.end() :].decode()
    doc = json.loads(data)
    doc.pop("version", None)
    doc.pop("observed_at", None)
    return json.dumps(doc, sort_keys=True)
