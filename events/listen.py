"""`ListenAddress`: where a daemon's HTTP listener (/metrics, /healthz) binds, as the config files
and `--metrics-listen` give it: `HOST:PORT`, or empty for no listener.

The listeners split it at the last colon (`rpartition`), so an IPv6 host is written without
brackets (`::1:9301`); an empty HOST means 127.0.0.1. Checked when the config is read, so a bad
value is a config error naming the key, not a failure while the daemon starts.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator

_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
_PORT = re.compile(r"[0-9]{1,5}")


def _check(value: str) -> str:
    if value == "":
        return value
    host, colon, port = value.rpartition(":")
    if colon and _PORT.fullmatch(port) and 0 < int(port) <= 65535 and (host == "" or _is_host(host)):
        return value
    raise ValueError(
        f"{value!r}: must be HOST:PORT (an address or name, IPv6 without brackets; a port 1-65535), or empty for none"
    )


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name's last label is never all digits: `1.2.3.4` is not host `1.2.3` on port 4.
        return _NAME.fullmatch(host) is not None and not host.rpartition(".")[2].isdigit()
    return True


ListenAddress = Annotated[str, AfterValidator(_check)]
