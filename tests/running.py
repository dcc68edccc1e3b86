"""Running a reconciler in-process for a test, and waiting for what it should reach."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from reconciler.daemon import Reconciler


@contextlib.asynccontextmanager
async def running(rec: Reconciler, *, with_nats: bool = True) -> AsyncIterator[Reconciler]:
    """`rec.run()` as a task for the block, cancelled (and awaited) after it, also on failure."""
    task = asyncio.create_task(rec.run(with_nats=with_nats), name=f"reconciler-{rec.config.cell_id}")
    try:
        yield rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait until `predicate()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
