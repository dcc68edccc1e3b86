"""A Diego BBS simulator that speaks BBS's wire format over mutual TLS (docs/cf-facts.md §3).

It serves, as POSTs with protobuf bodies:

    /v1/actual_lrps/list          ActualLRPsRequest  -> ActualLRPsResponse  (ordinary, evacuating, suspect)
    /v1/desired_lrps/list.r3      DesiredLRPsRequest -> DesiredLRPsResponse
    /v1/tasks/list.r3             TasksRequest       -> TasksResponse
    /v1/events/lrp_instances.r1   EventsByCellId     -> SSE: desired, instance and crash events
    /v1/events/tasks.r1           (empty)            -> SSE: task events

Failures travel as BBS sends them: HTTP 200 with the response's `error` field set (`fail_with_error`),
or a bare HTTP status from something in front of BBS (`fail`). Streams use BBS's exact framing and
headers; `id` counts from 0 per connection and nothing is replayed. The `cell_id` filter applies to
instance and crash events only, desired-LRP events reach every subscriber.

The scenario API plays Cloud Controller, the auctioneer and the reps, and emits the instance events
BBS's event calculator emits for each transition (bbs events/calculator/actual_lrp_event_calculator.go):

    claim + start                 changed (UNCLAIMED->CLAIMED, keys of the new instance), changed (->RUNNING)
    restartable crash             crashed, created (UNCLAIMED ordinary), removed (the old instance)
    crash for good                crashed, changed (->CRASHED; the keys are the old instance's)
    evacuation                    changed (ORDINARY->EVACUATING, same instance), created (UNCLAIMED)
                                  ... the replacement starts: its changes, then removed (evacuating copy)
    suspect cell                  changed (ORDINARY->SUSPECT), created (UNCLAIMED); removed once replaced
    stop / scale down             removed

Cells get /24s of the overlay network in the order they first appear, and instances get addresses
from their cell's /24 sequentially like host-local IPAM (.1 is the gateway), so a restarted instance
gets a new address. Tasks carry no address: BBS never learns a task container's IP.

Scenario methods are plain synchronous calls made on the event loop that serves the simulator.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum, auto
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from aiohttp import web
from google.protobuf.message import DecodeError, Message

from events.bbs import bbs_pb2 as pb
from events.bbs import client as routes
from events.bbs.client import CLAIMED, CRASHED, RUNNING, UNCLAIMED
from events.bbs.sse import CONTENT_TYPE as SSE_CONTENT_TYPE
from events.bbs.sse import encode_bbs_event
from events.tls import CF_TLS12_CIPHERS, TlsFiles, server_context
from lab.sim.server import HttpsSite, SimulatedServer

APPS_DOMAIN = "cf-apps"
TASKS_DOMAIN = "cf-tasks"
STAGING_DOMAIN = "cf-app-staging"

ORDINARY = pb.ActualLRP.ORDINARY
EVACUATING = pb.ActualLRP.EVACUATING
SUSPECT = pb.ActualLRP.SUSPECT


class BbsRoute(StrEnum):
    """The simulated routes, for request counting and fault injection."""

    ACTUAL_LRPS = routes.ACTUAL_LRPS
    DESIRED_LRPS = routes.DESIRED_LRPS
    TASKS = routes.TASKS
    LRP_INSTANCE_EVENTS = routes.LRP_INSTANCE_EVENTS
    TASK_EVENTS = routes.TASK_EVENTS


def egress_rule(
    protocol: str,
    destination: str,
    ports: str | None = None,
    *,
    icmp_type: int | None = None,
    icmp_code: int | None = None,
    log: bool = False,
    annotations: Sequence[str] = (),
) -> pb.SecurityGroupRule:
    """A BBS egress rule built from one Cloud Controller rule the way CC builds it (docs/cf-facts.md §2.2):
    `destinations` is the one destination string, ports "a-b" become `port_range`, "80,443" `ports`."""
    rule = pb.SecurityGroupRule(protocol=protocol, destinations=[destination], log=log, annotations=list(annotations))
    if ports is not None:
        if "-" in ports:
            start, end = (int(p) for p in ports.split("-", 1))
            rule.port_range.CopyFrom(pb.PortRange(start=start, end=end))
        else:
            rule.ports.extend(int(p) for p in ports.split(","))
    if icmp_type is not None or icmp_code is not None:
        rule.icmp_info.CopyFrom(pb.ICMPInfo(type=icmp_type or 0, code=icmp_code or 0))
    return rule


@dataclass(slots=True)
class _Cell:
    id: str
    address: str  # the cell's own (host) address
    subnet: IPv4Network
    in_use: set[IPv4Address] = field(default_factory=set)
    last: int = 1  # host-local style: continue after the last address handed out
    next_host_port: int = 61000

    def allocate(self) -> IPv4Address:
        usable = self.subnet.num_addresses - 3  # .2 ... .254: .1 is the gateway, .255 broadcast
        for step in range(1, usable + 1):
            offset = (self.last - 2 + step) % usable + 2
            candidate = self.subnet.network_address + offset
            if candidate not in self.in_use:
                self.in_use.add(candidate)
                self.last = offset
                return candidate
        raise RuntimeError(f"cell {self.id}: overlay subnet {self.subnet} is full")


@dataclass(slots=True)
class _Fault:
    remaining: int
    status: int = 500
    error_type: int | None = None  # set: HTTP 200 with this Error.Type in the response's error field


class _StreamEnd(Enum):
    """What a stream's queue may hold besides events."""

    END = auto()  # end the stream as BBS does: terminating chunk, then close
    CUT = auto()  # cut it: close without the terminating chunk (a crash, a broken network)
    STALL = auto()  # keep the connection open and never write again


_END, _CUT, _STALL = _StreamEnd.END, _StreamEnd.CUT, _StreamEnd.STALL


@dataclass(slots=True)
class _Subscriber:
    cell_id: str
    queue: asyncio.Queue[Message | _StreamEnd]


M = TypeVar("M", bound=Message)
# Set by the fault middleware: the list handler answers with this in the response's error field.
_BBS_ERROR = web.RequestKey("bbs_error", pb.Error)
_LrpSlot = tuple[str, int, int]  # (process guid, index, presence): BBS's primary key for actual LRPs


class BbsSimulator(SimulatedServer):
    """BBS over mutual TLS, plus a scenario API. Example::

    async with BbsSimulator(TlsFiles(ca, server_cert, server_key)) as bbs:
        pg = bbs.push_app("app-guid", "space-guid", "org-guid", cells=["cell-a", "cell-b"])
        bbs.crash(pg, 0)
        bbs.start_instance(pg, 0, "cell-b")  # a new instance guid and address
    """

    def __init__(
        self,
        tls: TlsFiles,
        *,
        overlay_network: str = "10.255.0.0/16",
        tls12_ciphers: str | None = CF_TLS12_CIPHERS,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.requests: Counter[BbsRoute] = Counter()
        self.lrp_events = 0
        """How many events the lrp_instances stream has had to carry (to every subscriber, unfiltered)."""
        self._overlay = IPv4Network(overlay_network)
        self._subnets = self._overlay.subnets(new_prefix=24)
        next(self._subnets)  # x.y.0.0/24 is not handed to cells, as in silk
        self._cells: dict[str, _Cell] = {}
        self._desired: dict[str, pb.DesiredLRP] = {}
        self._actual: dict[_LrpSlot, pb.ActualLRP] = {}
        self._tasks: dict[str, pb.Task] = {}
        self._lrp_subscribers: list[_Subscriber] = []
        self._task_subscribers: list[_Subscriber] = []
        self._faults: dict[BbsRoute | None, _Fault] = {}
        self._delays: dict[BbsRoute | None, float] = {}
        self._stopping = asyncio.Event()
        self.app = self._app()
        """The aiohttp application; routes may be added until `start()` (see lab/sim/bbs_control.py)."""
        self._site = HttpsSite(self.app, server_context(tls, tls12_ciphers=tls12_ciphers), host, port)
        super().__init__(self._site)

    @property
    def url(self) -> str:
        return self._site.url

    async def stop(self) -> None:
        self._stopping.set()  # stalled streams return
        self.drop_streams()
        await super().stop()

    # ---- what BBS holds (for assertions) -------------------------------------------------------

    def actual_lrps(self) -> list[pb.ActualLRP]:
        return [_copy(lrp) for lrp in self._actual.values()]

    def desired_lrps(self) -> list[pb.DesiredLRP]:
        return [_copy(d) for d in self._desired.values()]

    def tasks(self) -> list[pb.Task]:
        return [_copy(t) for t in self._tasks.values()]

    def instance(self, process_guid: str, index: int, presence: int = ORDINARY) -> pb.ActualLRP:
        return _copy(self._slot(process_guid, index, presence))

    def cell_subnet(self, cell_id: str) -> IPv4Network:
        return self._cell(cell_id).subnet

    # ---- scenario: apps ------------------------------------------------------------------------

    def desire_lrp(
        self,
        app_guid: str,
        space_guid: str,
        org_guid: str,
        *,
        instances: int = 1,
        ports: Sequence[int] = (8080,),
        egress_rules: Iterable[pb.SecurityGroupRule] = (),
        version: str | None = None,
    ) -> str:
        """Cloud Controller desires the app's web process; returns the process guid
        (`<app guid>-<version>`). Its instances stay UNCLAIMED until `start_instance`."""
        process_guid = f"{app_guid}-{version or uuid.uuid4()}"
        if process_guid in self._desired:
            raise ValueError(f"desired LRP {process_guid} exists already")
        desired = pb.DesiredLRP(
            process_guid=process_guid,
            domain=APPS_DOMAIN,
            root_fs="preloaded:cflinuxfs4",
            instances=instances,
            ports=list(ports),
            log_source="CELL",
            log_guid=app_guid,
            metrics_guid=app_guid,
            egress_rules=list(egress_rules),
            modification_tag=pb.ModificationTag(epoch=_epoch(), index=0),
            network=pb.Network(
                properties={
                    "policy_group_id": app_guid,
                    "app_id": app_guid,
                    "space_id": space_guid,
                    "org_id": org_guid,
                    "ports": ",".join(str(p) for p in sorted(set(ports))),
                    "container_workload": "app",
                }
            ),
            metric_tags={
                "source_id": pb.MetricTagValue(static=app_guid),
                "app_id": pb.MetricTagValue(static=app_guid),
                "space_id": pb.MetricTagValue(static=space_guid),
                "organization_id": pb.MetricTagValue(static=org_guid),
                "process_type": pb.MetricTagValue(static="web"),
                "instance_id": pb.MetricTagValue(dynamic=pb.MetricTagValue.INDEX),
                "process_instance_id": pb.MetricTagValue(dynamic=pb.MetricTagValue.INSTANCE_GUID),
            },
        )
        self._desired[process_guid] = desired
        self._emit_lrp(pb.DesiredLRPCreatedEvent(desired_lrp=desired))
        for index in range(instances):
            self._create_unclaimed(process_guid, index)
        return process_guid

    def push_app(
        self,
        app_guid: str,
        space_guid: str,
        org_guid: str,
        *,
        cells: Sequence[str],
        ports: Sequence[int] = (8080,),
        egress_rules: Iterable[pb.SecurityGroupRule] = (),
        version: str | None = None,
    ) -> str:
        """`cf push`: desire one instance per entry of `cells` and start instance i on cells[i]."""
        process_guid = self.desire_lrp(
            app_guid,
            space_guid,
            org_guid,
            instances=len(cells),
            ports=ports,
            egress_rules=egress_rules,
            version=version,
        )
        for index, cell_id in enumerate(cells):
            self.start_instance(process_guid, index, cell_id)
        return process_guid

    def update_egress_rules(self, process_guid: str, egress_rules: Iterable[pb.SecurityGroupRule]) -> None:
        """Change the desired LRP's egress rules (BBS allows it only through a re-desire; close enough)."""
        rules = list(egress_rules)

        def change(desired: pb.DesiredLRP) -> None:
            del desired.egress_rules[:]
            desired.egress_rules.extend(rules)

        self._change_desired(process_guid, change)

    def scale(self, process_guid: str, instances: int, *, cells: Sequence[str] = ()) -> None:
        """Change the instance count. New indexes start on `cells` in turn (left UNCLAIMED if none
        are given); indexes beyond the new count are stopped."""
        before = self._desired_lrp(process_guid).instances

        def change(desired: pb.DesiredLRP) -> None:
            desired.instances = instances

        self._change_desired(process_guid, change)
        for index in range(instances, before):
            for presence in (ORDINARY, EVACUATING, SUSPECT):
                if (process_guid, index, presence) in self._actual:
                    self._remove(process_guid, index, presence)
        for n, index in enumerate(range(before, instances)):
            self._create_unclaimed(process_guid, index)
            if cells:
                self.start_instance(process_guid, index, cells[n % len(cells)])

    def remove_lrp(self, process_guid: str) -> None:
        """`cf stop` / `cf delete`: the desired LRP goes, then every instance of it."""
        desired = self._desired.pop(self._desired_lrp(process_guid).process_guid)
        self._emit_lrp(pb.DesiredLRPRemovedEvent(desired_lrp=desired))
        for pg, index, presence in [slot for slot in self._actual if slot[0] == process_guid]:
            self._remove(pg, index, presence)

    # ---- scenario: instances -------------------------------------------------------------------

    def start_instance(
        self,
        process_guid: str,
        index: int,
        cell_id: str,
        *,
        instance_guid: str | None = None,
        instance_address: IPv4Address | None = None,
    ) -> str:
        """A rep claims the ordinary instance at `index` on `cell_id` and starts it (RUNNING with a
        new instance guid and overlay address). An evacuating or suspect copy of that index is
        removed, as StartActualLRP does. Returns the instance guid.

        `instance_guid` and `instance_address` let a caller that really created the container (the
        demo, through CNI) report the handle it used and the address the container got."""
        desired = self._desired_lrp(process_guid)
        before = self._slot(process_guid, index, ORDINARY)
        if before.state not in (UNCLAIMED, CRASHED):
            raise ValueError(f"{process_guid} index {index} is {before.state}, not startable")
        cell = self._cell(cell_id)
        guid = instance_guid or str(uuid.uuid4())
        claimed = _copy(before)
        claimed.state = CLAIMED
        claimed.actual_lrp_instance_key.CopyFrom(pb.ActualLRPInstanceKey(instance_guid=guid, cell_id=cell.id))
        claimed.ClearField("actual_lrp_net_info")
        claimed.placement_error = ""
        self._put(claimed, before)
        running = _copy(claimed)
        running.state = RUNNING
        ports = []
        for container_port in desired.ports:
            ports.append(pb.PortMapping(container_port=container_port, host_port=cell.next_host_port))
            cell.next_host_port += 1
        running.actual_lrp_net_info.CopyFrom(
            pb.ActualLRPNetInfo(
                address=cell.address, ports=ports, instance_address=str(instance_address or cell.allocate())
            )
        )
        running.metric_tags["process_instance_id"] = guid
        running.metric_tags["instance_id"] = str(index)
        self._put(running, claimed)
        for presence in (EVACUATING, SUSPECT):
            if (process_guid, index, presence) in self._actual:
                self._remove(process_guid, index, presence)
        return guid

    def stop_instance(self, process_guid: str, index: int) -> None:
        """The rep stops the instance and removes its actual LRP."""
        self._remove(process_guid, index, ORDINARY)

    def crash(self, process_guid: str, index: int, *, restartable: bool = True) -> None:
        """The instance's process dies. Restartable: it becomes an UNCLAIMED ordinary again
        (start it with `start_instance`); otherwise it stays CRASHED."""
        before = self._slot(process_guid, index, ORDINARY)
        if before.state not in (CLAIMED, RUNNING):
            raise ValueError(f"{process_guid} index {index} is {before.state}, it cannot crash")
        after = _copy(before)
        after.state = UNCLAIMED if restartable else CRASHED
        after.crash_count += 1
        after.crash_reason = "APP/PROC/WEB: Exited with status 137"
        after.ClearField("actual_lrp_instance_key")
        after.ClearField("actual_lrp_net_info")
        after.since = time.time_ns()
        _bump(after)
        self._release_address(before)
        self._actual[(process_guid, index, ORDINARY)] = after
        self._emit_lrp(
            pb.ActualLRPCrashedEvent(
                actual_lrp_key=after.actual_lrp_key,
                actual_lrp_instance_key=before.actual_lrp_instance_key,
                crash_count=after.crash_count,
                crash_reason=after.crash_reason,
                since=after.since,
            )
        )
        if restartable:
            self._emit_lrp(pb.ActualLRPInstanceCreatedEvent(actual_lrp=after))
            self._emit_lrp(pb.ActualLRPInstanceRemovedEvent(actual_lrp=before))
        else:
            self._emit_lrp(_changed_event(before, after))

    def evacuate(self, process_guid: str, index: int) -> None:
        """The instance's cell is draining: the running instance becomes an EVACUATING copy (still
        running, same guid and address) and a new UNCLAIMED ordinary is created. Start the
        replacement with `start_instance`; that removes the evacuating copy."""
        self._displace(process_guid, index, EVACUATING)

    def mark_suspect(self, process_guid: str, index: int) -> None:
        """The instance's cell stopped reporting: it becomes SUSPECT (kept, it may still run) and a
        replacement UNCLAIMED ordinary is created; `start_instance` replaces it."""
        self._displace(process_guid, index, SUSPECT)

    # ---- scenario: tasks -----------------------------------------------------------------------

    def desire_task(
        self,
        task_guid: str,
        app_guid: str,
        space_guid: str,
        org_guid: str,
        *,
        staging: bool = False,
        egress_rules: Iterable[pb.SecurityGroupRule] = (),
    ) -> None:
        """Cloud Controller desires a task (`cf run-task`) or, with `staging`, a staging task."""
        if task_guid in self._tasks:
            raise ValueError(f"task {task_guid} exists already")
        workload = "staging" if staging else "task"
        now = time.time_ns()
        task = pb.Task(
            task_guid=task_guid,
            domain=STAGING_DOMAIN if staging else TASKS_DOMAIN,
            created_at=now,
            updated_at=now,
            state=pb.Task.Pending,
            task_definition=pb.TaskDefinition(
                root_fs="preloaded:cflinuxfs4",
                log_source="STG" if staging else "APP/TASK/migrate",
                log_guid=app_guid,
                metrics_guid=app_guid,
                egress_rules=list(egress_rules),
                network=pb.Network(
                    properties={
                        "policy_group_id": app_guid,
                        "app_id": app_guid,
                        "space_id": space_guid,
                        "org_id": org_guid,
                        "container_workload": workload,
                    }
                ),
            ),
        )
        self._tasks[task_guid] = task
        self._emit_task(pb.TaskCreatedEvent(task=task))

    def start_task(self, task_guid: str, cell_id: str) -> None:
        """A rep starts the task on `cell_id` (BBS records the cell, never an address)."""
        self._cell(cell_id)
        self._change_task(task_guid, pb.Task.Running, cell_id=cell_id)

    def complete_task(self, task_guid: str, *, failed: bool = False) -> None:
        self._change_task(task_guid, pb.Task.Completed, failed=failed)

    def delete_task(self, task_guid: str) -> None:
        """Cloud Controller resolved the task and BBS deletes it."""
        task = self._tasks.pop(self._task(task_guid).task_guid)
        self._emit_task(pb.TaskRemovedEvent(task=task))

    # ---- scenario: faults ----------------------------------------------------------------------

    def fail(self, route: BbsRoute | None = None, times: int = 1, status: int = 500) -> None:
        """Answer the next `times` requests to `route` (every route if None, streams included) with
        a bare HTTP `status`, as a load balancer or a crashing BBS would."""
        self._faults[route] = _Fault(times, status)

    def fail_with_error(
        self, route: BbsRoute | None = None, times: int = 1, error_type: int = pb.Error.Deadlock
    ) -> None:
        """Answer the next `times` list calls with HTTP 200 and the response's `error` field set,
        as BBS does when its database fails."""
        self._faults[route] = _Fault(times, 200, error_type)

    def delay(self, route: BbsRoute | None, seconds: float) -> None:
        """Sleep `seconds` before answering each request to `route` (every route if None; 0 to stop)."""
        self._delays[route] = seconds

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    def drop_streams(self, *, cut: bool = False) -> None:
        """End every open event stream now, as BBS does when its event hub closes (the terminating
        chunk, then close) or, with `cut`, without the terminator, as a crash or a broken network
        does. Events emitted afterwards reach only streams opened afterwards."""
        self._end_streams(_CUT if cut else _END)

    def stall_streams(self) -> None:
        """Every open event stream goes silent: the connection stays open and no byte is ever
        written again (a hung BBS, a half-dead proxy). Events emitted afterwards reach only
        streams opened afterwards."""
        self._end_streams(_STALL)

    def _end_streams(self, how: _StreamEnd) -> None:
        for subscriber in self._lrp_subscribers + self._task_subscribers:
            subscriber.queue.put_nowait(how)
        self._lrp_subscribers.clear()
        self._task_subscribers.clear()

    @property
    def open_streams(self) -> int:
        return len(self._lrp_subscribers) + len(self._task_subscribers)

    # ---- state changes and their events ------------------------------------------------------

    def _create_unclaimed(self, process_guid: str, index: int) -> None:
        desired = self._desired_lrp(process_guid)
        lrp = pb.ActualLRP(
            actual_lrp_key=pb.ActualLRPKey(process_guid=process_guid, index=index, domain=desired.domain),
            state=UNCLAIMED,
            since=time.time_ns(),
            modification_tag=pb.ModificationTag(epoch=_epoch(), index=0),
            presence=ORDINARY,
        )
        self._actual[(process_guid, index, ORDINARY)] = lrp
        self._emit_lrp(pb.ActualLRPInstanceCreatedEvent(actual_lrp=lrp))

    def _put(self, after: pb.ActualLRP, before: pb.ActualLRP) -> None:
        after.since = time.time_ns()
        _bump(after)
        key = after.actual_lrp_key
        self._actual[(key.process_guid, key.index, after.presence)] = after
        self._emit_lrp(_changed_event(before, after))

    def _remove(self, process_guid: str, index: int, presence: int) -> None:
        lrp = self._actual.pop((process_guid, index, presence), None)
        if lrp is None:
            raise KeyError(f"no {_presence_name(presence)} actual LRP {process_guid} index {index}")
        self._release_address(lrp)
        self._emit_lrp(pb.ActualLRPInstanceRemovedEvent(actual_lrp=lrp))

    def _displace(self, process_guid: str, index: int, presence: int) -> None:
        before = self._slot(process_guid, index, ORDINARY)
        if before.state != RUNNING:
            raise ValueError(f"{process_guid} index {index} is {before.state}, only a RUNNING instance moves")
        if (process_guid, index, presence) in self._actual:
            raise ValueError(f"{process_guid} index {index} has a {_presence_name(presence)} instance already")
        moved = _copy(before)
        moved.presence = presence
        _bump(moved)
        del self._actual[(process_guid, index, ORDINARY)]
        self._actual[(process_guid, index, presence)] = moved
        self._emit_lrp(_changed_event(before, moved))
        self._create_unclaimed(process_guid, index)

    def _change_desired(self, process_guid: str, change: Callable[[pb.DesiredLRP], None]) -> None:
        before = self._desired_lrp(process_guid)
        after = _copy(before)
        change(after)
        after.modification_tag.index += 1
        self._desired[process_guid] = after
        self._emit_lrp(pb.DesiredLRPChangedEvent(before=before, after=after))

    def _change_task(self, task_guid: str, state: int, *, cell_id: str | None = None, failed: bool = False) -> None:
        before = self._task(task_guid)
        after = _copy(before)
        after.state = state
        after.updated_at = time.time_ns()
        if cell_id is not None:
            after.cell_id = cell_id
        if state == pb.Task.Completed:
            after.first_completed_at = after.updated_at
            after.failed = failed
            after.cell_id = ""  # BBS clears the cell when a task completes
        self._tasks[task_guid] = after
        self._emit_task(pb.TaskChangedEvent(before=before, after=after))

    def _release_address(self, lrp: pb.ActualLRP) -> None:
        cell = self._cells.get(lrp.actual_lrp_instance_key.cell_id)
        if cell is not None and lrp.actual_lrp_net_info.instance_address:
            # An evacuating or suspect copy may still hold the address; only free it when none does.
            address = lrp.actual_lrp_net_info.instance_address
            if not any(
                other is not lrp and other.actual_lrp_net_info.instance_address == address
                for other in self._actual.values()
            ):
                cell.in_use.discard(IPv4Address(address))

    def _emit_lrp(self, message: Message) -> None:
        self.lrp_events += 1
        cell_id = _event_cell(message)
        for subscriber in self._lrp_subscribers:
            if cell_id is None or not subscriber.cell_id or subscriber.cell_id == cell_id:
                subscriber.queue.put_nowait(message)

    def _emit_task(self, message: Message) -> None:
        for subscriber in self._task_subscribers:
            subscriber.queue.put_nowait(message)

    # ---- lookups -------------------------------------------------------------------------------

    def _cell(self, cell_id: str) -> _Cell:
        cell = self._cells.get(cell_id)
        if cell is None:
            try:
                subnet = next(self._subnets)
            except StopIteration:
                raise RuntimeError(f"overlay network {self._overlay} has no /24 left for cell {cell_id}") from None
            cell = _Cell(cell_id, f"10.0.16.{len(self._cells) + 10}", subnet)
            self._cells[cell_id] = cell
        return cell

    def _desired_lrp(self, process_guid: str) -> pb.DesiredLRP:
        try:
            return self._desired[process_guid]
        except KeyError:
            raise KeyError(f"no desired LRP {process_guid} in the BBS simulator") from None

    def _slot(self, process_guid: str, index: int, presence: int) -> pb.ActualLRP:
        try:
            return self._actual[(process_guid, index, presence)]
        except KeyError:
            raise KeyError(f"no {_presence_name(presence)} actual LRP {process_guid} index {index}") from None

    def _task(self, task_guid: str) -> pb.Task:
        try:
            return self._tasks[task_guid]
        except KeyError:
            raise KeyError(f"no task {task_guid} in the BBS simulator") from None

    # ---- HTTP ----------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(BbsRoute.ACTUAL_LRPS, self._list_actual_lrps)
        app.router.add_post(BbsRoute.DESIRED_LRPS, self._list_desired_lrps)
        app.router.add_post(BbsRoute.TASKS, self._list_tasks)
        app.router.add_post(BbsRoute.LRP_INSTANCE_EVENTS, self._lrp_instance_events)
        app.router.add_post(BbsRoute.TASK_EVENTS, self._task_events)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            route = BbsRoute(request.path)
        except ValueError:
            return await handler(request)
        self.requests[route] += 1
        if seconds := self._delays.get(route, self._delays.get(None)):
            await asyncio.sleep(seconds)
        key = route if route in self._faults else None
        fault = self._faults.get(key)
        if fault is not None and fault.remaining > 0:
            fault.remaining -= 1
            if fault.error_type is None:
                return web.Response(status=fault.status, text="simulated failure\n")
            request[_BBS_ERROR] = pb.Error(type=fault.error_type, message="simulated database failure")
        return await handler(request)

    async def _list_actual_lrps(self, request: web.Request) -> web.Response:
        req = await _list_request(request, pb.ActualLRPsRequest)
        response = pb.ActualLRPsResponse()
        if isinstance(req, pb.Error):
            return _failed(response, req)
        for lrp in self._actual.values():
            if req.domain and lrp.actual_lrp_key.domain != req.domain:
                continue
            if req.cell_id and lrp.actual_lrp_instance_key.cell_id != req.cell_id:
                continue
            if req.process_guid and lrp.actual_lrp_key.process_guid != req.process_guid:
                continue
            if req.HasField("index") and lrp.actual_lrp_key.index != req.index:
                continue
            response.actual_lrps.append(lrp)
        return _protobuf(response)

    async def _list_desired_lrps(self, request: web.Request) -> web.Response:
        req = await _list_request(request, pb.DesiredLRPsRequest)
        response = pb.DesiredLRPsResponse()
        if isinstance(req, pb.Error):
            return _failed(response, req)
        for desired in self._desired.values():
            if req.domain and desired.domain != req.domain:
                continue
            if req.process_guids and desired.process_guid not in req.process_guids:
                continue
            # BBS matches app guids with `process_guid LIKE '<app guid>%'`.
            if req.app_guids and not any(desired.process_guid.startswith(a) for a in req.app_guids):
                continue
            response.desired_lrps.append(desired)
        return _protobuf(response)

    async def _list_tasks(self, request: web.Request) -> web.Response:
        req = await _list_request(request, pb.TasksRequest)
        response = pb.TasksResponse()
        if isinstance(req, pb.Error):
            return _failed(response, req)
        for task in self._tasks.values():
            if req.domain and task.domain != req.domain:
                continue
            if req.cell_id and task.cell_id != req.cell_id:
                continue
            response.tasks.append(task)
        return _protobuf(response)

    async def _lrp_instance_events(self, request: web.Request) -> web.StreamResponse:
        req = await _parse(request, pb.EventsByCellId)
        if isinstance(req, pb.Error):
            return web.Response(status=400, text=req.message)
        return await self._stream(request, self._lrp_subscribers, req.cell_id)

    async def _task_events(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, self._task_subscribers, "")

    async def _stream(self, request: web.Request, subscribers: list[_Subscriber], cell_id: str) -> web.StreamResponse:
        """Headers through aiohttp (Go's: these three, Transfer-Encoding: chunked, Date), then every
        chunk written raw to the connection as BBS writes it after hijacking it: `<hex size>;\\r\\n`
        (an empty chunk extension), the event, `\\r\\n` (bbs handlers/events_handlers.go)."""
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": SSE_CONTENT_TYPE,
                "Cache-Control": "no-cache, no-store, must-revalidate",
                "Connection": "keep-alive",
            },
        )
        response.enable_chunked_encoding()
        await response.prepare(request)  # a StreamResponse sends its head at once
        transport = request.transport
        assert transport is not None
        subscriber = _Subscriber(cell_id, asyncio.Queue())
        subscribers.append(subscriber)
        try:
            for event_id in itertools.count():
                item = await subscriber.queue.get()
                if item is _STALL:
                    await self._stopping.wait()  # connection open, never another byte (until stop())
                if not isinstance(item, Message) or transport.is_closing():
                    if item is _END and not transport.is_closing():
                        transport.write(b"0\r\n\r\n")  # BBS's deferred terminator when a stream ends
                    break
                frame = encode_bbs_event(event_id, item)
                transport.write(b"%x;\r\n%s\r\n" % (len(frame), frame))
        finally:
            if subscriber in subscribers:
                subscribers.remove(subscriber)
            if not transport.is_closing():
                transport.abort()  # the connection was hijacked: it is never reused
        return response


def _event_cell(message: Message) -> str | None:
    """The cell an instance event is filtered on (None: never filtered), per bbs handlers/events_handlers."""
    if isinstance(message, (pb.ActualLRPInstanceCreatedEvent, pb.ActualLRPInstanceRemovedEvent)):
        return message.actual_lrp.actual_lrp_instance_key.cell_id
    if isinstance(message, (pb.ActualLRPInstanceChangedEvent, pb.ActualLRPCrashedEvent)):
        return message.actual_lrp_instance_key.cell_id
    return None


def _changed_event(before: pb.ActualLRP, after: pb.ActualLRP) -> pb.ActualLRPInstanceChangedEvent:
    """BBS's changed event: keys from `after` where set, else from `before`; infos without keys."""
    empty_instance_key = pb.ActualLRPInstanceKey()
    instance_key = (
        after.actual_lrp_instance_key
        if after.actual_lrp_instance_key != empty_instance_key
        else before.actual_lrp_instance_key
    )
    return pb.ActualLRPInstanceChangedEvent(
        actual_lrp_key=after.actual_lrp_key,
        actual_lrp_instance_key=instance_key,
        before=_info(before),
        after=_info(after),
    )


def _info(lrp: pb.ActualLRP) -> pb.ActualLRPInfo:
    info = pb.ActualLRPInfo(
        crash_count=lrp.crash_count,
        crash_reason=lrp.crash_reason,
        state=lrp.state,
        placement_error=lrp.placement_error,
        since=lrp.since,
        modification_tag=lrp.modification_tag,
        presence=lrp.presence,
        availability_zone=lrp.availability_zone,
    )
    if lrp.HasField("actual_lrp_net_info"):
        info.actual_lrp_net_info.CopyFrom(lrp.actual_lrp_net_info)
    if lrp.HasField("routable"):
        info.routable = lrp.routable
    return info


def _epoch() -> str:
    """A modification tag epoch: BBS makes a new one whenever a record is created."""
    return str(uuid.uuid4())


def _bump(lrp: pb.ActualLRP) -> None:
    lrp.modification_tag.index += 1


def _copy(message: M) -> M:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def _presence_name(presence: int) -> str:
    return pb.ActualLRP.Presence.Name(presence).lower()


async def _parse(request: web.Request, message_type: type[M]) -> M | pb.Error:
    """The request body as `message_type`, or the Error BBS answers an undecodable body with."""
    message = message_type()
    try:
        message.ParseFromString(await request.read())
    except DecodeError as exc:
        return pb.Error(type=pb.Error.InvalidProtobufMessage, message=str(exc))
    return message


async def _list_request(request: web.Request, message_type: type[M]) -> M | pb.Error:
    """A list call's request as `message_type`, or the Error to answer it with: an undecodable
    body first, then a database failure injected for this call."""
    req = await _parse(request, message_type)
    if isinstance(req, pb.Error):
        return req
    return request[_BBS_ERROR] if _BBS_ERROR in request else req


def _failed(response: Message, error: pb.Error) -> web.Response:
    """HTTP 200 with the response's `error` field set: how BBS reports a failed call."""
    getattr(response, "error").CopyFrom(error)
    return _protobuf(response)


def _protobuf(message: Message) -> web.Response:
    return web.Response(body=message.SerializeToString(), content_type=routes.PROTOBUF)
