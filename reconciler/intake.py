"""The state intake: where every change of a cell's desired state comes in, and how far it got.

`StateIntake` is the NATS feed's sink (reconciler/feed.py `FeedSink`) and takes the CNI plugin's
registrations. Each input updates the store, tells the admitted view (reconciler/admitted.py)
which object changed and hands the keys it makes visible to the incremental compiler
(reconciler/incremental.py). Only when that touches this cell does it bump `generation` and set
`dirty`; the foundation's other changes end there. Nothing here compiles or touches the kernel.

While a pass compiles on its worker thread (`held()`), inputs wait in order and are taken in as
soon as it returns: the store never changes under a compile. A replay under way fills a store of its
own, which no compile reads, so its messages are taken in at once (unless earlier inputs still wait).

The intake also keeps how far the kernel is: `committed(generation)` (called by the apply loop
after each successful pass) resolves the CNI callers waiting in `wait_committed`, and measures
how long each change took to get there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from events.messages import EpochMessage, Message
from events.models import Container
from reconciler.admitted import AdmittedState
from reconciler.config import ReconcilerConfig
from reconciler.dropped import DroppedBoard
from reconciler.incremental import IncrementalCompiler
from reconciler.keys import Kind, StateKey, key_of
from reconciler.metrics import ReconcilerMetrics
from reconciler.realization import Realization
from reconciler.saved import SavedState
from reconciler.stateplane import StatePlane
from reconciler.store import DesiredStore

log = logging.getLogger(__name__)


class StateIntake:
    """The store, what of it is admitted, and the generations of its changes (see the module docstring)."""

    def __init__(self, config: ReconcilerConfig, metrics: ReconcilerMetrics, saved: SavedState) -> None:
        self.cell_id = config.cell_id
        self._policy = config.policy
        self.limits = config.limits
        self.metrics = metrics
        self.saved = saved
        self.store = DesiredStore(config.cell_id, config.policy)
        self.admitted = AdmittedState(self.store, config.limits)
        self.compiler = IncrementalCompiler(self.admitted)
        self.plane = StatePlane()
        self.board = DroppedBoard(metrics.dropped_objects)
        self.realization = Realization(metrics.programming_latency)
        self.dirty = asyncio.Event()  # a pass is due
        self.synced = asyncio.Event()  # the desired state is complete (NATS replay or saved state)
        self.nats_synced = False
        self.registrations_loaded = False
        self.fresh = True  # the next successful pass follows a whole new state (start, NATS replay)
        self.generation = 0
        self.committed_generation = 0
        self.converged_once = False  # a pass has succeeded since the desired state became complete
        self.last_commit_at: float | None = None
        self.request_replay: Callable[[], None] = lambda: None  # set by the NATS source
        self._replay_store: DesiredStore | None = None
        self._compiling = False
        self._deferred: list[Callable[[], None]] = []
        self._changed_at: dict[int, float] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    # ------------------------------------------------------------------ generations

    def changed(self) -> None:
        """Something this cell enforces changed: a pass is due."""
        self.generation += 1
        self._changed_at[self.generation] = time.perf_counter()
        self.metrics.pending_changes.set(self.generation - self.committed_generation)
        self.dirty.set()

    def committed(self, generation: int) -> None:
        """Everything up to `generation` is in the kernel: the apply loop's word after a successful pass."""
        now = time.perf_counter()
        for g in [g for g in self._changed_at if g <= generation]:
            self.metrics.enforce_latency.observe(now - self._changed_at.pop(g))
        self.converged_once = True
        self.committed_generation = generation
        self.realization.committed(generation)
        self.last_commit_at = time.time()
        self.metrics.pending_changes.set(self.generation - generation)
        for g, fut in self._waiters:
            if g <= generation and not fut.done():
                fut.set_result(None)

    @property
    def converged(self) -> bool:
        """The kernel holds everything the store asks for (what can be enforced of it)."""
        return self.synced.is_set() and self.converged_once and self.committed_generation == self.generation

    async def wait_committed(self, generation: int, timeout: float) -> None:
        """Wait until everything up to `generation` is committed to the kernel."""
        if self.committed_generation >= generation:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((generation, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters = [(g, f) for g, f in self._waiters if f is not fut]

    # ------------------------------------------------------------------ taking changes in

    @contextmanager
    def held(self) -> Iterator[None]:
        """While a compile runs on its thread, inputs wait; on the way out they are taken in, in order."""
        self._compiling = True
        try:
            yield
        finally:
            self._compiling = False
            deferred, self._deferred = self._deferred, []
            for change in deferred:
                change()

    @property
    def compiling(self) -> bool:
        return self._compiling

    def _take(self, change: Callable[[], None]) -> None:
        """Change the store now, or (a compile is running on its thread) right after it."""
        if self._compiling:
            self._deferred.append(change)
        else:
            change()

    def notify(self, keys: list[StateKey]) -> bool:
        """The store's objects `keys` changed (or what of them is admitted did): through the admitted
        view to the compiler; return whether any of it touches this cell."""
        touched = False
        for key in keys:
            for visible in self.admitted.changed(key):
                touched |= self.compiler.changed(visible)
        return touched

    # The feed's sink (reconciler/feed.py FeedSink).

    def replay_started(self) -> None:
        """A full replay begins: it fills a store of its own, which the live one adopts once complete."""
        self.metrics.full_replays.inc()
        self._take(self._start_replay)

    def _start_replay(self) -> None:
        self._replay_store = DesiredStore(self.cell_id, self._policy)

    def resumed(self) -> None:
        self.metrics.resumes.inc()

    def message(self, msg: Message, seq: int, problems: list[str]) -> None:
        self.metrics.messages.inc()
        if problems:
            self.metrics.bad_messages.inc()
        if problems or self.board.holds_intake():  # else there is nothing to record or to replace
            self.board.intake(msg.subject(), problems, refused=False)
        if self._compiling and self._replay_store is not None and not self._deferred:
            # A replay fills a store of its own, which no compile reads: taken in now, the messages of
            # a replay that meets the start-up pass are not held whole until it ends.
            self._take_message(msg, seq)
        else:
            self._take(lambda: self._take_message(msg, seq))

    def _take_message(self, msg: Message, seq: int) -> None:
        replaying = self._replay_store is not None
        if self._replay_store is not None:
            changed = self._replay_store.apply(msg, seq)
        else:
            if isinstance(msg, EpochMessage):
                self.plane.markers[msg.source] = msg
                if self.plane.establishes_kept(msg, self.cell_id):
                    log.info("%s published %s completely: replaying the state stream", msg.source, msg.complete)
                    self.request_replay()
            changed = self.store.apply(msg, seq)
            if changed and not isinstance(msg, EpochMessage) and self.notify([key_of(msg)]):
                self.changed()
        self.realization.received(msg, self.generation, changed=changed, replaying=replaying)

    def refused(self, subject: str, problems: list[str]) -> None:
        self.metrics.messages.inc()
        self.metrics.bad_messages.inc()
        self.board.intake(subject, problems, refused=True)

    def replay_done(self, stream_created: str) -> None:
        self._take(lambda: self._adopt_replay(stream_created))

    def _adopt_replay(self, stream_created: str) -> None:
        """The NATS replay is complete: it replaces whatever we knew before, except what it lacks."""
        replay, self._replay_store = self._replay_store, None
        if replay is None:
            return
        plane = StatePlane(stream_created, dict(replay.markers))
        plane.kept = replay.keep_from(self.store, plane.unestablished(self.cell_id))
        self.plane = plane
        # Every changed key goes to the compiler (it keeps its indexes by them), whether or not it
        # touches this cell; what did not change keeps its compiled fragments.
        self.notify(self.store.adopt(replay))
        self.metrics.state_plane_complete.set(0 if plane.degraded else 1)
        self.fresh = True
        self.nats_synced = True
        self.synced.set()
        self.changed()
        self.realization.replay_done(self.generation)
        log.info("in sync with NATS: %s", self.store.summary())
        if plane.degraded:
            log.error("%s", plane.degraded)

    def stream_missing(self, reason: str) -> None:
        self._take(lambda: self._lose_stream(reason))

    def _lose_stream(self, reason: str) -> None:
        self._replay_store = None
        self.plane.missing = reason
        self.metrics.state_plane_complete.set(0)

    # The CNI endpoint's calls.

    def register(self, container: Container) -> int:
        """A container the CNI plugin is adding; returns the generation to wait for."""
        if self.store.registered.get(container.handle) == container:
            return self.generation
        self._take(lambda: self._registration(container.handle, self.store.register(container)))
        self.changed()  # a container is always this cell's
        return self.generation

    def unregister(self, handle: str) -> int:
        if handle not in self.store.registered:
            return self.generation
        self._take(lambda: self._registration(handle, self.store.unregister(handle)))
        self.changed()
        return self.generation

    def _registration(self, handle: str, changed: bool) -> None:
        if changed:
            self.saved.save_registrations(self.store.registrations())
            self.notify([StateKey(Kind.CONTAINER, handle)])

    # ------------------------------------------------------------------ the saved state

    def load_saved(self) -> None:
        """The registrations and the last committed state on disk, for a start without NATS."""
        for c in self.saved.load_registrations(self.limits):
            self.store.register(c)
        self.registrations_loaded = True
        saved = self.saved.load_snapshot()
        if saved is not None:
            self.store.load_snapshot(saved)
            self.synced.set()
            log.info("loaded last committed state (%d containers) from %s", len(saved.containers), self.saved.dir)
        self.admitted.everything_changed()  # the compiler's first compile takes it all from there
