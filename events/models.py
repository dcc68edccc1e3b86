"""The cell state document (docs/design.md §2.1) and the CF objects it is made of.

Upstream shapes are reused verbatim, so real API output can be pasted in: security groups are
Cloud Controller v3 resources, c2c and egress policies are the policy server's internal
`/networking/v1/internal/policies` objects. Every model forbids unknown keys.

Reading a document:

- `load_cell_state(data)` is strict: any problem raises `StateError` listing all of them.
- `load_cell_state(data, lenient=True)` drops only what is bad (a rule from its group, a policy,
  a container, an address; unknown keys are ignored) and returns the problems beside the state.
  Every drop allows less, never more. Problems that cannot be dropped safely (a bad `config`,
  whose deny networks must not silently vanish; a missing `containers`) still raise.

Both report the same problem text for the same fault (see events/problems.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from enum import StrEnum
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from os import PathLike
from typing import Annotated, Any, Literal, Self, overload

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from events.problems import (
    ItemParser,
    Loc,
    Problem,
    StateError,
    format_path,
    item_parser,
    problems_from,
    read_json,
    show,
    validate_items,
    validate_unit,
)
from events.rules import (
    IP,
    PORT_MAX,
    PORT_MIN,
    AddressRange,
    BBSSecurityGroupRule,
    EgressRule,
    IPAddress,
    IPv4,
    IPv6,
    NetOutRule,
    PortRange,
    Protocol,
    SecurityGroupRule,
    StrictBool,
    StrictInt,
    parse_ip,
)

__all__ = [
    "AddressRange",
    "AppLifecycle",
    "BBSSecurityGroupRule",
    "C2CDestination",
    "C2CPolicy",
    "C2CProtocol",
    "C2CSource",
    "CellConfig",
    "CellState",
    "Container",
    "DenyNetworks",
    "EgressDestination",
    "EgressPolicy",
    "EgressRule",
    "EgressSource",
    "EgressSourceType",
    "GloballyEnabled",
    "InternalSecurityGroup",
    "IPv4Range",
    "NetOutRule",
    "OutboundConnections",
    "PortMapping",
    "PortRange",
    "Problem",
    "Protocol",
    "SecurityGroup",
    "SecurityGroupRule",
    "StateError",
    "Workload",
    "dedupe_containers",
    "load_cell_state",
    "load_cell_state_file",
    "parse_host_service",
    "parse_internal_policies",
]

NonEmpty = Annotated[str, Field(min_length=1)]
Port = Annotated[StrictInt, Field(ge=PORT_MIN, le=PORT_MAX)]


class _Model(BaseModel):
    """Base of the document's models: unknown keys are errors, values are immutable, field docstrings document."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


_rule_parser: ItemParser[SecurityGroupRule] = item_parser(SecurityGroupRule)


# --- Containers -----------------------------------------------------------------------------------


class Workload(StrEnum):
    """What a container runs (Diego's `container_workload`). Running security groups apply to app and task."""

    APP = "app"
    TASK = "task"
    STAGING = "staging"


class PortMapping(_Model):
    """A host port forwarded to a container port, with CF's key names."""

    host_port: Port
    container_port: Port


class Container(_Model):
    """One container on this cell."""

    handle: NonEmpty
    """Garden handle (= CNI container id): the LRP instance guid, or the task guid."""
    ip: IPv4
    """Overlay IPv4 address."""
    ipv6: IPv6 | None = None
    """Overlay IPv6 address, if the container has one."""
    app_guid: NonEmpty
    """App guid (Diego's `policy_group_id`): the identity c2c policies name."""
    space_guid: NonEmpty
    """Space guid: selects the space-bound security groups."""
    org_guid: str = ""
    """Org guid, for comments and logs only."""
    workload: Workload
    """`app`, `task` or `staging`."""
    ports: list[Port] = Field(default_factory=list)
    """The app's open container ports."""
    egress_rules: list[SecurityGroupRule] = Field(default_factory=list)
    """The rules Diego passed at creation (CC rule format). Used only when `config.dynamic_asgs` is false."""
    net_out_rules: list[NetOutRule] = Field(default_factory=list, exclude_if=lambda rules: not rules)
    """The rules Garden passed at creation (its netOutRules, through the CNI plugin). Used only when
    `config.dynamic_asgs` is false. Left out of the JSON when empty, as in every container BBS describes."""
    port_mappings: list[PortMapping] = Field(default_factory=list)
    """Host port mappings."""
    log_config: str | None = None
    """Diego's log_config JSON string (guid, index, source_name, tags), passed through for app log lines."""

    def creation_rules(self) -> list[EgressRule]:
        """The canonical rules this container was created with: `egress_rules` and `net_out_rules`."""
        return [r.egress_rule() for r in self.egress_rules] + [r.egress_rule() for r in self.net_out_rules]


_container_parser: ItemParser[Container] = item_parser(
    Container, {"egress_rules": _rule_parser, "net_out_rules": item_parser(NetOutRule)}
)


def _dedupe(indexed: Sequence[tuple[Loc, Container]]) -> tuple[list[Container], list[Problem]]:
    seen: dict[tuple[str, object], int] = {}  # ("handle" | "address", value) -> first position claiming it
    clashing: set[int] = set()
    problems = []
    for n, (loc, c) in enumerate(indexed):
        claims = [("handle", c.handle)] + [(f, a) for f, a in (("ip", c.ip), ("ipv6", c.ipv6)) if a is not None]
        for field, value in claims:
            first = seen.setdefault(("handle" if field == "handle" else "address", value), n)
            if first == n:
                continue
            first_loc, first_c = indexed[first]
            what = f"handle of {format_path(first_loc)}"
            if field != "handle":
                what = f"address of {format_path(first_loc)} (handle {show(first_c.handle)})"
            problems.append(Problem(loc + (field,), f"{show(str(value))} is also the {what}"))
            clashing |= {first, n}
    return [c for n, (_, c) in enumerate(indexed) if n not in clashing], problems


def dedupe_containers(
    containers: Sequence[Container], at: Loc = ("containers",)
) -> tuple[list[Container], list[Problem]]:
    """Drop every container that shares its handle or an address with another (neither can be trusted).

    Fail closed: an address left out of the table is an unknown source. Returns the containers
    kept and one problem per clash, naming both containers.
    """
    return _dedupe([(at + (i,), c) for i, c in enumerate(containers)])


# --- Security groups ------------------------------------------------------------------------------


class GloballyEnabled(_Model):
    """Whether a group applies to every running / staging container of the foundation."""

    running: StrictBool = False
    staging: StrictBool = False


class _GuidRef(_Model):
    guid: NonEmpty


class _ToMany(_Model):
    data: list[_GuidRef] = Field(default_factory=list)


class SecurityGroupRelationships(_Model):
    """The spaces a group is bound to, for running and for staging."""

    running_spaces: _ToMany = Field(default_factory=_ToMany)
    staging_spaces: _ToMany = Field(default_factory=_ToMany)


class SecurityGroup(_Model):
    """A Cloud Controller v3 security group resource (`GET /v3/security_groups` items, verbatim).

    `created_at`, `updated_at`, `links` and `metadata` are accepted so API output can be pasted
    in, and carry no meaning here (they are left out when the model is dumped).
    """

    guid: NonEmpty
    name: NonEmpty
    rules: list[SecurityGroupRule] = Field(default_factory=list)
    globally_enabled: GloballyEnabled = Field(default_factory=GloballyEnabled)
    relationships: SecurityGroupRelationships = Field(default_factory=SecurityGroupRelationships)
    created_at: str | None = Field(default=None, exclude=True)
    updated_at: str | None = Field(default=None, exclude=True)
    links: JsonValue = Field(default=None, exclude=True)
    metadata: JsonValue = Field(default=None, exclude=True)

    @cached_property
    def running_space_guids(self) -> frozenset[str]:
        return frozenset(ref.guid for ref in self.relationships.running_spaces.data)

    @cached_property
    def staging_space_guids(self) -> frozenset[str]:
        return frozenset(ref.guid for ref in self.relationships.staging_spaces.data)

    def applies_to(self, space_guid: str, workload: Workload | str) -> bool:
        """Whether this group's rules apply to a container in `space_guid` running `workload`.

        Running groups (global or bound for running) apply to app and task containers,
        staging groups to staging containers (CC space.rb, task/app recipe builders).
        """
        if Workload(workload) is Workload.STAGING:
            return self.globally_enabled.staging or space_guid in self.staging_space_guids
        return self.globally_enabled.running or space_guid in self.running_space_guids

    def egress_rules(self) -> list[EgressRule]:
        return [rule.egress_rule() for rule in self.rules]

    @classmethod
    def parse_lenient(cls, data: object, at: Loc = ()) -> tuple[SecurityGroup, list[Problem]]:
        """Parse one group (e.g. a NATS message), dropping bad rules and ignoring unknown keys.

        The group itself (guid, name, globally_enabled, relationships) must be valid, else
        StateError. `at` prefixes the problem paths.
        """
        group, problems = _group_parser(data, at)
        if group is None:
            raise StateError(problems)
        return group, problems


_group_parser: ItemParser[SecurityGroup] = item_parser(SecurityGroup, {"rules": _rule_parser})


def _decode_rules(value: object) -> object:
    if isinstance(value, list):
        return value  # already decoded: hand-written input, or our own lenient path
    if not isinstance(value, str):
        raise ValueError(f"{show(value)}: must be a string holding a JSON list of rules")
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON at column {err.colno}: {err.msg}") from None


class InternalSecurityGroup(_Model):
    """A security group as the policy server's `/networking/v1/internal/security_groups` lists it.

    `rules` arrives as a JSON-encoded string (the policy server stores it that way) and is
    encoded back to one when dumped, with all seven keys per rule, as the policy server does.
    """

    guid: NonEmpty
    name: NonEmpty
    rules: Annotated[list[SecurityGroupRule], BeforeValidator(_decode_rules)] = Field(default_factory=list)
    staging_default: StrictBool = False
    running_default: StrictBool = False
    staging_space_guids: Annotated[list[str], BeforeValidator(lambda v: [] if v is None else v)] = Field(
        default_factory=list
    )
    running_space_guids: Annotated[list[str], BeforeValidator(lambda v: [] if v is None else v)] = Field(
        default_factory=list
    )

    @field_serializer("rules")
    def _encode_rules(self, rules: list[SecurityGroupRule]) -> str:
        return json.dumps([r.internal_form() for r in rules], separators=(",", ":"))

    def to_security_group(self) -> SecurityGroup:
        """The same group as a Cloud Controller v3 resource (the asg-syncer's mapping, backwards)."""

        def refs(guids: Sequence[str]) -> dict[str, list[dict[str, str]]]:
            return {"data": [{"guid": g} for g in guids]}

        return SecurityGroup.model_validate(
            {
                "guid": self.guid,
                "name": self.name,
                "globally_enabled": {"running": self.running_default, "staging": self.staging_default},
                "relationships": {
                    "running_spaces": refs(self.running_space_guids),
                    "staging_spaces": refs(self.staging_space_guids),
                },
            }
        ).model_copy(update={"rules": list(self.rules)})

    @classmethod
    def from_security_group(cls, group: SecurityGroup) -> InternalSecurityGroup:
        """The policy server's view of a CC group (what its asg-syncer stores); for simulators."""
        return cls(
            guid=group.guid,
            name=group.name,
            rules=list(group.rules),
            staging_default=group.globally_enabled.staging,
            running_default=group.globally_enabled.running,
            staging_space_guids=sorted(group.staging_space_guids),
            running_space_guids=sorted(group.running_space_guids),
        )

    @classmethod
    def parse_lenient(cls, data: object, at: Loc = ()) -> tuple[SecurityGroup, list[Problem]]:
        """Parse one internal group into a CC v3 group, dropping bad rules (also when `rules` is not valid JSON).

        The group's own keys must be valid, else StateError.
        """
        problems: list[Problem] = []
        if isinstance(data, dict) and "rules" in data:
            try:
                data = {**data, "rules": _decode_rules(data["rules"])}
            except ValueError as err:
                problems.append(Problem(at + ("rules",), str(err)))
                data = {**data, "rules": []}
        group, found = validate_unit(cls, data, at, {"rules": _rule_parser})
        problems += found
        if group is None:
            raise StateError(problems)
        return group.to_security_group(), problems


# --- c2c policies ---------------------------------------------------------------------------------


class C2CProtocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class C2CSource(_Model):
    id: NonEmpty
    """Source app guid."""
    tag: str | None = None
    """The policy server's hex tag for the source (silk's VXLAN GBP mark); informational here."""


class C2CDestination(_Model):
    id: NonEmpty
    """Destination app guid."""
    tag: str | None = None
    protocol: C2CProtocol
    ports: PortRange


class C2CPolicy(_Model):
    """A container-to-container policy, as the policy server's internal API lists it:
    `{"source": {"id", "tag"}, "destination": {"id", "tag", "protocol", "ports": {"start", "end"}}}`."""

    source: C2CSource
    destination: C2CDestination


# --- Dynamic egress policies (historical policy-server feature) -----------------------------------


class EgressSourceType(StrEnum):
    APP = "app"
    SPACE = "space"
    DEFAULT = "default"


class AppLifecycle(StrEnum):
    RUNNING = "running"
    STAGING = "staging"
    ALL = "all"


class EgressSource(_Model):
    """Whom an egress policy is for: an app, every app of a space, or (`default`, no id) everyone."""

    id: str = ""
    type: EgressSourceType = EgressSourceType.APP

    @model_validator(mode="after")
    def _id_matches_type(self) -> Self:
        if self.type is EgressSourceType.DEFAULT and self.id:
            raise ValueError(f"{show(self.id)}: a 'default' source has no id")
        if self.type is not EgressSourceType.DEFAULT and not self.id:
            raise ValueError(f"a source of type '{self.type}' needs an id")
        return self


class IPv4Range(_Model):
    """An inclusive IPv4 range `{"start": "192.0.2.1", "end": "192.0.2.9"}`."""

    start: IPv4
    end: IPv4

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start > self.end:
            raise ValueError(f"'{self.start}-{self.end}': start after end")
        return self


class EgressDestination(_Model):
    """One rule of an egress destination (the internal API emits one policy per destination rule)."""

    id: str = ""
    name: str = ""
    description: str = ""
    protocol: Protocol
    """tcp, udp, icmp or all (icmpv6 did not exist then)."""
    ports: list[PortRange] = Field(default_factory=list, validate_default=True)
    """tcp/udp only; none means every port."""
    ips: list[IPv4Range]
    icmp_type: StrictInt = Field(default=-1, validate_default=True)
    """icmp only; -1 means any."""
    icmp_code: StrictInt = Field(default=-1, validate_default=True)

    @field_validator("protocol")
    @classmethod
    def _no_icmpv6(cls, value: Protocol) -> Protocol:
        if value is Protocol.ICMPV6:
            raise ValueError("'icmpv6': egress policies take 'tcp', 'udp', 'icmp' or 'all'")
        return value

    @field_validator("ports")
    @classmethod
    def _ports_only_tcp_udp(cls, value: list[PortRange], info: ValidationInfo) -> list[PortRange]:
        protocol = info.data.get("protocol")
        if value and protocol is not None and not protocol.has_ports:
            raise ValueError(f"not allowed for protocol '{protocol}'")
        return value

    @field_validator("ips")
    @classmethod
    def _some_ips(cls, value: list[IPv4Range]) -> list[IPv4Range]:
        if not value:
            raise ValueError("at least one address range is required")
        return value

    @field_validator("icmp_type", "icmp_code")
    @classmethod
    def _icmp(cls, value: int, info: ValidationInfo) -> int:
        if not -1 <= value <= 255:
            raise ValueError(f"{value}: must be between -1 and 255 (-1 means any)")
        protocol = info.data.get("protocol")
        if value != -1 and protocol is not None and protocol is not Protocol.ICMP:
            raise ValueError(f"{value}: only allowed for protocol 'icmp'")
        return value


class EgressPolicy(_Model):
    """A dynamic egress policy (policy server, removed in cf-networking 3.6.0), internal shape."""

    id: str = ""
    source: EgressSource
    destination: EgressDestination
    app_lifecycle: Annotated[AppLifecycle, BeforeValidator(lambda v: AppLifecycle.ALL if v is None else v)] = (
        AppLifecycle.ALL
    )

    def applies_to(self, app_guid: str, space_guid: str, workload: Workload | str | None) -> bool:
        """The historical VPA's matching: the source is the app (by id, whatever the type), the
        space (type space), or everyone (type default); and the lifecycle is `all`, or the workload
        is unknown, or `running` for app/task, or `staging` for staging."""
        s = self.source
        if not ((s.id and s.id == app_guid) or (s.type is EgressSourceType.SPACE and s.id == space_guid)):
            if s.type is not EgressSourceType.DEFAULT:
                return False
        if self.app_lifecycle is AppLifecycle.ALL or not workload:
            return True
        if Workload(workload) is Workload.STAGING:
            return self.app_lifecycle is AppLifecycle.STAGING
        return self.app_lifecycle is AppLifecycle.RUNNING

    def egress_rule(self) -> EgressRule:
        """The canonical rule. tcp/udp without ports allow every port (1-65535), as the VPA did."""
        d = self.destination
        ports = tuple(p.interval() for p in d.ports)
        if d.protocol.has_ports and not ports:
            ports = ((PORT_MIN, PORT_MAX),)
        icmp = d.protocol is Protocol.ICMP
        return EgressRule(
            protocol=d.protocol,
            destinations=tuple(AddressRange.of(r.start, r.end) for r in d.ips),
            ports=ports,
            icmp_type=d.icmp_type if icmp else None,
            icmp_code=d.icmp_code if icmp else None,
            description=d.description or d.name,
        )


class _InternalPolicies(_Model):
    total_policies: StrictInt = 0
    policies: list[C2CPolicy]
    total_egress_policies: StrictInt = 0
    egress_policies: list[EgressPolicy] = Field(default_factory=list)


@overload
def parse_internal_policies(data: object) -> tuple[list[C2CPolicy], list[EgressPolicy]]: ...
@overload
def parse_internal_policies(
    data: object, *, lenient: Literal[True]
) -> tuple[list[C2CPolicy], list[EgressPolicy], list[Problem]]: ...
def parse_internal_policies(
    data: object, *, lenient: bool = False
) -> tuple[list[C2CPolicy], list[EgressPolicy]] | tuple[list[C2CPolicy], list[EgressPolicy], list[Problem]]:
    """Parse a `/networking/v1/internal/policies` response into (c2c policies, egress policies).

    Strict by default (StateError on any problem). With `lenient=True`, bad policies are dropped,
    unknown keys ignored, and the problems returned as a third element.
    """
    nested = {"policies": item_parser(C2CPolicy), "egress_policies": item_parser(EgressPolicy)}
    parsed, problems = validate_unit(_InternalPolicies, data, (), nested)
    if parsed is None or (problems and not lenient):
        raise StateError(problems)
    if lenient:
        return parsed.policies, parsed.egress_policies, problems
    return parsed.policies, parsed.egress_policies


# --- Cell configuration ---------------------------------------------------------------------------


def _parse_network(value: object) -> IPv4Network | IPv6Network:
    if isinstance(value, (IPv4Network, IPv6Network)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{show(value)}: must be a string holding a CIDR network")
    try:
        return ip_network(value, strict=False)  # host bits dropped, as iptables -d did
    except ValueError:
        raise ValueError(f"{show(value)}: not a CIDR network") from None


def _parse_v4_network(value: object) -> IPv4Network:
    net = _parse_network(value)
    if not isinstance(net, IPv4Network):
        raise ValueError(f"{show(str(value))}: not an IPv4 network")
    return net


Network = Annotated[
    IPv4Network | IPv6Network,
    PlainValidator(_parse_network),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "format": "cidr"}),
]
V4Network = Annotated[
    IPv4Network,
    PlainValidator(_parse_v4_network),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "format": "ipv4-cidr"}),
]

_HOST_SERVICE = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<p6>[0-9]+)|(?P<v4>[^:\[\]]+):(?P<p4>[0-9]+)", re.ASCII)


def parse_host_service(text: str) -> tuple[IPAddress, int]:
    """`"169.254.0.2:9001"` or `"[fd00::2]:53"` -> (address, port). Raises ValueError quoting `text`."""
    m = _HOST_SERVICE.fullmatch(text)
    if not m:
        raise ValueError(f"{show(text)}: must be 'address:port' (IPv6 as '[address]:port')")
    addr_text, port_text = (m["v6"], m["p6"]) if m["v6"] else (m["v4"], m["p4"])
    try:
        addr = parse_ip(addr_text, 6 if m["v6"] else 4)
    except ValueError:
        raise ValueError(f"{show(text)}: {show(addr_text)} is not an IP address") from None
    port = int(port_text)
    if not PORT_MIN <= port <= PORT_MAX:
        raise ValueError(f"{show(text)}: port {port} out of range {PORT_MIN}-{PORT_MAX}")
    return addr, port


def _check_host_service(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{show(value)}: must be a string")
    parse_host_service(value)
    return value


HostService = Annotated[
    str, PlainValidator(_check_host_service), WithJsonSchema({"type": "string", "format": "address:port"})
]


class DenyNetworks(_Model):
    """Networks no container may reach, whatever its rules allow (silk's `deny_networks`)."""

    always: list[Network] = Field(default_factory=list)
    """Denied to every container."""
    running: list[Network] = Field(default_factory=list)
    """Denied to app and task containers."""
    staging: list[Network] = Field(default_factory=list)
    """Denied to staging containers."""

    def for_workload(self, workload: Workload | str) -> list[IPv4Network | IPv6Network]:
        """The networks denied to a container of this workload: `always` plus `running` or `staging`."""
        extra = self.staging if Workload(workload) is Workload.STAGING else self.running
        return [*self.always, *extra]


class OutboundConnections(_Model):
    """silk's `outbound_connections`: a rate limit on the new TCP connections a container opens to
    one destination address and port (outside the overlay), as silk's hashlimit rule does."""

    limit: StrictBool = False
    """Reject a container's new TCP connections to one destination address and port beyond the limit."""
    burst: Annotated[StrictInt, Field(gt=0)] = 1000
    """How many such connections may be opened at once before the rate applies."""
    rate_per_sec: Annotated[StrictInt, Field(gt=0)] = 100
    """How many more per second, once the burst is spent."""
    dry_run: StrictBool = False
    """Only log the connections the limit would reject (with or without `limit`)."""
    logging: StrictBool = False
    """Log the connections the limit rejects."""

    @property
    def active(self) -> bool:
        return self.limit or self.dry_run


class CellConfig(_Model):
    """Operator configuration of one cell (BOSH properties of the cfnft job)."""

    overlay_network: V4Network = IPv4Network("10.255.0.0/16")
    """The container overlay network (silk's `network`). Container-to-container traffic is the
    traffic inside it; egress is traffic from a container to anywhere outside it."""
    overlay_network6: IPv6Network | None = None
    """Where containers' IPv6 addresses come from, if they have any. IPv6 from this prefix whose
    source is not a known container is rejected (fail closed), as IPv4 from `overlay_network` is."""
    dynamic_asgs: StrictBool = True
    """true: security groups come from `security_groups` and changes apply to running containers.
    false: only each container's `egress_rules` (fixed when it was created) apply, as in classic CF."""
    deny_networks: DenyNetworks = Field(default_factory=DenyNetworks)
    """Networks that are rejected even when a rule allows them."""
    dns_servers: list[IP] = Field(default_factory=list)
    """Addresses containers may send DNS (tcp and udp port 53) to on their cell."""
    host_tcp_services: list[HostService] = Field(default_factory=list)
    """Services on the cell that containers may reach over TCP, as `address:port` (silk's form)."""
    host_udp_services: list[HostService] = Field(default_factory=list)
    """Services on the cell that containers may reach over UDP, as `address:port`."""
    masquerade: StrictBool = True
    """Source-NAT containers' IPv4 traffic that leaves the overlay to the cell's address, as silk does
    (its MASQUERADE rule). Traffic inside the overlay and to `no_masquerade_networks` keeps its source."""
    no_masquerade_networks: list[V4Network] = Field(default_factory=list)
    """IPv4 destinations that see containers' own addresses (silk's `no_masquerade_cidr_range`, beyond the overlay)."""
    asg_logging: StrictBool = False
    """Log every accepted new egress connection, not only those of rules with `log: true`."""
    c2c_logging: StrictBool = False
    """Log accepted new container-to-container connections."""
    denied_logs_per_sec: Annotated[StrictInt, Field(gt=0)] = 1
    """Rate limit for logging denied packets, per second."""
    accepted_udp_logs_per_sec: Annotated[StrictInt, Field(gt=0)] = 100
    """Rate limit for logging accepted UDP packets, per second (TCP is logged once per connection)."""
    outbound_connections: OutboundConnections = Field(default_factory=OutboundConnections)
    """silk's limit on new TCP connections per container and destination address and port."""
    revoke_established: StrictBool = False
    """When a change takes an allowance away, also end the connections it had allowed (their
    connection-tracking entries are deleted), instead of letting them run on as CF does."""

    def tcp_services(self) -> list[tuple[IPAddress, int]]:
        return [parse_host_service(s) for s in self.host_tcp_services]

    def udp_services(self) -> list[tuple[IPAddress, int]]:
        return [parse_host_service(s) for s in self.host_udp_services]


# --- The document ---------------------------------------------------------------------------------


class CellState(_Model):
    """Everything that decides one cell's ruleset (docs/design.md §2.1). Container handles and addresses are unique."""

    cell_id: str = ""
    containers: list[Container]
    security_groups: list[SecurityGroup] = Field(default_factory=list)
    c2c_policies: list[C2CPolicy] = Field(default_factory=list)
    egress_policies: list[EgressPolicy] = Field(default_factory=list)
    app_instances: dict[str, list[IP]] = Field(default_factory=dict)
    """Overlay addresses of every instance of each app, on any cell (sources of c2c traffic)."""
    config: CellConfig = Field(default_factory=CellConfig)

    @field_validator("containers")
    @classmethod
    def _unique(cls, value: list[Container]) -> list[Container]:
        _, problems = dedupe_containers(value)
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return value


def _app_instances(data: object, at: Loc) -> tuple[dict[str, list[IPAddress]], list[Problem]]:
    if not isinstance(data, dict):
        return {}, [Problem(at, f"{show(data)}: must be an object mapping app guids to address lists")]
    out: dict[str, list[IPAddress]] = {}
    problems: list[Problem] = []
    for guid, addresses in data.items():
        parsed: tuple[list[IPAddress], list[Problem]] = validate_items(_address_parser, addresses, at + (guid,))
        out[guid], found = parsed
        problems += found
    return out, problems


def _address_parser(data: object, at: Loc) -> tuple[IPAddress | None, list[Problem]]:
    try:
        return parse_ip(data, None), []
    except ValueError as err:
        return None, [Problem(at, str(err))]


def _load(data: object) -> tuple[CellState | None, list[Problem]]:
    """Parse leniently; the state is None when a problem cannot be dropped safely."""
    if not isinstance(data, dict):
        return None, [Problem((), f"{show(data)}: a cell state must be a JSON object")]
    problems: list[Problem] = []
    fatal = "containers" not in data
    if fatal:
        problems.append(Problem(("containers",), "required key is missing"))
    parts: dict[str, Any] = {}
    for key, value in data.items():
        at: Loc = (key,)
        found: list[Problem] = []
        if key == "containers":
            containers: list[tuple[Loc, Container]] = []
            if not isinstance(value, list):
                fatal, found = True, [Problem(at, f"{show(value)}: must be a list")]
            for i, item in enumerate(value if isinstance(value, list) else ()):
                container, more = _container_parser(item, at + (i,))
                found += more
                if container is not None:
                    containers.append((at + (i,), container))
            parts[key], dupes = _dedupe(containers)
            found += dupes
        elif key == "security_groups":
            parts[key], found = validate_items(_group_parser, value, at)
        elif key == "c2c_policies":
            parts[key], found = validate_items(item_parser(C2CPolicy), value, at)
        elif key == "egress_policies":
            parts[key], found = validate_items(item_parser(EgressPolicy), value, at)
        elif key == "app_instances":
            parts[key], found = _app_instances(value, at)
        elif key == "config":
            # Not droppable in part: ignoring a misspelt or bad deny network would allow more.
            try:
                parts[key] = CellConfig.model_validate(value)
            except ValidationError as err:
                fatal, found = True, problems_from(err, at)
        elif key == "cell_id":
            if isinstance(value, str):
                parts[key] = value
            else:
                fatal, found = True, [Problem(at, f"{show(value)}: must be a string")]
        else:
            found = [Problem(at, "unknown key")]
        problems += found
    if fatal:
        return None, problems
    return CellState(**parts), problems


@overload
def load_cell_state(data: object) -> CellState: ...
@overload
def load_cell_state(data: object, *, lenient: Literal[True]) -> tuple[CellState, list[Problem]]: ...
def load_cell_state(data: object, *, lenient: bool = False) -> CellState | tuple[CellState, list[Problem]]:
    """Validate a decoded cell state document.

    Strict (default): returns the CellState, or raises StateError listing every problem.
    Lenient: returns (CellState, problems) with the bad parts dropped (see the module doc);
    raises StateError only when something that cannot be dropped safely is bad.
    """
    state, problems = _load(data)
    if state is None or (problems and not lenient):
        raise StateError(problems)
    return (state, problems) if lenient else state


@overload
def load_cell_state_file(path: str | PathLike[str]) -> CellState: ...
@overload
def load_cell_state_file(path: str | PathLike[str], *, lenient: Literal[True]) -> tuple[CellState, list[Problem]]: ...
def load_cell_state_file(
    path: str | PathLike[str], *, lenient: bool = False
) -> CellState | tuple[CellState, list[Problem]]:
    """Read and validate a cell state JSON file. Every failure is a StateError naming the file."""
    data = read_json(path)
    try:
        return load_cell_state(data, lenient=True) if lenient else load_cell_state(data)
    except StateError as err:
        raise StateError(err.problems, source=str(path), what="cell state") from None
