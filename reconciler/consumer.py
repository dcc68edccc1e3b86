"""One of a cell's JetStream consumers of the state stream: ordered, and resumable where it stopped.

A cell may create consumers only under its own fixed names with their filters in the API subject
(events/permissions.py), which nats-py's ordered consumer does not do (it creates unnamed ones, and
recreates them under the same request). So this module keeps the consumer itself:

- `open(resume_after=None)` creates a push consumer that delivers the last message of every subject
  (a full replay); `open(resume_after=n)` one that starts at stream sequence n + 1. The consumer is
  in memory, one replica, with flow control and idle heartbeats, on a fresh inbox of the cell's own.
- Every message must carry the next consumer sequence. A gap (a message lost on the way, e.g.
  while the client reconnected), a heartbeat saying more was sent than arrived, or heartbeats that
  stop while connected (the server that held the consumer is gone) interrupt the consumer; the
  owner then reopens it after `position`, the last stream sequence delivered (or, per heartbeat,
  scanned past with nothing for this filter). While the client is disconnected the watch pauses.
- A consumer cannot be deleted while the server that holds it is down, nor replaced under the same
  name with another start. Each filter therefore has two names: a replacement goes into the other
  one, and the old consumer is deleted in the background once the cluster lets it go.

`drained` is set once what the stream held for this consumer when it was opened has been delivered.
Delivery (`deliver`) is synchronous and cheap: it only updates the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from events import subjects
from events.permissions import CellConsumer, consumer_create_subject

log = logging.getLogger(__name__)

# Short: during a failover a request to a server that is gone is better retried than waited on.
API_TIMEOUT = 1.0
# Heartbeats missed before the consumer counts as lost.
MISSED_HEARTBEATS = 3
_STREAM_NOT_FOUND = 10059


class StreamMissing(Exception):
    """The state stream does not exist (not created yet, or deleted)."""


class StateConsumer:
    def __init__(
        self,
        nc: NATS,
        spec: CellConsumer,
        deliver: Callable[[Msg], None],
        on_interrupted: Callable[[StateConsumer, str], None],
        *,
        heartbeat_seconds: float,
    ) -> None:
        self._nc = nc
        self.spec = spec
        self._deliver = deliver
        self._on_interrupted = on_interrupted
        self._heartbeat = heartbeat_seconds
        self.position = 0  # last stream sequence delivered, or scanned past with nothing for this filter
        self.drained = asyncio.Event()
        self._consumer_seq = 0
        self._slot = 0
        self._held: set[str] = set()  # consumer names of ours that may still exist on the server
        self._sub: Subscription | None = None
        self._last_activity = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self._deletions: dict[str, asyncio.Task[None]] = {}
        self._interrupted = False
        self._attempt = 0  # deliveries to the inbox of an earlier attempt are ignored

    @property
    def name(self) -> str:
        return self.spec.names[self._slot]

    # ------------------------------------------------------------------ lifecycle

    async def open(self, resume_after: int | None = None) -> None:
        """Create the consumer: a full replay (`resume_after` None), or from stream sequence
        `resume_after` + 1 (or the stream's first message, if that is later). Raises StreamMissing,
        or a NATS error (the caller retries)."""
        await self._detach()
        self.drained.clear()
        self._interrupted = False
        if resume_after is None:
            self.position = 0
            policy, start = DeliverPolicy.LAST_PER_SUBJECT, None
        else:
            policy, start = DeliverPolicy.BY_START_SEQUENCE, resume_after + 1
        # A start before the stream's first message begins at that message: what lay between was
        # superseded by newer messages of the same objects, which follow, or purged, which deletes nothing.
        try:
            info = await self._create(policy, start)
        except BaseException:
            await self._detach()  # nothing half-made keeps listening; the caller retries
            raise
        if info.num_pending == 0:
            self.drained.set()
        self._last_activity = time.monotonic()
        self._watchdog = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def close(self) -> None:
        """Stop delivering. The server removes a consumer nobody listens to within seconds, so a
        stopping reconciler does not wait for deletions."""
        await self._detach()
        for task in self._deletions.values():
            task.cancel()
        await asyncio.gather(*self._deletions.values(), return_exceptions=True)
        self._deletions.clear()

    async def _detach(self) -> None:
        self._attempt += 1  # whatever still arrives for the old consumer is ignored
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # the connection may be gone; the subscription with it
                await sub.unsubscribe()

    async def _create(self, policy: DeliverPolicy, start: int | None) -> ConsumerInfo:
        """Create the consumer under the current name, or under the other one if an earlier consumer
        (perhaps on a lost server) still holds it."""
        failure: Exception | None = None
        for _ in self.spec.names:
            name = self.name
            pending = self._deletions.pop(name, None)
            if pending is not None:
                pending.cancel()
            inbox = self._nc.new_inbox()
            self._attempt += 1
            self._consumer_seq = 0
            self._sub = await self._nc.subscribe(inbox, cb=self._deliveries(self._attempt))
            config = ConsumerConfig(
                name=name,
                filter_subject=self.spec.filter_subject,
                deliver_subject=inbox,
                deliver_policy=policy,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                flow_control=True,
                idle_heartbeat=self._heartbeat,
                mem_storage=True,
                num_replicas=1,
            )
            self._held.add(name)
            try:
                info = await self._request_create(config)
            except (NotFoundError, ServiceUnavailableError) as e:
                await self._detach()
                if isinstance(e, NotFoundError) and e.err_code == _STREAM_NOT_FOUND:
                    raise StreamMissing(f"the state stream {subjects.STATE_STREAM} does not exist") from None
                raise
            except (APIError, nats.errors.TimeoutError) as e:
                # Held by an earlier consumer of ours, or created without our hearing of it: use the other name.
                await self._detach()
                failure = e
                self._forget(name)
                self._slot = 1 - self._slot
                continue
            for other in self.spec.names:
                if other != name and other in self._held:
                    self._forget(other)
            return info
        assert failure is not None
        raise failure

    async def _request_create(self, config: ConsumerConfig) -> ConsumerInfo:
        """CONSUMER.CREATE with the filter in the subject (the form a cell may use) and action
        "create": nats-py's add_consumer would quietly update an existing consumer of that name,
        which keeps its own position, instead of failing."""
        assert config.name is not None and config.filter_subject is not None
        subject = consumer_create_subject(subjects.STATE_STREAM, config.name, config.filter_subject)
        request = {"stream_name": subjects.STATE_STREAM, "config": config.as_dict(), "action": "create"}
        reply = await self._nc.request(subject, json.dumps(request).encode(), timeout=API_TIMEOUT)
        answer = json.loads(reply.data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises the matching APIError subclass
        info: ConsumerInfo = ConsumerInfo.from_response(answer)
        return info

    def _forget(self, name: str) -> None:
        """Delete consumer `name` in the background, retrying until the cluster lets it go."""
        if name in self._deletions and not self._deletions[name].done():
            return
        self._deletions[name] = asyncio.create_task(self._delete(name), name=f"delete-{name}")

    async def _delete(self, name: str) -> None:
        js = self._nc.jetstream(timeout=API_TIMEOUT)
        delay = 0.5
        for _ in range(30):
            try:
                await js.delete_consumer(subjects.STATE_STREAM, name)
            except NotFoundError:
                pass
            except (APIError, nats.errors.Error, asyncio.TimeoutError) as e:
                log.debug("consumer %s not deleted yet: %s", name, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._held.discard(name)
            return

    # ------------------------------------------------------------------ deliveries

    def _deliveries(self, attempt: int) -> Callable[[Msg], Awaitable[None]]:
        async def on_delivery(msg: Msg) -> None:
            if attempt == self._attempt:
                await self._on_delivery(msg)

        return on_delivery

    async def _on_delivery(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        headers = msg.headers or {}
        if headers.get("Status") == "100":  # idle heartbeat or flow control: no message
            await self._on_control(msg, headers)
            return
        meta = msg.metadata
        if meta.sequence.consumer != self._consumer_seq + 1:
            self._interrupt(f"message {self._consumer_seq + 1} lost (got {meta.sequence.consumer})")
            return
        self._consumer_seq = meta.sequence.consumer
        self._deliver(msg)
        self.position = meta.sequence.stream
        if meta.num_pending == 0:
            self.drained.set()

    async def _on_control(self, msg: Msg, headers: dict[str, str]) -> None:
        # Flow control asks for an (empty) answer once everything before it was handled; a stalled
        # heartbeat names the flow control answer the server still waits for.
        for reply in (msg.reply, headers.get("Nats-Consumer-Stalled")):
            if reply:
                await self._nc.publish(reply, b"")
        last_consumer = headers.get("Nats-Last-Consumer")
        if last_consumer is None:
            return
        if int(last_consumer) != self._consumer_seq:
            self._interrupt(f"the server sent up to message {last_consumer}, {self._consumer_seq} arrived")
            return
        # Nothing missing: everything up to where the consumer has looked is delivered.
        self.position = max(self.position, int(headers.get("Nats-Last-Stream", 0)))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            if not self._nc.is_connected:
                # Heartbeats cannot arrive; the feed resumes every consumer after the reconnect.
                self._last_activity = time.monotonic()
                continue
            if time.monotonic() - self._last_activity > MISSED_HEARTBEATS * self._heartbeat:
                self._interrupt(f"no heartbeat for {MISSED_HEARTBEATS * self._heartbeat:.1f}s")
                return

    def _interrupt(self, reason: str) -> None:
        if self._interrupted:
            return
        self._interrupted = True
        # From here on the old consumer is not believed: a server that restores it (after a restart
        # or a failover) may deliver again from an earlier point, and its heartbeats may then name
        # the very consumer sequence this one stopped at, claiming messages it never delivered. So
        # nothing more from it moves `position`: the reopened consumer starts where this one stopped.
        self._attempt += 1
        self._on_interrupted(self, reason)
