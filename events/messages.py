"""The whole-state messages carried on `cfnft.state.*` (see events/subjects.py).

Each message holds the complete current state of one object plus a `version` (a number that
only grows for that object: the source's own modification counter when it has one, else the
publisher's clock in nanoseconds). A reader keeps, per subject, the message with the highest
version, so duplicates from two watcher replicas and re-deliveries are harmless.
A null object (or an empty list) is an explicit deletion. `observed_at` (optional) is when the
publisher saw the state at its source; it takes no part in what the message means.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from events import subjects
from events.models import C2CPolicy, CellConfig, Container, EgressPolicy, SecurityGroup
from events.rules import IP


class Message(BaseModel):
    """Base of every cfnft message: strict (unknown keys are errors), versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=0, description="grows with every change of this object")
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


StateMessage = Annotated[
    Union[
        ContainerMessage,
        AppInstancesMessage,
        SecurityGroupMessage,
        C2CPoliciesMessage,
        EgressPoliciesMessage,
        CellConfigMessage,
    ],
    Field(discriminator="kind"),
]


class ResyncRequest(BaseModel):
    """Published on cfnft.resync.all or cfnft.resync.cell.<cell_id>: watchers re-list their
    sources and republish, reconcilers re-read the kernel and repair drift."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_id: str | None = None
    reason: str = "operator request"
