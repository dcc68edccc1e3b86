"""`cfnft reconcile`: drive one cell's kernel to the desired state, level-triggered.

The daemon only wires its parts together; each has one job:

- the state intake (reconciler/intake.py): the store, what of it is admitted, the incremental
  compiler's dirty keys, and the generations CNI callers wait for. NATS messages and CNI
  registrations come in there, synchronously and cheaply; a change that touches nothing on this
  cell ends there;
- the dataplane (reconciler/dataplane.py): the one writer of the kernel: compile what changed on a
  worker thread, diff, commit; leave out what cannot be enforced; read back, repair drift, rebuild;
- the loops (reconciler/loops.py): apply, drift and save, timed by an injectable clock;
- the NATS source (reconciler/source.py): the connection, the request subjects, the state feed;
- the saved state (reconciler/saved.py): the registrations and the last committed state on disk,
  so a restart while NATS is unreachable still knows every policy and can admit new containers.

Start-up is gated (Felix's in-sync): the kernel is not written from NATS state until the replay
of the state stream is complete, and what the replay lacks a complete view of is kept from
before (reconciler/stateplane.py). If our table does not exist yet, the fail-closed skeleton (no
container known, overlay sources rejected) is installed first.

The process exits only when the kernel refused `give_up_after_failures` applies in a row (one
critical log line; `run` returns with `fatal` set). NATS trouble never ends it: every NATS call
is retried (reconciler/feed.py).

`Reconciler` is also the facade the CNI endpoint, the operators' requests and the flow log talk
to (reconciler/endpoint.py `CellFacade` is the endpoint's part of it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from nats.aio.client import Client as NATS

from events.models import CellState, Container
from nft import NftInterface
from nft.objects import Ruleset
from reconciler.admitted import AdmittedState
from reconciler.compile import TABLE
from reconciler.config import ReconcilerConfig
from reconciler.dataplane import Dataplane
from reconciler.dropped import DroppedBoard
from reconciler.flowlog import FlowLog, run_flow_log
from reconciler.intake import StateIntake
from reconciler.loops import Clock, SystemClock, apply_loop, drift_loop, save_loop
from reconciler.metrics import ReconcilerMetrics
from reconciler.operator import RuleMetrics, refresh_rule_metrics
from reconciler.realization import Realization
from reconciler.saved import SavedState
from reconciler.source import NatsSource
from reconciler.stateplane import StatePlane
from reconciler.store import DesiredStore

log = logging.getLogger(__name__)


class Reconciler:
    """One cell's reconciler. `runner` is an `nft.NftRunner` (or `nft.FakeNft` in tests)."""

    def __init__(
        self,
        config: ReconcilerConfig,
        runner: NftInterface,
        metrics: ReconcilerMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.metrics = metrics or ReconcilerMetrics()
        self.limits = config.limits
        self.clock = clock or SystemClock()
        self.saved = SavedState(config.state_dir, config.cell_id)
        self.intake = StateIntake(config, self.metrics, self.saved)
        self.dataplane = Dataplane(config, runner, self.intake, self.metrics)
        self.source = NatsSource(config, self.intake, self.metrics, self.request_resync, self.status)
        self.fatal: BaseException | None = None
        self.flow_log = FlowLog(config.flow_log) if config.flow_log is not None else None
        self.rule_metrics = RuleMetrics()
        self.metrics.registry.register(self.rule_metrics)

    # ------------------------------------------------------------------ the facade

    @property
    def store(self) -> DesiredStore:
        return self.intake.store

    @property
    def admitted(self) -> AdmittedState:
        return self.intake.admitted

    @property
    def board(self) -> DroppedBoard:
        return self.intake.board

    @property
    def plane(self) -> StatePlane:
        return self.intake.plane

    @property
    def realization(self) -> Realization:
        return self.intake.realization

    @property
    def generation(self) -> int:
        return self.intake.generation

    @property
    def committed_generation(self) -> int:
        return self.intake.committed_generation

    @property
    def registrations_loaded(self) -> bool:
        return self.intake.registrations_loaded

    @property
    def registered(self) -> Mapping[str, Container]:
        return self.intake.store.registered

    def local(self, handle: str) -> Container | None:
        """A local container as the cell enforces it (or would, once committed)."""
        return self.intake.admitted.local(handle)

    def register(self, container: Container) -> int:
        """A container the CNI plugin is adding; returns the generation to wait for."""
        return self.intake.register(container)

    def unregister(self, handle: str) -> int:
        return self.intake.unregister(handle)

    async def wait_committed(self, generation: int, timeout: float) -> None:
        """Wait until everything up to `generation` is committed to the kernel."""
        await self.intake.wait_committed(generation, timeout)

    def enforced(self, handle: str) -> bool:
        """Whether the last committed pass enforces local container `handle`."""
        return self.dataplane.enforced(handle)

    def left_out_reason(self, what: str) -> str | None:
        """Why the latest pass left `what` out (e.g. `container <handle>`), or None."""
        return self.intake.board.reason_for(what)

    async def read_kernel(self) -> Ruleset | None:
        return await self.runner.read_async(TABLE)

    @property
    def committed(self) -> tuple[CellState, Ruleset] | None:
        """What the kernel holds and what it was compiled from (Dataplane.committed)."""
        return self.dataplane.committed

    def request_resync(self, reason: str) -> None:
        log.info("resync requested: %s", reason)
        self.dataplane.read_back()
        self.intake.dirty.set()

    @property
    def converged(self) -> bool:
        """The kernel holds everything the store asks for (what can be enforced of it)."""
        return self.intake.converged and self.fatal is None

    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        """Why `/readyz` says 503 (None: ready): not converged, or enforcing a state the stream does not hold."""
        if self.fatal is not None:
            return f"failed: {self.fatal}"
        if not self.intake.synced.is_set():
            return f"waiting for the state stream ({self.plane.missing or 'replaying'})"
        if not self.converged:
            last_error = self.dataplane.last_error
            return "changes not committed yet" + (f" (last error: {last_error})" if last_error else "")
        return self.plane.degraded

    @property
    def nc(self) -> NATS | None:
        return self.source.nc

    def status(self) -> dict[str, object]:
        desired = self.dataplane.desired
        counts = desired.counts() if desired is not None else (0, 0, 0)
        return {
            "cell_id": self.config.cell_id,
            "in_sync": self.ready,
            "not_ready_reason": self.not_ready_reason,
            "nats_synced": self.intake.nats_synced,
            "nats_connected": self.source.connected,
            "generation": self.generation,
            "committed_generation": self.committed_generation,
            "last_commit_at": self.intake.last_commit_at,
            "consecutive_failures": self.dataplane.failures,
            "last_error": self.dataplane.last_error,
            "state": self.store.summary(),
            "state_plane": self.plane.as_json(self.config.cell_id),
            "dropped": self.board.entries(),
            "table": {"chains": counts[0], "rules": counts[1], "elements": counts[2]},
        }

    # ------------------------------------------------------------------ lifecycle

    async def run(self, with_nats: bool = True) -> None:
        """Run until cancelled, or until the kernel refused too often (then `fatal` is set)."""
        intake, dataplane, clock = self.intake, self.dataplane, self.clock
        intake.load_saved()
        await dataplane.install_skeleton_if_missing()
        tasks = [
            asyncio.create_task(apply_loop(intake, dataplane, self.config, self.metrics, clock), name="apply"),
            asyncio.create_task(drift_loop(intake, dataplane, self.config, self.metrics, clock), name="drift"),
            asyncio.create_task(refresh_rule_metrics(self, self.rule_metrics), name="rule-metrics"),
            asyncio.create_task(save_loop(intake, dataplane, self.saved, clock), name="save"),
        ]
        if self.flow_log is not None:
            tasks.append(asyncio.create_task(run_flow_log(self, self.flow_log), name="flow-log"))
        if with_nats:
            tasks.append(asyncio.create_task(self.source.run(self), name="nats"))
        if intake.synced.is_set():
            intake.dirty.set()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.cancelled():
                    continue
                if t.exception() is not None:
                    # Every loop handles its own failures; reaching this is a bug. One line, then out.
                    self.fatal = t.exception()
                    log.critical("internal error in the %s loop: %r", t.get_name(), self.fatal, exc_info=self.fatal)
                elif t.get_name() == "apply":
                    self.fatal = t.result()  # the kernel refused too often
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if dataplane.unsaved.is_set():  # a commit the save loop had not written yet
                self.saved.save_snapshot(intake.compiler.relevant_state())
            await self.source.close()
