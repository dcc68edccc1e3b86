"""Which spaces to ask the policy server about.

`/internal/security_groups` returns the global default groups plus the groups bound to the
spaces named in `space_guids`; there is no "all groups" (docs/cf-facts.md §1.3). A vxlan-policy-agent
asks for its own cell's spaces. Our watcher serves every cell, so it asks for every space that
has a container anywhere, as the BBS watcher published them (`ContainerSpaces`), or for a fixed
list (`StaticSpaces`, for tests and small setups).

A group bound only to spaces without containers is therefore not listed, and its earlier
message becomes a deletion: no container needs it. When a container appears in a new space,
`on_change` wakes the ASG loop so that space's groups are published at once.

The ASG listing must not start before the space set is complete (`ready`), or the groups of the
spaces not read yet would be published as deleted. `ContainerSpaces` is ready once it has read
every container message the stream held when it subscribed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from events import subjects
from events.messages import ContainerMessage
from events.publisher import ensure_state_stream

log = logging.getLogger(__name__)

ALL_CONTAINERS = f"{subjects.STATE_PREFIX}.container.>"


class SpaceSource(Protocol):
    """The set of space guids to list security groups for."""

    ready: asyncio.Event
    """Set once `spaces()` is complete."""
    on_change: Callable[[], None] | None
    """Called when the set changed after it was ready."""

    def spaces(self) -> frozenset[str]: ...


class StaticSpaces:
    """A fixed set of spaces (empty: global default groups only)."""

    def __init__(self, spaces: Iterable[str] = ()) -> None:
        self._spaces = frozenset(spaces)
        self.ready = asyncio.Event()
        self.ready.set()
        self.on_change: Callable[[], None] | None = None

    def spaces(self) -> frozenset[str]:
        return self._spaces


class ContainerSpaces:
    """The spaces of all containers in the state stream, kept current by an ordered consumer.

    Use as `async with ContainerSpaces(nc) as spaces: ...`. It runs beside a publisher and, if it
    is first, creates the state stream with the publisher's `replicas`.
    """

    def __init__(self, nc: NATS, *, replicas: int | None = None) -> None:
        self._nc = nc
        self._replicas = replicas
        self._space_of: dict[str, str] = {}  # container subject -> space guid
        self._current: frozenset[str] = frozenset()
        self._sub: JetStreamContext.PushSubscription | None = None
        self.ready = asyncio.Event()
        self.on_change: Callable[[], None] | None = None

    def spaces(self) -> frozenset[str]:
        return self._current

    async def __aenter__(self) -> ContainerSpaces:
        await ensure_state_stream(self._nc, self._replicas)
        js = self._nc.jetstream()
        sub = await js.subscribe(
            ALL_CONTAINERS,
            stream=subjects.STATE_STREAM,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        self._sub = sub
        info = await sub.consumer_info()
        if (info.delivered is None or info.delivered.consumer_seq == 0) and info.num_pending == 0:
            # Nothing to read: no container anywhere yet. Otherwise the callback sets ready when
            # it has handled the last message that was pending.
            self._set_ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        try:
            message = ContainerMessage.model_validate_json(msg.data)
        except ValidationError as err:
            log.warning("ignoring invalid container message on %s: %s", msg.subject, err.errors()[0]["msg"])
        else:
            if message.container is None:
                self._space_of.pop(msg.subject, None)
            else:
                self._space_of[msg.subject] = message.container.space_guid
        if msg.metadata.num_pending == 0:
            self._set_ready()
        spaces = frozenset(self._space_of.values())
        if spaces != self._current:
            self._current = spaces
            if self.ready.is_set() and self.on_change is not None:
                self.on_change()

    def _set_ready(self) -> None:
        if not self.ready.is_set():
            self._current = frozenset(self._space_of.values())
            self.ready.set()
            log.info("container state read: %d space(s) have containers", len(self._current))
