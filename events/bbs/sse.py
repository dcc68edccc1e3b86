"""The BBS event stream on the wire: Server-Sent Events framing and the protobuf payloads in it.

BBS (through vito/go-sse) writes one event per HTTP chunk (docs/cf-facts.md §3.3):

    id: <n>              counts from 0 on every connection; BBS ignores Last-Event-ID, so no replay
    event: <name>        e.g. actual_lrp_instance_changed
    data: <base64>       standard alphabet, padded, of the protobuf-marshalled event message
    <blank line>

Chunks and reads do not line up with events on the client side (proxies and TCP re-split
them), so `SseParser` is incremental: it takes bytes as they come and returns the events that
are complete. Line endings may be LF, CRLF or CR, as the SSE specification allows.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import DecodeError, Message

from events.bbs import bbs_pb2 as pb
from events.bbs.errors import BbsProtocolError

CONTENT_TYPE = "text/event-stream; charset=utf-8"
_LINE_END = re.compile(rb"[\r\n]")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched SSE event: its fields as text, data lines joined with newlines."""

    id: str | None
    name: str
    data: str


def format_event(event_id: int, name: str, data: str) -> bytes:
    """One event as go-sse writes it (`data` must be a single line, as base64 is)."""
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n".encode()


class SseParser:
    """Incremental SSE parser: `feed` bytes in any split, get back the completed events.

    An event is dispatched at the blank line that ends it if it had any field at all; an event
    with an empty `data` is still dispatched so that the BBS layer can reject it as BBS does.
    An unterminated event at the end of the stream is dropped, as the specification says.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._id: str | None = None
        self._name = ""
        self._data: list[str] = []
        self._has_fields = False
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across reads
        self._after_cr = False
        self._buffer += chunk
        events: list[SseEvent] = []
        while (end := _LINE_END.search(self._buffer)) is not None:
            i = end.start()
            line, rest = self._buffer[:i], self._buffer[i + 1 :]
            if self._buffer[i] == 0x0D:
                if rest.startswith(b"\n"):
                    rest = rest[1:]
                elif not rest:
                    self._after_cr = True
            self._buffer = rest
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment (keep-alive)
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "id":
            self._id = value
        elif field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        elif field != "retry":
            return None  # unknown fields are ignored
        self._has_fields = True
        return None

    def _dispatch(self) -> SseEvent | None:
        event = SseEvent(self._id, self._name, "\n".join(self._data)) if self._has_fields else None
        self._id, self._name, self._data, self._has_fields = None, "", [], False
        return event


class EventName(StrEnum):
    """Event names on BBS's streams (bbs models/events.go)."""

    DESIRED_LRP_CREATED = "desired_lrp_created"
    DESIRED_LRP_CHANGED = "desired_lrp_changed"
    DESIRED_LRP_REMOVED = "desired_lrp_removed"
    ACTUAL_LRP_INSTANCE_CREATED = "actual_lrp_instance_created"
    ACTUAL_LRP_INSTANCE_CHANGED = "actual_lrp_instance_changed"
    ACTUAL_LRP_INSTANCE_REMOVED = "actual_lrp_instance_removed"
    ACTUAL_LRP_CRASHED = "actual_lrp_crashed"
    TASK_CREATED = "task_created"
    TASK_CHANGED = "task_changed"
    TASK_REMOVED = "task_removed"


MESSAGE_TYPES: dict[EventName, type[Message]] = {
    EventName.DESIRED_LRP_CREATED: pb.DesiredLRPCreatedEvent,
    EventName.DESIRED_LRP_CHANGED: pb.DesiredLRPChangedEvent,
    EventName.DESIRED_LRP_REMOVED: pb.DesiredLRPRemovedEvent,
    EventName.ACTUAL_LRP_INSTANCE_CREATED: pb.ActualLRPInstanceCreatedEvent,
    EventName.ACTUAL_LRP_INSTANCE_CHANGED: pb.ActualLRPInstanceChangedEvent,
    EventName.ACTUAL_LRP_INSTANCE_REMOVED: pb.ActualLRPInstanceRemovedEvent,
    EventName.ACTUAL_LRP_CRASHED: pb.ActualLRPCrashedEvent,
    EventName.TASK_CREATED: pb.TaskCreatedEvent,
    EventName.TASK_CHANGED: pb.TaskChangedEvent,
    EventName.TASK_REMOVED: pb.TaskRemovedEvent,
}
_NAME_OF: dict[type[Message], EventName] = {cls: name for name, cls in MESSAGE_TYPES.items()}


@dataclass(frozen=True, slots=True)
class BbsEvent:
    """A decoded BBS event: its stream id, name and protobuf message (the class `MESSAGE_TYPES` names)."""

    id: int
    name: EventName
    message: Message


def encode_bbs_event(event_id: int, message: Message) -> bytes:
    """The SSE frame BBS writes for `message` (its event name follows from its type)."""
    name = _NAME_OF[type(message)]
    return format_event(event_id, name, base64.b64encode(message.SerializeToString()).decode("ascii"))


def decode_bbs_event(stream: str, event: SseEvent) -> BbsEvent | None:
    """Decode one SSE event from `stream`; None for an event name this subset does not know
    (deprecated group events); BbsProtocolError for an empty, non-base64 or non-protobuf payload."""
    try:
        name = EventName(event.name)
    except ValueError:
        return None
    try:
        event_id = int(event.id or "")
    except ValueError:
        raise BbsProtocolError(stream, f"{name} event has id {event.id!r}, not a number") from None
    if not event.data:
        raise BbsProtocolError(stream, f"{name} event {event_id} has an empty data field")
    try:
        payload = base64.b64decode(event.data, validate=True)
    except binascii.Error as exc:
        raise BbsProtocolError(stream, f"{name} event {event_id}: data is not base64 ({exc})") from None
    message = MESSAGE_TYPES[name]()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise BbsProtocolError(
            stream, f"{name} event {event_id}: data is not a {message.DESCRIPTOR.name} ({exc})"
        ) from None
    return BbsEvent(event_id, name, message)
