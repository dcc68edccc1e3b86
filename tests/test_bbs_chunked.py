"""Decoding BBS's chunked framing (events/bbs/chunked.py): its `<size>;` headers, any split of the
bytes, other valid chunk extensions and trailers, and what is not chunked coding at all."""

from __future__ import annotations

import pytest

from events.bbs.chunked import MAX_LINE, ChunkDecoder
from events.bbs.errors import BbsProtocolError

ROUTE = "/v1/events/lrp_instances.r1"
EVENTS = [b"id: 0\nevent: desired_lrp_created\ndata: AAAA\n\n", b"id: 1\nevent: x\ndata: " + b"B" * 300 + b"\n\n"]
# Byte for byte what BBS writes: fmt.Fprintf(conn, "%x;\r\n", n), the event, "\r\n"; "0\r\n\r\n" at the end.
BBS_WIRE = b"".join(b"%x;\r\n%s\r\n" % (len(e), e) for e in EVENTS) + b"0\r\n\r\n"


def decode(pieces: list[bytes]) -> tuple[bytes, bool]:
    decoder = ChunkDecoder(ROUTE)
    return b"".join(decoder.feed(p) for p in pieces), decoder.done


def test_bbs_framing_with_its_empty_chunk_extension() -> None:
    assert decode([BBS_WIRE]) == (b"".join(EVENTS), True)


def test_every_split_gives_the_same_payload() -> None:
    for cut in range(len(BBS_WIRE) + 1):
        assert decode([BBS_WIRE[:cut], BBS_WIRE[cut:]]) == (b"".join(EVENTS), True), cut


def test_byte_at_a_time_and_payload_as_soon_as_it_arrives() -> None:
    decoder = ChunkDecoder(ROUTE)
    out = b""
    for i in range(len(BBS_WIRE)):
        out += decoder.feed(BBS_WIRE[i : i + 1])
        if i == 4:  # "2f;\r\n" read: the chunk's first byte is delivered with the next feed
            assert out == b"" and not decoder.done
    assert (out, decoder.done) == (b"".join(EVENTS), True)


@pytest.mark.parametrize("header", [b"5", b"5;", b"5 ;", b"5;name=value", b'5;a="b;c";d', b"05"])
def test_chunk_extensions_are_ignored(header: bytes) -> None:
    assert decode([header + b"\r\nhello\r\n0\r\n\r\n"]) == (b"hello", True)


def test_trailer_fields_are_skipped() -> None:
    assert decode([b"3;\r\nabc\r\n0;\r\nX-Trailer: 1\r\n\r\n"]) == (b"abc", True)


def test_an_unfinished_stream_is_not_done() -> None:
    assert decode([BBS_WIRE[:-5]]) == (b"".join(EVENTS), False)  # the terminating chunk is missing


@pytest.mark.parametrize(
    ("wire", "complaint"),
    [
        (b"zz;\r\n", "invalid chunk header"),
        (b";\r\n", "invalid chunk header"),
        (b"-1\r\n", "invalid chunk header"),
        (b"3\r\nabcXY", "not CRLF"),
        (b"0\r\n\r\nextra", "after the last chunk"),
        (b"1" * (MAX_LINE + 1), "no CRLF within"),
    ],
)
def test_malformed_framing_is_an_error(wire: bytes, complaint: str) -> None:
    with pytest.raises(BbsProtocolError, match=f"bbs {ROUTE}: event stream framing: .*{complaint}"):
        ChunkDecoder(ROUTE).feed(wire)
