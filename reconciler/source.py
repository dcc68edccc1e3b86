"""The reconciler's NATS side: the connection, the request subjects it answers, and the state feed.

`NatsSource.run()` connects (retrying for as long as it takes), subscribes to the resync and
status subjects and the operators' requests, and runs the state feed (reconciler/feed.py) into
the intake. A reconnect resumes the feed where it was. NATS trouble never ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from events import subjects
from events.connect import connect
from events.messages import ResyncRequest
from events.permissions import Role, inbox_prefix
from events.poller import Backoff
from reconciler.config import ReconcilerConfig
from reconciler.feed import StateFeed
from reconciler.intake import StateIntake
from reconciler.metrics import ReconcilerMetrics
from reconciler.operator import serve_operator_requests

if TYPE_CHECKING:
    from reconciler.daemon import Reconciler

log = logging.getLogger(__name__)


class NatsSource:
    def __init__(
        self,
        config: ReconcilerConfig,
        intake: StateIntake,
        metrics: ReconcilerMetrics,
        on_resync: Callable[[str], None],
        status: Callable[[], dict[str, object]],
    ) -> None:
        self.config = config
        self._intake = intake
        self.metrics = metrics
        self._on_resync = on_resync
        self._status = status
        self.nc: NATS | None = None
        self._feed: StateFeed | None = None
        self._closing = False  # our own shutdown: a disconnect then is not news

    @property
    def feed(self) -> StateFeed | None:
        """The state feed, once connected (its consumers say how far each has read)."""
        return self._feed

    @property
    def connected(self) -> bool:
        return bool(self.nc and self.nc.is_connected)

    async def _connect(self) -> NATS:
        async def disconnected() -> None:
            self.metrics.nats_connected.set(0)
            if not self._closing:
                log.warning("NATS disconnected; enforcing the last known state")

        async def reconnected() -> None:
            self.metrics.nats_connected.set(1)
            where = self.nc.connected_url.netloc if self.nc and self.nc.connected_url else ""
            log.info("NATS reconnected to %s; resuming the state stream where it was", where)
            if self._feed is not None:
                self._feed.reconnected()

        self.nc = await connect(
            self.config.nats,
            f"cfnft-reconciler-{self.config.cell_id}",
            inbox_prefix(Role.CELL, self.config.cell_id),
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )
        self.metrics.nats_connected.set(1)
        log.info("connected to NATS %s", self.nc.connected_url.netloc if self.nc.connected_url else "")
        return self.nc

    async def run(self, reconciler: Reconciler) -> None:
        """Serve until cancelled; `reconciler` answers the operators' requests (reconciler/operator.py)."""
        nc = await self._connect()

        async def on_resync(m: Msg) -> None:
            try:
                req = ResyncRequest.model_validate_json(m.data or b"{}")
            except ValueError as e:
                log.error("bad resync request on %s: %s", m.subject, e)
                return
            self._on_resync(req.reason)

        async def on_status(m: Msg) -> None:
            try:
                await m.respond(json.dumps(self._status()).encode())
            except NatsError as e:  # the asker may be gone; the next request gets its answer
                log.warning("could not answer a status request: %s", e)

        steps: list[Callable[[], Awaitable[object]]] = [
            lambda: nc.subscribe(subjects.RESYNC_ALL, cb=on_resync),
            lambda: nc.subscribe(subjects.resync_cell(self.config.cell_id), cb=on_resync),
            lambda: nc.subscribe(subjects.status(self.config.cell_id), cb=on_status),
            lambda: serve_operator_requests(reconciler, nc),
        ]
        backoff = Backoff(0.2, self.config.retry_max_seconds)
        for step in steps:
            while True:
                try:
                    await step()
                    break
                except NatsError as e:
                    delay = backoff.next_delay()
                    log.warning("cannot subscribe to the request subjects: %s; retrying in %.1fs", e, delay)
                    await asyncio.sleep(delay)
        self._feed = StateFeed(
            nc,
            self.config.cell_id,
            self._intake,
            self.config.limits,
            heartbeat_seconds=self.config.consumer_heartbeat_seconds,
            replay_jitter_seconds=self.config.replay_jitter_seconds,
            check_seconds=self.config.state_check_seconds,
            retry_max_seconds=self.config.retry_max_seconds,
        )
        self._intake.request_replay = self._feed.request_replay
        await self._feed.run()

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            self._closing = True
            with contextlib.suppress(Exception):  # closing a connection that is already failing
                await self.nc.close()
