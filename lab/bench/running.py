"""A reconciler under benchmark: run in this process, entered once it is in sync, and waited on
closely enough that the wait is not what gets measured."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from reconciler.daemon import Reconciler


async def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.0002) -> None:
    """Until `predicate()` holds, asked every `interval` (short by default: the moment is measured)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the reconciler did not get there in time")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def in_sync(rec: Reconciler, timeout: float = 60.0) -> AsyncIterator[Reconciler]:
    """Run `rec` for the block, which starts once it is in sync and has committed; stopped after."""
    task = asyncio.create_task(rec.run())
    try:
        await wait_until(lambda: rec.ready or task.done(), timeout, interval=0.01)
        if task.done():
            task.result()  # it ended before getting in sync: its error, not a timeout
            raise RuntimeError("the reconciler stopped before it got in sync")
        yield rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
