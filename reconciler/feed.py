"""The reconciler's view of NATS: replay the state stream, then follow it.

Concurrency: `StateFeed.run()` is one task. It opens one ordered JetStream consumer per
filter (this cell's containers and config, and the foundation-wide apps, security groups,
c2c and egress policies), each delivering the last message per subject first. Every message
is validated and handed to `on_message` (synchronous, cheap: it only updates the store).
When every consumer has drained what was pending at subscription time, `on_in_sync` is
called once per replay. After a reconnect the feed replays again from scratch, so updates
published while this cell was cut off are never missed; the store's version check makes
the replay of unchanged objects a no-op.

A message that fails validation is logged with its subject and reason and skipped: the
store keeps the last good version of that object, and everything else keeps flowing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from pydantic import TypeAdapter, ValidationError

from events import subjects
from events.messages import Message, SecurityGroupMessage, StateMessage
from events.models import SecurityGroup
from events.problems import Problem, StateError, problems_from
from events.publisher import ensure_state_stream

log = logging.getLogger(__name__)

_parse: TypeAdapter[Message] = TypeAdapter(StateMessage)


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


def filters(cell_id: str) -> list[str]:
    return [
        subjects.containers_of_cell(cell_id),
        subjects.cell_config(cell_id),
        f"{subjects.STATE_PREFIX}.app.*",
        f"{subjects.STATE_PREFIX}.asg.*",
        f"{subjects.STATE_PREFIX}.c2c.*",
        subjects.EGRESS_POLICIES,
    ]


class StateFeed:
    def __init__(
        self,
        nc: NATS,
        cell_id: str,
        on_message: Callable[[Message], None],
        on_in_sync: Callable[[], None],
        on_bad_message: Callable[[str, str], None] = lambda subject, reason: None,
    ) -> None:
        self._nc = nc
        self._cell_id = cell_id
        self._on_message = on_message
        self._on_in_sync = on_in_sync
        self._on_bad = on_bad_message
        self._replay = asyncio.Event()
        self._replay.set()

    def request_replay(self) -> None:
        """Start over from the stream's current content (used after a reconnect)."""
        self._replay.set()

    async def run(self) -> None:
        await ensure_state_stream(self._nc)
        subs: list[JetStreamContext.PushSubscription] = []
        try:
            while True:
                await self._replay.wait()
                self._replay.clear()
                for s in subs:
                    await _quietly_unsubscribe(s)
                subs = await self._subscribe_all()
        finally:
            for s in subs:
                await _quietly_unsubscribe(s)

    async def _subscribe_all(self) -> list[JetStreamContext.PushSubscription]:
        js = self._nc.jetstream()
        waiting = set(filters(self._cell_id))
        replay_done = False

        def settle(flt: str) -> None:
            nonlocal replay_done
            waiting.discard(flt)
            if not waiting and not replay_done:
                replay_done = True
                log.info("state replay complete")
                self._on_in_sync()

        def handler_for(flt: str) -> Callable[[Msg], Awaitable[None]]:
            async def handle(m: Msg) -> None:
                try:
                    msg, problems = parse_state_message(m.subject, m.data)
                except (ValidationError, StateError, ValueError) as e:
                    reason = _one_line(e)
                    log.error("skipping bad message on %s: %s", m.subject, reason, extra={"subject": m.subject})
                    self._on_bad(m.subject, reason)
                else:
                    for problem in problems:
                        log.error("message on %s: skipped %s", m.subject, problem, extra={"subject": m.subject})
                        self._on_bad(m.subject, str(problem))
                    self._on_message(msg)
                if flt in waiting and m.metadata.num_pending == 0:
                    settle(flt)

            return handle

        subs: list[JetStreamContext.PushSubscription] = []
        for flt in filters(self._cell_id):
            sub = await js.subscribe(
                flt,
                stream=subjects.STATE_STREAM,
                cb=handler_for(flt),
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                idle_heartbeat=5.0,
            )
            subs.append(sub)
            info = await sub.consumer_info()
            if info.num_pending == 0 and (info.delivered is None or info.delivered.consumer_seq == 0):
                # Nothing stored under this filter: it is in sync already.
                settle(flt)
        return subs


def _one_line(e: Exception) -> str:
    if isinstance(e, StateError):
        return e.one_line()
    if isinstance(e, ValidationError):
        problems = problems_from(e)
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{problems[0]}{more}"
    return str(e)


async def _quietly_unsubscribe(sub: JetStreamContext.PushSubscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception as e:  # the connection may already be gone; nothing to clean up then
        log.debug("unsubscribe failed: %s", e)
