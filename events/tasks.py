"""Two asyncio helpers for loops that run beside nats-py until they are cancelled.

nats-py awaits its requests with `asyncio.wait_for`, which on Python 3.11 may return a result and
drop a cancellation that arrived at the same moment. A loop that keeps retrying NATS calls would
then outlive its owner's shutdown (the reconciler's, a watcher replica's), so such loops check
`stop_if_cancelled()` on every turn, and wait on events with `wait_event`, which uses
`asyncio.timeout` (exact about whose cancellation it is) rather than `wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib


def stop_if_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait at most `seconds` for `event`; return whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
