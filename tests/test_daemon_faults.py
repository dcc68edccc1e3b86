"""The reconciler's failure handling, against FakeNft (which refuses what the kernel refuses and
can be told to fail): retries, the whole-table rebuild, giving up, and life without NATS."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

from events.models import Container, load_cell_state
from nft import AddrRange, FakeNft, diff, render_ruleset
from reconciler.compile import TABLE, compile_ruleset
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler

STATE = {
    "cell_id": "a",
    "containers": [{"handle": "web-0", "ip": "10.255.1.2", "app_guid": "web", "space_guid": "s", "workload": "app"}],
    "security_groups": [
        {
            "guid": "g",
            "name": "g",
            "globally_enabled": {"running": True, "staging": False},
            "rules": [{"protocol": "tcp", "destination": "192.0.2.1", "ports": "443"}],
        }
    ],
}


def saved_state(tmp_path):
    """A reconciler whose last committed state is on disk (as after a restart), and no NATS."""
    state = load_cell_state(STATE)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "last-state-a.json").write_text(state.model_dump_json())
    return state, ReconcilerConfig(
        cell_id="a",
        state_dir=state_dir,
        socket_path=tmp_path / "r.sock",
        drift_probe_seconds=0.05,
        retry_max_seconds=0.05,
        rebuild_after_failures=3,
        give_up_after_failures=8,
    )


@contextlib.asynccontextmanager
async def running(rec: Reconciler):
    task = asyncio.create_task(rec.run(with_nats=False))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def metric(rec: Reconciler, name: str) -> float:
    return rec.metrics.registry.get_sample_value(name) or 0.0


async def test_transient_failures_are_retried_and_nothing_is_half_applied(tmp_path):
    state, cfg = saved_state(tmp_path)
    kernel = FakeNft()
    kernel.fail_next(3)  # the skeleton install, then two passes of the apply loop
    rec = Reconciler(cfg, kernel)
    async with running(rec):
        await until(lambda: rec.ready)
        assert diff(compile_ruleset(state), kernel.read(TABLE)).is_empty
        assert len(kernel.transactions) == 1, "failed transactions leave nothing; one commit did it all"
    assert metric(rec, "cfnft_apply_failures_total") == 3
    assert metric(rec, "cfnft_table_rebuilds_total") == 0


async def test_repeated_failures_rebuild_the_whole_table_in_one_transaction(tmp_path):
    state, cfg = saved_state(tmp_path)
    kernel = FakeNft()
    rec = Reconciler(cfg, kernel)
    async with running(rec):
        await until(lambda: rec.ready)
        kernel.fail_next(3)
        cell_b = Container(
            handle="web-1", ip=ipaddress.IPv4Address("10.255.1.3"), app_guid="web", space_guid="s", workload="app"
        )
        rec.register(cell_b)
        await until(lambda: rec.ready and metric(rec, "cfnft_table_rebuilds_total") >= 1)
        expected = compile_ruleset(state.model_copy(update={"containers": [*state.containers, cell_b]}))
        assert render_ruleset(kernel.read(TABLE)) == render_ruleset(expected)
        assert "delete table inet cfnft" in kernel.transactions[-1].render()
    assert metric(rec, "cfnft_apply_failures_total") == 3


async def test_a_kernel_that_keeps_failing_makes_the_process_give_up(tmp_path):
    _, cfg = saved_state(tmp_path)
    kernel = FakeNft()
    rec = Reconciler(cfg, kernel)
    async with running(rec) as task:
        await until(lambda: rec.ready)
        kernel.fail_next(100)
        rec.register(
            Container(
                handle="x", ip=ipaddress.IPv4Address("10.255.1.9"), app_guid="web", space_guid="s", workload="app"
            )
        )
        await until(task.done)
    assert rec.fatal is not None and not rec.ready
    assert metric(rec, "cfnft_apply_failures_total") == cfg.give_up_after_failures


async def test_without_nats_the_saved_state_is_enforced_and_new_containers_start(tmp_path):
    state, cfg = saved_state(tmp_path)
    kernel = FakeNft()
    kernel.apply(diff(compile_ruleset(state), None))
    before = kernel.dump()
    rec = Reconciler(cfg, kernel)
    async with running(rec):
        await until(lambda: rec.ready)
        assert kernel.dump() == before, "a restart with nothing changed writes nothing"
        generation = rec.register(
            Container(
                handle="new", ip=ipaddress.IPv4Address("10.255.1.7"), app_guid="web", space_guid="s", workload="app"
            )
        )
        await rec.wait_committed(generation, timeout=5)
        egress = kernel.read(TABLE).elements["egress4"]
        assert (AddrRange.single(ipaddress.IPv4Address("10.255.1.7")),) in egress


async def test_drift_is_repaired_from_the_cheap_probe(tmp_path):
    state, cfg = saved_state(tmp_path)
    kernel = FakeNft()
    rec = Reconciler(cfg, kernel)
    async with running(rec):
        await until(lambda: rec.ready)
        current = kernel.read(TABLE)
        from nft import Transaction

        tx = Transaction(TABLE)
        tx.flush(current.chains["forward"])
        kernel.apply(tx)
        await until(
            lambda: (
                metric(rec, "cfnft_drift_repairs_total") >= 1
                and rec.ready
                and diff(compile_ruleset(state), kernel.read(TABLE)).is_empty
            )
        )
