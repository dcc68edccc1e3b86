"""Egress rules: one canonical rule (`EgressRule`) and every upstream format that converts to it.

Cloud Foundry spells an "allow this egress" rule four ways, and cfnft reads all of them:

- `SecurityGroupRule`: a Cloud Controller v3 security group rule (CC's API and storage form,
  and the policy server's internal form, which always carries all seven keys);
- `NetOutRule`: a Garden net-out rule, as the CNI plugin receives it in `runtimeConfig.netOutRules`;
- `BBSSecurityGroupRule`: a BBS `egress_rules` entry of a desired LRP or task (converted to the
  CC form, because that is what a container's `egress_rules` holds);
- the dynamic egress policies of the policy server (`events.models.EgressPolicy`).

Each converts to `EgressRule` once, at its edge (`egress_rule()`); only the compiler
(reconciler/compile.py) turns canonical rules into nft set elements.

Validation follows Cloud Controller (cloud_controller_ng rule validators), which is stricter
than silk's parser: CC never stores what it rejects, so rejecting it here only ever catches
hand-written or corrupted input. Where we accept what CC would refuse, the docstring says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from socket import AF_INET, inet_pton
from typing import Annotated, Iterable, NamedTuple, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from events.intervals import Interval, merge_intervals
from events.problems import show

PORT_MIN, PORT_MAX = 1, 65535
ICMP_MIN, ICMP_MAX = -1, 255
ICMP_ANY = -1
MAX_DESTINATIONS = 6000
"""Cloud Controller's limit on the comma-separated destinations of one rule."""

IPAddress = IPv4Address | IPv6Address
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]


class Protocol(StrEnum):
    """Protocol of an egress rule, spelled as Cloud Controller spells it. `all` covers every protocol, ICMP included."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"
    ALL = "all"

    @property
    def has_ports(self) -> bool:
        return self in (Protocol.TCP, Protocol.UDP)

    @property
    def is_icmp(self) -> bool:
        return self in (Protocol.ICMP, Protocol.ICMPV6)


# --- IP addresses as pydantic fields, with our own error messages --------------------------------


def _ip_from_text(text: str) -> IPv4Address | IPv6Address:
    """`ip_address(text)`, three times quicker for an IPv4 address: the C library's strict parser
    takes the usual spelling (it refuses leading zeros, short forms and stray characters, as
    `ip_address` does), and anything it refuses goes the long way, for the same answer."""
    try:
        return IPv4Address(inet_pton(AF_INET, text))
    except (OSError, ValueError):
        return ip_address(text)


def parse_ip(value: object, version: int | None = None) -> IPv4Address | IPv6Address:
    """An address from JSON input, of the given IP version if any; ValueError quoting the input otherwise."""
    want = {4: "an IPv4 address", 6: "an IPv6 address", None: "an IP address"}[version]
    if isinstance(value, (IPv4Address, IPv6Address)):
        addr = value
    elif isinstance(value, str):
        try:
            addr = _ip_from_text(value)
        except ValueError:
            raise ValueError(f"{show(value)}: not {want}") from None
    else:
        raise ValueError(f"{show(value)}: must be a string holding {want}")
    if version is not None and addr.version != version:
        raise ValueError(f"{show(str(value))}: not {want}")
    return addr


_AS_TEXT = PlainSerializer(str, return_type=str)

IPv4 = Annotated[
    IPv4Address,
    PlainValidator(lambda v: parse_ip(v, 4)),
    _AS_TEXT,
    WithJsonSchema({"type": "string", "format": "ipv4"}),
]
IPv6 = Annotated[
    IPv6Address,
    PlainValidator(lambda v: parse_ip(v, 6)),
    _AS_TEXT,
    WithJsonSchema({"type": "string", "format": "ipv6"}),
]
IP = Annotated[
    IPv4Address | IPv6Address,
    PlainValidator(parse_ip),
    _AS_TEXT,
    WithJsonSchema({"type": "string", "format": "ip-address"}),
]
"""IP address fields, parsed with our own error messages and dumped as text."""


# --- The canonical rule ---------------------------------------------------------------------------


_ADDRESS_MAX = {4: 2**32 - 1, 6: 2**128 - 1}


class AddressRange(NamedTuple):
    """An inclusive range of IP addresses of one version (4 or 6), as numbers; one address has start == end."""

    version: int
    start: int
    end: int

    @classmethod
    def of(cls, start: IPAddress, end: IPAddress | None = None) -> AddressRange:
        """The range from `start` to `end` (default: `start` alone); both of one IP version."""
        end = start if end is None else end
        if start.version != end.version:
            raise ValueError(f"address range {start}-{end} mixes IPv4 and IPv6")
        return cls(start.version, int(start), int(end))


def _canonical_destinations(protocol: Protocol, ranges: Iterable[AddressRange]) -> tuple[AddressRange, ...]:
    by_version: dict[int, list[Interval]] = {4: [], 6: []}
    for version, start, end in ranges:
        if version not in by_version:
            raise ValueError(f"{protocol} rule with a destination of IP version {version}")
        if not 0 <= start <= end <= _ADDRESS_MAX[version]:
            raise ValueError(f"{protocol} rule with destination {start}-{end}, not an IPv{version} range")
        by_version[version].append((start, end))
    return tuple(AddressRange(v, lo, hi) for v, spans in by_version.items() for lo, hi in merge_intervals(spans))


def _canonical_ports(protocol: Protocol, ranges: Iterable[Interval]) -> tuple[Interval, ...]:
    spans = list(ranges)
    for lo, hi in spans:
        if lo < PORT_MIN or hi > PORT_MAX:
            raise ValueError(f"{protocol} rule with a port outside {PORT_MIN}-{PORT_MAX}")
        if lo > hi:
            raise ValueError(f"{protocol} rule with ports {lo}-{hi}: start after end")
    return tuple(merge_intervals(spans))


@dataclass(frozen=True, slots=True)
class EgressRule:
    """One allow rule for traffic leaving a container, in the form the compiler consumes.

    Plain values only, so every upstream format converts to it once, at its edge, and the
    compiler alone decides how it becomes nft set elements. Canonical: destinations and ports
    are sorted, and overlapping or adjacent ranges merged, so two rules that allow the same
    packets compare (and hash) equal however they were written. `description` is for humans
    only and takes no part in equality.

    - `destinations`: at least one range, IPv4 before IPv6. icmp rules are IPv4 only, icmpv6
      rules IPv6 only; tcp, udp and all rules may mix both versions.
    - `ports`: tcp and udp only (at least one inclusive (lo, hi) range within 1-65535); empty otherwise.
    - `icmp_type`, `icmp_code`: icmp and icmpv6 only (-1 means any, as in Cloud Controller); None otherwise.
    - `log`: log accepted new connections.
    """

    protocol: Protocol
    destinations: tuple[AddressRange, ...]
    ports: tuple[Interval, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    log: bool = False
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        p = Protocol(self.protocol)
        if not self.destinations:
            raise ValueError(f"{p} rule without destinations")
        destinations = _canonical_destinations(p, self.destinations)
        if p == Protocol.ICMP and destinations[-1].version != 4:
            raise ValueError("icmp rule with an IPv6 destination")
        if p == Protocol.ICMPV6 and destinations[0].version != 6:
            raise ValueError("icmpv6 rule with an IPv4 destination")
        if p.has_ports != bool(self.ports):
            raise ValueError(f"{p} rule {'without' if p.has_ports else 'with'} ports")
        ports = _canonical_ports(p, self.ports)
        for name in ("icmp_type", "icmp_code"):
            value = getattr(self, name)
            if p.is_icmp != (value is not None):
                raise ValueError(f"{p} rule {'without' if p.is_icmp else 'with'} {name}")
            if value is not None and not ICMP_MIN <= value <= ICMP_MAX:
                raise ValueError(f"{p} rule with {name} {value} outside {ICMP_MIN}..{ICMP_MAX}")
        object.__setattr__(self, "protocol", p)
        object.__setattr__(self, "destinations", destinations)
        object.__setattr__(self, "ports", ports)


# --- Cloud Controller rule grammar ----------------------------------------------------------------


class _Bad(ValueError):
    """One bad element of a destination list; the caller adds the whole value for context."""


def _address(text: str) -> IPv4Address | IPv6Address:
    if ":" not in text and any(o.isdigit() and len(o) > 1 and o.startswith("0") for o in text.split(".")):
        raise _Bad("leading zeros are not allowed in IPv4 addresses")
    if "%" in text:  # Python accepts IPv6 zone ids; CC does not.
        raise _Bad("not an IP address, CIDR or address range")
    try:
        return ip_address(text)
    except ValueError:
        raise _Bad("not an IP address, CIDR or address range") from None


def _destination(piece: str) -> AddressRange:
    if "-" in piece:
        parts = piece.split("-")
        if len(parts) != 2:
            raise _Bad("not an IP address, CIDR or address range")
        start, end = _address(parts[0]), _address(parts[1])
        if start.version != end.version:
            raise _Bad("range mixes IPv4 and IPv6")
        if int(start) > int(end):
            raise _Bad("start after end")
        return AddressRange.of(start, end)
    if "/" in piece:
        addr_text, _, prefix = piece.partition("/")
        addr = _address(addr_text)
        if not (prefix.isascii() and prefix.isdigit()) or int(prefix) > addr.max_prefixlen:
            raise _Bad(f"prefix length must be 0-{addr.max_prefixlen}")
        net = ip_network(piece, strict=False)  # host bits are dropped, as silk does: 10.0.0.5/24 is 10.0.0.0/24
        return AddressRange.of(net.network_address, net.broadcast_address)
    return AddressRange.of(_address(piece))


@lru_cache(maxsize=4096)
def parse_destinations(text: str) -> tuple[AddressRange, ...]:
    """Parse a CC rule destination: an address, a CIDR, a range `a-b`, or a comma list of those.

    Raises ValueError with a message that quotes `text`. The result is in input order, unmerged.
    """
    if not text:
        raise ValueError("must not be empty")
    if re.search(r"\s", text):
        raise ValueError(f"{show(text)}: must not contain whitespace")
    pieces = text.split(",")
    if len(pieces) > MAX_DESTINATIONS:
        raise ValueError(f"{show(text)}: {len(pieces)} destinations, at most {MAX_DESTINATIONS} allowed")
    out = []
    for piece in pieces:
        if not piece:
            raise ValueError(f"{show(text)}: empty element in comma list")
        try:
            out.append(_destination(piece))
        except _Bad as bad:
            where = "" if piece == text else f"in {show(piece)}: "
            raise ValueError(f"{show(text)}: {where}{bad}") from None
    return tuple(out)


_PORT_RANGE = re.compile(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*", re.ASCII)
_PORT = re.compile(r"\s*([0-9]+)\s*", re.ASCII)


def parse_ports(text: str) -> tuple[Interval, ...]:
    """Parse CC rule ports: one port, a comma list of ports, or one range `a-b`; spaces around numbers are fine.

    Unlike CC, a range whose ends are equal (`80-80`) is accepted as that one port: BBS and
    silk accept it, and it is unambiguous. Raises ValueError with a message that quotes `text`.
    """

    def check(port: int, single: bool) -> int:
        if not PORT_MIN <= port <= PORT_MAX:
            what = "out of range" if single else f"port {port} out of range"
            raise ValueError(f"{show(text)}: {what} {PORT_MIN}-{PORT_MAX}")
        return port

    if m := _PORT_RANGE.fullmatch(text):
        lo, hi = check(int(m[1]), False), check(int(m[2]), False)
        if lo > hi:
            raise ValueError(f"{show(text)}: start after end")
        return ((lo, hi),)
    pieces = text.split(",")
    if "-" in text and len(pieces) > 1:
        raise ValueError(f"{show(text)}: mixes a list and a range (use one range, or a list of single ports)")
    out = []
    for piece in pieces:
        if not piece.strip():
            raise ValueError(f"{show(text)}: empty element in comma list")
        if not (m := _PORT.fullmatch(piece)):
            raise ValueError(f"{show(text)}: not a port, a comma list of ports or a port range")
        port = check(int(m[1]), len(pieces) == 1)
        out.append((port, port))
    return tuple(out)


def _check_icmp(value: int) -> int:
    if not ICMP_MIN <= value <= ICMP_MAX:
        raise ValueError(f"{value}: must be between {ICMP_MIN} and {ICMP_MAX} (-1 means any)")
    return value


def _check_family(text: str, protocol: Protocol, destinations: Iterable[AddressRange]) -> None:
    if protocol == Protocol.ICMP and any(d.version != 4 for d in destinations):
        raise ValueError(f"{show(text)}: protocol 'icmp' takes IPv4 destinations only (use 'icmpv6' for IPv6)")
    if protocol == Protocol.ICMPV6 and any(d.version != 6 for d in destinations):
        raise ValueError(f"{show(text)}: protocol 'icmpv6' takes IPv6 destinations only (use 'icmp' for IPv4)")


class SecurityGroupRule(BaseModel):
    """One rule of a Cloud Controller v3 security group, as CC serves it and the policy server stores it.

    - `protocol`: tcp, udp, icmp, icmpv6 or all.
    - `destination`: an IPv4/IPv6 address, a CIDR (host bits are ignored), a range `a-b`, or a
      comma list of up to 6000 of those. No whitespace; no leading zeros in IPv4 octets.
    - `ports`: tcp and udp only, and required there: `443`, `80,443` or `8000-9000`.
    - `type`, `code`: icmp and icmpv6 only, and required there: -1..255, -1 means any.
    - `description`, `log`: optional.

    The policy server's internal form puts every key on every rule, with `ports: ""` and
    `type: 0, code: 0` where CC had none; those empty values are accepted for any protocol.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol
    destination: str
    ports: str | None = Field(default=None, validate_default=True)
    type: StrictInt | None = Field(default=None, validate_default=True)
    code: StrictInt | None = Field(default=None, validate_default=True)
    description: str | None = None
    log: StrictBool | None = None

    _rule: EgressRule = PrivateAttr()

    @field_validator("destination")
    @classmethod
    def _check_destination(cls, value: str, info: ValidationInfo) -> str:
        destinations = parse_destinations(value)
        protocol = info.data.get("protocol")
        if protocol is not None:
            _check_family(value, protocol, destinations)
        return value

    @field_validator("ports")
    @classmethod
    def _check_ports(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol: Protocol | None = info.data.get("protocol")
        if protocol is None:
            return value  # the protocol's own problem is reported; ours would only be noise
        if protocol.has_ports:
            if value is None or not value.strip():
                raise ValueError(f"required for protocol '{protocol}'")
            parse_ports(value)
        elif value:
            raise ValueError(f"{show(value)}: not allowed for protocol '{protocol}'")
        return value

    @field_validator("type", "code")
    @classmethod
    def _check_icmp_field(cls, value: int | None, info: ValidationInfo) -> int | None:
        protocol: Protocol | None = info.data.get("protocol")
        if protocol is None:
            return value
        if protocol.is_icmp:
            if value is None:
                raise ValueError(f"required for protocol '{protocol}'")
            return _check_icmp(value)
        if value:  # the internal form's 0 means "none"
            raise ValueError(f"{value}: only allowed for protocols 'icmp' and 'icmpv6'")
        return value

    @model_validator(mode="after")
    def _build(self) -> Self:
        p = self.protocol
        self._rule = EgressRule(
            protocol=p,
            destinations=parse_destinations(self.destination),
            ports=parse_ports(self.ports) if p.has_ports and self.ports else (),
            icmp_type=self.type if p.is_icmp else None,
            icmp_code=self.code if p.is_icmp else None,
            log=bool(self.log),
            description=self.description or "",
        )
        return self

    def egress_rule(self) -> EgressRule:
        """The canonical rule this CC rule allows."""
        return self._rule

    def internal_form(self) -> dict[str, object]:
        """This rule as the policy server stores it: all seven keys, `""`/0 for what is absent."""
        return {
            "protocol": str(self.protocol),
            "destination": self.destination,
            "ports": self.ports or "",
            "type": self.type or 0,
            "code": self.code or 0,
            "description": self.description or "",
            "log": bool(self.log),
        }


# --- Garden NetOutRule ----------------------------------------------------------------------------


class GardenProtocol(IntEnum):
    """Garden's numeric protocol. 4 (icmpv6) is newer Garden's value; older Garden stops at 3."""

    ALL = 0
    TCP = 1
    UDP = 2
    ICMP = 3
    ICMPV6 = 4


_FROM_GARDEN = {
    GardenProtocol.ALL: Protocol.ALL,
    GardenProtocol.TCP: Protocol.TCP,
    GardenProtocol.UDP: Protocol.UDP,
    GardenProtocol.ICMP: Protocol.ICMP,
    GardenProtocol.ICMPV6: Protocol.ICMPV6,
}
_GARDEN_ANY = 255  # the executor casts CC's -1 ("any") to uint8


class GardenIPRange(BaseModel):
    """An inclusive address range of a Garden rule: `{"start": "192.0.2.1", "end": "192.0.2.9"}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: IP
    end: IP

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start.version != self.end.version:
            raise ValueError(f"'{self.start}-{self.end}': range mixes IPv4 and IPv6")
        if int(self.start) > int(self.end):
            raise ValueError(f"'{self.start}-{self.end}': start after end")
        return self


class PortRange(BaseModel):
    """An inclusive port range `{"start": 8000, "end": 9000}` (Garden, c2c policies, egress policies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: StrictInt = Field(ge=PORT_MIN, le=PORT_MAX)
    end: StrictInt = Field(ge=PORT_MIN, le=PORT_MAX)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start > self.end:
            raise ValueError(f"'{self.start}-{self.end}': start after end")
        return self

    def interval(self) -> Interval:
        return self.start, self.end


class ICMPControl(BaseModel):
    """Garden's ICMP match. 255 (how -1 arrives after the executor's uint8 cast) and a missing code mean any."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: StrictInt = Field(default=0, ge=0, le=255)
    code: StrictInt | None = Field(default=None, ge=0, le=255)


class NetOutRule(BaseModel):
    """A Garden net-out rule, as `runtimeConfig.netOutRules` carries it to the CNI plugin.

    Garden omits zero values, so a missing `protocol` means all and a missing ICMP type means 0.
    Stricter than silk, which silently drops such rules: tcp/udp need ports, icmp needs `icmps`,
    every rule needs networks; and an unknown protocol number is an error, not "all".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: GardenProtocol = GardenProtocol.ALL
    networks: list[GardenIPRange] = Field(default_factory=list, validate_default=True)
    ports: list[PortRange] = Field(default_factory=list, validate_default=True)
    icmps: ICMPControl | None = Field(default=None, validate_default=True)
    log: StrictBool = False

    @field_validator("networks")
    @classmethod
    def _check_networks(cls, value: list[GardenIPRange], info: ValidationInfo) -> list[GardenIPRange]:
        if not value:
            raise ValueError("at least one network is required")
        garden = info.data.get("protocol")
        if garden is not None:
            _check_family(", ".join(f"{n.start}-{n.end}" for n in value), _FROM_GARDEN[garden], _ranges(value))
        return value

    @field_validator("ports")
    @classmethod
    def _check_ports(cls, value: list[PortRange], info: ValidationInfo) -> list[PortRange]:
        garden = info.data.get("protocol")
        if garden is None:
            return value
        protocol = _FROM_GARDEN[garden]
        if protocol.has_ports and not value:
            raise ValueError(f"required for protocol {int(garden)} ({protocol})")
        if value and not protocol.has_ports:
            raise ValueError(f"not allowed for protocol {int(garden)} ({protocol})")
        return value

    @field_validator("icmps")
    @classmethod
    def _check_icmps(cls, value: ICMPControl | None, info: ValidationInfo) -> ICMPControl | None:
        garden = info.data.get("protocol")
        if garden is None:
            return value
        protocol = _FROM_GARDEN[garden]
        if protocol.is_icmp and value is None:
            raise ValueError(f"required for protocol {int(garden)} ({protocol})")
        if value is not None and not protocol.is_icmp:
            raise ValueError(f"not allowed for protocol {int(garden)} ({protocol})")
        return value

    def egress_rule(self) -> EgressRule:
        """The canonical rule; ICMP type or code 255 (or a missing code) become -1, any."""
        protocol = _FROM_GARDEN[self.protocol]
        icmp = self.icmps

        def any_or(v: int | None) -> int:
            return ICMP_ANY if v is None or v == _GARDEN_ANY else v

        return EgressRule(
            protocol=protocol,
            destinations=_ranges(self.networks),
            ports=tuple(p.interval() for p in self.ports),
            icmp_type=any_or(icmp.type) if icmp else None,
            icmp_code=any_or(icmp.code) if icmp else None,
            log=self.log,
        )


def _ranges(networks: Iterable[GardenIPRange]) -> tuple[AddressRange, ...]:
    return tuple(AddressRange.of(n.start, n.end) for n in networks)


# --- BBS SecurityGroupRule ------------------------------------------------------------------------


class ICMPInfo(BaseModel):
    """BBS `ICMPInfo{type, code}`; -1 means any. Protobuf omits zeros, hence the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: StrictInt = 0
    code: StrictInt = 0

    @field_validator("type", "code")
    @classmethod
    def _range(cls, value: int) -> int:
        return _check_icmp(value)


class BBSSecurityGroupRule(BaseModel):
    """A BBS `SecurityGroupRule` (a desired LRP's or task's `egress_rules` entry) as a dict.

    Keys are the proto field names (`json_format.MessageToDict(..., preserving_proto_field_name=True)`);
    fields protobuf omits take their zero values. Validated as BBS does (exactly one of `ports`
    and `port_range` for tcp/udp; `icmp_info` for icmp/icmpv6 only) and as CC does for destinations.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol
    destinations: list[str] = Field(default_factory=list, validate_default=True)
    ports: list[StrictInt] = Field(default_factory=list, validate_default=True)
    port_range: PortRange | None = Field(default=None, validate_default=True)
    icmp_info: ICMPInfo | None = Field(default=None, validate_default=True)
    log: StrictBool = False
    annotations: list[str] = Field(default_factory=list)

    @field_validator("destinations")
    @classmethod
    def _check_destinations(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value:
            raise ValueError("at least one destination is required")
        protocol = info.data.get("protocol")
        for text in value:
            destinations = parse_destinations(text)
            if protocol is not None:
                _check_family(text, protocol, destinations)
        return value

    @field_validator("ports")
    @classmethod
    def _check_ports(cls, value: list[int], info: ValidationInfo) -> list[int]:
        for port in value:
            if not PORT_MIN <= port <= PORT_MAX:
                raise ValueError(f"{port}: out of range {PORT_MIN}-{PORT_MAX}")
        protocol = info.data.get("protocol")
        if value and protocol is not None and not protocol.has_ports:
            raise ValueError(f"not allowed for protocol '{protocol}'")
        return value

    @field_validator("port_range")
    @classmethod
    def _check_port_range(cls, value: PortRange | None, info: ValidationInfo) -> PortRange | None:
        protocol = info.data.get("protocol")
        ports = info.data.get("ports")
        if protocol is None or ports is None:
            return value
        if value is not None and not protocol.has_ports:
            raise ValueError(f"not allowed for protocol '{protocol}'")
        if protocol.has_ports and (value is None) == (not ports):
            raise ValueError(f"protocol '{protocol}' needs exactly one of 'ports' and 'port_range'")
        return value

    @field_validator("icmp_info")
    @classmethod
    def _check_icmp_info(cls, value: ICMPInfo | None, info: ValidationInfo) -> ICMPInfo | None:
        protocol = info.data.get("protocol")
        if protocol is None:
            return value
        if protocol.is_icmp and value is None:
            raise ValueError(f"required for protocol '{protocol}'")
        if value is not None and not protocol.is_icmp:
            raise ValueError(f"not allowed for protocol '{protocol}'")
        return value

    def to_cc_rule(self) -> SecurityGroupRule:
        """The Cloud Controller rule this BBS rule was made from (CC's egress_rules.rb, backwards).

        The annotations (`security_group_id:<guid>` of the groups the rule came from) become
        the description, so they can end up in nft comments.
        """
        if self.port_range is not None:
            ports: str | None = f"{self.port_range.start}-{self.port_range.end}"
        else:
            ports = ",".join(str(p) for p in self.ports) or None
        return SecurityGroupRule(
            protocol=self.protocol,
            destination=",".join(self.destinations),
            ports=ports,
            type=self.icmp_info.type if self.icmp_info else None,
            code=self.icmp_info.code if self.icmp_info else None,
            description=", ".join(self.annotations) or None,
            log=self.log,
        )
