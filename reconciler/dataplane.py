"""The dataplane: the one writer of the cell's `inet cfnft` table.

`Dataplane.converge()` is one pass: it has a worker thread recompile what the changes touched,
diff those parts against what the kernel holds and render the transaction
(reconciler/planning.py), and commits it. What the compiler or the kernel refuses, or what
exceeds the element caps, is found and left out alone (reconciler/isolation.py), and the pass
runs again without it. After `rebuild_after_failures` failed passes in a row the next replaces
the whole table in one transaction. `probe()` compares the kernel with what was committed
(drift); `install_skeleton_if_missing()` puts the fail-closed skeleton in place at start-up.

What the kernel holds is known as the ruleset committed last (`actual`), so a pass diffs only
what its compile touched; after a failure, a drift or a resync it is read back from the kernel.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from events.models import CellState
from nft import NftError, NftInterface, diff, same_structure
from nft.objects import Ruleset
from reconciler.admission import Unusable
from reconciler.compile import TABLE, Compiler, compile_ruleset
from reconciler.config import ReconcilerConfig
from reconciler.explain import ExplainInputError
from reconciler.intake import StateIntake
from reconciler.isolation import Check, find_culprits
from reconciler.keys import StateKey
from reconciler.metrics import ReconcilerMetrics
from reconciler.planning import Pass, plan, plan_pass
from reconciler.revoke import RevokeError, may_revoke, revoke_disallowed
from reconciler.units import units_of, without

log = logging.getLogger(__name__)

# Passes that leave culprits out and compile again, at most, before one counts as failed.
_ISOLATION_ROUNDS = 8


class PlanError(Exception):
    """The desired state cannot be compiled, and leaving out objects does not help (a bug or a bad config)."""


class Dataplane:
    def __init__(
        self, config: ReconcilerConfig, runner: NftInterface, intake: StateIntake, metrics: ReconcilerMetrics
    ) -> None:
        self.config = config
        self.runner = runner
        self.metrics = metrics
        self._intake = intake
        self._compiler = intake.compiler
        self._admitted = intake.admitted
        self.failures = 0  # failed passes in a row
        self.last_error: str | None = None
        self.desired: Ruleset | None = None  # what the last pass compiled
        self.unsaved = asyncio.Event()  # a commit since the saved state was last written
        self._actual: Ruleset | None = None
        self._actual_committed = False  # _actual is the ruleset we committed last (not a read-back)
        self._readback = True
        self._enforced: set[str] = set()  # the local containers the last committed pass enforces
        self._committed_ruleset: Ruleset | None = None  # what the kernel holds
        self._committed: tuple[CellState, Ruleset] | None = None  # and what it was compiled from, once asked
        self._committed_before: tuple[CellState, Ruleset] | None = None  # the previous answer, during a compile

    def enforced(self, handle: str) -> bool:
        """Whether the last committed pass enforces local container `handle`."""
        return handle in self._enforced

    def read_back(self) -> None:
        """Take the kernel's table as it is on the next pass, not as we committed it."""
        self._readback = True

    @property
    def committed(self) -> tuple[CellState, Ruleset] | None:
        """What the kernel holds, for operators' questions (explain, stats, the flow log): the ruleset
        committed last and the part of the state it was compiled from (IncrementalCompiler.relevant_state),
        built on the first question after a commit, not on every pass; the same tuple until the next.
        While a pass compiles, the answer of before."""
        if self._intake.compiling:
            return self._committed or self._committed_before
        if self._committed is None and self._committed_ruleset is not None:
            self._committed = (self._compiler.relevant_state(), self._committed_ruleset)
        return self._committed

    # ------------------------------------------------------------------ one pass

    async def converge(self) -> bool:
        """One pass: compile what changed, diff, commit. Returns whether the kernel was written."""
        for _ in range(_ISOLATION_ROUNDS):
            if self._readback or self._actual is None:
                self._actual = await self.runner.read_async(TABLE)
                self._actual_committed = self._readback = False
            rebuild = self.failures >= self.config.rebuild_after_failures
            planned = await self._plan(rebuild)
            if planned is None:
                continue  # culprits left out: once more without them
            if planned.tx is None:
                self._leave_out(planned.oversized)
                continue
            self._intake.board.left_out(self._admitted.left_out())
            if rebuild:
                self.metrics.table_rebuilds.inc()
                log.warning("rebuilding table %s whole after %d failures", TABLE.name, self.failures)
            self.desired = planned.desired
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
            self._enforced = self._compiler.local_handles()
            if planned.tx.is_empty:
                return False
            if self._compiler.config.revoke_established and may_revoke(planned.tx):
                committed = self.committed
                assert committed is not None
                await self._revoke(*committed)
            chains, rules, elements = planned.desired.counts()
            self.metrics.chains.set(chains)
            self.metrics.rules.set(rules)
            self.metrics.elements.set(elements)
            self.metrics.containers.set(self._compiler.containers)
            if self._intake.nats_synced:
                self.unsaved.set()
            return True
        raise PlanError(f"objects keep failing after {_ISOLATION_ROUNDS} rounds of leaving culprits out")

    async def _plan(self, rebuild: bool) -> Pass | None:
        """The pass's plan, computed on a worker thread while the store's inputs wait; None when the
        compile failed and culprits were found and left out."""
        try:
            with self._intake.held():
                return await asyncio.to_thread(
                    plan_pass,
                    self._compiler,
                    self._actual,
                    committed=self._actual_committed,
                    rebuild=rebuild,
                    limits=self.config.limits,
                )
        except Exception as e:  # the compiler or the transaction's own checks refused the state
            failure = e
        reason = _one_line(failure)
        log.error("the desired state does not compile (%s): looking for the objects that cause it", reason)
        state = await self._whole_state()
        culprits = await find_culprits(units_of(state), self._compiles(state))
        if not culprits:
            raise PlanError(f"the desired state does not compile: {reason}") from failure
        self._leave_out([Unusable(unit, f"the compiler refused it ({reason})") for unit in culprits])
        return None

    async def _whole_state(self) -> CellState:
        """Everything admitted, as one document, for the search for culprits. Built on the worker
        thread (it parses every stored group back into a model: ~0.5 s at 2,000 groups), with the
        inputs held meanwhile, so the CNI socket and /healthz keep answering."""
        with self._intake.held():
            return await asyncio.to_thread(self._admitted.state)

    def _compiles(self, state: CellState) -> Check:
        compiler = Compiler()  # the reference compiler, with the search's own caches

        async def passes(excluded: frozenset[StateKey]) -> bool:
            try:
                await asyncio.to_thread(
                    plan, compiler, without(state, excluded), None, rebuild=True, limits=self.config.limits
                )
            except Exception:  # whatever refused the whole state refuses this one too
                return False
            return True

        return passes

    async def _isolate_kernel_refusal(self) -> bool:
        """After a failed commit: does the kernel refuse the content itself (a dry run of the whole
        table fails too)? Then find the objects it refuses, leave them out, and return True.
        False: the failure was not the content's (transient, or our view of the kernel was stale)."""
        state = await self._whole_state()
        compiler = Compiler()

        async def passes(excluded: frozenset[StateKey]) -> bool:
            try:
                whole = await asyncio.to_thread(
                    plan, compiler, without(state, excluded), None, rebuild=True, limits=self.config.limits
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
        for key in self._admitted.quarantine(culprits):
            self._compiler.changed(key)

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

    # ------------------------------------------------------------------ start-up and drift

    async def install_skeleton_if_missing(self) -> None:
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

    async def probe(self, full: bool) -> Drift | None:
        """How the kernel's table differs from what was committed, if it does: its chains and rules,
        and with `full` its set elements too. Raises NftError if the table cannot be read."""
        desired = self.desired
        if desired is None:
            return None
        kernel = await self.runner.read_async(TABLE, elements=full)
        if full:
            # A diff of a whole table is a compile's worth of work: off the event loop too.
            drifted = not (await asyncio.to_thread(diff, desired, kernel)).is_empty
        else:
            drifted = not same_structure(desired, kernel)
        return Drift(kernel if full else None) if drifted else None

    def repair(self, drift: Drift) -> None:
        """The next pass makes the kernel's table what it should be again."""
        self._actual = drift.kernel
        self._actual_committed = False
        self._readback = drift.kernel is None


@dataclass(frozen=True, slots=True)
class Drift:
    """The kernel's table differs from what was committed; `kernel` is the table as read, when it was
    read whole (else the next pass reads it back)."""

    kernel: Ruleset | None


def _one_line(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0]
