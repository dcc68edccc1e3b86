"""Our BBS protobuf subset: field numbers as upstream puts them on the wire, and the recorded payloads.

The byte strings below are written out by hand from the protobuf encoding rules and the upstream
field numbers (docs/cf-facts.md §3.4-3.5), so they check `bbs.proto` against BBS, not against itself.
The JSON fixtures under tests/fixtures/bbs are renderings (proto field names) of BBS responses and
stream events for a CF app with CC-built egress rules, an evacuation and a crash-restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from events.bbs import bbs_pb2 as pb
from events.bbs.sse import MESSAGE_TYPES, EventName

FIXTURES = Path(__file__).parent / "fixtures" / "bbs"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _len(payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([len(payload)]) + payload


def _string(field: int, text: str) -> bytes:
    return _tag(field, 2) + _len(text.encode())


def _tag(field: int, wire_type: int) -> bytes:
    value = field << 3 | wire_type
    return bytes([value]) if value < 128 else bytes([value & 0x7F | 0x80, value >> 7])


def test_desired_lrp_networking_fields_have_upstream_numbers() -> None:
    """egress_rules = 20, network = 26 (properties = 1, a map), ports = 14 unpacked."""
    rule = _string(1, "tcp") + _string(2, "10.0.0.0/8") + _tag(3, 0) + b"\x50" + _tag(3, 0) + b"\xbb\x03"
    entry = _string(1, "app_id") + _string(2, "app-1")
    wire = (
        _string(1, "app-1-v1")
        + _tag(14, 0)
        + b"\x90\x3f"  # 8080
        + _tag(20, 2)
        + _len(rule)
        + _tag(26, 2)
        + _len(_tag(1, 2) + _len(entry))
    )
    desired = pb.DesiredLRP.FromString(wire)
    assert desired.process_guid == "app-1-v1"
    assert list(desired.ports) == [8080]
    assert dict(desired.network.properties) == {"app_id": "app-1"}
    assert (desired.egress_rules[0].protocol, list(desired.egress_rules[0].ports)) == ("tcp", [80, 443])
    assert desired.SerializeToString() == wire  # ports and rule ports go out unpacked, as upstream's [packed=false]


def test_actual_lrp_addresses_have_upstream_numbers() -> None:
    """ActualLRP: key = 1, instance key = 2, net info = 3 (instance_address = 3), state = 6, presence = 10."""
    key = _string(1, "app-1-v1") + _tag(2, 0) + b"\x01" + _string(3, "cf-apps")
    instance_key = _string(1, "guid-1") + _string(2, "cell-a")
    net_info = _string(1, "10.0.16.10") + _string(3, "10.255.1.2") + _string(5, "fd00::2")
    wire = (
        _tag(1, 2)
        + _len(key)
        + _tag(2, 2)
        + _len(instance_key)
        + _tag(3, 2)
        + _len(net_info)
        + _string(6, "RUNNING")
        + _tag(10, 0)
        + b"\x01"
    )
    lrp = pb.ActualLRP.FromString(wire)
    assert (lrp.actual_lrp_key.process_guid, lrp.actual_lrp_key.index) == ("app-1-v1", 1)
    assert (lrp.actual_lrp_instance_key.instance_guid, lrp.actual_lrp_instance_key.cell_id) == ("guid-1", "cell-a")
    assert lrp.actual_lrp_net_info.instance_address == "10.255.1.2"
    assert lrp.actual_lrp_net_info.instance_ipv6_address == "fd00::2"
    assert (lrp.state, lrp.presence) == ("RUNNING", pb.ActualLRP.EVACUATING)


def test_changed_event_and_error_have_upstream_numbers() -> None:
    """ActualLRPInstanceChangedEvent: keys 1 and 2, before 3, after 4 (ActualLRPInfo state = 6);
    a list response's error = 1 with Error{type = 1, message = 2}."""
    after = _string(6, "RUNNING")
    event = pb.ActualLRPInstanceChangedEvent.FromString(
        _tag(2, 2) + _len(_string(1, "guid-1")) + _tag(4, 2) + _len(after) + _string(5, "trace")
    )
    assert (event.actual_lrp_instance_key.instance_guid, event.after.state, event.trace_id) == (
        "guid-1",
        "RUNNING",
        "trace",
    )
    response = pb.ActualLRPsResponse.FromString(_tag(1, 2) + _len(_tag(1, 0) + b"\x1c" + _string(2, "deadlock")))
    assert (response.error.type, response.error.message) == (pb.Error.Deadlock, "deadlock")


def test_task_fields_have_upstream_numbers() -> None:
    """Task: definition = 1 (network = 19, egress_rules = 14), task_guid = 2, state = 7, cell_id = 8."""
    definition = _tag(19, 2) + _len(_tag(1, 2) + _len(_string(1, "container_workload") + _string(2, "task")))
    task = pb.Task.FromString(
        _tag(1, 2) + _len(definition) + _string(2, "task-1") + _tag(7, 0) + b"\x02" + _string(8, "cell-a")
    )
    assert (task.task_guid, task.state, task.cell_id) == ("task-1", pb.Task.Running, "cell-a")
    assert task.task_definition.network.properties["container_workload"] == "task"


@pytest.mark.parametrize(
    ("name", "message_type"),
    [
        ("desired_lrps_response.json", pb.DesiredLRPsResponse),
        ("actual_lrps_response.json", pb.ActualLRPsResponse),
        ("actual_lrps_error_response.json", pb.ActualLRPsResponse),
        ("tasks_response.json", pb.TasksResponse),
    ],
)
def test_recorded_list_responses_round_trip(name: str, message_type: type[Message]) -> None:
    """JSON -> protobuf -> bytes -> protobuf -> JSON gives the recorded payload back, unknown to nothing."""
    recorded = load(name)
    message = json_format.ParseDict(recorded, message_type())
    again = message_type.FromString(message.SerializeToString())
    assert json_format.MessageToDict(again, preserving_proto_field_name=True) == recorded


def test_recorded_events_round_trip() -> None:
    for entry in load("lrp_events_crash_restart.json"):
        message_type = MESSAGE_TYPES[EventName(entry["event"])]
        message = json_format.ParseDict(entry["message"], message_type())
        again = message_type.FromString(message.SerializeToString())
        assert json_format.MessageToDict(again, preserving_proto_field_name=True) == entry["message"]


def test_unknown_fields_from_a_newer_bbs_are_skipped() -> None:
    """Fields our subset leaves out (e.g. DesiredLRP.routes = 15, check_definition = 33) do not break decoding."""
    wire = _string(1, "app-1-v1") + _tag(15, 2) + _len(b"\x0a\x00") + _tag(33, 2) + _len(b"") + _tag(4, 0) + b"\x02"
    desired = pb.DesiredLRP.FromString(wire)
    assert (desired.process_guid, desired.instances) == ("app-1-v1", 2)
