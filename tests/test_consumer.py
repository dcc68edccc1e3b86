"""A cell's state consumer against a real nats-server: once it counts as interrupted, nothing more
from the old consumer moves where the cell resumes.

In the three-node failover test a consumer left on a killed node came back with the node, delivered
again from an earlier point, and then heartbeated "sent up to consumer message 30, scanned to stream
sequence 300": by chance the very consumer sequence the cell had stopped at, so the cell took the
heartbeat as proof it had everything up to 300 and resumed after 300, skipping every change between.
Here the server's heartbeats to the consumer's delivery subject are sent directly, with the same
headers, so that moment is reproduced without waiting for a cluster to produce it by chance.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from events import subjects
from events.messages import AppInstancesMessage
from events.permissions import cell_consumers
from events.publisher import StatePublisher
from reconciler.consumer import StateConsumer
from tests.running import until

pytestmark = pytest.mark.nats


async def heartbeat(nc: NatsClient, deliver_subject: str, last_consumer: int, last_stream: int) -> None:
    """What nats-server sends an idle push consumer's delivery subject."""
    headers = {
        "Status": "100",
        "Description": "Idle Heartbeat",
        "Nats-Last-Consumer": str(last_consumer),
        "Nats-Last-Stream": str(last_stream),
    }
    await nc.publish(deliver_subject, b"", headers=headers)


async def test_an_interrupted_consumer_believes_no_later_heartbeat(nats_client: NatsClient) -> None:
    publisher = StatePublisher(nats_client, "bbs")
    for i in range(5):
        await publisher.publish(AppInstancesMessage(version=1, app_guid=f"app-{i}", addresses=[]))

    spec = next(c for c in cell_consumers("a") if c.filter_subject == f"{subjects.STATE_PREFIX}.app.*")
    delivered: list[Msg] = []
    interruptions: list[str] = []
    consumer = StateConsumer(
        nats_client,
        spec,
        delivered.append,
        lambda _consumer, reason: interruptions.append(reason),
        heartbeat_seconds=30,  # no heartbeat of the server's own interferes
    )
    await consumer.open()
    try:
        await until(consumer.drained.is_set, "the replay delivered")
        assert len(delivered) == 5
        position = consumer.position
        info = await nats_client.jetstream().consumer_info(subjects.STATE_STREAM, consumer.name)
        inbox = info.config.deliver_subject
        assert inbox is not None

        # A heartbeat that agrees with what arrived moves the position past messages of other filters.
        for _ in range(2):
            await nats_client.jetstream().publish(f"{subjects.STATE_PREFIX}.container.b.h", b"{}")
        await heartbeat(nats_client, inbox, last_consumer=5, last_stream=position + 2)
        await until(lambda: consumer.position == position + 2, "the position moved by an agreeing heartbeat")

        # One that says more was sent than arrived interrupts the consumer...
        await heartbeat(nats_client, inbox, last_consumer=6, last_stream=position + 3)
        await until(lambda: len(interruptions) == 1, "the consumer interrupted")
        assert "sent up to message 6" in interruptions[0]

        # ...and from then on the old consumer is not believed, even when it names the consumer
        # sequence the cell stopped at, as a consumer restored on a restarted server did.
        await heartbeat(nats_client, inbox, last_consumer=5, last_stream=300)
        await asyncio.sleep(0.3)  # the positive case above moved within milliseconds
        assert consumer.position == position + 2, "a heartbeat of the abandoned consumer moved the position"

        # Reopened after its position, it delivers what came since and nothing twice.
        await publisher.publish(AppInstancesMessage(version=2, app_guid="app-0", addresses=[IPv4Address("10.255.0.2")]))
        await consumer.open(resume_after=consumer.position)
        await until(lambda: len(delivered) == 6, "the change after the interruption")
        assert [m.metadata.sequence.stream for m in delivered] == sorted(
            {m.metadata.sequence.stream for m in delivered}
        )
        assert len(interruptions) == 1
    finally:
        await consumer.close()
