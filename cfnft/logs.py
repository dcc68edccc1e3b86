"""Logging set-up: JSON lines for daemons (one object per line, context fields included),
plain text for one-shot commands."""

from __future__ import annotations

import json
import logging
import sys
import time

# Context keys that callers pass with `extra=` and that belong in every JSON line carrying them.
CONTEXT_KEYS = ("handle", "app_guid", "space_guid", "cell_id", "subject", "security_group")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _SslEofNoise(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes ("returning true from eof_received()
    has no effect when using ssl"): it says nothing about cfnft's work."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("returning true from eof_received()")


def setup(json_lines: bool, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py logs every reconnect attempt at error level; our own lines say what matters.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _SslEofNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_SslEofNoise())
