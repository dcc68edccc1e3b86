"""The whole-state messages carried on `cfnft.state.*` (see events/subjects.py).

Each message holds the complete current state of one object. A null object (or an empty list)
is an explicit deletion. `observed_at` (optional) is when the publisher saw the state at its
source; it takes no part in what the message means.

Which message of an object is the current one is decided by the JetStream stream, not by the
payload: the stream keeps the last message per subject, and readers order messages by the
sequence the server assigned when it stored them (docs/design.md §2.4). No publisher's clock is
involved, so a publisher whose clock stepped back can still revoke, and a forged high number
pins nothing. The payload's `version` is therefore informational only (publishers may put their
own counter there for tracing); it stays in the model so that messages written by earlier
releases, which carried one, still validate.

`EpochMessage` is the state plane's marker: a publisher writes it after it has published a
complete view of its kinds into the stream, so a reader can tell "the foundation has no objects"
from "the stream was lost, purged or recreated" (reconciler/stateplane.py).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from events import subjects
from events.models import C2CPolicy, CellConfig, Container, EgressPolicy, SecurityGroup
from events.rules import IP


class Message(BaseModel):
    """Base of every cfnft message: strict (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | None = Field(None, ge=0, description="informational; readers order by stream sequence")
    observed_at: float | None = Field(
        None, description="unix time at which the watcher observed this state at its source (for latency metrics)"
    )

    def subject(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class ContainerMessage(Message):
    kind: Literal["container"] = "container"
    cell_id: str
    handle: str
    container: Container | None = Field(description="null: the container is gone from the cell")

    def subject(self) -> str:
        return subjects.container(self.cell_id, self.handle)


class AppInstancesMessage(Message):
    kind: Literal["app"] = "app"
    app_guid: str
    # Our IP type, not pydantic's union (which tries IPv6 on every IPv4 address): these are the
    # most frequent messages of a foundation, and every cell parses every one of them.
    addresses: list[IP] = Field(description="empty: the app has no running instance")

    def subject(self) -> str:
        return subjects.app_instances(self.app_guid)


class SecurityGroupMessage(Message):
    kind: Literal["asg"] = "asg"
    guid: str
    security_group: SecurityGroup | None = Field(description="null: the group was deleted")

    def subject(self) -> str:
        return subjects.security_group(self.guid)


class C2CPoliciesMessage(Message):
    kind: Literal["c2c"] = "c2c"
    destination_app_guid: str
    policies: list[C2CPolicy] = Field(description="every policy whose destination is this app; empty: none")

    def subject(self) -> str:
        return subjects.c2c_policies(self.destination_app_guid)


class EgressPoliciesMessage(Message):
    kind: Literal["egress"] = "egress"
    policies: list[EgressPolicy]

    def subject(self) -> str:
        return subjects.EGRESS_POLICIES


class CellConfigMessage(Message):
    kind: Literal["config"] = "config"
    cell_id: str
    config: CellConfig

    def subject(self) -> str:
        return subjects.cell_config(self.cell_id)


StateKind = Literal["container", "app", "asg", "c2c", "egress", "config"]
STATE_KINDS: tuple[StateKind, ...] = ("container", "app", "asg", "c2c", "egress", "config")


class EpochMessage(Message):
    """A publisher's statement that it has published every object of the kinds `complete` into the
    stream incarnation created at `stream_created` (the stream's creation time, as the server
    reports it). Purging the stream removes it; recreating the stream makes it stale."""

    kind: Literal["epoch"] = "epoch"
    source: str = Field(description="who publishes: a watcher (bbs, policy, cc) or an operator (publish)")
    stream_created: str
    complete: list[StateKind] = Field(description="the kinds of which this publisher has published a full view")
    cell_id: str | None = Field(None, description="set: of containers, only this cell's are complete")

    def subject(self) -> str:
        return subjects.epoch(self.source)


StateMessage = Annotated[
    Union[
        ContainerMessage,
        AppInstancesMessage,
        SecurityGroupMessage,
        C2CPoliciesMessage,
        EgressPoliciesMessage,
        CellConfigMessage,
        EpochMessage,
    ],
    Field(discriminator="kind"),
]


class ResyncRequest(BaseModel):
    """Published on cfnft.resync.all or cfnft.resync.cell.<cell_id>: watchers re-list their
    sources and republish, reconcilers re-read the kernel and repair drift."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_id: str | None = None
    reason: str = "operator request"
