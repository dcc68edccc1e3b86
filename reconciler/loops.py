"""The reconciler's loops: apply, drift and save, each a task of its own, timed by a `Clock`.

- `apply_loop` is the only writer of the kernel. It waits for the intake's `dirty`, runs one
  `Dataplane.converge()` pass and tells the intake how far it got. Bursts coalesce: whatever
  arrived while a pass ran is picked up by the next one. A pass the compiler cannot do is tried
  again with backoff; kernel failures retry with capped, jittered backoff; after
  `give_up_after_failures` in a row the loop returns the error, and the process exits non-zero so
  monit restarts it. The old rules keep enforcing throughout: nothing is ever flushed outside a
  transaction.
- `drift_loop` re-reads the kernel (cheaply every `drift_probe_seconds`, fully every
  `full_check_seconds`) and marks a pass due when someone changed our table behind our back.
- `save_loop` writes the state the compiler last used once a commit is through, at most once a
  second, and never in the way of a pass.

`Clock` is the time the loops see: `SystemClock` in the daemon; tests give one of their own and
drive the loops without sleeping.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Callable
from ctypes import CDLL
from typing import Protocol

from cfnft.errors import CfnftError
from events.poller import Backoff
from nft import NftError
from reconciler.config import ReconcilerConfig
from reconciler.dataplane import Dataplane, PlanError
from reconciler.intake import StateIntake
from reconciler.metrics import ReconcilerMetrics
from reconciler.saved import SavedState

log = logging.getLogger(__name__)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None: ...


class SystemClock:
    """The real time, through the running event loop."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(seconds, callback)


async def apply_loop(
    intake: StateIntake, dataplane: Dataplane, config: ReconcilerConfig, metrics: ReconcilerMetrics, clock: Clock
) -> BaseException:
    """Run passes until the kernel refused `give_up_after_failures` in a row; return that last error."""
    await intake.synced.wait()
    plan_failures = Backoff(0.1, config.retry_max_seconds)
    while True:
        await intake.dirty.wait()
        intake.dirty.clear()
        gen = intake.generation
        started = time.perf_counter()
        try:
            wrote = await dataplane.converge()
        except PlanError as e:
            # Not the kernel's fault and no object's: retrying as fast would change nothing.
            # The old rules keep enforcing; every later change is tried again.
            dataplane.last_error = str(e)
            metrics.reconcile_seconds.labels("error").observe(time.perf_counter() - started)
            log.error("%s; the kernel keeps its last committed rules", e)
            clock.call_later(plan_failures.next_delay(), intake.dirty.set)
            continue
        except Exception as e:  # the loop must outlive any one pass; NftError is the usual case
            dataplane.failures += 1
            dataplane.read_back()
            dataplane.last_error = (str(e) or type(e).__name__).splitlines()[0]
            metrics.apply_failures.inc()
            metrics.reconcile_seconds.labels("error").observe(time.perf_counter() - started)
            # An explained error says what failed and where; anything else is a bug: keep its traceback.
            failures = dataplane.failures
            log.error("apply failed (%d in a row): %s", failures, e, exc_info=not isinstance(e, CfnftError))
            if failures >= config.give_up_after_failures:
                log.critical("the kernel refused %d applies in a row; exiting so monit restarts us", failures)
                return e
            delay = min(config.retry_max_seconds, 0.05 * 2**failures) * (0.5 + random.random())
            clock.call_later(delay, intake.dirty.set)
            continue
        dataplane.failures = 0
        dataplane.last_error = None
        plan_failures.reset()
        if intake.fresh:
            intake.fresh = False
            settle_memory()
        metrics.reconcile_seconds.labels("changed" if wrote else "unchanged").observe(time.perf_counter() - started)
        intake.committed(gen)
        metrics.in_sync.set(1 if intake.converged and not intake.plane.degraded else 0)


async def drift_loop(
    intake: StateIntake, dataplane: Dataplane, config: ReconcilerConfig, metrics: ReconcilerMetrics, clock: Clock
) -> None:
    last_full = clock.monotonic()
    while True:
        await clock.sleep(config.drift_probe_seconds)
        if intake.dirty.is_set() or not intake.converged:
            continue
        full = clock.monotonic() - last_full >= config.full_check_seconds
        try:
            drift = await dataplane.probe(full)
        except NftError as e:
            log.error("drift probe failed: %s", e)
            continue
        if full:
            last_full = clock.monotonic()
        if drift is not None and intake.converged:  # a pass that ran meanwhile has the last word
            metrics.drift_repairs.inc()
            log.warning("table inet cfnft was changed outside cfnft; repairing")
            dataplane.repair(drift)
            intake.dirty.set()


async def save_loop(intake: StateIntake, dataplane: Dataplane, saved: SavedState, clock: Clock) -> None:
    """Write the state the compiler last used to the snapshot file once a commit is through, at
    most once a second (a burst of changes is saved once), and never in the way of a pass: the
    dataplane only marks it wanted, and a save waits for a quiet moment. What is saved is the
    relevant part of the foundation (IncrementalCompiler.relevant_state), so it is small."""
    every = 1.0
    saved_at = -every
    while True:
        await dataplane.unsaved.wait()
        await clock.sleep(max(0.0, saved_at + every - clock.monotonic()))
        while intake.dirty.is_set() or intake.compiling:  # a pass is due or running: let it go first
            await clock.sleep(0.01)
        dataplane.unsaved.clear()
        await asyncio.to_thread(saved.save_snapshot, intake.compiler.relevant_state())
        saved_at = clock.monotonic()


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


def _libc() -> CDLL | None:
    try:
        return CDLL(None)
    except OSError:  # no C library to ask: nothing to trim
        return None


_LIBC = _libc()
