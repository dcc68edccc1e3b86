"""A cell state document as whole-state NATS messages (`cfnft publish`, tests, the demo).

The document is published as its own publisher, `publish-<cell id>`: every message goes out
with optimistic concurrency (events/publisher.py), so a state that another publisher changed
while this one read it is reported instead of overwritten, and an epoch marker closes the
publication, so the cells know the stream holds the document's complete view again (after a
purge, a lost store, a recreated stream).
"""

from __future__ import annotations

import time

from nats.aio.client import Client as NATS

from events import subjects
from events.messages import (
    STATE_KINDS,
    AppInstancesMessage,
    C2CPoliciesMessage,
    CellConfigMessage,
    ContainerMessage,
    EgressPoliciesMessage,
    Message,
    SecurityGroupMessage,
)
from events.models import C2CPolicy, CellState
from events.publisher import StatePublisher


def state_messages(state: CellState, observed_at: float | None = None) -> list[Message]:
    """Every object of `state` as one message, stamped `observed_at`. Containers are addressed to
    `state.cell_id`."""
    out: list[Message] = []
    for c in state.containers:
        out.append(ContainerMessage(cell_id=state.cell_id, handle=c.handle, container=c, observed_at=observed_at))
    for g in state.security_groups:
        out.append(SecurityGroupMessage(guid=g.guid, security_group=g, observed_at=observed_at))
    # The document speaks for its containers' apps: an app with no policy gets an explicit empty set.
    by_destination: dict[str, list[C2CPolicy]] = {c.app_guid: [] for c in state.containers}
    for p in state.c2c_policies:
        by_destination.setdefault(p.destination.id, []).append(p)
    for app, policies in sorted(by_destination.items()):
        out.append(C2CPoliciesMessage(destination_app_guid=app, policies=policies, observed_at=observed_at))
    for app, addrs in sorted(state.app_instances.items()):
        out.append(AppInstancesMessage(app_guid=app, addresses=addrs, observed_at=observed_at))
    out.append(EgressPoliciesMessage(policies=state.egress_policies, observed_at=observed_at))
    out.append(CellConfigMessage(cell_id=state.cell_id, config=state.config, observed_at=observed_at))
    return out


def deletion_for(subject: str) -> Message | None:
    """The explicit deletion message for a state subject, for the kinds `--prune` may delete."""
    parts = subject.split(".")
    kind = parts[2]
    if kind == "container":
        return ContainerMessage(cell_id=parts[3], handle=parts[4], container=None)
    if kind == "asg":
        return SecurityGroupMessage(guid=parts[3], security_group=None)
    if kind == "c2c":
        return C2CPoliciesMessage(destination_app_guid=parts[3], policies=[])
    if kind == "app":
        return AppInstancesMessage(app_guid=parts[3], addresses=[])
    return None


async def publish_state(
    nc: NATS, state: CellState, prune: bool = False, replicas: int | None = None
) -> tuple[int, int]:
    """Publish `state`; with `prune`, delete what NATS holds of the same kinds but the state lacks.
    `replicas`: see `ensure_state_stream`. Returns (published, deleted). Raises
    events.publisher.PublishConflict when another publisher wrote one of the subjects while this ran
    (the others were published: run it again)."""
    source = f"publish-{state.cell_id}" if state.cell_id else "publish"
    publisher = StatePublisher(nc, source, cell_id=state.cell_id or None, replicas=replicas)
    published = await publisher.load_published()
    messages = state_messages(state, observed_at=time.time())  # the document is what we observe now
    sent = len(await publisher.publish_all(messages))
    deletions: list[Message] = []
    if prune:
        wanted = {m.subject() for m in messages}
        own_cell = subjects.containers_of_cell(state.cell_id)[:-1]
        for subject in published:
            if subject in wanted:
                continue
            if subject.startswith(f"{subjects.STATE_PREFIX}.container.") and not subject.startswith(own_cell):
                continue
            deletion = deletion_for(subject)
            if deletion is not None:
                deletions.append(deletion)
    deleted = len(await publisher.publish_all(deletions))
    await publisher.mark_complete(STATE_KINDS)
    return sent, deleted
