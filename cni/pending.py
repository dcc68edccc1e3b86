"""Deletions the CNI plugin could not hand to the reconciler, kept on disk until it drains them.

CNI DEL must succeed even when the reconciler is down (the container is gone either way), but its
rules must not outlive it: a later container may get the same address. So DEL writes one file per
handle into a directory next to the reconciler's socket, `<socket path>.pending-del/`,
and the reconciler unregisters every handle found there once it is in sync (at start and every
second; reconciler/endpoint.py). Deriving the directory from the socket path means the two sides
cannot be configured apart.

Ordering: the runtime never runs two operations for one container at once, so a pending deletion
is always older than any later ADD of the same handle; the reconciler's ADD handler drops a
pending deletion of the handle it registers, and the drain only ever deletes what was DELed.

Stdlib only: the plugin imports this on DEL.
"""

from __future__ import annotations

import json
import os
import time

SUFFIX = ".pending-del"


def pending_dir(socket_path: str | os.PathLike[str]) -> str:
    """The directory of pending deletions that belongs to the reconciler socket `socket_path`."""
    return os.fspath(socket_path) + SUFFIX


def record(socket_path: str | os.PathLike[str], handle: str) -> str:
    """Write (atomically, idempotently) that `handle` was deleted; returns the file. Raises OSError."""
    directory = pending_dir(socket_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    target = os.path.join(directory, handle)
    tmp = os.path.join(directory, f".{handle}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump({"handle": handle, "deleted_at": time.time()}, f)
    os.replace(tmp, target)
    return target


def pending_handles(socket_path: str | os.PathLike[str]) -> list[str]:
    """Handles waiting to be unregistered (temporary files of writers in progress are skipped)."""
    try:
        names = os.listdir(pending_dir(socket_path))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith("."))


def forget(socket_path: str | os.PathLike[str], handle: str) -> None:
    """Drop the pending deletion of `handle`, if any."""
    try:
        os.unlink(os.path.join(pending_dir(socket_path), handle))
    except FileNotFoundError:
        pass
