"""Publishing whole-state messages into the JetStream state stream.

`StatePublisher` owns the stream definition (created on first use, idempotently: only
publishers create the stream, never the reconcilers) and suppresses messages whose content
equals what it last published on the same subject, so a watcher can republish its whole view
every cycle and NATS only sees changes. The version is not part of that comparison: a re-list
that finds nothing new publishes nothing.

Two publishers must not silently overwrite each other (docs/design.md §2.4):

- **Optimistic concurrency.** Every publish carries `Nats-Expected-Last-Subject-Sequence`: the
  stream sequence of the subject's last message as this publisher knows it (from
  `load_published` or its own last publish; 0: it expects none). If anyone else wrote the subject
  since, JetStream refuses the message and `publish` raises `PublishConflict` after re-reading
  the subject, so a retry is a deliberate decision on current knowledge, never a blind overwrite.
  A replica that lost its lease while paused is fenced this way (events/lease.py).
- **Epoch markers.** `mark_complete(kinds)` writes `cfnft.state.epoch.<source>` once a complete
  view of those kinds is published into this stream incarnation, so readers can tell an empty
  foundation from a lost stream (reconciler/stateplane.py). `state_plane_lost()` notices a stream
  that was deleted, recreated or purged under the publisher: it forgets what it believed was
  published (so the next full publication sends everything) and recreates the stream if needed.


`publish` counts a message only once the stream has acknowledged it. While a clustered stream
elects a new leader (a node was lost), or the client moves to another server, it retries for up
to `publish_retry_seconds`: a change is never dropped because of a failover. A message that was
stored but whose acknowledgement was lost is found on its subject by the retry's sequence check,
and counts as published.

`publish_all` pipelines: up to `window` publishes wait for their acknowledgement at once, so a
large listing (the initial publish of a foundation) goes at the speed of NATS, not of round
trips. One connection delivers in order, so a subject's messages reach the stream in order."""

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
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from events import subjects
from events.messages import EpochMessage, Message, StateKind
from events.poller import Backoff

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# Every cell reads through seven consumers of its own (events/permissions.py: cell_consumers), and
# nats-server 2.15 limits a stream that sets no limit to 1,000 consumers (-1 no longer means
# unlimited): room for about 7,000 cells and their watchers.
MAX_CONSUMERS = 50_000

# How long one publish waits for its acknowledgement before it is sent again: short at first, since
# a request that reached a stream leader just as it stepped down (a node draining in lame duck mode)
# is never answered, and longer after each timeout, for a cluster that is merely slow. A retry is
# safe: it is checked against the subject's last sequence.
FIRST_ATTEMPT_TIMEOUT = 0.25
LAST_ATTEMPT_TIMEOUT = 4.0

# JetStream's error code for a failed `Nats-Expected-Last-Subject-Sequence` check.
WRONG_LAST_SEQUENCE = 10071
_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


class PublishConflict(APIError):
    """Someone else wrote `subject` since this publisher last knew it; nothing was published there.

    An `APIError`, so every watcher's NATS error handling (back off, next cycle full) applies."""

    def __init__(self, subject: str) -> None:
        super().__init__(code=400, err_code=WRONG_LAST_SEQUENCE, description=f"{subject}: wrong last sequence")
        self.subject = subject

    def __str__(self) -> str:
        return f"{self.subject} was written by another publisher since we last read it; not overwritten"


class _AckInbox:
    """Pipelined JetStream publishes and their acknowledgements, on one inbox subscription of ours.

    nats-py's `publish_async` never resolves the future of a publish that JetStream refuses (its
    reply handler raises instead of failing the future), so a refused optimistic-concurrency check
    would look like a lost acknowledgement; here a refusal fails its future with the APIError."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix: str | None = None
        self._futures: dict[str, asyncio.Future[int]] = {}
        self._next = 0

    def pending(self) -> int:
        return len(self._futures)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> asyncio.Future[int]:
        """Send; the future resolves to the stream sequence JetStream stored the message at."""
        if self._prefix is None:
            prefix = self._nc.new_inbox()
            await self._nc.subscribe(f"{prefix}.*", cb=self._on_reply)
            self._prefix = prefix
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        future.add_done_callback(lambda _: self._futures.pop(token, None))
        expect = {**headers, "Nats-Expected-Stream": subjects.STATE_STREAM}
        await self._nc.publish(subject, data, reply=f"{self._prefix}.{token}", headers=expect)
        return future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.get(msg.subject.rsplit(".", 1)[-1])
        if future is None or future.done():
            return
        if (msg.headers or {}).get("Status") == "503":  # no responders: the stream has no leader right now
            future.set_exception(NoStreamResponseError())
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            future.set_exception(APIError(description=f"unreadable acknowledgement {msg.data[:60]!r}"))
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        seq = answer.get("seq") if isinstance(answer, dict) else None
        if error is not None:
            future.set_exception(
                APIError(code=error.get("code"), err_code=error.get("err_code"), description=error.get("description"))
            )
        elif isinstance(seq, int) and seq > 0:
            # Only the sequence is used: nats-py's PubAck would cost a dataclass introspection per ack.
            future.set_result(seq)
        else:
            future.set_exception(APIError(description=f"acknowledgement without a sequence {msg.data[:60]!r}"))


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


async def ensure_state_stream(nc: NATS, replicas: int | None = None, *, retry_seconds: float = 60.0) -> str:
    """Create the state stream if it is missing, with `replicas` (1 if not given). Given, an existing
    stream's replica count is changed to it (JetStream moves the data); not given, it is left alone.
    A stream with room for fewer consumers than MAX_CONSUMERS gets that room. Returns the stream's
    creation time: the name of this incarnation of it (epoch markers, reconciler/stateplane.py).

    A cluster that has only just started (no meta leader yet) or is electing one answers late or
    not at all; that is retried for up to `retry_seconds`, so a watcher started with its NATS
    cluster waits for it instead of exiting. A NATS without JetStream fails at once. A create that
    timed out may still have happened: the next attempt reads the stream first."""
    started = time.monotonic()
    backoff = Backoff(0.25, 2.0)
    while True:
        try:
            return await _ensure_state_stream_once(nc, replicas)
        except _TRANSIENT as e:
            waited = time.monotonic() - started
            delay = backoff.next_delay()
            if _no_jetstream(e) or waited + delay > retry_seconds:
                raise
            log.warning(
                "JetStream stream %s: %s after %.1fs; JetStream not ready yet? retrying for up to %.0fs",
                subjects.STATE_STREAM,
                str(e) or type(e).__name__,
                waited,
                retry_seconds,
            )
            await asyncio.sleep(delay)


def _no_jetstream(e: Exception) -> bool:
    """Nobody serves the JetStream API here (nats-py reports no responders as a 503 without a code):
    this NATS has no JetStream, which waiting does not change. A cluster without a meta leader yet
    answers with a coded 503 or not at all."""
    return isinstance(e, ServiceUnavailableError) and e.code is None


async def _ensure_state_stream_once(nc: NATS, replicas: int | None) -> str:
    js = nc.jetstream()
    try:
        info = await js.stream_info(subjects.STATE_STREAM)
    except NotFoundError:
        await js.add_stream(state_stream_config(replicas or 1))
        log.info("created JetStream stream %s with %d replica(s)", subjects.STATE_STREAM, replicas or 1)
        return _created(await js.stream_info(subjects.STATE_STREAM))
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
    return _created(info)


def _created(info: StreamInfo) -> str:
    return info.created.isoformat() if info.created is not None else ""


class StatePublisher:
    """Publishes messages to the state stream, skipping ones identical to the last on their subject.

    `source` names the publisher in its epoch marker (`bbs`, `policy`, `cc`, `publish-<cell>`);
    `cell_id`, for an operator's cell state document, says its containers are that cell's only."""

    def __init__(
        self,
        nc: NATS,
        source: str,
        *,
        cell_id: str | None = None,
        replicas: int | None = None,
        window: int = 256,
        ack_timeout: float = 5.0,
        publish_retry_seconds: float = 30.0,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._acks = _AckInbox(nc)
        self.source = source
        self._cell_id = cell_id
        self._replicas = replicas
        self._window = window
        self._ack_timeout = ack_timeout
        self._retry_seconds = publish_retry_seconds
        self._last: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._uncertain: set[str] = set()  # subjects whose last publish may or may not have landed
        self._complete: set[StateKind] = set()
        self._stream_created: str | None = None

    async def _ensure(self) -> None:
        if self._stream_created is None:
            self._stream_created = await ensure_state_stream(self._nc, self._replicas)

    async def load_published(self, subject_filter: str = subjects.STATE_WILDCARD) -> dict[str, bytes]:
        """Read back what the stream holds now (last message per subject), so a restarted
        watcher publishes only differences and can publish deletions for objects that vanished."""
        await self._ensure()
        found: dict[str, tuple[bytes, int]] = {}
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
                    found[msg.subject] = (msg.data, msg.metadata.sequence.stream)
                    if msg.metadata.num_pending == 0:
                        break
        finally:
            await sub.unsubscribe()
        for subject, (data, seq) in found.items():
            self._last[subject] = _content_key(data)
            self._seq[subject] = seq
        return {subject: data for subject, (data, _) in found.items()}

    async def publish(self, message: Message) -> bool:
        """Publish `message` unless its content equals the last one on its subject. Returns whether
        it was sent; raises PublishConflict when another publisher wrote the subject meanwhile."""
        await self._ensure()
        subject = message.subject()
        if message.observed_at is None:  # the callers publish what they have just observed
            message = message.model_copy(update={"observed_at": time.time()})
        data = message.model_dump_json().encode()
        key = _content_key(data)
        await self._reread(self._uncertain & {subject})
        if self._last.get(subject) == key:
            return False
        seq = await self._publish_acknowledged(subject, data, key)
        self._last[subject] = key
        self._seq[subject] = seq
        log.debug("published %s at stream sequence %d", subject, seq)
        return True

    async def _publish_acknowledged(self, subject: str, data: bytes, key: str) -> int:
        """Publish until the stream acknowledges (retrying a failover for `publish_retry_seconds`);
        the stream sequence of the message. A retry whose first attempt did land meets its own
        message on the subject: that counts as published, anything else as a conflict."""
        started = time.monotonic()
        delay = 0.05
        attempt_timeout = FIRST_ATTEMPT_TIMEOUT
        retries = 0
        while True:
            try:
                ack = await self._js.publish(
                    subject, data, stream=subjects.STATE_STREAM, headers=self._expect(subject), timeout=attempt_timeout
                )
            except _TRANSIENT as e:
                self._uncertain.add(subject)
                if isinstance(e, nats.errors.TimeoutError):
                    attempt_timeout = min(attempt_timeout * 2, LAST_ATTEMPT_TIMEOUT)
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
            except APIError as e:
                if e.err_code == WRONG_LAST_SEQUENCE and subject in self._uncertain:
                    await self._reread({subject})
                    if self._last.get(subject) == key:  # our own earlier attempt landed
                        return self._seq[subject]
                raise await self._conflict(subject, e) from None
            self._uncertain.discard(subject)
            if retries:
                log.info("published %s after %d retries, %.1fs", subject, retries, time.monotonic() - started)
            return ack.seq

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
        messages = list(messages)
        await self._reread(self._uncertain & {m.subject() for m in messages})
        for message in messages:
            subject = message.subject()
            stamped = message if message.observed_at is not None else message.model_copy(update={"observed_at": now})
            data = stamped.model_dump_json().encode()
            key = _content_key(data)
            batch.pop(subject, None)  # a later message on the same subject replaces an earlier one
            if self._last.get(subject) != key:
                batch[subject] = (message, data, key)
        sent: list[tuple[M, str, str, asyncio.Future[int]]] = []
        failure: BaseException | None = None
        oldest = 0
        try:
            for subject, (message, data, key) in batch.items():
                # A full window waits for its oldest ack (JetStream acks in order), here rather than
                # in nats-py, whose timed wait costs a task per message.
                while self._acks.pending() >= self._window:
                    while sent[oldest][3].done():
                        oldest += 1
                    _, late = await asyncio.wait([sent[oldest][3]], timeout=self._ack_timeout)
                    if late:
                        raise TimeoutError(f"no acknowledgement within {self._ack_timeout}s")
                ack = await self._acks.publish(subject, data, self._expect(subject))
                sent.append((message, subject, key, ack))
        except Exception as e:  # the connection, or a window that stays full: settle what is out first
            failure = e
        settled = await self._settle([ack for _, _, _, ack in sent])
        for i, ((_, subject, key, ack), outcome) in enumerate(zip(sent, settled)):
            if outcome is None:
                self._last[subject] = key
                self._seq[subject] = ack.result()
            elif isinstance(outcome, APIError):
                settled[i] = await self._conflict(subject, outcome)
            else:  # no acknowledgement: the message may still land (a reconnect sends what was buffered)
                self._uncertain.add(subject)
        failure = failure or next((outcome for outcome in settled if outcome is not None), None)
        if failure is not None:
            raise failure
        log.debug("published %d messages", len(sent))
        return [message for message, _, _, _ in sent]

    async def _settle(self, acks: list[asyncio.Future[int]]) -> list[BaseException | None]:
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

    async def mark_complete(self, kinds: Iterable[StateKind]) -> None:
        """Say (in this publisher's epoch marker) that every object of `kinds` is published."""
        await self._ensure()
        self._complete.update(kinds)
        assert self._stream_created is not None
        marker = EpochMessage(
            source=self.source,
            stream_created=self._stream_created,
            complete=sorted(self._complete),
            cell_id=self._cell_id,
        )
        await self.publish(marker)

    async def state_plane_lost(self) -> bool:
        """Whether the stream was deleted, recreated or purged since this publisher last knew it.
        Then everything it believed published is forgotten (the stream is recreated if it is gone),
        and the caller must publish its complete view again."""
        marker = subjects.epoch(self.source)
        try:
            info = await self._js.stream_info(subjects.STATE_STREAM, subjects_filter=marker)
        except NotFoundError:
            self._forget("the state stream is gone")
            await self._ensure()
            return True
        created = info.created.isoformat() if info.created is not None else ""
        if self._stream_created is not None and created != self._stream_created:
            self._forget("the state stream was recreated")
            self._stream_created = created
            return True
        if marker in self._seq and marker not in (info.state.subjects or {}):
            self._forget("the state stream was purged")
            return True
        return False

    def published_subjects(self, prefix: str) -> set[str]:
        return {s for s in self._last if s.startswith(prefix)}

    def _expect(self, subject: str) -> dict[str, str]:
        """The optimistic-concurrency header: the subject's last stream sequence as we know it (0: none)."""
        return {_EXPECTED_LAST_SUBJECT_SEQUENCE: str(self._seq.get(subject, 0))}

    async def _conflict(self, subject: str, error: APIError) -> APIError:
        """`error` itself, or (another writer's message on `subject`) a PublishConflict, once the
        subject's current last message is known again: a retry is then a decision on it."""
        if error.err_code != WRONG_LAST_SEQUENCE:
            return error
        await self._reread({subject})
        log.warning("not publishing %s: another publisher wrote it since we last read it", subject)
        return PublishConflict(subject)

    async def _reread(self, subjects_: set[str]) -> None:
        """Learn what the stream holds now on these subjects (their last message and its sequence)."""
        for subject in sorted(subjects_):
            try:
                msg = await self._js.get_last_msg(subjects.STATE_STREAM, subject)
            except NotFoundError:  # nothing there (never landed, or purged)
                self._last.pop(subject, None)
                self._seq.pop(subject, None)
            else:
                if msg.data is not None and msg.seq is not None:
                    self._last[subject] = _content_key(msg.data)
                    self._seq[subject] = msg.seq
            self._uncertain.discard(subject)

    def _forget(self, why: str) -> None:
        log.warning("%s: %s will publish its complete view again", why, self.source)
        self._last.clear()
        self._seq.clear()
        self._uncertain.clear()
        self._complete.clear()
        self._stream_created = None


_STAMPS_FIRST = re.compile(rb'\{"version":(?:null|\d+),"observed_at":(?:null|[-+.eE0-9]+),')


def _content_key(data: bytes) -> str:
    """The message without its version and observation time: what decides whether anything changed.

    Our messages serialize with those two first (`{"version":N,"observed_at":T,...`, either null), so cutting
    them off is the key, at no cost per message; anything else is compared as canonical JSON."""
    head = _STAMPS_FIRST.match(data)
    if head is not None:
        return "{" + data[head.end() :].decode()
    try:
        doc = json.loads(data)
    except ValueError:  # not ours, or damaged: it differs from anything we would publish
        return repr(data)
    if not isinstance(doc, dict):
        return repr(data)
    doc.pop("version", None)
    doc.pop("observed_at", None)
    return json.dumps(doc, sort_keys=True)
