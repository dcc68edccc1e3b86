"""Incremental changes on a full cell: what the reconciler does per event, call to kernel commit.

Each sample is compile (the daemon's long-lived Compiler) + diff against the last committed
ruleset + one libnftables transaction, timed around all three, on a full cell already loaded
in a namespace: exactly the apply loop's work for one change.
"""

from __future__ import annotations

import ipaddress
import statistics
import time
from dataclasses import dataclass

from events.models import CellState, SecurityGroup, load_cell_state
from lab.bench.kernel import namespace
from nft import NftRunner, diff
from reconciler.compile import TABLE, Compiler
from reconciler.daemon import settle_memory


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

    Like the daemon's store, unchanged objects stay the same objects from one state to the next;
    only the added container or the edited group is parsed anew (outside the timed path)."""
    compiler = Compiler()
    state = load_cell_state(doc)
    with namespace("incr") as ns, NftRunner(netns=ns) as runner:
        committed = compiler.compile(state)
        runner.apply(diff(committed, runner.read(TABLE)))
        settle_memory()  # as the reconciler does after its first commit

        def step(new_state: CellState) -> float:
            nonlocal committed
            t = time.perf_counter()
            desired = compiler.compile(new_state)
            runner.apply(diff(desired, committed))
            elapsed = time.perf_counter() - t
            committed = desired
            return elapsed

        # Each sample adds one container of another app to the full cell, then takes it away again
        # (untimed), so every sample meets a cell of the same size.
        add_samples = []
        full = state
        for i in range(adds):
            template = full.containers[i % len(full.containers)]
            added = template.model_copy(
                update={"handle": f"bench-add-{i}", "ip": ipaddress.IPv4Address("10.255.200.2") + i % 250}
            )
            add_samples.append(step(full.model_copy(update={"containers": [*full.containers, added]})))
            step(full)

        edit_samples = []
        index = next(i for i, g in enumerate(state.security_groups) if g.globally_enabled.running)
        for i in range(edits):
            raw = state.security_groups[index].model_dump(mode="json")
            raw["rules"].append({"protocol": "tcp", "destination": f"100.126.{i}.0/24", "ports": "443"})
            groups = list(state.security_groups)
            groups[index] = SecurityGroup.model_validate(raw)
            state = state.model_copy(update={"security_groups": groups})
            edit_samples.append(step(state))
    return Latencies(add_samples), Latencies(edit_samples)
