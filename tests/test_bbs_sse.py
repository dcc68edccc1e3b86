"""SSE framing as BBS writes it, parsed however the bytes happen to be split, and BBS payload decoding."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from events.bbs import bbs_pb2 as pb
from events.bbs.errors import BbsProtocolError
from events.bbs.sse import (
    MESSAGE_TYPES,
    EventName,
    SseEvent,
    SseParser,
    decode_bbs_event,
    encode_bbs_event,
    format_event,
)

FIXTURES = Path(__file__).parent / "fixtures" / "bbs"
STREAM = "/v1/events/lrp_instances.r1"


def recorded_stream() -> tuple[bytes, list[pb.ActualLRPInstanceChangedEvent]]:
    """The recorded crash-restart events framed as BBS frames them, ids from 0."""
    messages = []
    for entry in json.loads((FIXTURES / "lrp_events_crash_restart.json").read_text()):
        messages.append(json_format.ParseDict(entry["message"], MESSAGE_TYPES[EventName(entry["event"])]()))
    return b"".join(encode_bbs_event(i, m) for i, m in enumerate(messages)), messages


def test_frame_is_gosse_format() -> None:
    message = pb.EventsByCellId(cell_id="cell-a")  # any message: only the framing matters here
    frame = format_event(7, "desired_lrp_created", base64.b64encode(message.SerializeToString()).decode())
    assert frame == b"id: 7\nevent: desired_lrp_created\ndata: CgZjZWxsLWE=\n\n"


def test_every_split_of_the_stream_gives_the_same_events() -> None:
    """Events cut across reads at any byte (inside a field name, between CR and LF...) parse the same."""
    wire, messages = recorded_stream()
    for split in range(1, len(wire)):
        parser = SseParser()
        events = parser.feed(wire[:split]) + parser.feed(wire[split:])
        decoded = [decode_bbs_event(STREAM, e) for e in events]
        assert [(d.id, d.message) for d in decoded if d is not None] == list(enumerate(messages)), split


def test_byte_at_a_time() -> None:
    wire, messages = recorded_stream()
    parser = SseParser()
    events = [e for i in range(len(wire)) for e in parser.feed(wire[i : i + 1])]
    assert [decode_bbs_event(STREAM, e).message for e in events] == messages


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_line_endings(newline: bytes) -> None:
    raw = newline.join([b"id: 0", b"event: task_removed", b"data: CgA=", b"", b""])
    parser = SseParser()
    events = parser.feed(raw[:-1]) + parser.feed(raw[-1:])
    assert events == [SseEvent("0", "task_removed", "CgA=")]


def test_comments_unknown_fields_and_multiline_data() -> None:
    parser = SseParser()
    raw = b": keep-alive\n\nretry: 1000\nfoo: bar\nid:3\nevent:x\ndata: a\ndata:b\ndata\n\n"
    assert parser.feed(raw) == [SseEvent("3", "x", "a\nb\n")]


def test_unterminated_event_is_not_dispatched() -> None:
    parser = SseParser()
    assert parser.feed(b"id: 0\nevent: task_created\ndata: CgA=\n") == []


def test_unknown_event_name_is_skipped() -> None:
    assert decode_bbs_event(STREAM, SseEvent("0", "actual_lrp_changed", "CgA=")) is None


@pytest.mark.parametrize(
    ("event", "complaint"),
    [
        (SseEvent("0", "task_created", ""), "empty data"),
        (SseEvent("0", "task_created", "not base64!"), "not base64"),
        (SseEvent("0", "task_created", base64.b64encode(b"\xff\xff\xff").decode()), "not a TaskCreatedEvent"),
        (SseEvent(None, "task_created", "CgA="), "not a number"),
    ],
)
def test_bad_payloads_are_protocol_errors(event: SseEvent, complaint: str) -> None:
    with pytest.raises(BbsProtocolError, match=complaint) as info:
        decode_bbs_event(STREAM, event)
    assert str(info.value).startswith(f"bbs {STREAM}: task_created event")
