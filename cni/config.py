"""cfnft-cni's own keys in its plugin object of the conflist, validated by hand (no pydantic on the hot path).

    {"type": "cfnft-cni",
     "socket_path": "/var/vcap/data/cfnft/reconciler.sock",   the reconciler's CNI endpoint
     "timeout_seconds": 10,                                    how long ADD waits for the rules to be committed
     "dns_servers": ["169.254.0.2"],                           put into the result's dns.nameservers, as silk does
     "log_file": "/var/vcap/sys/log/cfnft/cni.log"}            one JSON line per invocation (optional)

Every other key must be one the CNI protocol or Garden puts there; anything else is an error
naming the key and its value (code 2), so a typo in the BOSH template fails the first container
start loudly instead of silently using a default. The BOSH template tests load the rendered conflist
with this same parser, so the release cannot render a config the plugin refuses.
"""

from __future__ import annotations

import json

from cni.addresses import canonical_ip
from cni.errors import CniError, Code
from cni.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~5 ms of every start)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULT_SOCKET_PATH = "/var/vcap/data/cfnft/reconciler.sock"
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 120.0  # the reconciler endpoint's own limit
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

OWN_KEYS = ("socket_path", "timeout_seconds", "dns_servers", "log_file")
# Keys the protocol or the runtime puts into every plugin's stdin; `capabilities` is meant to be
# removed by the runtime, `args` is the CONVENTIONS metadata, `metadata` Garden's injection.
PROTOCOL_KEYS = (
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "prevResult",
    "runtimeConfig",
    "args",
    "capabilities",
    "metadata",
    "disableCheck",
    "disableGC",
)
RESERVED_PREFIX = "cni.dev/"


class PluginConfig(Record):
    """cfnft-cni's settings from its plugin object.

    - `socket_path`: unix socket of the cell's reconciler (its `socket_path`).
    - `timeout_seconds`: ADD and DEL wait this long for the reconciler to commit; ADD then fails with code 11.
    - `dns_servers`: nameservers reported in the ADD result (Garden hands them to the container's resolv.conf).
    - `log_file`: append one JSON line per invocation here; nothing is logged without it.
    """

    __slots__ = ("socket_path", "timeout_seconds", "dns_servers", "log_file")

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET_PATH,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        dns_servers: tuple[str, ...] = (),
        log_file: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout_seconds = timeout_seconds
        self.dns_servers = dns_servers
        self.log_file = log_file


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(key: str, value: object, why: str) -> CniError:
    return CniError(Code.INVALID_CONFIG, f"invalid cfnft-cni config: {key}", f"{key}={_show(value)}: {why}")


def parse_plugin_config(conf: Mapping[str, Any]) -> PluginConfig:
    """Read and check cfnft-cni's keys; reject keys nobody defines (code 2) and bad values (code 7)."""
    for key, value in conf.items():
        if key not in OWN_KEYS and key not in PROTOCOL_KEYS and not key.startswith(RESERVED_PREFIX):
            raise CniError(
                Code.UNSUPPORTED_FIELD,
                f"unsupported field in cfnft-cni config: {key}",
                f"{key}={_show(value)}; cfnft-cni's keys are {', '.join(OWN_KEYS)}",
            )

    socket_path = conf.get("socket_path", DEFAULT_SOCKET_PATH)
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise _bad("socket_path", socket_path, "must be an absolute path")
    if len(socket_path.encode()) > MAX_SOCKET_PATH_BYTES:
        raise _bad("socket_path", socket_path, f"longer than a unix socket path may be ({MAX_SOCKET_PATH_BYTES} bytes)")

    timeout = conf.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise _bad(
            "timeout_seconds", timeout, f"must be a number of seconds, above 0 and at most {MAX_TIMEOUT_SECONDS:g}"
        )

    dns_servers = conf.get("dns_servers", [])
    if not isinstance(dns_servers, list):
        raise _bad("dns_servers", dns_servers, "must be a list of IP addresses")
    for server in dns_servers:
        try:
            if not isinstance(server, str):
                raise ValueError
            canonical_ip(server)
        except ValueError:
            raise _bad("dns_servers", dns_servers, f"{_show(server)} is not an IP address") from None

    log_file = conf.get("log_file")
    if log_file is not None and (not isinstance(log_file, str) or not log_file.startswith("/")):
        raise _bad("log_file", log_file, "must be an absolute path")

    return PluginConfig(socket_path, float(timeout), tuple(dns_servers), log_file)
