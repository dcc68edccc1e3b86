"""Is the state stream a complete picture? Telling "no objects" from "the stream was lost".

An empty replay means either that the foundation has nothing of a kind (no security group, no
c2c policy) or that the stream lost it: purged, its store lost, deleted and recreated. Taken as
the truth, the second would remove every NATS-sourced container and group from every cell at
once. So every publisher — each watcher, and `cfnft publish` — writes an `EpochMessage` after it
has published a complete view of its kinds into the stream, naming the stream incarnation (its
creation time) it published into. A purge removes the markers; a recreated stream has a new
creation time, which makes old markers stale.

After a replay, a kind is *established* when a marker of the current incarnation lists it. For a
kind that is not, the replay is not trusted to be complete: the reconciler keeps the last good
state of that kind (from before the replay, or from the saved snapshot) with the replay's
objects on top, says so (`status`, `/readyz`, `cfnft_state_plane_complete`), and replays again as
soon as a marker establishes it. A cell that has never seen a kind has nothing to keep and uses
what the stream holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from events import subjects
from events.messages import STATE_KINDS, EpochMessage, StateKind


@dataclass(slots=True)
class StatePlane:
    """What the last replay told about the stream, and what is kept from before it."""

    stream_created: str | None = None
    """The incarnation replayed; None until a replay completed."""
    markers: dict[str, EpochMessage] = field(default_factory=dict)
    kept: set[StateKind] = field(default_factory=set)
    """Kinds whose last good state is enforced because the stream has no complete view of them."""
    missing: str | None = None
    """Why there is no stream to replay (it does not exist), while that lasts."""

    def established(self, cell_id: str) -> set[StateKind]:
        """The kinds a marker of the current incarnation declares complete (for `cell_id`'s containers)."""
        return {k for m in self.markers.values() for k in self._declared(m, cell_id)}

    def unestablished(self, cell_id: str) -> set[StateKind]:
        return set(STATE_KINDS) - self.established(cell_id)

    def establishes_kept(self, marker: EpochMessage, cell_id: str) -> bool:
        """Whether a marker arriving now makes a kind complete that is kept from before (then replay)."""
        return bool(self.kept & self._declared(marker, cell_id))

    def _declared(self, marker: EpochMessage, cell_id: str) -> set[StateKind]:
        if marker.stream_created != self.stream_created:
            return set()
        if marker.cell_id is not None and marker.cell_id != cell_id:
            return set(marker.complete) - {"container"}  # another cell's containers say nothing of ours
        return set(marker.complete)

    @property
    def degraded(self) -> str | None:
        """Why the cell enforces something other than what the stream says, or None."""
        if self.missing is not None:
            return f"{self.missing}: enforcing the last good state"
        if self.kept:
            kinds = ", ".join(sorted(self.kept))
            return (
                f"the state stream holds no complete view of {kinds} (lost, purged or recreated?): enforcing "
                f"their last good state until a publisher has published them again ({subjects.EPOCHS})"
            )
        return None

    def as_json(self, cell_id: str) -> dict[str, object]:
        return {
            "stream_created": self.stream_created,
            "complete": sorted(self.established(cell_id)),
            "publishers": sorted(self.markers),
            "kept_from_before": sorted(self.kept),
            "degraded": self.degraded,
        }
