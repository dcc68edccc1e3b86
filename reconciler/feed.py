"""The reconciler's view of NATS: replay the state stream, follow it, and resume where it stopped.

Concurrency: `StateFeed.run()` is one task. It reads through one `StateConsumer` per filter of
this cell (events/permissions.py: its containers and config, the foundation-wide apps, security
groups, c2c and egress policies, and the publishers' epoch markers). Every message is validated
(events/messages.py), checked as the kernel will need it (reconciler/admission.py) and handed to
the `FeedSink` with its stream sequence, the order every reader agrees on; the sink only updates
the store.

- **Full replay**, at start and whenever the stream says it is needed: `replay_started`, then
  every consumer delivers the last message of each of its subjects, and `replay_done` once all of
  them have delivered what the stream held. A full replay other than the first waits a random part
  of `replay_jitter_seconds`, so that a thousand cells that lost the stream do not read it at once.
- **Resume**: a consumer that was interrupted (a message lost on the way; heartbeats stopped because
  the server that held it went away) or, after a reconnect, every consumer, is reopened from the
  stream sequence after the last one it delivered, without a replay. The stream is first checked:
  another stream under the same name (created at another time) means a full replay, and so does one
  that no longer reaches that sequence (rewound) for `REWIND_CONFIRM_SECONDS` (a leader elected a
  moment ago may answer with the end it has applied so far). Messages gone from before the
  stream's first one were superseded by later ones of the same objects, which the resume delivers.
- **Purges**: a purge removes messages and deletes nothing, so consumers carry on unaware. Every
  `check_seconds` the feed asks which epoch markers the stream holds: one it delivered that is gone
  means the stream was purged, and a full replay follows, which the sink compares with what it
  knew (reconciler/stateplane.py: the last good state is kept, and said to be kept).
- The feed never creates the stream (the watchers and `cfnft publish` do): while it is missing,
  the feed waits, retrying with capped, jittered backoff, and the cell keeps enforcing what it knew.

A message that fails validation is logged with its subject and reason and refused: the store
keeps the last good version of that object, and everything else keeps flowing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, NotFoundError
from pydantic import TypeAdapter, ValidationError

from events import subjects
from events.messages import EpochMessage, Message, SecurityGroupMessage, StateMessage
from events.models import SecurityGroup
from events.permissions import cell_consumers
from events.poller import Backoff
from events.problems import Problem, StateError, problems_from
from events.tasks import stop_if_cancelled, wait_event
from reconciler.admission import Limits, check_message
from reconciler.consumer import API_TIMEOUT, StateConsumer, StreamMissing

log = logging.getLogger(__name__)

_parse: TypeAdapter[Message] = TypeAdapter(StateMessage)


class FeedSink(Protocol):
    """Where the feed delivers (synchronously, cheaply: the store is updated, nothing else)."""

    def replay_started(self) -> None: ...

    def message(self, msg: Message, seq: int, problems: list[str]) -> None:
        """A usable message stored at stream sequence `seq`; `problems`: entries it was used without."""

    def refused(self, subject: str, problems: list[str]) -> None:
        """A message on `subject` that cannot be used at all."""

    def replay_done(self, stream_created: str) -> None:
        """Everything the stream (created at `stream_created`) held at subscription time was delivered."""

    def resumed(self) -> None:
        """A consumer continued where it stopped, without a replay."""

    def stream_missing(self, reason: str) -> None: ...


def parse_state_message(subject: str, data: bytes) -> tuple[Message, list[Problem]]:
    """Validate one state message and check that it sits on its own subject.

    A security group with some bad rules is kept without them (the problems are returned), so
    that one bad rule never takes away a group's good rules; any other invalid message raises."""
    try:
        msg: Message = _parse.validate_json(data)
        problems: list[Problem] = []
    except ValidationError:
        msg, problems = _lenient_security_group(data)
    if msg.subject() != subject:
        raise ValueError(f"message for {msg.subject()} arrived on {subject}")
    return msg, problems


def _lenient_security_group(data: bytes) -> tuple[Message, list[Problem]]:
    raw = json.loads(data)
    if not isinstance(raw, dict) or raw.get("kind") != "asg" or not isinstance(raw.get("security_group"), dict):
        return _parse.validate_json(data), []  # raises the strict error again
    group, problems = SecurityGroup.parse_lenient(raw["security_group"], ("security_group",))
    msg = SecurityGroupMessage.model_validate({**raw, "security_group": group})
    return msg, problems


class StreamMoved(Exception):
    """The stream is not the one a resume would continue: it was recreated, rewound or purged."""


class StreamBehind(Exception):
    """The stream's info ends before where a consumer was: rewound, or (during a failover) told by
    a leader that has not applied all it holds yet. Asked again before it counts as rewound."""


# How long the stream must keep ending before a consumer's position before it counts as rewound
# (restored from a backup, or its tail lost with a whole cluster) rather than led by a server still
# catching up: a new leader applies its log within seconds of an election. Meanwhile the cell keeps
# enforcing what it knows; a real rewind is rare enough that a few seconds more do not matter.
REWIND_CONFIRM_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class StreamMark:
    """Which stream a cell has been reading (its creation time) and how far it reaches."""

    created: str
    last_seq: int
    markers: frozenset[str] = frozenset()  # the epoch marker subjects it holds, when asked for


async def stream_mark(nc: NATS, *, with_markers: bool = False) -> StreamMark:
    """The state stream's identity and extent; StreamMissing if there is none."""
    js = nc.jetstream(timeout=API_TIMEOUT)
    try:
        if with_markers:
            info = await js.stream_info(subjects.STATE_STREAM, subjects_filter=subjects.EPOCHS)
        else:
            info = await js.stream_info(subjects.STATE_STREAM)
    except NotFoundError:
        raise StreamMissing(f"the state stream {subjects.STATE_STREAM} does not exist") from None
    created = info.created.isoformat() if info.created is not None else ""
    return StreamMark(created, info.state.last_seq, frozenset(info.state.subjects or {}))


class StateFeed:
    def __init__(
        self,
        nc: NATS,
        cell_id: str,
        sink: FeedSink,
        limits: Limits,
        *,
        heartbeat_seconds: float = 1.0,
        replay_jitter_seconds: float = 10.0,
        check_seconds: float = 30.0,
        retry_max_seconds: float = 10.0,
    ) -> None:
        self._nc = nc
        self._sink = sink
        self._limits = limits
        self._jitter = replay_jitter_seconds
        self._check_seconds = check_seconds
        self._backoff = Backoff(0.2, retry_max_seconds)
        self.consumers = [
            StateConsumer(nc, spec, self._deliver, self._interrupted, heartbeat_seconds=heartbeat_seconds)
            for spec in cell_consumers(cell_id)
        ]
        self._needs_replay = True
        self._to_resume: set[StateConsumer] = set()
        self._wake = asyncio.Event()
        self._mark: StreamMark | None = None
        self._markers_seen: set[str] = set()
        self._announce: asyncio.Task[None] | None = None
        self._last_problem = ""
        self._replays = 0
        self._behind_since: float | None = None

    def reconnected(self) -> None:
        """The connection came back, perhaps to another server: the one that held the consumers may
        be gone, and waiting for their heartbeats to tell costs seconds. Resume every consumer."""
        for consumer in self.consumers:
            self._interrupted(consumer, "reconnected to NATS")

    def request_replay(self) -> None:
        """Read the stream whole again (a publisher has just published everything it knows)."""
        self._needs_replay = True
        self._wake.set()

    def _interrupted(self, consumer: StateConsumer, reason: str) -> None:
        log.info("consumer %s: %s; resuming after stream sequence %d", consumer.name, reason, consumer.position)
        self._to_resume.add(consumer)
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                stop_if_cancelled()
                problem = await self._step()
                if problem is None:
                    continue
                delay = self._backoff.next_delay()
                if problem != self._last_problem:
                    log.warning("%s; retrying in %.1fs", problem, delay)
                    self._last_problem = problem
                await wait_event(self._wake, delay)
        finally:
            if self._announce is not None:
                self._announce.cancel()
            for consumer in self.consumers:
                await consumer.close()

    async def _step(self) -> str | None:
        """One replay, resume or stream check; the problem to retry after, or None."""
        self._wake.clear()
        try:
            if self._needs_replay:
                await self._replay()
            elif self._to_resume:
                await self._resume()
            else:
                if not await wait_event(self._wake, self._check_seconds):
                    await self._check_stream()
                return None
            self._backoff.reset()
            self._last_problem = ""
            self._behind_since = None
            return None
        except StreamMoved as e:
            log.warning("%s: replaying the whole state stream", e)
            self._needs_replay = True
            self._behind_since = None
            return None
        except StreamBehind as e:
            now = time.monotonic()
            if self._behind_since is None:
                self._behind_since = now
            if now - self._behind_since >= REWIND_CONFIRM_SECONDS:
                log.warning("%s for %.0fs: the stream was rewound; replaying it whole", e, now - self._behind_since)
                self._needs_replay = True
                self._behind_since = None
                return None
            return f"{e}; asking again (a leader still catching up, or a rewound stream)"
        except StreamMissing as e:
            self._needs_replay = True
            self._sink.stream_missing(str(e))
            return f"{e}; waiting for it (enforcing the last known state)"
        except (nats.errors.Error, APIError, asyncio.TimeoutError) as e:
            return f"JetStream: {e or type(e).__name__}"
        except Exception as e:  # a bug must not end the feed: say so, with the traceback, and retry
            log.exception("state feed failed unexpectedly")
            return f"unexpected {e!r}"

    async def _replay(self) -> None:
        if self._replays:
            delay = random.uniform(0, self._jitter)
            log.info("full replay of the state stream in %.1fs (jittered)", delay)
            await asyncio.sleep(delay)
        mark = await stream_mark(self._nc)
        if self._announce is not None:
            self._announce.cancel()
        self._to_resume.clear()
        self._markers_seen = set()
        self._needs_replay = False  # a request from here on asks for another replay
        self._sink.replay_started()
        try:
            for consumer in self.consumers:
                await consumer.open()
        except BaseException:
            self._needs_replay = True
            raise
        self._mark = mark
        self._replays += 1
        self._announce = asyncio.create_task(self._announce_in_sync(mark.created), name="feed-in-sync")

    async def _announce_in_sync(self, created: str) -> None:
        await asyncio.gather(*(c.drained.wait() for c in self.consumers))
        log.info("state replay complete")
        self._sink.replay_done(created)

    async def _resume(self) -> None:
        mark = await stream_mark(self._nc)
        if self._mark is None or mark.created != self._mark.created:
            raise StreamMoved(f"the state stream was recreated (created {mark.created})")
        for consumer in list(self._to_resume):
            if mark.last_seq < consumer.position:
                raise StreamBehind(f"the state stream ends at {mark.last_seq}, before {consumer.position}")
            await consumer.open(resume_after=consumer.position)
            self._to_resume.discard(consumer)
            self._sink.resumed()
            log.info("consumer %s resumed after stream sequence %d", consumer.name, consumer.position)

    async def _check_stream(self) -> None:
        """Whether the stream is still the one being read, and nothing of it was purged."""
        mark = await stream_mark(self._nc, with_markers=True)
        if self._mark is not None and mark.created != self._mark.created:
            raise StreamMoved(f"the state stream was recreated (created {mark.created})")
        gone = self._markers_seen - mark.markers
        if gone:
            raise StreamMoved(f"the state stream was purged ({', '.join(sorted(gone))} gone)")

    def _deliver(self, m: Msg) -> None:
        try:
            self._take(m)
        except Exception:  # one message must never stop its consumer
            log.exception("could not take the message on %s", m.subject, extra={"subject": m.subject})

    def _take(self, m: Msg) -> None:
        subject = m.subject
        try:
            msg, parse_problems = parse_state_message(subject, m.data)
        except (ValidationError, StateError, ValueError) as e:
            reason = _one_line(e)
            log.error("refusing the message on %s: %s", subject, reason, extra={"subject": subject})
            self._sink.refused(subject, [reason])
            return
        checked = check_message(msg, self._limits)
        problems = [str(p) for p in parse_problems] + checked.problems
        if checked.message is None:
            log.error("refusing the message on %s: %s", subject, "; ".join(problems), extra={"subject": subject})
            self._sink.refused(subject, problems)
            return
        for problem in problems:
            log.error("message on %s: skipped %s", subject, problem, extra={"subject": subject})
        if isinstance(msg, EpochMessage):
            self._markers_seen.add(subject)
        self._sink.message(checked.message, m.metadata.sequence.stream, problems)


def _one_line(e: Exception) -> str:
    if isinstance(e, StateError):
        return e.one_line()
    if isinstance(e, ValidationError):
        problems = problems_from(e)
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{problems[0]}{more}"
    return str(e)
