"""Fixtures shared by the tests of the CF watchers and simulators: certificates, the policy-server
and Cloud Controller simulators over mutual TLS, a plain HTTP client, and a view of the NATS state
stream. (The BBS tests start their simulator themselves: it takes scenario-specific arguments.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from lab.cfsim import StateView
from lab.pki import Pki, make_pki
from lab.sim.cc import CloudControllerSimulator
from lab.sim.policy import PolicyServerSimulator

BBS_SERVER_NAME = "bbs.service.cf.internal"
"""The name BBS's certificate carries (the simulators all serve one certificate, also valid for 127.0.0.1)."""


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), BBS_SERVER_NAME)


@pytest.fixture
async def sim(pki: Pki) -> AsyncIterator[PolicyServerSimulator]:
    """The policy server's internal API."""
    async with PolicyServerSimulator(pki.server) as server:
        yield server


@pytest.fixture
async def cc(pki: Pki) -> AsyncIterator[CloudControllerSimulator]:
    """Cloud Controller and UAA."""
    async with CloudControllerSimulator(pki.server, client_secret="s3cret") as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def view(nats_client: NATS) -> AsyncIterator[StateView]:
    async with StateView(nats_client) as state:
        yield state
