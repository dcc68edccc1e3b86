"""The compact forms in which the store keeps the foundation's objects (reconciler/store.py).

A cell of a large foundation holds every app's instance addresses, every security group and every
c2c policy of the foundation, and most of them concern none of its containers. As pydantic models
they cost ten to twenty times their JSON (a group of five rules ~13 KB against ~1 KB; an address
list of three ~330 bytes), and they are many objects for the garbage collector to walk. So the
store keeps each of them as one immutable value that holds what the indexes need (a group's
bindings and size, a policy list's source and destination apps) and the object itself as the
canonical JSON of the validated model; the model is parsed again only where a compile needs it
(a group in use, the policies towards a local app).

The JSON is dumped from a model that passed validation and admission, so parsing it back cannot
fail and gives an equal model: validation and the problems it reports stay where the message
arrives (reconciler/feed.py). Two values are equal when their objects are, so a replay that brings
the same content is recognised as unchanged (`DesiredStore.adopt`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from pydantic import TypeAdapter

from events.models import C2CPolicy, SecurityGroup
from reconciler.admission import rule_elements

_POLICIES: TypeAdapter[list[C2CPolicy]] = TypeAdapter(list[C2CPolicy])


@dataclass(frozen=True, slots=True)
class Addresses:
    """An app's instance addresses, packed: IPv4 ones 4 bytes each, IPv6 ones 16, each family sorted."""

    v4: bytes
    v6: bytes = b""

    @classmethod
    def of(cls, addresses: Iterable[IPv4Address | IPv6Address]) -> Addresses | None:
        """The packed form of `addresses` (None: there are none)."""
        v4: set[bytes] = set()
        v6: set[bytes] = set()
        for a in addresses:
            (v4 if isinstance(a, IPv4Address) else v6).add(a.packed)
        return cls(b"".join(sorted(v4)), b"".join(sorted(v6))) if v4 or v6 else None

    def ipv4(self) -> Iterator[IPv4Address]:
        return (IPv4Address(self.v4[i : i + 4]) for i in range(0, len(self.v4), 4))

    def addresses(self) -> list[IPv4Address | IPv6Address]:
        """Every address, IPv4 before IPv6, each in numeric order."""
        v6 = (IPv6Address(self.v6[i : i + 16]) for i in range(0, len(self.v6), 16))
        return [*self.ipv4(), *v6]


@dataclass(frozen=True, slots=True)
class StoredGroup:
    """A security group: its guid, bindings and size for the indexes and the admitted view, and the
    group itself as JSON."""

    guid: str
    running_spaces: tuple[str, ...]
    staging_spaces: tuple[str, ...]
    running_global: bool
    staging_global: bool
    elements: int  # set elements its rules need before merging (admission.rule_elements)
    json: bytes

    @classmethod
    def of(cls, group: SecurityGroup) -> StoredGroup:
        return cls(
            group.guid,
            tuple(sorted(group.running_space_guids)),
            tuple(sorted(group.staging_space_guids)),
            group.globally_enabled.running,
            group.globally_enabled.staging,
            rule_elements(group.egress_rules()),
            group.model_dump_json().encode(),
        )

    def group(self) -> SecurityGroup:
        """The group as a model (a new one on every call: callers that use it keep it)."""
        return SecurityGroup.model_validate_json(self.json)


@dataclass(frozen=True, slots=True)
class StoredPolicies:
    """The c2c policies of one message (towards one destination app): which app each comes from
    and goes to, for the indexes, and the policies themselves as JSON."""

    pairs: tuple[tuple[str, str], ...]  # (source app, destination app) of each policy
    json: bytes

    @classmethod
    def of(cls, policies: list[C2CPolicy]) -> StoredPolicies | None:
        """The compact form of `policies` (None: there are none)."""
        if not policies:
            return None
        return cls(tuple((p.source.id, p.destination.id) for p in policies), _POLICIES.dump_json(policies))

    def policies(self) -> list[C2CPolicy]:
        """The policies as models (new ones on every call)."""
        return _POLICIES.validate_json(self.json)
