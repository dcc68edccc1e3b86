"""`cfnft reconcile`: drive one cell's kernel to the desired state, level-triggered.

Who awaits whom:
- `StateFeed` (NATS) and the CNI endpoint call in synchronously (`message`, `register`, ...):
  they update the store and tell the admitted view (reconciler/admitted.py: what can be enforced
  of it) and then the incremental compiler which object changed. Only if that touches this cell
  (reconciler/incremental.py: a dictionary lookup or two) do they bump `generation` and set
  `_dirty`; the foundation's other changes end there. While a pass compiles on its worker thread,
  these inputs wait in `_deferred` and are taken in, in order, as soon as it returns: the store is
  never changed under a compile.
- `_apply_loop` is the only writer of the kernel. It waits for `_dirty`, has a worker thread
  recompile what the changes touched, diff those parts against what the kernel holds and render
  the transaction (reconciler/planning.py), which it then commits. Bursts coalesce: whatever
  arrived while a pass ran is picked up by the next one. What the compiler or the kernel refuses,
  or what exceeds the element caps, is found and left out alone (reconciler/isolation.py), and the
  pass runs again without it. Kernel failures retry with capped backoff; after
  `rebuild_after_failures` the next pass replaces the whole table in one transaction; after
  `give_up_after_failures` the process exits non-zero so monit restarts it. The old rules keep
  enforcing throughout, since nothing is ever flushed outside a transaction.
- `_drift_loop` re-reads the kernel (cheaply every second, fully every `full_check_seconds`)
  and marks the state dirty when someone changed our table behind our back.
- CNI `register` callers await `wait_committed(generation)`, resolved by `_apply_loop`.

Start-up is gated (Felix's in-sync): the kernel is not written from NATS state until the
replay of the state stream is complete, and what the replay lacks a complete view of is kept
from before (reconciler/stateplane.py). If our table does not exist yet, the fail-closed
skeleton (no container known, overlay sources rejected) is installed first. The last committed
state is kept on disk (reconciler/saved.py), so a restart while NATS is unreachable still knows
every policy and can admit new containers.

The process exits only when the kernel refused `give_up_after_failures` applies in a row (one
critical log line; `run` returns with `fatal` set). NATS trouble never ends it: every NATS call
is retried (reconciler/feed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from cfnft.errors import CfnftError
from events import subjects
from events.connect import connect
from events.messages import EpochMessage, Message, ResyncRequest
from events.models import CellState, Container
from events.permissions import Role, inbox_prefix
from events.poller import Backoff
from nft import NftError, NftInterface, diff, same_structure
from nft.objects import Ruleset
from reconciler.admission import Unusable
from reconciler.admitted import AdmittedState
from reconciler.compile import TABLE, Compiler, compile_ruleset
from reconciler.config import ReconcilerConfig
from reconciler.dropped import DroppedBoard
from reconciler.explain import ExplainInputError
from reconciler.feed import StateFeed
from reconciler.flowlog import FlowLog, run_flow_log
from reconciler.incremental import IncrementalCompiler
from reconciler.isolation import Check, find_culprits
from reconciler.keys import Kind, StateKey, key_of
from reconciler.metrics import ReconcilerMetrics
from reconciler.operator import RuleMetrics, refresh_rule_metrics, serve_operator_requests
from reconciler.planning import Pass, plan, plan_pass
from reconciler.realization import Realization
from reconciler.revoke import RevokeError, may_revoke, revoke_disallowed
from reconciler.saved import SavedState
from reconciler.stateplane import StatePlane
from reconciler.store import DesiredStore
from reconciler.units import units_of, without

log = logging.getLogger(__name__)

# Passes that leave culprits out and compile again, at most, before one counts as failed.
_ISOLATION_ROUNDS = 8


class PlanError(Exception):
    """The desired state cannot be compiled, and leaving out objects does not help (a bug or a bad config)."""


class Reconciler:
    """One cell's reconciler. `runner` is an `nft.NftRunner` (or `nft.FakeNft` in tests)."""

    def __init__(
        self, config: ReconcilerConfig, runner: NftInterface, metrics: ReconcilerMetrics | None = None
    ) -> None:
        self.config = config
        self.runner = runner
        self.metrics = metrics or ReconcilerMetrics()
        self.limits = config.limits
        self.store = DesiredStore(config.cell_id, config.policy)
        self.admitted = AdmittedState(self.store, config.limits)
        self.compiler = IncrementalCompiler(self.admitted)
        self._replay_store: DesiredStore | None = None
        self.plane = StatePlane()
        self.board = DroppedBoard(self.metrics.dropped_objects)
        self.saved = SavedState(config.state_dir, config.cell_id)
        self._compiling = False  # a pass's compile runs on its worker thread: inputs wait in _deferred
        self._deferred: list[Callable[[], None]] = []
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()  # the desired state is complete (NATS replay or saved state)
        self._nats_synced = False
        self.registrations_loaded = False
        self.generation = 0
        self.committed_generation = 0
        self._changed_at: dict[int, float] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._actual: Ruleset | None = None
        self._actual_committed = False  # _actual is the ruleset we committed last (not a read-back)
        self._desired: Ruleset | None = None
        self._enforced: set[str] = set()  # the local containers the last committed pass enforces
        self._readback = True
        self._failures = 0
        self.last_error: str | None = None
        self._converged_once = False  # a pass has succeeded since the desired state became complete
        self._settle = True  # the next successful pass follows a whole new state (start, NATS replay)
        self._unsaved = asyncio.Event()  # a commit since the snapshot file was last written
        self.fatal: BaseException | None = None
        self._closing = False  # our own shutdown: a disconnect then is not news
        self.nc: NATS | None = None
        self._feed: StateFeed | None = None
        self.last_commit_at: float | None = None
        self._committed_ruleset: Ruleset | None = None  # what the kernel holds
        self._committed: tuple[CellState, Ruleset] | None = None  # and what it was compiled from, once asked
        self._committed_before: tuple[CellState, Ruleset] | None = None  # the previous answer, during a compile
        self.realization = Realization(self.metrics.programming_latency)
        self.flow_log = FlowLog(config.flow_log) if config.flow_log is not None else None
        self.rule_metrics = RuleMetrics()
        self.metrics.registry.register(self.rule_metrics)

    # ------------------------------------------------------------------ inputs (cheap, sync)

    def _changed(self) -> None:
        self.generation += 1
        self._changed_at[self.generation] = time.perf_counter()
        self.metrics.pending_changes.set(self.generation - self.committed_generation)
        self._dirty.set()

    def _take(self, change: Callable[[], None]) -> None:
        """Change the store now, or (a compile is running on its thread) right after it."""
        if self._compiling:
            self._deferred.append(change)
        else:
            change()

    def _notify(self, keys: list[StateKey]) -> bool:
        """The store's objects `keys` changed: through the admitted view to the compiler; return
        whether any of it touches this cell."""
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
        self._replay_store = DesiredStore(self.config.cell_id, self.config.policy)

    def resumed(self) -> None:
        self.metrics.resumes.inc()

    def message(self, msg: Message, seq: int, problems: list[str]) -> None:
        self.metrics.messages.inc()
        if problems:
            self.metrics.bad_messages.inc()
        self.board.intake(msg.subject(), problems, refused=False)
        self._take(lambda: self._take_message(msg, seq))

    def _take_message(self, msg: Message, seq: int) -> None:
        replaying = self._replay_store is not None
        if self._replay_store is not None:
            changed = self._replay_store.apply(msg, seq)
        else:
            if isinstance(msg, EpochMessage):
                self.plane.markers[msg.source] = msg
                if self.plane.establishes_kept(msg, self.config.cell_id) and self._feed is not None:
                    log.info("%s published %s completely: replaying the state stream", msg.source, msg.complete)
                    self._feed.request_replay()
            changed = self.store.apply(msg, seq)
            if changed and not isinstance(msg, EpochMessage) and self._notify([key_of(msg)]):
                self._changed()
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
        plane.kept = replay.keep_from(self.store, plane.unestablished(self.config.cell_id))
        self.plane = plane
        # Every changed key goes to the compiler (it keeps its indexes by them), whether or not it
        # touches this cell; what did not change keeps its compiled fragments.
        self._notify(self.store.adopt(replay))
        self.metrics.state_plane_complete.set(0 if plane.degraded else 1)
        self._settle = True
        self._nats_synced = True
        self._synced.set()
        self._changed()
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
        self._changed()  # a container is always this cell's
        return self.generation

    def unregister(self, handle: str) -> int:
        if handle not in self.store.registered:
            return self.generation
        self._take(lambda: self._registration(handle, self.store.unregister(handle)))
        self._changed()
        return self.generation

    def _registration(self, handle: str, changed: bool) -> None:
        if changed:
            self.saved.save_registrations(self.store.registrations())
            self._notify([StateKey(Kind.CONTAINER, handle)])

    def enforced(self, handle: str) -> bool:
        """Whether the last committed pass enforces local container `handle`."""
        return handle in self._enforced

    def request_resync(self, reason: str) -> None:
        log.info("resync requested: %s", reason)
        self._readback = True
        self._dirty.set()

    @property
    def converged(self) -> bool:
        """The kernel holds everything the store asks for (what can be enforced of it)."""
        return (
            self._synced.is_set()
            and self._converged_once
            and self.committed_generation == self.generation
            and self.fatal is None
        )

    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        """Why `/readyz` says 503 (None: ready): not converged, or enforcing a state the stream does not hold."""
        if self.fatal is not None:
            return f"failed: {self.fatal}"
        if not self._synced.is_set():
            return f"waiting for the state stream ({self.plane.missing or 'replaying'})"
        if not self.converged:
            return "changes not committed yet" + (f" (last error: {self.last_error})" if self.last_error else "")
        return self.plane.degraded

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

    # ------------------------------------------------------------------ persistence

    def _load_saved(self) -> None:
        for c in self.saved.load_registrations(self.limits):
            self.store.register(c)
        self.registrations_loaded = True
        saved = self.saved.load_snapshot()
        if saved is not None:
            self.store.load_snapshot(saved)
            self._synced.set()
            log.info("loaded last committed state (%d containers) from %s", len(saved.containers), self.saved.dir)
        self.admitted.everything_changed()  # the compiler's first compile takes it all from there

    @property
    def committed(self) -> tuple[CellState, Ruleset] | None:
        """What the kernel holds, for operators' questions (explain, stats, the flow log): the ruleset
        committed last and the part of the state it was compiled from (IncrementalCompiler.relevant_state),
        built on the first question after a commit, not on every pass; the same tuple until the next.
        While a pass compiles, the answer of before."""
        if self._compiling:
            return self._committed or self._committed_before
        if self._committed is None and self._committed_ruleset is not None:
            self._committed = (self.compiler.relevant_state(), self._committed_ruleset)
        return self._committed

    # ------------------------------------------------------------------ the kernel

    async def _converge(self) -> bool:
        """One pass: compile what changed, diff, commit. Returns whether the kernel was written."""
        for _ in range(_ISOLATION_ROUNDS):
            if self._readback or self._actual is None:
                self._actual = await self.runner.read_async(TABLE)
                self._actual_committed = self._readback = False
            rebuild = self._failures >= self.config.rebuild_after_failures
            planned = await self._plan(rebuild)
            if planned is None:
                continue  # culprits left out: once more without them
            if planned.tx is None:
                self._leave_out(planned.oversized)
                continue
            self.board.left_out(self.admitted.left_out())
            if rebuild:
                self.metrics.table_rebuilds.inc()
                log.warning("rebuilding table %s whole after %d failures", TABLE.name, self._failures)
            self._desired = planned.desired
            if not planned.tx.is_empty:
                try:
                    await self.runner.apply_async(planned.tx)
                except NftError:
                    if await self._isolate_kernel_refusal():
                        self._readback = True
                        continue
                    raise
            self._actual, self._actual_committed = planned.desired, True
            self._committed_before = self._committed or self._committed_before
            self._committed_ruleset, self._committed = planned.desired, None
            self._enforced = self.compiler.local_handles()
            if planned.tx.is_empty:
                return False
            if self.compiler.config.revoke_established and may_revoke(planned.tx):
                committed = self.committed
                assert committed is not None
                await self._revoke(*committed)
            chains, rules, elements = planned.desired.counts()
            self.metrics.chains.set(chains)
            self.metrics.rules.set(rules)
            self.metrics.elements.set(elements)
            self.metrics.containers.set(self.compiler.containers)
            if self._nats_synced:
                self._unsaved.set()
            return True
        raise PlanError(f"objects keep failing after {_ISOLATION_ROUNDS} rounds of leaving culprits out")

    async def _plan(self, rebuild: bool) -> Pass | None:
        """The pass's plan, computed on a worker thread while the store's inputs wait; None when the
        compile failed and culprits were found and left out."""
        self._compiling = True
        try:
            return await asyncio.to_thread(
                plan_pass,
                self.compiler,
                self._actual,
                committed=self._actual_committed,
                rebuild=rebuild,
                limits=self.limits,
            )
        except Exception as e:  # the compiler or the transaction's own checks refused the state
            failure = e
        finally:
            self._compiling = False
            deferred, self._deferred = self._deferred, []
            for change in deferred:
                change()
        reason = _one_line(failure)
        log.error("the desired state does not compile (%s): looking for the objects that cause it", reason)
        state = self.admitted.state()
        culprits = await find_culprits(units_of(state), self._compiles(state))
        if not culprits:
            raise PlanError(f"the desired state does not compile: {reason}") from failure
        self._leave_out([Unusable(unit, f"the compiler refused it ({reason})") for unit in culprits])
        return None

    def _compiles(self, state: CellState) -> Check:
        compiler = Compiler()  # the reference compiler, with the search's own caches

        async def passes(excluded: frozenset[StateKey]) -> bool:
            try:
                await asyncio.to_thread(
                    plan, compiler, without(state, excluded), None, rebuild=True, limits=self.limits
                )
            except Exception:  # whatever refused the whole state refuses this one too
                return False
            return True

        return passes

    async def _isolate_kernel_refusal(self) -> bool:
        """After a failed commit: does the kernel refuse the content itself (a dry run of the whole
        table fails too)? Then find the objects it refuses, leave them out, and return True.
        False: the failure was not the content's (transient, or our view of the kernel was stale)."""
        state = self.admitted.state()
        compiler = Compiler()

        async def passes(excluded: frozenset[StateKey]) -> bool:
            try:
                whole = await asyncio.to_thread(
                    plan, compiler, without(state, excluded), None, rebuild=True, limits=self.limits
                )
                await self.runner.check_async(whole.tx)
            except Exception:  # NftError; anything else fails the same way without the culprits' help
                return False
            return True

        if await passes(frozenset()):
            return False
        log.error("the kernel refuses the desired state itself: looking for the objects that cause it")
        culprits = await find_culprits(units_of(state), passes)
        if not culprits:
            return False
        self._leave_out([Unusable(unit, "the kernel refused it") for unit in culprits])
        return True

    def _leave_out(self, culprits: list[Unusable]) -> None:
        for u in culprits:
            log.error("leaving out %s: %s", u.unit, u.reason)
        for key in self.admitted.quarantine(culprits):
            self.compiler.changed(key)

    async def _revoke(self, state: CellState, desired: Ruleset) -> None:
        """End the tracked connections the table just committed no longer allows (revoke.py)."""
        try:
            gone = await revoke_disallowed(state, desired, self.config.netns)
        except (RevokeError, ExplainInputError) as e:  # the table is committed: this pass stands
            log.error("revoke_established: could not revoke connections: %s", e)
            return
        if gone:
            self.metrics.revoked_connections.inc(len(gone))
            shown = ", ".join(f"{f.proto} {f.src}:{f.sport} -> {f.dst}:{f.dport}" for f in gone[:10])
            more = f" and {len(gone) - 10} more" if len(gone) > 10 else ""
            log.info("revoked %d connections no longer allowed: %s%s", len(gone), shown, more)

    async def _install_skeleton_if_missing(self) -> None:
        try:
            if await self.runner.read_async(TABLE, elements=False) is None:
                empty = CellState(cell_id=self.config.cell_id, containers=[], config=self.config.policy)
                await self.runner.apply_async(diff(compile_ruleset(empty), None))
                log.info("installed the fail-closed skeleton of table %s", TABLE.name)
        except NftError as e:
            # Not fatal: the apply loop installs the whole table, with its own retries.
            self.metrics.apply_failures.inc()
            log.error("could not install the skeleton of table %s: %s", TABLE.name, e)
        self._readback = True

    async def _apply_loop(self) -> None:
        await self._synced.wait()
        plan_failures = Backoff(0.1, self.config.retry_max_seconds)
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            gen = self.generation
            started = time.perf_counter()
            try:
                wrote = await self._converge()
            except PlanError as e:
                # Not the kernel's fault and no object's: retrying as fast would change nothing.
                # The old rules keep enforcing; every later change is tried again.
                self.last_error = str(e)
                self.metrics.reconcile_seconds.labels("error").observe(time.perf_counter() - started)
                log.error("%s; the kernel keeps its last committed rules", e)
                asyncio.get_running_loop().call_later(plan_failures.next_delay(), self._dirty.set)
                continue
            except Exception as e:  # the loop must outlive any one pass; NftError is the usual case
                self._failures += 1
                self._readback = True
                self.last_error = _one_line(e)
                self.metrics.apply_failures.inc()
                self.metrics.reconcile_seconds.labels("error").observe(time.perf_counter() - started)
                # An explained error says what failed and where; anything else is a bug: keep its traceback.
                log.error("apply failed (%d in a row): %s", self._failures, e, exc_info=not isinstance(e, CfnftError))
                if self._failures >= self.config.give_up_after_failures:
                    self.fatal = e
                    log.critical("the kernel refused %d applies in a row; exiting so monit restarts us", self._failures)
                    return
                delay = min(self.config.retry_max_seconds, 0.05 * 2**self._failures) * (0.5 + random.random())
                asyncio.get_running_loop().call_later(delay, self._dirty.set)
                continue
            self._failures = 0
            self.last_error = None
            plan_failures.reset()
            if self._settle:
                self._settle = False
                settle_memory()
            self._converged_once = True
            now = time.perf_counter()
            self.metrics.reconcile_seconds.labels("changed" if wrote else "unchanged").observe(now - started)
            for g in [g for g in self._changed_at if g <= gen]:
                self.metrics.enforce_latency.observe(now - self._changed_at.pop(g))
            self.committed_generation = gen
            self.realization.committed(gen)
            self.last_commit_at = time.time()
            self.metrics.pending_changes.set(self.generation - gen)
            self.metrics.in_sync.set(1 if self.ready else 0)
            for g, fut in self._waiters:
                if g <= gen and not fut.done():
                    fut.set_result(None)

    async def _save_loop(self, every: float = 1.0) -> None:
        """Write the state the compiler last used to the snapshot file once a commit is through, at
        most once per `every` seconds (a burst of changes is saved once), and never in the way of a
        pass: the apply loop only marks it wanted, and a save waits for a quiet moment. What is saved
        is the relevant part of the foundation (IncrementalCompiler.relevant_state), so it is small."""
        saved_at = -every
        while True:
            await self._unsaved.wait()
            await asyncio.sleep(max(0.0, saved_at + every - time.monotonic()))
            while self._dirty.is_set() or self._compiling:  # a pass is due or running: let it go first
                await asyncio.sleep(0.01)
            self._unsaved.clear()
            await asyncio.to_thread(self.saved.save_snapshot, self.compiler.relevant_state())
            saved_at = time.monotonic()

    async def _drift_loop(self) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(self.config.drift_probe_seconds)
            if self._desired is None or self._dirty.is_set() or not self.converged:
                continue
            full = time.monotonic() - last_full >= self.config.full_check_seconds
            try:
                kernel = await self.runner.read_async(TABLE, elements=full)
            except NftError as e:
                log.error("drift probe failed: %s", e)
                continue
            if full:
                last_full = time.monotonic()
                # A diff of a whole table is a compile's worth of work: off the event loop too.
                drifted = not (await asyncio.to_thread(diff, self._desired, kernel)).is_empty
            else:
                drifted = not same_structure(self._desired, kernel)
            if drifted and self._desired is not None and self.converged:
                self.metrics.drift_repairs.inc()
                log.warning("table %s was changed outside cfnft; repairing", TABLE.name)
                self._actual = kernel if full else None
                self._actual_committed = False
                self._readback = not full
                self._dirty.set()

    # ------------------------------------------------------------------ NATS

    async def _connect_nats(self) -> None:
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

    async def _serve_nats(self) -> None:
        await self._connect_nats()
        assert self.nc is not None
        nc = self.nc

        async def on_resync(m: Msg) -> None:
            try:
                req = ResyncRequest.model_validate_json(m.data or b"{}")
            except ValueError as e:
                log.error("bad resync request on %s: %s", m.subject, e)
                return
            self.request_resync(req.reason)

        async def on_status(m: Msg) -> None:
            try:
                await m.respond(json.dumps(self.status()).encode())
            except NatsError as e:  # the asker may be gone; the next request gets its answer
                log.warning("could not answer a status request: %s", e)

        steps: list[Callable[[], Awaitable[object]]] = [
            lambda: nc.subscribe(subjects.RESYNC_ALL, cb=on_resync),
            lambda: nc.subscribe(subjects.resync_cell(self.config.cell_id), cb=on_resync),
            lambda: nc.subscribe(subjects.status(self.config.cell_id), cb=on_status),
            lambda: serve_operator_requests(self, nc),
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
            self,
            self.limits,
            heartbeat_seconds=self.config.consumer_heartbeat_seconds,
            replay_jitter_seconds=self.config.replay_jitter_seconds,
            check_seconds=self.config.state_check_seconds,
            retry_max_seconds=self.config.retry_max_seconds,
        )
        await self._feed.run()

    def status(self) -> dict[str, object]:
        counts = self._desired.counts() if self._desired is not None else (0, 0, 0)
        return {
            "cell_id": self.config.cell_id,
            "in_sync": self.ready,
            "not_ready_reason": self.not_ready_reason,
            "nats_synced": self._nats_synced,
            "nats_connected": bool(self.nc and self.nc.is_connected),
            "generation": self.generation,
            "committed_generation": self.committed_generation,
            "last_commit_at": self.last_commit_at,
            "consecutive_failures": self._failures,
            "last_error": self.last_error,
            "state": self.store.summary(),
            "state_plane": self.plane.as_json(self.config.cell_id),
            "dropped": self.board.entries(),
            "table": {"chains": counts[0], "rules": counts[1], "elements": counts[2]},
        }

    # ------------------------------------------------------------------ lifecycle

    async def run(self, with_nats: bool = True) -> None:
        """Run until cancelled, or until the kernel refused too often (then `fatal` is set)."""
        self._load_saved()
        await self._install_skeleton_if_missing()
        tasks = [
            asyncio.create_task(self._apply_loop(), name="apply"),
            asyncio.create_task(self._drift_loop(), name="drift"),
            asyncio.create_task(refresh_rule_metrics(self, self.rule_metrics), name="rule-metrics"),
            asyncio.create_task(self._save_loop(), name="save"),
        ]
        if self.flow_log is not None:
            tasks.append(asyncio.create_task(run_flow_log(self, self.flow_log), name="flow-log"))
        if with_nats:
            tasks.append(asyncio.create_task(self._serve_nats(), name="nats"))
        if self._synced.is_set():
            self._dirty.set()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    # Every loop handles its own failures; reaching this is a bug. One line, then out.
                    self.fatal = t.exception()
                    log.critical("internal error in the %s loop: %r", t.get_name(), self.fatal, exc_info=self.fatal)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._unsaved.is_set():  # a commit the save loop had not written yet
                self.saved.save_snapshot(self.compiler.relevant_state())
            if self.nc is not None and not self.nc.is_closed:
                self._closing = True
                with contextlib.suppress(Exception):  # closing a connection that is already failing
                    await self.nc.close()


def settle_memory() -> None:
    """Move everything allocated so far (the full initial state, long-lived) out of the cyclic
    garbage collector's sight. Without this, full collections walk it again and again and show
    up as 50-100 ms pauses in the middle of a container's ADD. Then hand the memory a replay used
    only while it ran (NATS's buffered messages, the old store) back to the system: freed, it is
    scattered between long-lived objects, and glibc keeps it unless asked. (What an earlier settle
    froze is looked at again: the state it held may be garbage now.)"""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:  # no C library to ask: nothing to trim
        return None


_LIBC = _libc()


def _one_line(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0]
