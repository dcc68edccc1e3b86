"""What can go wrong talking to BBS, split by what the caller should do about it.

Every error names the route (or stream) it came from. `BbsUnavailableError` and `BbsTlsError`
are worth retrying with backoff; `BbsApiError` is BBS answering with its `error` field (a
database problem on its side is also worth retrying); `BbsProtocolError` means a body or event
we could not decode, which a re-list repairs.
"""

from __future__ import annotations

from cfnft.errors import OperationError


class BbsError(OperationError):
    """Base of every BBS client error; `route` is the API path or stream involved, `detail` what happened."""

    kind = "error"

    def __init__(self, route: str, detail: str) -> None:
        super().__init__(f"bbs {route}: {detail}")
        self.route = route
        self.detail = detail


class BbsUnavailableError(BbsError):
    """Connection refused or reset, timeout, or an HTTP status other than 200."""

    kind = "unavailable"

    def __init__(self, route: str, detail: str, status: int | None = None) -> None:
        super().__init__(route, detail)
        self.status = status


class BbsTlsError(BbsError):
    """The TLS handshake failed; `reason` is OpenSSL's short reason, e.g. TLSV1_ALERT_UNKNOWN_CA."""

    kind = "tls"

    def __init__(self, route: str, reason: str, hint: str) -> None:
        super().__init__(route, f"TLS handshake failed ({reason}): {hint}")
        self.reason = reason


class BbsApiError(BbsError):
    """BBS answered with its `error` field set (`type` is the Error.Type name)."""

    kind = "api"

    def __init__(self, route: str, error_type: str, message: str) -> None:
        super().__init__(route, f"BBS error {error_type}: {message}")
        self.error_type = error_type
        self.message = message


class BbsProtocolError(BbsError):
    """A response body or stream event that does not decode as what the route promises."""

    kind = "protocol"
