"""The reconciler's CNI endpoint (reconciler/endpoint.py), spoken over its unix socket with the stdlib only.

One request per connection (`Connection: close`), JSON in and out. This is a dozen lines of HTTP/1.1
rather than `http.client` because importing http.client pulls in email and ssl, which took about
30 ms here: more than the rest of the plugin's start. The server is our own aiohttp endpoint, so the
subset needed is known: a status line, headers, and a body with Content-Length or chunked encoding.
"""

from __future__ import annotations

import json
import socket
import time

from cni.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~5 ms of every start)
if TYPE_CHECKING:
    from typing import Any


class Unreachable(Exception):
    """Nobody answered on the socket (missing, refused, or silent until the deadline)."""


class BadAnswer(Exception):
    """Something answered, but not with an HTTP response carrying JSON."""


class Answer(Record):
    """An HTTP status and the decoded JSON body (an empty dict for an empty body)."""

    __slots__ = ("status", "body")

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body


class ReconcilerClient:
    """Requests to the reconciler at `socket_path`; each one must complete within its `timeout` seconds.

    Handles go into paths as they are: the CNI container-id grammar ([A-Za-z0-9_.-]) is URL-safe.
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def register(self, body: dict[str, Any], timeout_seconds: float) -> Answer:
        """POST /v1/containers: 200 once committed, 503 when not committed in time, 400 on bad input,
        409 when the commit could not include it (then it is unregistered again)."""
        payload = {**body, "timeout_seconds": timeout_seconds}
        return self._request("POST", "/v1/containers", payload, timeout_seconds + _GRACE)

    def unregister(self, handle: str, timeout_seconds: float) -> Answer:
        """DELETE /v1/containers/<handle>: 200 once committed, 503 when recorded but not committed yet."""
        path = f"/v1/containers/{handle}?timeout_seconds={timeout_seconds:g}"
        return self._request("DELETE", path, None, timeout_seconds + _GRACE)

    def check(self, handle: str, ipv4: str, timeout: float) -> Answer:
        """GET /v1/containers/<handle>: {"ok", "problems"} read back from the kernel."""
        return self._request("GET", f"/v1/containers/{handle}?ip={ipv4}", None, timeout)

    def gc(self, valid_handles: list[str], timeout: float) -> Answer:
        """POST /v1/gc: forget every container registered by CNI that is not listed."""
        return self._request("POST", "/v1/gc", {"valid_handles": valid_handles}, timeout)

    def status(self, timeout: float) -> Answer:
        """GET /v1/status."""
        return self._request("GET", "/v1/status", None, timeout)

    def _request(self, method: str, path: str, payload: dict[str, Any] | None, timeout: float) -> Answer:
        body = json.dumps(payload).encode() if payload is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: cfnft-reconciler\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        deadline = time.monotonic() + timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.socket_path)
                sock.sendall(head.encode() + body)
                chunks = []
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    sock.settimeout(remaining)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except TimeoutError:
            raise Unreachable(f"no answer from {self.socket_path} within {timeout:g}s") from None
        except OSError as e:
            raise Unreachable(f"cannot reach {self.socket_path}: {e.strerror or e}") from None
        return _parse(b"".join(chunks), f"{method} {path.partition('?')[0]}")


_GRACE = 2.0  # beyond the server's own wait: its 503 should arrive before our deadline


def _parse(raw: bytes, what: str) -> Answer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BadAnswer(f"{what}: not an HTTP response: {raw[:120]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body, what)
    elif headers.get("content-length", "").isdigit():
        body = body[: int(headers["content-length"])]
    try:
        decoded = json.loads(body) if body.strip() else {}
    except ValueError:
        raise BadAnswer(f"{what}: HTTP {parts[1]} with a body that is not JSON: {body[:120]!r}") from None
    if not isinstance(decoded, dict):
        raise BadAnswer(f"{what}: HTTP {parts[1]} with JSON that is not an object")
    return Answer(int(parts[1]), decoded)


def _dechunk(data: bytes, what: str) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise BadAnswer(f"{what}: bad chunked encoding") from None
        if size == 0 or not sep:
            return b"".join(out)
        out.append(rest[:size])
        data = rest[size + 2 :]
