"""The `prevResult` of the connectivity plugin before us: the container's addresses, and the result we pass on.

A chained plugin must output `prevResult` (modified or not) in the cniVersion of its configuration.
The result shapes of 0.3.x/0.4.0 and 1.x differ only in details: 0.4.0's `ips[]` carry `version`
("4"/"6"), which 1.0.0 dropped; 1.1.0 added optional interface and route keys (mtu, socketPath,
pciID; mtu, advmss, priority, table, scope) that 0.4.0 does not have. Older shapes (0.1.0/0.2.0,
`ip4`/`ip6` objects) are refused.
"""

from __future__ import annotations

from cni.addresses import canonical_cidr_address
from cni.errors import CniError, Code
from cni.invocation import version_key
from cni.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~5 ms of every start)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_RESULT_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_SINCE_1_1_INTERFACE_KEYS = ("mtu", "socketPath", "pciID")
_SINCE_1_1_ROUTE_KEYS = ("mtu", "advmss", "priority", "table", "scope")


class ContainerAddresses(Record):
    """The container's overlay addresses (canonical text), as the connectivity plugin assigned them."""

    __slots__ = ("ipv4", "ipv6")

    def __init__(self, ipv4: str, ipv6: str | None) -> None:
        self.ipv4 = ipv4
        self.ipv6 = ipv6


def _bad(msg: str, details: str = "") -> CniError:
    return CniError(Code.INVALID_CONFIG, msg, details)


def require_prev_result(conf: Mapping[str, Any]) -> dict[str, Any]:
    """`prevResult`, which a chained plugin cannot do without (code 7 when it is missing)."""
    prev = conf.get("prevResult")
    if prev is None:
        raise _bad(
            "cfnft-cni must be chained after a connectivity plugin: no prevResult",
            "put a plugin that creates the interface (silk-cni, ptp, ...) before cfnft-cni in the conflist",
        )
    if not isinstance(prev, dict):
        raise _bad("prevResult must be a JSON object", f"got {type(prev).__name__}")
    return prev


def container_addresses(prev: Mapping[str, Any]) -> ContainerAddresses:
    """The first IPv4 (required: Garden needs one) and IPv6 address of the container's interface.

    An address counts when its `interface` index names an interface that lives in a sandbox (the
    container's netns); results without interface indexes (IPAM-style) count all addresses.
    """
    ips = prev.get("ips", [])
    interfaces = prev.get("interfaces", [])
    if not isinstance(ips, list) or not isinstance(interfaces, list):
        raise _bad("prevResult.ips and prevResult.interfaces must be lists")
    ipv4: str | None = None
    ipv6: str | None = None
    for n, entry in enumerate(ips):
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise _bad(f"prevResult.ips[{n}] must be an object with an 'address'", repr(entry))
        index = entry.get("interface")
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(interfaces):
                raise _bad(f"prevResult.ips[{n}].interface is not an index into prevResult.interfaces", repr(index))
            iface = interfaces[index]
            if not isinstance(iface, dict) or not iface.get("sandbox"):
                continue  # a host-side interface (e.g. the cell end of the veth)
        try:
            version, address = canonical_cidr_address(entry["address"])
        except ValueError:
            raise _bad(f"prevResult.ips[{n}].address is not an address in CIDR notation", entry["address"]) from None
        if version == 4:
            ipv4 = ipv4 or address
        else:
            ipv6 = ipv6 or address
    if ipv4 is None:
        raise _bad(
            "prevResult has no IPv4 address on a container interface",
            "Garden needs one; the connectivity plugin's result: " + repr(ips)[:300],
        )
    return ContainerAddresses(ipv4, ipv6)


def convert_result(prev: Mapping[str, Any], to_version: str, stated: str) -> dict[str, Any]:
    """`prev` (a result of version `prev.cniVersion`, else `stated`) in the shape of `to_version`."""
    from_version = prev.get("cniVersion", stated)
    if from_version not in _RESULT_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "prevResult has an unsupported cniVersion",
            f"{from_version!r}; results of {', '.join(_RESULT_VERSIONS)} can be chained",
        )
    out = dict(prev)
    out["cniVersion"] = to_version
    legacy = version_key(to_version) < (1, 0, 0)
    ips = []
    for entry in prev.get("ips", []):
        entry = dict(entry)
        if legacy:
            entry["version"] = "6" if ":" in entry["address"] else "4"
        else:
            entry.pop("version", None)
        ips.append(entry)
    if "ips" in prev:
        out["ips"] = ips
    if legacy:
        if "interfaces" in prev:
            out["interfaces"] = [_without(i, _SINCE_1_1_INTERFACE_KEYS) for i in prev["interfaces"]]
        if "routes" in prev:
            out["routes"] = [_without(r, _SINCE_1_1_ROUTE_KEYS) for r in prev["routes"]]
    return out


def _without(entry: object, keys: tuple[str, ...]) -> object:
    if not isinstance(entry, dict):
        return entry
    return {k: v for k, v in entry.items() if k not in keys}


def with_nameservers(result: dict[str, Any], nameservers: tuple[str, ...]) -> dict[str, Any]:
    """Set `dns.nameservers` (keeping the rest of `dns`), as silk's wrapper does with `dns_servers`."""
    if nameservers:
        dns = result.get("dns")
        result["dns"] = {**(dns if isinstance(dns, dict) else {}), "nameservers": list(nameservers)}
    return result
