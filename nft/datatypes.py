"""The nft set key datatypes nft/ supports, and which key fields fit them.

Keys are held as numbers (`AddrRange`, `IntRange`); every integer type listed here is accepted
by nft 1.0.6 as a plain number in input (`6` for tcp, `8 . 0` for echo-request), and the runner
asks libnftables for numeric output, so no symbolic name ever has to be translated.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nft.objects import AddrRange, IntRange, KeyField


class FieldKind(Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    INTEGER = "integer"


@dataclass(frozen=True, slots=True)
class Datatype:
    """One key datatype: what kind of field it holds and, for integers, how many bits."""

    name: str
    kind: FieldKind
    bits: int


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("ipv4_addr", FieldKind.IPV4, 32),
        Datatype("ipv6_addr", FieldKind.IPV6, 128),
        Datatype("inet_proto", FieldKind.INTEGER, 8),
        Datatype("inet_service", FieldKind.INTEGER, 16),
        Datatype("icmp_type", FieldKind.INTEGER, 8),
        Datatype("icmp_code", FieldKind.INTEGER, 8),
        Datatype("icmpv6_type", FieldKind.INTEGER, 8),
        Datatype("icmpv6_code", FieldKind.INTEGER, 8),
        Datatype("mark", FieldKind.INTEGER, 32),
    )
}

# Verdicts a map element may carry; "jump"/"goto" take a chain name.
VERDICTS = frozenset({"accept", "drop", "continue", "return"})
CHAIN_VERDICTS = frozenset({"jump", "goto"})


def datatype(name: str) -> Datatype:
    try:
        return DATATYPES[name]
    except KeyError:
        raise ValueError(f"unsupported key datatype {name!r} (supported: {', '.join(DATATYPES)})") from None


def check_key(set_name: str | None, types: tuple[str, ...], key: tuple[KeyField, ...], *, interval: bool) -> None:
    """Raises ValueError unless `key` fits a set of `types`; ranges need an interval set."""
    owner = f"set {set_name!r} " if set_name else ""
    shown = key_text(key) if all(isinstance(f, (AddrRange, IntRange)) for f in key) else repr(key)
    if len(key) != len(types):
        raise ValueError(f"{owner}key {shown} has {len(key)} fields, the set's type has {len(types)}")
    for index, (field, type_name) in enumerate(zip(key, types)):
        dt = datatype(type_name)
        where = f"{owner}key {shown} field {index} ({type_name})"
        if dt.kind is FieldKind.INTEGER:
            if not isinstance(field, IntRange):
                raise ValueError(f"{where}: expected a number or number range, got {field}")
            if field.lo < 0 or field.hi >= 1 << dt.bits:
                raise ValueError(f"{where}: {field.lo}-{field.hi} out of range 0-{(1 << dt.bits) - 1}")
            ranged = field.lo != field.hi
        else:
            if not isinstance(field, AddrRange):
                raise ValueError(f"{where}: expected an address or address range, got {field}")
            if field.start.version != (4 if dt.kind is FieldKind.IPV4 else 6):
                raise ValueError(f"{where}: IPv{field.start.version} address in a {type_name} field")
            ranged = field.start != field.end
        if ranged and not interval:
            raise ValueError(f"{where}: a range needs a set with flags interval")


def field_bounds(field: KeyField) -> tuple[int, int]:
    """The field as an inclusive integer interval, for ordering and overlap checks."""
    if isinstance(field, IntRange):
        return field.lo, field.hi
    return int(field.start), int(field.end)


def field_text(field: KeyField) -> str:
    """nft's input syntax for one key field: `a`, `net/len` when exactly a CIDR, else `a-b`."""
    if isinstance(field, IntRange):
        return str(field.lo) if field.lo == field.hi else f"{field.lo}-{field.hi}"
    start, end = field.start, field.end
    if start == end:
        return str(start)
    size = int(end) - int(start) + 1
    # A CIDR block: the size is a power of two and the start is aligned to it.
    if size & (size - 1) == 0 and int(start) & (size - 1) == 0:
        return f"{start}/{start.max_prefixlen - size.bit_length() + 1}"
    return f"{start}-{end}"


def key_text(key: tuple[KeyField, ...]) -> str:
    return " . ".join(field_text(f) for f in key)
