"""Fixtures shared by the policy-server and Cloud Controller tests: certificates, the
simulators over mutual TLS, a plain HTTP client, and a view of the NATS state stream.
(The BBS tests bring their own `pki`, with BBS's server name.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from lab.cfsim import Pki, StateView, make_pki
from lab.sim.cc import CloudControllerSimulator
from lab.sim.policy import PolicyServerSimulator


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def sim(pki: Pki) -> AsyncIterator[PolicyServerSimulator]:
    """The policy server's internal API."""
    async with PolicyServerSimulator(pki.server_files()) as server:
        yield server


@pytest.fixture
async def cc(pki: Pki) -> AsyncIterator[CloudControllerSimulator]:
    """Cloud Controller and UAA."""
    async with CloudControllerSimulator(pki.server_files(), client_secret="s3cret") as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def view(nats_client: NATS) -> AsyncIterator[StateView]:
    async with StateView(nats_client) as state:
        yield state
