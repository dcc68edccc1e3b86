"""What this cell has enforced, object by object, and how long a change took to get there.

Per kind of object, the store knows how far it has read the state stream (`position`: every
message of the kind up to that stream sequence was taken); this module adds which generation
carried the last change of each subject, so "is the message at stream sequence V of this object in
the kernel?" is answered exactly: the store has read at least V and that generation is committed. A replay
(start-up, reconnect) counts as a change of every object in the generation that ends it. Only changes
not yet committed are remembered, so the foundation's subjects are not held a second time.

`cfnft_programming_latency_seconds` (kube-proxy's network-programming latency): from the time
the watcher observed a change at its source (`observed_at`, carried in the message) to the
kernel commit that enforces it on this cell. Replayed messages are not observed (they are old
news), and the figure includes any clock difference between the watcher's machine and the cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import Histogram

from events.messages import Message


@dataclass
class Realization:
    latency: Histogram
    _changed_in: dict[str, int] = field(default_factory=dict)  # subject -> generation of its last change, uncommitted
    _replayed_in: int = 0  # the generation that ends the latest replay
    _committed: int = 0
    _observed: list[tuple[int, float]] = field(default_factory=list)  # (generation, observed_at)

    def received(self, msg: Message, generation: int, *, changed: bool, replaying: bool) -> None:
        """A message was taken into the store (or the replay store); `generation` carries it when changed."""
        if replaying or not changed:
            return  # a replayed object counts as changed in the generation that ends the replay
        if generation > self._committed:  # else a committed generation holds it already
            self._changed_in[msg.subject()] = generation
        if msg.observed_at is not None:
            self._observed.append((generation, msg.observed_at))

    def replay_done(self, generation: int) -> None:
        self._replayed_in = generation

    def committed(self, generation: int) -> None:
        """Everything up to `generation` is in the kernel now."""
        self._committed = max(self._committed, generation)
        if self._changed_in:
            self._changed_in = {s: g for s, g in self._changed_in.items() if g > generation}
        if not self._observed:
            return
        now = time.time()
        waiting = []
        for g, observed_at in self._observed:
            if g <= generation:
                self.latency.observe(max(0.0, now - observed_at))
            else:
                waiting.append((g, observed_at))
        self._observed = waiting

    def enforced_version(self, subject: str, position: int | None, committed_generation: int) -> int | None:
        """The stream sequence up to which the kernel enforces `subject` (`position`: how far the store
        has read its kind); None if the cell has read none of it, or has not committed its last change."""
        if position is None or max(self._replayed_in, self._changed_in.get(subject, 0)) > committed_generation:
            return None
        return position
