"""The reconciler's loops on a clock of the test's own (reconciler/loops.py `Clock`): an hour
between drift probes, thirty seconds of retry backoff, and the test never waits for either. The
kernel is FakeNft; the reconciler starts from a saved state, without NATS."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from pathlib import Path

from events.models import CellState, load_cell_state
from nft import FakeNft, Transaction, diff
from reconciler.compile import TABLE, compile_ruleset
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from tests.running import running, until
from tests.test_daemon_faults import STATE


class FakeClock:
    """Time that passes only when the test moves it: sleepers and timers wake in their order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: woken.done() or woken.set_result(None))
        await woken

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._due, (self.now + seconds, next(self._order), callback))

    def pending(self) -> list[float]:
        """When the sleepers and timers now waiting are due."""
        return sorted(at for at, _, _ in self._due)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._due and self._due[0][0] <= self.now:
            heapq.heappop(self._due)[2]()


def saved_state(tmp_path: Path, **settings: float) -> tuple[CellState, ReconcilerConfig]:
    state = load_cell_state(STATE)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "last-state-a.json").write_text(state.model_dump_json())
    return state, ReconcilerConfig.model_validate(
        {"cell_id": "a", "state_dir": state_dir, "socket_path": tmp_path / "r.sock", **settings}
    )


def metric(rec: Reconciler, name: str) -> float:
    return rec.metrics.registry.get_sample_value(name) or 0.0


async def test_an_hour_between_drift_probes_passes_at_once_and_the_drift_is_repaired(tmp_path: Path) -> None:
    state, cfg = saved_state(tmp_path, drift_probe_seconds=3600, full_check_seconds=7200)
    kernel, clock = FakeNft(), FakeClock()
    rec = Reconciler(cfg, kernel, clock=clock)
    async with running(rec, with_nats=False):
        await until(lambda: rec.ready, "ready on the saved state")
        await until(lambda: 3600 in clock.pending(), "the drift loop asleep until its next probe")
        current = kernel.read(TABLE)
        assert current is not None
        tampered = Transaction(TABLE)
        tampered.flush(current.chains["forward"])
        kernel.apply(tampered)
        clock.advance(3599)
        await asyncio.sleep(0.05)
        assert metric(rec, "cfnft_drift_repairs_total") == 0, "nothing probes before its time"
        clock.advance(1)
        await until(lambda: metric(rec, "cfnft_drift_repairs_total") == 1, "the probe noticing the flushed chain")
        await until(lambda: rec.ready and diff(compile_ruleset(state), kernel.read(TABLE)).is_empty, "the repair")


async def test_failed_applies_back_off_on_the_clock_then_succeed(tmp_path: Path) -> None:
    state, cfg = saved_state(tmp_path, retry_max_seconds=30, rebuild_after_failures=10, drift_probe_seconds=3600)
    kernel, clock = FakeNft(), FakeClock()
    kernel.fail_next(4)  # the skeleton install, then the first three passes
    rec = Reconciler(cfg, kernel, clock=clock)
    async with running(rec, with_nats=False):
        for failures in (1, 2, 3):
            await until(lambda n=failures: metric(rec, "cfnft_apply_failures_total") == n + 1, f"failure {failures}")
            await until(lambda: len(clock.pending()) == 2, "the retry on the clock, beside the drift probe")
            assert not kernel.transactions and not rec.ready
            retry = min(clock.pending())
            # Capped exponential backoff with jitter: 0.05 * 2**n seconds, times 0.5 to 1.5.
            assert 0.05 * 2**failures * 0.5 <= retry - clock.now <= 0.05 * 2**failures * 1.5
            clock.advance(retry - clock.now)
        await until(lambda: rec.ready, "the fourth pass committing")
        assert len(kernel.transactions) == 1, "one transaction did it all"
        assert diff(compile_ruleset(state), kernel.read(TABLE)).is_empty
