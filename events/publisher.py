"""Publishing whole-state messages into the JetStream state stream.

`StatePublisher` owns the stream definition (created on first use, idempotently) and
suppresses messages whose content equals what it last published on the same subject, so a
watcher can republish its whole view every cycle and NATS only sees changes. The version is
not part of that comparison: a re-list that finds nothing new publishes nothing.
"""

from __future__ import annotations

import json
import logging
import time

from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from events import subjects
from events.messages import Message

log = logging.getLogger(__name__)


def state_stream_config(replicas: int = 1) -> StreamConfig:
    """The stream that holds the current state: one message kept per subject."""
    return StreamConfig(
        name=subjects.STATE_STREAM,
        subjects=[subjects.STATE_WILDCARD],
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=replicas,
        description="cfnft desired state: last whole-state message per object",
    )


async def ensure_state_stream(nc: NATS, replicas: int = 1) -> None:
    js = nc.jetstream()
    try:
        await js.stream_info(subjects.STATE_STREAM)
    except NotFoundError:
        await js.add_stream(state_stream_config(replicas))
        log.info("created JetStream stream %s", subjects.STATE_STREAM)


class StatePublisher:
    """Publishes messages to the state stream, skipping ones identical to the last on their subject."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._last: dict[str, str] = {}
        self._ready = False

    async def _ensure(self) -> None:
        if not self._ready:
            await ensure_state_stream(self._nc)
            self._ready = True

    async def load_published(self, subject_filter: str = subjects.STATE_WILDCARD) -> dict[str, bytes]:
        """Read back what the stream holds now (last message per subject), so a restarted
        watcher publishes only differences and can publish deletions for objects that vanished."""
        await self._ensure()
        found: dict[str, bytes] = {}
        sub = await self._js.subscribe(
            subject_filter, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
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
        await self._js.publish(subject, data, stream=subjects.STATE_STREAM)
        self._last[subject] = key
        log.debug("published %s version %d", subject, message.version)
        return True

    def published_subjects(self, prefix: str) -> set[str]:
        return {s for s in self._last if s.startswith(prefix)}


def _content_key(data: bytes) -> str:
    """The message without its version and observation time: what decides whether anything changed."""
    doc = json.loads(data)
    doc.pop("version", None)
    doc.pop("observed_at", None)
    return json.dumps(doc, sort_keys=True)
