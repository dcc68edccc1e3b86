"""Helpers for tests that run watchers against the CF simulators: a NATS state view and waiting.
(Certificates come from lab/pki.py.)

`StateView` is what a reconciler sees: an ordered JetStream consumer on the state stream, last
message per subject first and then every new one. It keeps the current state per subject and the
full history, so a test can wait for an outcome and also check that nothing bad was published
on the way (e.g. no deletion during an outage).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from events import subjects
from events.publisher import ensure_state_stream

_EPOCH_PREFIX = subjects.epoch("x")[:-1]

WAIT = 15.0
"""Upper bound for an expected outcome to show up; only reached when a test fails."""


class StateView:
    """The state stream as a subscriber sees it. `state[subject]` is the decoded last message,
    `history` every message received in order; the publishers' epoch markers are kept apart, in
    `markers` (by subject), since they are statements about the state rather than objects of it."""

    def __init__(self, nc: NATS, subject_filter: str = subjects.STATE_WILDCARD) -> None:
        self._nc = nc
        self._filter = subject_filter
        self.state: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[str, dict[str, Any]]] = []
        self.markers: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Condition()
        self._sub: Any = None

    async def __aenter__(self) -> StateView:
        await ensure_state_stream(self._nc)
        self._sub = await self._nc.jetstream().subscribe(
            self._filter, cb=self._on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        doc = json.loads(msg.data)
        async with self._changed:
            if msg.subject.startswith(_EPOCH_PREFIX):
                self.markers[msg.subject] = doc
                self._changed.notify_all()
                return
            self.state[msg.subject] = doc
            self.history.append((msg.subject, doc))
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[dict[str, dict[str, Any]]], bool], what: str) -> None:
        """Wait until `predicate(state)` holds; fail naming `what` (and showing the state) if it never does."""

        async def satisfied() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.state))

        try:
            await asyncio.wait_for(satisfied(), WAIT)
        except TimeoutError:
            raise AssertionError(f"never saw {what}; state is {json.dumps(self.state, indent=1)[:3000]}") from None

    def group(self, guid: str) -> dict[str, Any] | None:
        """The published security group (None if deleted); KeyError if never published."""
        return self.state[subjects.security_group(guid)]["security_group"]

    def c2c(self, app_guid: str) -> list[dict[str, Any]]:
        return self.state[subjects.c2c_policies(app_guid)]["policies"]


def shape(value: Any) -> Any:
    """The structure of a JSON value without its values (the first item stands for a list's items),
    to compare a simulator's output with a recorded payload."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds (checked every 10 ms), failing with `what` after WAIT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never saw {what}")
        await asyncio.sleep(0.01)
