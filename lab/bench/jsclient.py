"""The floor of our NATS client library, for `cfnft bench --scenario foundation`: what nats-py
itself costs, measured beside what cfnft does with it.

    raw_publish(nc, payloads, window)    JetStream publishing of ready-made payloads with nats-py's
                                         own async publishing, `window` acks in flight at most
                                         (window 1: one acknowledged publish at a time)

Run as a process of its own (so its CPU time is its own, and it does not share an event loop
with the reconciler under test):

    python -m lab.bench.jsclient subscribe URL FILTER COUNT
        a bare JetStream subscriber: an ordered consumer of new messages on FILTER that receives
        and drops them; prints "ready" once subscribed and "done" after COUNT messages, then
        waits for its stdin to close
    python -m lab.bench.jsclient flood URL RATE FILE
        publishes the payloads of FILE (JSON: [[subject, payload], ...]) at RATE per second, round
        and round, until killed; prints "ready" once connected
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence

import nats
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

Payload = tuple[str, bytes]


async def raw_publish(nc: NATS, payloads: Sequence[Payload], window: int) -> None:
    """Publish every payload to JetStream, at most `window` unacknowledged, and wait for every ack."""
    if window == 1:
        js = nc.jetstream()
        for subject, data in payloads:
            await js.publish(subject, data)
        return
    js = nc.jetstream(publish_async_max_pending=window)
    futures = [await js.publish_async(subject, data) for subject, data in payloads]
    await asyncio.gather(*futures)


async def _subscribe(url: str, subject_filter: str, count: int) -> None:
    nc = await nats.connect(url)
    received = 0
    done = asyncio.Event()

    async def drop(msg) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    await nc.jetstream().subscribe(
        subject_filter, cb=drop, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, idle_heartbeat=5.0
    )
    print("ready", flush=True)
    await done.wait()
    print("done", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await nc.close()


async def paced_publish(nc: NATS, payloads: Sequence[Payload], rate: float, rounds: int | None = None) -> None:
    """Publish `payloads` at `rate` per second, `rounds` times over (None: until cancelled), and wait for the acks."""
    js = nc.jetstream(publish_async_max_pending=1000)
    started, sent, futures = time.perf_counter(), 0, []
    while rounds is None or sent < rounds * len(payloads):
        subject, data = payloads[sent % len(payloads)]
        futures.append(await js.publish_async(subject, data))
        sent += 1
        if rounds is None and len(futures) >= 1000:
            await asyncio.gather(*futures)
            futures = []
        ahead = sent / rate - (time.perf_counter() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await asyncio.gather(*futures)


async def _flood(url: str, rate: float, path: str) -> None:
    with open(path) as f:
        payloads = [(subject, data.encode()) for subject, data in json.load(f)]
    nc = await nats.connect(url)
    print("ready", flush=True)
    await paced_publish(nc, payloads, rate)


def main(argv: list[str]) -> int:
    match argv:
        case ["subscribe", url, subject_filter, count]:
            asyncio.run(_subscribe(url, subject_filter, int(count)))
        case ["flood", url, rate, path]:
            asyncio.run(_flood(url, float(rate), path))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
