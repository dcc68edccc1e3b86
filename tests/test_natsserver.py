"""The nats-server fixture: JetStream works, and a stop/start keeps the port and what JetStream stored."""

from __future__ import annotations

import socket

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError

from lab.natsserver import NatsServer, wait_connection

pytestmark = pytest.mark.nats


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def test_server_serves_jetstream(nats_client: NatsClient) -> None:
    """The fixture's server has JetStream: a key-value bucket round-trips a value."""
    kv = await nats_client.jetstream().create_key_value(bucket="fixture")
    await kv.put("k", b"v")
    assert (await kv.get("k")).value == b"v"


async def test_restart_keeps_port_and_store(nats_server: NatsServer, nats_client: NatsClient) -> None:
    """stop() closes the port, start() brings the same server back; the client reconnects and finds its data."""
    kv = await nats_client.jetstream().create_key_value(bucket="outage")
    await kv.put("k", b"before")
    port = nats_server.port

    nats_server.stop()
    assert not nats_server.running
    assert not _accepts(port)
    await wait_connection(nats_client, connected=False)

    nats_server.start()
    assert nats_server.port == port
    await wait_connection(nats_client, connected=True)
    kv = await nats_client.jetstream().key_value("outage")
    assert (await kv.get("k")).value == b"before"


async def test_hard_stop_then_fresh_store(nats_server: NatsServer, nats_client: NatsClient) -> None:
    """A SIGKILL'd server restarted on an emptied store has forgotten its buckets."""
    await nats_client.jetstream().create_key_value(bucket="gone")
    nats_server.stop(hard=True)
    await wait_connection(nats_client, connected=False)
    nats_server.remove_store()
    nats_server.start()
    await wait_connection(nats_client, connected=True)
    with pytest.raises(BucketNotFoundError):
        await nats_client.jetstream().key_value("gone")
