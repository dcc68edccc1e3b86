"""The BBS watcher's picture of the foundation's LRPs, and the container and app states it implies.

`LrpView` holds every desired LRP and every actual LRP, the latter keyed like BBS's table:
(process guid, index, presence), so an instance and its evacuating or suspect copy sit side by
side. A full listing replaces the picture (`reset`); each stream event updates it (`apply`) and
says which process guids and apps it touched, so the watcher republishes only those.

What becomes a container (handle = instance guid, on the instance's cell):
- an actual LRP that is RUNNING with an `instance_address`, in any presence. EVACUATING copies
  are containers (the old container still runs until its replacement is up, and takes traffic);
  SUSPECT ones are kept as they are (BBS keeps them because they may still run).
- UNCLAIMED and CLAIMED instances have no address yet and CRASHED ones none any more: no container.
- the desired LRP must be known and carry CF's `network.properties` (app, space, org guid);
  without them (another Diego tenant, or an app being deleted) there is nothing to enforce.

App instance sets: every such container's addresses (IPv4 and IPv6), over all cells and all
process guids whose desired LRP names the app, evacuating and suspect copies included.

Events apply in stream order on top of the last listing. The stream is subscribed before the
listing is taken, so the first events may be older than the listing; an event whose record
(same modification-tag epoch) is older than what the view holds is skipped, and a removal only
removes the instance it names. Replaying the rest converges on BBS's state.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from google.protobuf import json_format
from pydantic import ValidationError

from events import subjects
from events.bbs import bbs_pb2 as pb
from events.bbs.client import RUNNING
from events.bbs.sse import BbsEvent
from events.models import Container, PortMapping, Workload
from events.problems import problems_from
from events.rules import BBSSecurityGroupRule, SecurityGroupRule

log = logging.getLogger(__name__)

ContainerKey = tuple[str, str]  # (cell id, handle)
_Slot = tuple[int, int]  # (index, presence) within one process guid


@dataclass(frozen=True, slots=True)
class LrpNetwork:
    """What a desired LRP says about its containers: who they belong to and their static rules."""

    app_guid: str
    space_guid: str
    org_guid: str
    workload: Workload
    ports: tuple[int, ...]
    egress_rules: tuple[SecurityGroupRule, ...]


@dataclass(frozen=True, slots=True)
class ParsedDesired:
    """A desired LRP as the view keeps it: its modification tag and its network (None: not a CF app)."""

    process_guid: str
    tag: tuple[str, int]
    network: LrpNetwork | None
    problems: tuple[str, ...] = ()


def parse_desired(desired: pb.DesiredLRP) -> ParsedDesired:
    """Read the networking part of a desired LRP. Bad egress rules are left out (less access) and
    reported; missing app or space guid make it a non-CF LRP (network None) with a problem."""
    tag = (desired.modification_tag.epoch, desired.modification_tag.index)
    props = desired.network.properties
    app_guid = props.get("policy_group_id") or props.get("app_id", "")
    space_guid = props.get("space_id", "")
    if not app_guid or not space_guid:
        return ParsedDesired(desired.process_guid, tag, None, ("no app or space guid in network.properties",))
    try:
        subjects.token(app_guid, "app guid")
    except ValueError as err:
        return ParsedDesired(desired.process_guid, tag, None, (str(err),))
    problems: list[str] = []
    try:
        workload = Workload(props.get("container_workload") or Workload.APP)
    except ValueError:
        problems.append(f"container_workload {props['container_workload']!r} is not app, task or staging")
        return ParsedDesired(desired.process_guid, tag, None, tuple(problems))
    ports: tuple[int, ...] = tuple(desired.ports)
    if props.get("ports"):
        try:
            ports = tuple(int(p) for p in props["ports"].split(","))
        except ValueError:
            problems.append(f"network.properties.ports {props['ports']!r} is not a comma list of ports")
    rules: list[SecurityGroupRule] = []
    for n, rule in enumerate(desired.egress_rules):
        data = json_format.MessageToDict(rule, preserving_proto_field_name=True)
        try:
            rules.append(BBSSecurityGroupRule.model_validate(data).to_cc_rule())
        except ValidationError as err:
            problems += [f"{p} (rule left out)" for p in problems_from(err, ("egress_rules", n))]
    network = LrpNetwork(app_guid, space_guid, props.get("org_id", ""), workload, ports, tuple(rules))
    return ParsedDesired(desired.process_guid, tag, network, tuple(problems))


@dataclass(slots=True)
class Affected:
    """What an event touched: process guids whose containers to recompute, apps whose sets to recompute."""

    process_guids: set[str] = field(default_factory=set)
    apps: set[str] = field(default_factory=set)

    def merge(self, other: Affected) -> Affected:
        self.process_guids |= other.process_guids
        self.apps |= other.apps
        return self


class LrpView:
    """Desired and actual LRPs as the last listing plus the events since; see the module docstring."""

    def __init__(self) -> None:
        self._desired: dict[str, ParsedDesired] = {}
        self._actual: dict[str, dict[_Slot, pb.ActualLRP]] = defaultdict(dict)
        self._process_guids_of_app: dict[str, set[str]] = defaultdict(set)

    # ---- building it -----------------------------------------------------------------------

    def reset(self, desired: list[pb.DesiredLRP], actual: list[pb.ActualLRP]) -> list[str]:
        """Replace everything with a listing; returns the problems found in desired LRPs."""
        self._desired.clear()
        self._actual.clear()
        self._process_guids_of_app.clear()
        problems = []
        for d in desired:
            parsed = parse_desired(d)
            self._set_desired(parsed)
            problems += [f"desired LRP {parsed.process_guid}: {p}" for p in parsed.problems]
        for lrp in actual:
            key = lrp.actual_lrp_key
            self._actual[key.process_guid][(key.index, lrp.presence)] = lrp
        return problems

    def apply(self, event: BbsEvent) -> tuple[Affected, list[str]]:
        """Apply one stream event; returns what it touched and any problems in a desired LRP it carried."""
        message = event.message
        affected = Affected()
        problems: list[str] = []
        if isinstance(message, (pb.DesiredLRPCreatedEvent, pb.DesiredLRPChangedEvent)):
            desired = message.desired_lrp if isinstance(message, pb.DesiredLRPCreatedEvent) else message.after
            parsed = parse_desired(desired)
            current = self._desired.get(parsed.process_guid)
            if current is None or not _older(parsed.tag, current.tag):
                self._touch(affected, parsed.process_guid)
                self._set_desired(parsed)
                self._touch(affected, parsed.process_guid)
                problems = [f"desired LRP {parsed.process_guid}: {p}" for p in parsed.problems]
        elif isinstance(message, pb.DesiredLRPRemovedEvent):
            guid = message.desired_lrp.process_guid
            current = self._desired.get(guid)
            if current is not None and current.tag[0] == message.desired_lrp.modification_tag.epoch:
                self._touch(affected, guid)
                self._drop_desired(guid)
        elif isinstance(message, pb.ActualLRPInstanceCreatedEvent):
            self._put(message.actual_lrp, affected)
        elif isinstance(message, pb.ActualLRPInstanceChangedEvent):
            self._change(message, affected)
        elif isinstance(message, pb.ActualLRPInstanceRemovedEvent):
            self._remove(message.actual_lrp, affected)
        # Crash events only inform: the created/changed/removed events around them carry the state.
        return affected, problems

    def _set_desired(self, parsed: ParsedDesired) -> None:
        self._drop_desired(parsed.process_guid)
        self._desired[parsed.process_guid] = parsed
        if parsed.network is not None:
            self._process_guids_of_app[parsed.network.app_guid].add(parsed.process_guid)

    def _drop_desired(self, process_guid: str) -> None:
        old = self._desired.pop(process_guid, None)
        if old is not None and old.network is not None:
            guids = self._process_guids_of_app[old.network.app_guid]
            guids.discard(process_guid)
            if not guids:
                del self._process_guids_of_app[old.network.app_guid]

    def _put(self, lrp: pb.ActualLRP, affected: Affected) -> None:
        key = lrp.actual_lrp_key
        slots = self._actual[key.process_guid]
        current = slots.get((key.index, lrp.presence))
        if current is not None and _older(_tag(lrp), _tag(current)):
            return
        slots[(key.index, lrp.presence)] = lrp
        self._touch(affected, key.process_guid)

    def _change(self, event: pb.ActualLRPInstanceChangedEvent, affected: Affected) -> None:
        after = pb.ActualLRP(
            actual_lrp_key=event.actual_lrp_key,
            actual_lrp_instance_key=event.actual_lrp_instance_key,
            actual_lrp_net_info=event.after.actual_lrp_net_info,
            crash_count=event.after.crash_count,
            crash_reason=event.after.crash_reason,
            state=event.after.state,
            placement_error=event.after.placement_error,
            since=event.after.since,
            modification_tag=event.after.modification_tag,
            presence=event.after.presence,
            availability_zone=event.after.availability_zone,
        )
        if event.before.presence != event.after.presence:
            # Same instance, new presence (evacuating, suspect): it leaves its old slot.
            slots = self._actual[event.actual_lrp_key.process_guid]
            old_slot = (event.actual_lrp_key.index, event.before.presence)
            old = slots.get(old_slot)
            if old is not None and _same_instance(old, event.actual_lrp_instance_key):
                del slots[old_slot]
        self._put(after, affected)

    def _remove(self, lrp: pb.ActualLRP, affected: Affected) -> None:
        key = lrp.actual_lrp_key
        slots = self._actual.get(key.process_guid)
        if not slots:
            return
        slot = (key.index, lrp.presence)
        current = slots.get(slot)
        # Only the instance the event names: after a restartable crash BBS emits the new UNCLAIMED
        # instance before the removal of the old one, in the same slot.
        if current is not None and _same_instance(current, lrp.actual_lrp_instance_key):
            del slots[slot]
            if not slots:
                del self._actual[key.process_guid]
            self._touch(affected, key.process_guid)

    def _touch(self, affected: Affected, process_guid: str) -> None:
        affected.process_guids.add(process_guid)
        desired = self._desired.get(process_guid)
        if desired is not None and desired.network is not None:
            affected.apps.add(desired.network.app_guid)

    # ---- reading it ------------------------------------------------------------------------

    def containers(self, process_guid: str) -> dict[ContainerKey, Container]:
        """The containers of one process guid's running instances (see the module docstring)."""
        desired = self._desired.get(process_guid)
        if desired is None or desired.network is None:
            return {}
        out: dict[ContainerKey, Container] = {}
        for lrp in self._actual.get(process_guid, {}).values():
            container = _container(lrp, desired.network)
            if container is not None:
                out[(lrp.actual_lrp_instance_key.cell_id, container.handle)] = container
        return out

    def all_containers(self) -> dict[ContainerKey, tuple[str, Container]]:
        """Every container, with the process guid it belongs to."""
        return {
            key: (process_guid, container)
            for process_guid in self._desired
            for key, container in self.containers(process_guid).items()
        }

    def apps(self) -> set[str]:
        return set(self._process_guids_of_app)

    def app_addresses(self, app_guid: str) -> list[IPv4Address | IPv6Address]:
        """Addresses of every running instance of the app, on every cell, sorted."""
        addresses: set[IPv4Address | IPv6Address] = set()
        for process_guid in self._process_guids_of_app.get(app_guid, ()):
            for container in self.containers(process_guid).values():
                addresses.add(container.ip)
                if container.ipv6 is not None:
                    addresses.add(container.ipv6)
        return sorted(addresses, key=lambda a: (a.version, int(a)))


def _container(lrp: pb.ActualLRP, network: LrpNetwork) -> Container | None:
    net = lrp.actual_lrp_net_info
    guid, cell_id = lrp.actual_lrp_instance_key.instance_guid, lrp.actual_lrp_instance_key.cell_id
    if lrp.state != RUNNING or not net.instance_address or not guid or not cell_id:
        return None
    try:
        subjects.container(cell_id, guid)  # both must be usable as NATS subject tokens
        return Container(
            handle=guid,
            ip=IPv4Address(net.instance_address),
            ipv6=IPv6Address(net.instance_ipv6_address) if net.instance_ipv6_address else None,
            app_guid=network.app_guid,
            space_guid=network.space_guid,
            org_guid=network.org_guid,
            workload=network.workload,
            ports=list(network.ports),
            egress_rules=list(network.egress_rules),
            port_mappings=[
                PortMapping(host_port=p.host_port, container_port=p.container_port) for p in net.ports if p.host_port
            ],
        )
    except (ValidationError, ValueError) as err:
        log.warning("actual LRP %s on %s: not a container we can describe: %s", guid, cell_id, err)
        return None


def _tag(lrp: pb.ActualLRP) -> tuple[str, int]:
    return (lrp.modification_tag.epoch, lrp.modification_tag.index)


def _older(incoming: tuple[str, int], current: tuple[str, int]) -> bool:
    """Whether `incoming` is an older version of the same record (same epoch, lower index)."""
    return incoming[0] == current[0] and incoming[1] < current[1]


def _same_instance(lrp: pb.ActualLRP, key: pb.ActualLRPInstanceKey) -> bool:
    return lrp.actual_lrp_instance_key.instance_guid == key.instance_guid
