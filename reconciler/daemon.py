"""`cfnft reconcile`: drive one cell's kernel to the desired state, level-triggered.

Who awaits whom:
- `StateFeed` (NATS) and the CNI endpoint call `_on_message` / `register` synchronously:
  they update the store and tell the incremental compiler which object changed. Only if that
  touches this cell (reconciler/incremental.py: a dictionary lookup or two) do they bump
  `generation` and set `_dirty`; the foundation's other changes end there.
- `_apply_loop` is the only writer of the kernel. It waits for `_dirty`, recompiles what the
  changes touched, diffs those parts against what the kernel holds and commits the difference
  as one transaction. Bursts coalesce: whatever arrived while a pass ran is picked up by the
  next one. Failures retry with capped backoff; after
  `rebuild_after_failures` the next pass replaces the whole table in one transaction; after
  `give_up_after_failures` the process exits non-zero so monit restarts it. The old rules
  keep enforcing throughout, since nothing is ever flushed outside a transaction.
- `_drift_loop` re-reads the kernel (cheaply every second, fully every `full_check_seconds`)
  and marks the state dirty when someone changed our table behind our back.
- CNI `register` callers await `wait_committed(generation)`, resolved by `_apply_loop`.

Start-up is gated (Felix's in-sync): the kernel is not written from NATS state until the
replay of the state stream is complete. If our table does not exist yet, the fail-closed
skeleton (no container known, overlay sources rejected) is installed first. The last
committed state is kept on disk, so a restart while NATS is unreachable still knows every
policy and can admit new containers.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import random
import time
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cfnft.errors import CfnftError
from events import subjects
from events.connect import connect
from events.messages import Message, ResyncRequest
from events.models import CellState, Container
from events.permissions import Role, inbox_prefix
from nft import NftError, NftInterface, diff, same_structure
from nft.objects import Ruleset
from reconciler.compile import TABLE, compile_ruleset
from reconciler.config import ReconcilerConfig
from reconciler.explain import ExplainInputError
from reconciler.feed import StateFeed
from reconciler.flowlog import FlowLog, run_flow_log
from reconciler.incremental import IncrementalCompiler
from reconciler.keys import Kind, StateKey, key_of
from reconciler.metrics import ReconcilerMetrics
from reconciler.operator import RuleMetrics, refresh_rule_metrics, serve_operator_requests
from reconciler.realization import Realization
from reconciler.revoke import RevokeError, may_revoke, revoke_disallowed
from reconciler.store import DesiredStore

log = logging.getLogger(__name__)


class Reconciler:
    """One cell's reconciler. `runner` is an `nft.NftRunner` (or `nft.FakeNft` in tests)."""

    def __init__(
        self, config: ReconcilerConfig, runner: NftInterface, metrics: ReconcilerMetrics | None = None
    ) -> None:
        self.config = config
        self.runner = runner
        self.metrics = metrics or ReconcilerMetrics()
        self.store = DesiredStore(config.cell_id, config.policy)
        self._replay_store: DesiredStore | None = None
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()  # the desired state is complete (NATS replay or saved state)
        self._nats_synced = False
        self.generation = 0
        self.committed_generation = 0
        self._changed_at: dict[int, float] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.compiler = IncrementalCompiler(self.store)
        self._actual: Ruleset | None = None
        self._actual_committed = False  # _actual is the ruleset we committed last (not a read-back)
        self._desired: Ruleset | None = None
        self._readback = True
        self._failures = 0
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

    def _on_message(self, msg: Message) -> None:
        self.metrics.messages.inc()
        replaying = self._replay_store is not None
        changed = self._replay_store.apply(msg) if self._replay_store is not None else self.store.apply(msg)
        if changed and not replaying and self.compiler.changed(key_of(msg)):
            self._changed()
        self.realization.received(msg, self.generation, changed=changed, replaying=replaying)

    def _on_bad_message(self, subject: str, reason: str) -> None:
        self.metrics.bad_messages.inc()

    def _on_in_sync(self) -> None:
        """The NATS replay is complete: it replaces whatever we knew before."""
        replay, self._replay_store = self._replay_store, None
        if replay is not None:
            # Every changed key goes to the compiler (it keeps its indexes by them), whether or not it
            # touches this cell; what did not change keeps its compiled fragments.
            for key in self.store.adopt(replay):
                self.compiler.changed(key)
        self._settle = True
        self._nats_synced = True
        self._synced.set()
        self._changed()
        self.realization.replay_done(self.generation)
        log.info("in sync with NATS: %s", self.store.summary())

    def register(self, container: Container) -> int:
        """A container the CNI plugin is adding; returns the generation to wait for."""
        if self.store.register(container):
            self._save_registered()
            self.compiler.changed(StateKey(Kind.CONTAINER, container.handle))
            self._changed()
        return self.generation

    def unregister(self, handle: str) -> int:
        if self.store.unregister(handle):
            self._save_registered()
            self.compiler.changed(StateKey(Kind.CONTAINER, handle))
            self._changed()
        return self.generation

    def request_resync(self, reason: str) -> None:
        log.info("resync requested: %s", reason)
        self._readback = True
        self._dirty.set()

    @property
    def ready(self) -> bool:
        return (
            self._synced.is_set()
            and self._converged_once
            and self.committed_generation == self.generation
            and self.fatal is None
        )

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

    @property
    def _registered_file(self) -> Path:
        return self.config.state_dir / f"registered-{self.config.cell_id}.json"

    @property
    def _snapshot_file(self) -> Path:
        return self.config.state_dir / f"last-state-{self.config.cell_id}.json"

    def _save_registered(self) -> None:
        data = [c.model_dump(mode="json") for c in self.store.registered.values()]
        _atomic_write(self._registered_file, json.dumps(data))

    def _load_saved(self) -> None:
        if self._registered_file.exists():
            try:
                for raw in json.loads(self._registered_file.read_text()):
                    c = Container.model_validate(raw)
                    self.store.registered[c.handle] = c
            except (OSError, ValueError) as e:
                log.error("ignoring unreadable %s: %s", self._registered_file, e)
        if self._snapshot_file.exists():
            try:
                saved = CellState.model_validate_json(self._snapshot_file.read_text())
            except (OSError, ValueError) as e:
                log.error("ignoring unreadable %s: %s", self._snapshot_file, e)
                return
            self.store.load_snapshot(saved)
            self._synced.set()
            log.info("loaded last committed state (%d containers) from %s", len(saved.containers), self._snapshot_file)

    @property
    def committed(self) -> tuple[CellState, Ruleset] | None:
        """What the kernel holds, for operators' questions (explain, stats, the flow log): the ruleset
        committed last and the part of the state it was compiled from (IncrementalCompiler.relevant_state),
        built on the first question after a commit, not on every pass; the same tuple until the next."""
        if self._committed is None and self._committed_ruleset is not None:
            self._committed = (self.compiler.relevant_state(), self._committed_ruleset)
        return self._committed

    # ------------------------------------------------------------------ the kernel

    async def _converge(self) -> bool:
        """One pass: compile what changed, diff, commit. Returns whether the kernel was written."""
        desired = self.compiler.compile()
        touched = self.compiler.take_touched()
        if self._readback or self._actual is None:
            self._actual = await self.runner.read_async(TABLE)
            self._actual_committed = self._readback = False
        rebuild = self._failures >= self.config.rebuild_after_failures
        if rebuild:
            tx = diff(desired, None)
            tx.recreate_table()
            self.metrics.table_rebuilds.inc()
            log.warning("rebuilding table %s whole after %d failures", TABLE.name, self._failures)
        else:
            # Against what we committed last, only the chains and sets the compile touched can differ.
            tx = diff(desired, self._actual, only=touched if self._actual_committed else None)
        self._desired = desired
        if not tx.is_empty:
            await self.runner.apply_async(tx)
        self._actual, self._actual_committed = desired, True
        self._committed_ruleset, self._committed = desired, None
        if tx.is_empty:
            return False
        if self.compiler.config.revoke_established and may_revoke(tx):
            committed = self.committed
            assert committed is not None
            await self._revoke(*committed)
        chains, rules, elements = desired.counts()
        self.metrics.chains.set(chains)
        self.metrics.rules.set(rules)
        self.metrics.elements.set(elements)
        self.metrics.containers.set(self.compiler.containers)
        if self._nats_synced:
            self._unsaved.set()
        return True

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
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            gen = self.generation
            started = time.perf_counter()
            try:
                wrote = await self._converge()
            except Exception as e:  # the loop must outlive any one pass; NftError is the usual case
                self._failures += 1
                self._readback = True
                self.metrics.apply_failures.inc()
                self.metrics.reconcile_seconds.labels("error").observe(time.perf_counter() - started)
                # An explained error says what failed and where; anything else is a bug: keep its traceback.
                log.error("apply failed (%d in a row): %s", self._failures, e, exc_info=not isinstance(e, CfnftError))
                if self._failures >= self.config.give_up_after_failures:
                    self.fatal = e
                    log.critical("giving up after %d failed applies; exiting so monit restarts us", self._failures)
                    return
                delay = min(self.config.retry_max_seconds, 0.05 * 2**self._failures) * (0.5 + random.random())
                asyncio.get_running_loop().call_later(delay, self._dirty.set)
                continue
            self._failures = 0
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
            while self._dirty.is_set():  # a pass is due: let it go first
                await asyncio.sleep(0.01)
            self._unsaved.clear()
            text = self.compiler.relevant_state().model_dump_json()
            await asyncio.to_thread(_atomic_write, self._snapshot_file, text)
            saved_at = time.monotonic()

    async def _drift_loop(self) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(self.config.drift_probe_seconds)
            if self._desired is None or self._dirty.is_set() or not self.ready:
                continue
            full = time.monotonic() - last_full >= self.config.full_check_seconds
            try:
                kernel = await self.runner.read_async(TABLE, elements=full)
            except NftError as e:
                log.error("drift probe failed: %s", e)
                continue
            if full:
                last_full = time.monotonic()
                drifted = not diff(self._desired, kernel).is_empty
            else:
                drifted = not same_structure(self._desired, kernel)
            if drifted and self._desired is not None and self.ready:
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

    def _on_replay_started(self) -> None:
        """A full replay begins: it fills a store of its own, which replaces ours once complete."""
        self.metrics.full_replays.inc()
        self._replay_store = DesiredStore(self.config.cell_id, self.config.policy)

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
            await m.respond(json.dumps(self.status()).encode())

        await nc.subscribe(subjects.RESYNC_ALL, cb=on_resync)
        await nc.subscribe(subjects.resync_cell(self.config.cell_id), cb=on_resync)
        await nc.subscribe(subjects.status(self.config.cell_id), cb=on_status)
        await serve_operator_requests(self, nc)
        self._feed = StateFeed(
            nc,
            self.config.cell_id,
            self._on_message,
            self._on_in_sync,
            self._on_bad_message,
            on_replay_started=self._on_replay_started,
            on_resumed=self.metrics.resumes.inc,
            heartbeat_seconds=self.config.consumer_heartbeat_seconds,
            replay_jitter_seconds=self.config.replay_jitter_seconds,
            retry_max_seconds=self.config.retry_max_seconds,
        )
        await self._feed.run()

    def status(self) -> dict[str, object]:
        counts = self._desired.counts() if self._desired is not None else (0, 0, 0)
        return {
            "cell_id": self.config.cell_id,
            "in_sync": self.ready,
            "nats_synced": self._nats_synced,
            "nats_connected": bool(self.nc and self.nc.is_connected),
            "generation": self.generation,
            "committed_generation": self.committed_generation,
            "last_commit_at": self.last_commit_at,
            "consecutive_failures": self._failures,
            "state": self.store.summary(),
            "table": {"chains": counts[0], "rules": counts[1], "elements": counts[2]},
        }

    # ------------------------------------------------------------------ lifecycle

    async def run(self, with_nats: bool = True) -> None:
        """Run until cancelled, or until the apply loop gives up (then `fatal` is set)."""
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
                if t.exception() is not None:
                    self.fatal = t.exception()
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._unsaved.is_set():  # a commit the save loop had not written yet
                _atomic_write(self._snapshot_file, self.compiler.relevant_state().model_dump_json())
            if self.nc is not None and not self.nc.is_closed:
                self._closing = True
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


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
