"""The nft set key datatypes nft/ supports, and which key fields fit them.

Keys are held as numbers (`AddrRange`, `IntRange`); every integer type listed here is accepted
by nft 1.0.6 as a plain number in input (`6` for tcp, `8 . 0` for echo-request), and the runner
asks libnftables for numeric output, so no symbolic name ever has to be translated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from socket import inet_ntoa

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
    if len(key) != len(types):
        raise ValueError(f"{_owner(set_name)}key {_shown(key)} has {len(key)} fields, the set's type has {len(types)}")
    for index, (field, type_name) in enumerate(zip(key, types)):
        reason = _field_problem(datatype(type_name), field, interval)
        if reason:
            raise ValueError(f"{_owner(set_name)}key {_shown(key)} field {index} ({type_name}): {reason}")


def key_checker(types: tuple[str, ...], *, interval: bool) -> Callable[[tuple[KeyField, ...]], bool]:
    """A fast yes/no form of `check_key` for one set, for checking thousands of elements; ask
    `check_key` for the reason of a no. Raises ValueError for an unsupported datatype."""
    fits = tuple(_field_fits(datatype(t), interval) for t in types)
    if len(fits) == 1:
        (only,) = fits
        return lambda key: len(key) == 1 and only(key[0])
    if len(fits) == 3:  # addr . proto . port and addr . type . code: most elements of a cell
        first, second, third = fits
        return lambda key: len(key) == 3 and first(key[0]) and second(key[1]) and third(key[2])
    return lambda key: len(key) == len(fits) and all(fit(f) for fit, f in zip(fits, key))


def _field_fits(dt: Datatype, interval: bool) -> Callable[[KeyField], bool]:
    if dt.kind is FieldKind.INTEGER:
        top = (1 << dt.bits) - 1
        if interval:
            return lambda f: type(f) is IntRange and 0 <= f.lo and f.hi <= top
        return lambda f: type(f) is IntRange and 0 <= f.lo == f.hi <= top
    version = 4 if dt.kind is FieldKind.IPV4 else 6
    if interval:
        return lambda f: type(f) is AddrRange and f.bounds[0] == version
    return lambda f: type(f) is AddrRange and f.bounds[0] == version and f.bounds[1] == f.bounds[2]


def _field_problem(dt: Datatype, field: KeyField, interval: bool) -> str | None:
    if dt.kind is FieldKind.INTEGER:
        if not isinstance(field, IntRange):
            return f"expected a number or number range, got {field}"
        if field.lo < 0 or field.hi >= 1 << dt.bits:
            return f"{field.lo}-{field.hi} out of range 0-{(1 << dt.bits) - 1}"
        ranged = field.lo != field.hi
    else:
        if not isinstance(field, AddrRange):
            return f"expected an address or address range, got {field}"
        if field.start.version != (4 if dt.kind is FieldKind.IPV4 else 6):
            return f"IPv{field.start.version} address in a {dt.name} field"
        ranged = field.start != field.end
    if ranged and not interval:
        return "a range needs a set with flags interval"
    return None


def _owner(set_name: str | None) -> str:
    return f"set {set_name!r} " if set_name else ""


def _shown(key: tuple[KeyField, ...]) -> str:
    # Callers may pass anything as a key; the message shows it either way.
    return key_text(key) if all(isinstance(f, (AddrRange, IntRange)) for f in key) else repr(key)


def field_bounds(field: KeyField) -> tuple[int, int]:
    """The field as an inclusive integer interval, for ordering and overlap checks."""
    if isinstance(field, IntRange):
        return field.lo, field.hi
    return field.bounds[1], field.bounds[2]


def field_text(field: KeyField) -> str:
    """nft's input syntax for one key field: `a`, `net/len` when exactly a CIDR, else `a-b`."""
    if type(field) is IntRange:
        return str(field.lo) if field.lo == field.hi else f"{field.lo}-{field.hi}"
    assert isinstance(field, AddrRange)
    return _addr_text(field)


def key_text(key: tuple[KeyField, ...]) -> str:
    # Once per element of a cold apply (tens of thousands): integer fields without a call.
    parts = []
    for f in key:
        if type(f) is IntRange:
            parts.append(str(f.lo) if f.lo == f.hi else f"{f.lo}-{f.hi}")
        else:
            assert isinstance(f, AddrRange)
            parts.append(_addr_text(f))
    return " . ".join(parts)


def _addr_text(field: AddrRange) -> str:
    version, lo, hi = field.bounds
    start = field.start
    if version != 4:
        # IPv6 is rare in a cell: ipaddress' own formatting will do.
        first = str(start)
        last = str(field.end)
    else:
        # inet_ntoa is several times faster than ipaddress' own formatting.
        first = inet_ntoa(lo.to_bytes(4, "big"))
        last = ""
    if lo == hi:
        return first
    size = hi - lo + 1
    # A CIDR block: the size is a power of two and the start is aligned to it.
    if size & (size - 1) == 0 and lo & (size - 1) == 0:
        return f"{first}/{start.max_prefixlen - size.bit_length() + 1}"
    return f"{first}-{last or inet_ntoa(hi.to_bytes(4, 'big'))}"
