"""Two local containers claiming one address or one host port: the newest registration wins.

The kernel holds one dispatch entry per address and one DNAT per host port, so a claim held twice
cannot be enforced for both. Such clashes are normal in small doses — BBS lags behind a cell that
already gave a dead container's address to a new one, a DEL was lost — and must never stop the
cell. Resolution is deterministic, so every pass (and every restart) picks the same winner:

- a registration by the CNI plugin outranks any NATS record: it is what this cell's runtime did
  moments ago, with the address the connectivity plugin really assigned;
- among NATS records, the later one in the state stream wins (the stream sequence, assigned by
  the server: no publisher's clock decides);
- among CNI registrations, the later registration wins.

The loser of an address is left out whole (its traffic is then an unknown source: rejected); the
loser of a host port keeps everything but that one mapping. Each loss is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from events.models import Container
from reconciler.admission import Unusable
from reconciler.keys import Kind, StateKey

NATS_RECORD, CNI_REGISTRATION = 0, 1


@dataclass(frozen=True, slots=True)
class Ranked:
    """A candidate local container and how new its registration is: (source, order within the source)."""

    container: Container
    rank: tuple[int, int]


def resolve(candidates: Iterable[Ranked]) -> tuple[list[Container], list[Unusable]]:
    """The containers to enforce (by handle) and what the losers lost."""
    addresses: dict[IPv4Address | IPv6Address, str] = {}
    host_ports: dict[int, str] = {}
    kept: list[Container] = []
    lost: list[Unusable] = []
    for candidate in sorted(candidates, key=lambda r: (r.rank, r.container.handle), reverse=True):
        c = candidate.container
        unit = StateKey(Kind.CONTAINER, c.handle)
        mine = [a for a in (c.ip, c.ipv6) if a is not None]
        taken = next((a for a in mine if a in addresses), None)
        if taken is not None:
            lost.append(Unusable(unit, f"address {taken} is held by {addresses[taken]}, a newer registration"))
            continue
        addresses.update((a, c.handle) for a in mine)
        mappings = []
        for m in c.port_mappings:
            holder = host_ports.setdefault(m.host_port, c.handle)
            if holder == c.handle:
                mappings.append(m)
            else:
                reason = f"host port {m.host_port} is mapped by {holder}, a newer registration: mapping left out"
                lost.append(Unusable(unit, reason))
        if len(mappings) < len(c.port_mappings):
            c = c.model_copy(update={"port_mappings": mappings})
        kept.append(c)
    return sorted(kept, key=lambda c: c.handle), lost
