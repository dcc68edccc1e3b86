"""What this cell leaves out right now, and why: the reconciler's answer to "what did you drop?".

Two sources, both shown by `cfnft status`, the `/readyz` body and the `cfnft_dropped_objects` gauge:

- messages refused (or partly used) at intake, by subject: a message that fails validation is
  refused and its object keeps its last good version; a list message loses only its bad entries.
  An entry stays until the next message on its subject replaces it.
- objects left out by the last pass (reconciler/admission.py `StateCheck`, conflicts, the element
  caps, units the compiler or the kernel refused): replaced on every pass.

Each entry is logged once when it appears, not on every pass. The board holds at most
`MAX_ENTRIES` intake entries (the oldest go first), so a flood of bad subjects cannot grow memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Gauge

from reconciler.admission import Unusable

log = logging.getLogger(__name__)

MAX_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class Dropped:
    """One thing left out: `what` (a subject, or a unit such as `security_group <guid>`) and why."""

    what: str
    reason: str
    since: float

    def as_json(self) -> dict[str, object]:
        return {"what": self.what, "reason": self.reason, "since": self.since}


class DroppedBoard:
    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._intake: dict[str, Dropped] = {}
        self._pass: dict[str, Dropped] = {}

    def intake(self, subject: str, problems: list[str], *, refused: bool) -> None:
        """The outcome of the latest message on `subject`: its problems (none: it was fine)."""
        self._intake.pop(subject, None)
        if problems:
            action = "refused, the last good version is kept" if refused else "used without its bad entries"
            self._intake[subject] = Dropped(subject, f"{action}: {'; '.join(problems)}", time.time())
            while len(self._intake) > MAX_ENTRIES:
                del self._intake[next(iter(self._intake))]
        self._update()

    def holds_intake(self) -> bool:
        """Whether some message's problems are on the board (one that a good message would replace)."""
        return bool(self._intake)

    def left_out(self, found: Iterable[Unusable]) -> None:
        """Everything the latest pass left out (replacing the previous pass's list)."""
        previous, self._pass = self._pass, {}
        for u in found:
            what = str(u.unit) if u.unit is not None else "config"
            key = f"{what}: {u.reason}"
            entry = previous.get(key) or Dropped(what, u.reason, time.time())
            if key not in previous:
                log.error("left out of the ruleset: %s: %s", what, u.reason)
            self._pass[key] = entry
        for key in previous.keys() - self._pass.keys():
            log.info("no longer left out: %s", key)
        self._update()

    def reason_for(self, what: str) -> str | None:
        """Why the latest pass left `what` out (e.g. `container <handle>`), or None."""
        reasons = [d.reason for d in self._pass.values() if d.what == what]
        return "; ".join(reasons) if reasons else None

    def entries(self) -> list[dict[str, object]]:
        return [d.as_json() for d in (*self._pass.values(), *self._intake.values())]

    def __len__(self) -> int:
        return len(self._pass) + len(self._intake)

    def _update(self) -> None:
        self._gauge.set(len(self))
