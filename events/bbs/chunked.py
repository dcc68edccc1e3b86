"""HTTP/1.1 chunked transfer coding, decoded incrementally, as BBS writes it on its event streams.

BBS takes over the connection of an event stream and writes each chunk itself, every chunk header
with an empty chunk extension: `fmt.Fprintf(conn, "%x;\\r\\n", n)` (bbs handlers/events_handlers.go,
docs/cf-facts.md §3.3). That is valid HTTP (RFC 9112 §7.1.1 allows `chunk-size *chunk-ext`, and a
recipient must ignore extensions it does not understand), but aiohttp's compiled parser (llhttp)
refuses `26;` as an invalid chunk extension — and aiohttp's stream iterator then never raises, so a
client built on it freezes after the first listing. This decoder accepts any extension, empty or
not, and ignores it, whatever HTTP parser the installed aiohttp happens to use.

`ChunkDecoder.feed` takes bytes as they arrive, in any split, and returns the payload bytes that
are complete; `done` turns true after the last chunk and its trailer section. Malformed framing is
a `BbsProtocolError` naming the stream and what was wrong (a re-subscription and re-list repair it).
"""

from __future__ import annotations

from enum import Enum, auto

from events.bbs.errors import BbsProtocolError

# A chunk-size line or trailer line longer than this is not HTTP but garbage (or an attack).
MAX_LINE = 4096
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _State(Enum):
    SIZE = auto()
    DATA = auto()
    DATA_END = auto()
    TRAILER = auto()
    DONE = auto()


class ChunkDecoder:
    """Incremental decoder of the chunked body of `route`'s response (see the module docstring)."""

    def __init__(self, route: str) -> None:
        self._route = route
        self._buffer = bytearray()
        self._state = _State.SIZE
        self._remaining = 0

    @property
    def done(self) -> bool:
        """The last chunk and the trailer section have been read; nothing more belongs to the body."""
        return self._state is _State.DONE

    def feed(self, data: bytes) -> bytes:
        """Decode what `data` completes; returns the payload bytes (possibly empty)."""
        if self.done:
            if data:
                raise self._error("data after the last chunk")
            return b""
        self._buffer += data
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    def _step(self, out: bytearray) -> bool:
        """Advance by one state if the buffer allows; False when more bytes are needed."""
        if self._state is _State.DATA:
            if not self._buffer:
                return False
            taken = self._buffer[: self._remaining]
            out += taken
            del self._buffer[: len(taken)]
            self._remaining -= len(taken)
            if self._remaining == 0:
                self._state = _State.DATA_END
            return True
        if self._state is _State.DATA_END:
            if len(self._buffer) < 2:
                return False
            if self._buffer[:2] != b"\r\n":
                raise self._error(f"chunk data is followed by {bytes(self._buffer[:20])!r}, not CRLF")
            del self._buffer[:2]
            self._state = _State.SIZE
            return True
        line = self._line()
        if line is None:
            return False
        if self._state is _State.SIZE:
            size = _chunk_size(line)
            if size is None:
                raise self._error(f"invalid chunk header {bytes(line[:40])!r}")
            if size == 0:
                self._state = _State.TRAILER
            else:
                self._remaining, self._state = size, _State.DATA
        elif not line:  # the blank line that ends the (usually empty) trailer section
            if self._buffer:
                raise self._error("data after the last chunk")
            self._state = _State.DONE
        return self._state is not _State.DONE

    def _error(self, detail: str) -> BbsProtocolError:
        return BbsProtocolError(self._route, f"event stream framing: {detail}")

    def _line(self) -> bytearray | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise self._error(f"no CRLF within {MAX_LINE} bytes where a chunk header or trailer was due")
            return None
        line = self._buffer[:end]
        del self._buffer[: end + 2]
        return line


def _chunk_size(line: bytearray) -> int | None:
    """The size of `line` = chunk-size [ chunk-ext ], the extension, empty or not, ignored; None if invalid."""
    digits = bytes(line.split(b";", 1)[0]).rstrip(b" \t")
    if not digits or not _HEX.issuperset(digits) or len(digits) > 16:
        return None
    return int(digits, 16)
