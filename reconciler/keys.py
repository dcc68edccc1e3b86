"""Which object of a cell's desired state a change is about: the dirty keys the store reports and the
incremental compiler takes (reconciler/incremental.py)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from events.messages import (
    AppInstancesMessage,
    C2CPoliciesMessage,
    CellConfigMessage,
    ContainerMessage,
    EgressPoliciesMessage,
    Message,
    SecurityGroupMessage,
)


class Kind(StrEnum):
    """What a state key names: the kinds of whole-state messages, and CNI registrations (containers)."""

    CONTAINER = "container"
    APP = "app"
    GROUP = "asg"
    C2C = "c2c"
    EGRESS = "egress"
    CONFIG = "config"


@dataclass(frozen=True, slots=True)
class StateKey:
    """One object of the desired state: a container handle, an app guid, a group guid, a c2c
    destination app guid; the egress policies and the config are one object each."""

    kind: Kind
    id: str = ""


def key_of(msg: Message) -> StateKey:
    match msg:
        case ContainerMessage():
            return StateKey(Kind.CONTAINER, msg.handle)
        case AppInstancesMessage():
            return StateKey(Kind.APP, msg.app_guid)
        case SecurityGroupMessage():
            return StateKey(Kind.GROUP, msg.guid)
        case C2CPoliciesMessage():
            return StateKey(Kind.C2C, msg.destination_app_guid)
        case EgressPoliciesMessage():
            return StateKey(Kind.EGRESS)
        case CellConfigMessage():
            return StateKey(Kind.CONFIG)
    raise TypeError(f"no state key for message {type(msg).__name__}")
