"""The watcher's view of BBS: which LRP instances are containers, app sets, and event replay rules.

Fed with the recorded payloads (tests/fixtures/bbs) and small hand-made LRPs; no server needed.
"""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from events.bbs import bbs_pb2 as pb
from events.bbs.sse import MESSAGE_TYPES, BbsEvent, EventName
from events.bbs.view import LrpView, parse_desired
from events.models import Workload
from events.rules import SecurityGroupRule

FIXTURES = Path(__file__).parent / "fixtures" / "bbs"
APP = "8a6b1c9e-3f1d-4c55-9a0e-2b7f0d3c1e41"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def recorded_view() -> LrpView:
    view = LrpView()
    desired = json_format.ParseDict(load("desired_lrps_response.json"), pb.DesiredLRPsResponse()).desired_lrps
    actual = json_format.ParseDict(load("actual_lrps_response.json"), pb.ActualLRPsResponse()).actual_lrps
    view.reset(list(desired), list(actual))
    return view


def recorded_events() -> list[BbsEvent]:
    return [
        BbsEvent(i, EventName(e["event"]), json_format.ParseDict(e["message"], MESSAGE_TYPES[EventName(e["event"])]()))
        for i, e in enumerate(load("lrp_events_crash_restart.json"))
    ]


def test_recorded_listing_becomes_containers_with_cc_rules() -> None:
    """The ordinary and the evacuating instance are containers; the UNCLAIMED one and the non-CF LRP are not."""
    containers = {(cell, handle): c for (cell, handle), (_, c) in recorded_view().all_containers().items()}
    assert sorted(containers) == [
        ("cell-a", "7c1e0d4a-2b3f-4a5c-6d7e-8f9a0b1c2d3e"),
        ("cell-b", "3e2d1c0b-9a8f-4e7d-6c5b-4a3f2e1d0c9b"),  # evacuating
    ]
    container = containers[("cell-a", "7c1e0d4a-2b3f-4a5c-6d7e-8f9a0b1c2d3e")]
    assert (container.ip, container.app_guid, container.workload) == (ip_address("10.255.1.2"), APP, Workload.APP)
    assert container.space_guid == "c2d4e6f8-1a3b-4c5d-8e9f-0a1b2c3d4e5f"
    assert container.ports == [8080]  # network.properties, not the desired LRP's port list (which has 61001)
    assert [(m.container_port, m.host_port) for m in container.port_mappings] == [(8080, 61000), (2222, 61002)]
    assert container.egress_rules == [
        SecurityGroupRule(
            protocol="tcp",
            destination="10.0.11.0/24",
            ports="80,443",
            description="security_group_id:6e2f9a41-7c3b-4d5e-9f80-1a2b3c4d5e6f",
            log=False,
        ),
        SecurityGroupRule(
            protocol="udp",
            destination="169.254.0.2",
            ports="53-54",
            description="security_group_id:6e2f9a41-7c3b-4d5e-9f80-1a2b3c4d5e6f, "
            "security_group_id:a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
            log=False,
        ),
        SecurityGroupRule(
            protocol="icmp",
            destination="0.0.0.0-9.255.255.255,11.0.0.0-169.253.255.255",
            type=-1,
            code=-1,
            description="security_group_id:a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
            log=False,
        ),
        SecurityGroupRule(
            protocol="all",
            destination="192.0.2.0/24",
            description="security_group_id:a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
            log=True,
        ),
    ]


def test_evacuating_and_replacement_both_running_are_both_in_the_app_set() -> None:
    """While both run (the replacement started, the evacuating copy not yet removed), both are live."""
    view = recorded_view()
    replacement = pb.ActualLRP(
        actual_lrp_key=pb.ActualLRPKey(process_guid=f"{APP}-5d1c8f2a-9b7e-4e3d-a1c2-b3d4e5f60718", index=1),
        actual_lrp_instance_key=pb.ActualLRPInstanceKey(instance_guid="new", cell_id="cell-c"),
        actual_lrp_net_info=pb.ActualLRPNetInfo(instance_address="10.255.3.2"),
        state="RUNNING",
        modification_tag=pb.ModificationTag(epoch="b5e3a7c9-1f6d-4c0b-8a4e-5f7b9d1e3a6c", index=2),
    )
    affected, _ = view.apply(
        BbsEvent(0, EventName.ACTUAL_LRP_INSTANCE_CREATED, pb.ActualLRPInstanceCreatedEvent(actual_lrp=replacement))
    )
    assert affected.apps == {APP}
    assert [str(a) for a in view.app_addresses(APP)] == ["10.255.1.2", "10.255.2.2", "10.255.3.2"]


def test_recorded_crash_restart_replays_to_the_new_instance() -> None:
    view = recorded_view()
    for event in recorded_events():
        view.apply(event)
    assert sorted(view.all_containers()) == [
        ("cell-b", "3e2d1c0b-9a8f-4e7d-6c5b-4a3f2e1d0c9b"),  # the evacuating copy of index 1
        ("cell-b", "b4c5d6e7-f8a9-4b0c-9d1e-2f3a4b5c6d7e"),  # index 0, restarted
    ]
    assert [str(a) for a in view.app_addresses(APP)] == ["10.255.2.2", "10.255.2.3"]


def test_events_older_than_the_listing_do_not_undo_it() -> None:
    """Events the listing already contains (queued while it was taken) change nothing: the UNCLAIMED
    record is older than the running one in the same slot (same epoch, lower index), and the removal
    names the crashed instance, not the one now in its slot."""
    events = recorded_events()
    view = recorded_view()
    for event in events:
        view.apply(event)
    after = view.all_containers()
    crashed, created_unclaimed, removed_old = events[:3]
    for event in (crashed, created_unclaimed, removed_old):
        view.apply(event)
    assert view.all_containers() == after


def test_desired_lrp_without_cf_network_is_not_an_app() -> None:
    parsed = parse_desired(pb.DesiredLRP(process_guid="smoke", instances=1))
    assert parsed.network is None
    assert parsed.problems == ("no app or space guid in network.properties",)


def test_bad_egress_rule_is_left_out_and_named() -> None:
    desired = pb.DesiredLRP(
        process_guid="app-1-v1",
        network=pb.Network(properties={"app_id": "app-1", "space_id": "space-1", "container_workload": "app"}),
        egress_rules=[
            pb.SecurityGroupRule(protocol="tcp", destinations=["10.0.0.0/8"], ports=[443]),
            pb.SecurityGroupRule(protocol="tcp", destinations=["10.0.0.300"], ports=[443]),
            pb.SecurityGroupRule(protocol="icmp", destinations=["10.0.0.0/8"]),
        ],
    )
    parsed = parse_desired(desired)
    assert parsed.network is not None
    assert [r.destination for r in parsed.network.egress_rules] == ["10.0.0.0/8"]
    assert len(parsed.problems) == 2
    assert parsed.problems[0].startswith("egress_rules[1]") and "10.0.0.300" in parsed.problems[0]
    assert parsed.problems[1].startswith("egress_rules[2].icmp_info")


def test_task_and_staging_workloads_come_from_network_properties() -> None:
    desired = pb.DesiredLRP(
        process_guid="x", network=pb.Network(properties={"app_id": "a", "space_id": "s", "container_workload": "bogus"})
    )
    assert parse_desired(desired).network is None
    assert "bogus" in parse_desired(desired).problems[0]


def test_instance_whose_ids_cannot_name_a_subject_is_skipped() -> None:
    """A cell id or guid with a '.' would break the subject `cfnft.state.container.<cell>.<handle>`."""
    desired = pb.DesiredLRP(
        process_guid="app-1-v1", network=pb.Network(properties={"app_id": "app-1", "space_id": "space-1"})
    )
    lrp = pb.ActualLRP(
        actual_lrp_key=pb.ActualLRPKey(process_guid="app-1-v1"),
        actual_lrp_instance_key=pb.ActualLRPInstanceKey(instance_guid="guid-1", cell_id="cell.a"),
        actual_lrp_net_info=pb.ActualLRPNetInfo(instance_address="10.255.1.2"),
        state="RUNNING",
    )
    view = LrpView()
    view.reset([desired], [lrp])
    assert view.all_containers() == {}
    assert parse_desired(
        pb.DesiredLRP(process_guid="x", network=pb.Network(properties={"app_id": "a.b", "space_id": "s"}))
    ).problems == ("app guid 'a.b' cannot be used in a NATS subject (empty, or has '.', '*', '>' or space)",)
