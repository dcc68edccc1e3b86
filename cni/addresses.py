"""IP address text, checked and made canonical with the socket module's inet_pton/inet_ntop.

Not `ipaddress`: the plugin imports `socket` anyway to reach the reconciler, and ipaddress would
add ~3 ms to every container start. inet_pton is strict (no leading zeros, no short forms, no
IPv6 zone ids), which is what a CNI result and a nameserver list should hold.
"""

from __future__ import annotations

import socket


def canonical_ip(text: str) -> tuple[int, str]:
    """(4 or 6, the address in canonical form); ValueError if `text` is not an IPv4 or IPv6 address."""
    family, version = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
    try:
        return version, socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IPv{version} address") from None


def canonical_cidr_address(text: str) -> tuple[int, str]:
    """The address part of `address/prefix` (CIDR notation), as `canonical_ip`; ValueError if malformed."""
    address, slash, prefix = text.partition("/")
    version, canonical = canonical_ip(address)
    if not slash or not prefix.isdigit() or int(prefix) > (32 if version == 4 else 128):
        raise ValueError(f"{text!r} is not an address in CIDR notation")
    return version, canonical
