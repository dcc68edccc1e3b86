"""Incremental changes on a full cell: what the reconciler does per event, call to kernel commit.

Each sample is the change taken into the store, the incremental compile of what it touches (the
daemon's IncrementalCompiler) + the diff of those parts against the last committed ruleset + one
libnftables transaction, timed around all of it, on a full cell already loaded in a namespace:
exactly the intake's and the apply loop's work for one change.
"""

from __future__ import annotations

import ipaddress
import statistics
import time
from dataclasses import dataclass

from cfnft.publish import state_messages
from events.messages import SecurityGroupMessage
from events.models import SecurityGroup, load_cell_state
from lab.bench.kernel import namespace
from nft import NftRunner, diff
from reconciler.admission import Limits
from reconciler.admitted import AdmittedState
from reconciler.compile import TABLE
from reconciler.incremental import IncrementalCompiler
from reconciler.keys import Kind, StateKey, key_of
from reconciler.loops import settle_memory
from reconciler.store import DesiredStore


@dataclass
class Latencies:
    samples: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def incremental(doc: dict, adds: int = 100, edits: int = 20) -> tuple[Latencies, Latencies]:
    """(one container added, one global security group edited), each as call-to-commit latencies.

    The added container and the edited group are parsed outside the timed path, as the CNI
    endpoint and the NATS feed parse them before the store sees them."""
    state = load_cell_state(doc)
    store = DesiredStore(state.cell_id)
    seq = 0  # the stream sequence each message would have: the store orders by it
    for seq, message in enumerate(state_messages(state), 1):
        store.apply(message, seq)
    admitted = AdmittedState(store, Limits())  # what the daemon's compiler reads
    admitted.everything_changed()
    compiler = IncrementalCompiler(admitted)

    def changed(key: StateKey) -> None:
        for visible in admitted.changed(key):
            compiler.changed(visible)

    with namespace("incr") as ns, NftRunner(netns=ns) as runner:
        committed = compiler.compile()
        runner.apply(diff(committed, runner.read(TABLE)))
        compiler.take_touched()
        settle_memory()  # as the reconciler does after its first commit

        def commit() -> None:
            nonlocal committed
            desired = compiler.compile()
            runner.apply(diff(desired, committed, only=compiler.take_touched()))
            committed = desired

        # Each sample adds one container of another app to the full cell, then takes it away again
        # (untimed), so every sample meets a cell of the same size.
        add_samples = []
        for i in range(adds):
            template = state.containers[i % len(state.containers)]
            added = template.model_copy(
                update={"handle": f"bench-add-{i}", "ip": ipaddress.IPv4Address("10.255.200.2") + i % 250}
            )
            t = time.perf_counter()
            store.register(added)
            changed(StateKey(Kind.CONTAINER, added.handle))
            commit()
            add_samples.append(time.perf_counter() - t)
            store.unregister(added.handle)
            changed(StateKey(Kind.CONTAINER, added.handle))
            commit()

        edit_samples = []
        group = next(g for g in state.security_groups if g.globally_enabled.running)
        raw = group.model_dump(mode="json")
        for i in range(edits):
            raw["rules"].append({"protocol": "tcp", "destination": f"100.126.{i}.0/24", "ports": "443"})
            edited = SecurityGroup.model_validate(raw)
            message = SecurityGroupMessage(guid=group.guid, security_group=edited)
            t = time.perf_counter()
            store.apply(message, seq + 1 + i)
            changed(key_of(message))
            commit()
            edit_samples.append(time.perf_counter() - t)
    return Latencies(add_samples), Latencies(edit_samples)
