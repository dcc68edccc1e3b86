"""Which stream sequence of an object the kernel enforces (reconciler/realization.py), through a replay
and live changes, remembering only what is not committed yet."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from events import subjects
from events.messages import SecurityGroupMessage
from reconciler.realization import Realization


def test_an_object_is_enforced_once_the_generation_that_carries_it_is_committed() -> None:
    realization = Realization(Histogram("latency", "", registry=CollectorRegistry()))
    g1, g2 = subjects.security_group("g1"), subjects.security_group("g2")
    for guid in ("g1", "g2"):
        realization.received(SecurityGroupMessage(guid=guid, security_group=None), 0, changed=True, replaying=True)
    realization.replay_done(1)
    assert realization.enforced_version(g1, 40, committed_generation=0) is None, "the replay is not committed yet"
    realization.committed(1)
    assert realization.enforced_version(g1, 40, committed_generation=1) == 40
    realization.received(SecurityGroupMessage(guid="g1", security_group=None), 2, changed=True, replaying=False)
    assert realization.enforced_version(g1, 41, committed_generation=1) is None, "its change waits for generation 2"
    assert realization.enforced_version(g2, 41, committed_generation=1) == 41
    assert realization.enforced_version(g1, None, committed_generation=1) is None, "nothing of its kind read"
    realization.committed(2)
    assert realization.enforced_version(g1, 41, committed_generation=2) == 41
    assert realization._changed_in == {}, "what is committed is not remembered per subject"
    # A change that touched nothing here rides on a generation already committed.
    realization.received(SecurityGroupMessage(guid="g2", security_group=None), 2, changed=True, replaying=False)
    assert realization._changed_in == {} and realization.enforced_version(g2, 42, committed_generation=2) == 42
