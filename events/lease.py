"""A leader lease, so that of several replicas of one watcher only one publishes.

Two replicas publishing the same objects from views that lag each other by a moment would
overwrite each other's newer state with older (and with clocks out of the picture, nothing on
the reader's side could tell which is newer). So each watcher kind (`bbs`, `policy`, `cc`) runs
under a lease, as controller-runtime's leader election does with a Kubernetes Lease:

- The lease is a key in the JetStream key-value bucket `CFNFT_LEASES`, whose entries expire
  `ttl` seconds after their last write (the bucket's max age: the server's clock, not ours).
- A replica acquires it by creating the key (which fails while another holder's entry lives),
  renews it every `ttl/3` with a compare-and-set on the revision it last wrote (which fails once
  anyone else has written it), and releases it by deleting it when it stops.
- A holder that cannot renew for `ttl` seconds (NATS unreachable, process paused) counts the
  lease as lost, since the key has expired and another replica may hold it by now.

A holder paused past its lease may still publish once before it notices. That publish carries
`Nats-Expected-Last-Subject-Sequence` (events/publisher.py), so it is refused for every subject
the new holder has written: the lease elects, the sequence check fences.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from events.tasks import stop_if_cancelled

log = logging.getLogger(__name__)

LEASE_BUCKET = "CFNFT_LEASES"


def holder_identity() -> str:
    """Who holds a lease: this host and process, and a random part (a restarted process is another holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(
        self, nc: NATS, name: str, *, ttl: float = 15.0, holder: str | None = None, replicas: int | None = None
    ) -> None:
        self._nc = nc
        self.name = name
        self.ttl = ttl
        self._replicas = replicas or 1  # of the bucket, when this replica creates it
        self.holder = holder or holder_identity()
        self._kv: KeyValue | None = None
        self._revision: int | None = None

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def acquire(self) -> None:
        """Wait until this replica holds the lease."""
        announced = False
        while True:
            stop_if_cancelled()
            try:
                kv = await self._bucket()
                self._revision = await kv.create(self.name, self.holder.encode())
                log.info("holding the lease %s as %s", self.name, self.holder)
                return
            except KeyWrongLastSequenceError:
                if not announced:
                    log.info("lease %s is held by another replica: standing by", self.name)
                    announced = True
            except (NatsError, asyncio.TimeoutError) as e:
                log.warning("cannot reach the lease %s: %r", self.name, e)
            await asyncio.sleep(self.ttl / 3 * random.uniform(0.5, 1.0))

    async def hold(self) -> None:
        """Renew the lease until it is lost (another holder wrote it, or renewals failed for `ttl`); then return."""
        renewed = time.monotonic()
        while self._revision is not None:
            await asyncio.sleep(self.ttl / 3)
            stop_if_cancelled()
            try:
                kv = await self._bucket()
                self._revision = await kv.update(self.name, self.holder.encode(), last=self._revision)
                renewed = time.monotonic()
            except KeyWrongLastSequenceError:
                log.warning("lost the lease %s: another replica holds it now", self.name)
                self._revision = None
            except (NatsError, asyncio.TimeoutError) as e:
                if time.monotonic() - renewed >= self.ttl:
                    log.warning("lost the lease %s: no renewal for %.0fs (%r)", self.name, self.ttl, e)
                    self._revision = None

    async def release(self) -> None:
        """Give the lease up now (a standby takes over without waiting for it to expire)."""
        revision, self._revision = self._revision, None
        if revision is None or self._kv is None:
            return
        try:
            await self._kv.delete(self.name, last=revision)
        except (NatsError, asyncio.TimeoutError) as e:  # it expires by itself
            log.debug("could not release the lease %s: %r", self.name, e)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            js = self._nc.jetstream()
            try:
                self._kv = await js.key_value(LEASE_BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self._kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=LEASE_BUCKET, ttl=self.ttl, history=1, storage=StorageType.FILE, replicas=self._replicas
                    )
                )
            # Whoever created the bucket chose the expiry: renew at the pace it asks for.
            self.ttl = (await self._kv.status()).ttl or self.ttl
        return self._kv
