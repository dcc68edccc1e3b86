"""A `cfnft reconcile` process of its own, for the benchmarks that measure one from outside: the
time from its start to /readyz answering 200, its RSS and CPU time (/proc), and how many state
messages it has received (/metrics)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.natsserver import free_port


def cpu_seconds(pid: int) -> float:
    """User + system time of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


@dataclass(frozen=True)
class ReconcileProcess:
    pid: int
    port: int
    started: float  # time.perf_counter() at the process start
    ready_s: float  # from the process start to /readyz answering 200

    def messages_received(self) -> float:
        _, body = _get(f"http://127.0.0.1:{self.port}/metrics")
        lines = body.splitlines()
        return next((float(line.split()[1]) for line in lines if line.startswith("cfnft_messages_total ")), 0.0)

    def ready(self) -> bool:
        return _get(f"http://127.0.0.1:{self.port}/readyz")[0] == 200

    def wait_replayed(self, messages: int, timeout: float = 300) -> float:
        """Wait until the process has received `messages` state messages (the stream's content) and is
        ready with them; return the seconds from its start. (After a restart it is ready earlier, on its
        saved state, while the replay still runs.)"""
        while self.messages_received() < messages or not self.ready():
            if time.perf_counter() - self.started > timeout:
                raise RuntimeError(f"the reconciler process did not take in {messages} messages in {timeout}s")
            time.sleep(0.02)
        return time.perf_counter() - self.started


def write_config(path: Path, cell_id: str, url: str, netns: str, **settings: object) -> int:
    """A reconciler config file with its files beside `path` and metrics on a free port; returns the port."""
    port = free_port()
    config = {
        "cell_id": cell_id,
        "nats": {"servers": [url], "insecure": True},
        "netns": netns,
        "socket_path": str(path.with_suffix(".sock")),
        "state_dir": str(path.with_suffix(".state")),
        "metrics_listen": f"127.0.0.1:{port}",
    }
    path.write_text(json.dumps(config | settings))
    return port


@contextlib.contextmanager
def reconcile_process(config: Path, port: int, timeout: float = 300) -> Iterator[ReconcileProcess]:
    """Run `cfnft reconcile --config config` until the block ends; enter once it is ready."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfnft.cli", "reconcile", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while _get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            if proc.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError(f"the reconciler process did not become ready (exit status {proc.poll()})")
            time.sleep(0.01)
        yield ReconcileProcess(proc.pid, port, started, time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
