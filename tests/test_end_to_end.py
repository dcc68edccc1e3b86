"""Simulators -> watchers -> NATS -> reconcilers -> nft -> packets, across two cells.

This is `cfnft demo --ci`: BBS and policy-server simulators over mutual TLS, the real watchers,
a 3-node nats-server cluster with TLS and the role identities, two cells with reconcilers, apps
attached by the real CNI chain. It pushes two apps and checks default deny, a DNS security group,
a c2c policy across cells, a dynamic ASG binding on a running app, a change made just after the
NATS node leading the stream was killed, and a flushed table being repaired, each change measured
from the simulator's change to the probe seeing it.
"""

from __future__ import annotations

import pytest

from lab import demo

pytestmark = [pytest.mark.kernel, pytest.mark.nats]


async def test_the_demo_walk_through_holds_every_promise(capsys):
    rc = await demo.run(ci=True, keep=False)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "WRONG" not in out
    assert "kill -9 NATS node" in out
    assert "15 of 15 probes as expected" in out
