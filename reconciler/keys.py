"""Which object of a cell's desired state a change is about: the dirty keys the store reports and the
incremental compiler takes (reconciler/incremental.py)."""

from __future__ import annotations

import re
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
from events.problems import show

# Ids shown as they are in a report; anything else (odd characters, very long) is quoted and cut.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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
    destination app guid; the egress policies and the config are one object each (an egress key
    with an id names one policy of them: reconciler/units.py)."""

    kind: Kind
    id: str = ""

    def __str__(self) -> str:
        shown = self.id if _PLAIN_ID.fullmatch(self.id) else show(self.id)
        return f"{self.kind.value} {shown}" if self.id else self.kind.value


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
