"""Pipelined publishing into the state stream, against a real nats-server: many acknowledgements
outstanding at once, a subject's messages still in order, nothing unchanged sent twice, and a
failure reported with what was acknowledged still counted."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NoStreamResponseError

from events import subjects
from events.messages import AppInstancesMessage, Message
from events.publisher import StatePublisher
from lab.natsserver import NatsServer, wait_connection


def app(guid: str, version: int, last_octet: int) -> AppInstancesMessage:
    return AppInstancesMessage.model_validate(
        {"version": version, "app_guid": guid, "addresses": [f"10.255.1.{last_octet}"]}
    )


async def stream_content(nc: NatsClient) -> dict[str, Message]:
    """What the stream holds, without the observation time the publisher stamped on each message."""
    found = await StatePublisher(nc, "test-reader").load_published()
    out: dict[str, Message] = {}
    for subject, data in found.items():
        message = AppInstancesMessage.model_validate_json(data)
        assert message.observed_at is not None
        out[subject] = message.model_copy(update={"observed_at": None})
    return out


async def test_a_large_listing_is_published_whole_with_a_small_window(nats_client: NatsClient) -> None:
    publisher = StatePublisher(nats_client, "bbs", window=8)
    messages = [app(f"app-{i}", 1, i % 200 + 2) for i in range(500)]
    # The same subject twice in one batch: only the later one is sent.
    messages.append(app("app-0", 2, 250))
    sent = await publisher.publish_all(messages)
    assert len(sent) == 500 and messages[0] not in sent
    stream = await stream_content(nats_client)
    assert len(stream) == 500
    assert stream[subjects.app_instances("app-0")] == messages[-1]
    assert stream[subjects.app_instances("app-499")] == messages[499]


async def test_unchanged_content_is_not_sent_again(nats_client: NatsClient) -> None:
    publisher = StatePublisher(nats_client, "bbs")
    assert len(await publisher.publish_all([app("a", 1, 2), app("b", 1, 3)])) == 2
    # A new version of the same content, twice in one batch, and one real change.
    again = await publisher.publish_all([app("a", 2, 2), app("a", 3, 2), app("b", 2, 4)])
    assert again == [app("b", 2, 4)]
    # A restarted publisher learns what the stream holds and sends only the difference.
    restarted = StatePublisher(nats_client, "bbs")
    await restarted.load_published()
    assert await restarted.publish_all([app("a", 4, 2), app("b", 4, 5)]) == [app("b", 4, 5)]


async def test_a_failed_publish_raises_and_is_sent_again_next_time(
    nats_server: NatsServer, nats_client: NatsClient
) -> None:
    publisher = StatePublisher(nats_client, "bbs", ack_timeout=0.5)
    await publisher.publish_all([app("a", 1, 2)])
    nats_server.stop()
    await wait_connection(nats_client, connected=False)
    with pytest.raises(TimeoutError, match="no acknowledgement"):
        await publisher.publish_all([app("a", 2, 3), app("b", 2, 4)])
    nats_server.start()
    await wait_connection(nats_client, connected=True)
    # What the failed batch left uncertain is read back first (the reconnect may have delivered it):
    # what landed is not sent twice, nor taken for another publisher's write; the rest goes again.
    sent = await publisher.publish_all([app("a", 3, 3), app("b", 3, 4), app("c", 3, 5)])
    assert app("c", 3, 5) in sent
    stream = await stream_content(nats_client)
    assert stream[subjects.app_instances("a")].addresses == app("a", 3, 3).addresses
    assert stream[subjects.app_instances("b")].addresses == app("b", 3, 4).addresses


async def test_a_batch_no_stream_answers_fails_as_such_at_once(nats_client: NatsClient) -> None:
    """While no stream stores the subjects (a leader election; here: the stream deleted), the server
    answers "no responders": the batch fails with that, not with an unreadable acknowledgement or
    after waiting out the acknowledgement timeout."""
    publisher = StatePublisher(nats_client, "bbs", ack_timeout=30)
    await publisher.publish_all([app("a", 1, 2)])
    await nats_client.jetstream().delete_stream(subjects.STATE_STREAM)
    with pytest.raises(NoStreamResponseError):
        await asyncio.wait_for(publisher.publish_all([app("a", 2, 3), app("b", 2, 4)]), 10)
