"""A single worker thread, optionally moved into a named network namespace, that runs calls in order.

A network namespace belongs to a thread, not a process: after setns(2) only the calling thread
talks netlink inside the namespace, while the rest of the process (the asyncio loop, NATS
sockets) stays where it was. Every call for one namespace therefore goes through one dedicated
thread, which also keeps the libnftables context (not thread-safe) on a single thread.

Callers wait on it: sync callers block on a future, asyncio callers await `run_in_executor`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from nft.errors import NamespaceError

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000  # Python 3.11 has no os.setns


class NamespaceThread:
    """Runs callables on one thread; inside `netns` (a name under /var/run/netns) when given."""

    def __init__(self, netns: str | None = None, *, setup: Callable[[], None] | None = None) -> None:
        self.netns = netns
        self._setup = setup
        self._error: BaseException | None = None
        fd = -1
        if netns is not None:
            try:
                fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise NamespaceError(netns, f"cannot open {NETNS_DIR}/{netns}: {e.strerror}") from None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"nft-{netns or 'host'}", initializer=self._enter, initargs=(fd,)
        )

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Runs `fn(*args)` on the worker thread and returns its result (or raises its exception)."""
        return self._executor.submit(self._guarded, fn, *args).result()

    async def call_async(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._guarded, fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _enter(self, fd: int) -> None:
        # Runs once, on the worker thread, before its first call. An exception raised here would
        # break the executor with no message; keep it and raise it from every call instead.
        try:
            if fd >= 0:
                libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NamespaceError(self.netns or "", f"setns: {os.strerror(err)}")
            if self._setup is not None:
                self._setup()
        except BaseException as e:  # noqa: BLE001 - re-raised from call()
            self._error = e
        finally:
            if fd >= 0:
                os.close(fd)

    def _guarded(self, fn: Callable[..., T], *args: object) -> T:
        if self._error is not None:
            raise self._error
        return fn(*args)
