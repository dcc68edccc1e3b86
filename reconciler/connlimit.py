"""silk's `outbound_connections`: new TCP connections per container and destination address and port,
limited to a burst and then a rate, in the container's egress chain (compile.py's `asg-<bundle>`).

silk does it with iptables' hashlimit (`--hashlimit-mode dstip,dstport`, one table per container,
entries expiring after ceil(burst / rate) s; cf-facts.md §3). Here one dynamic set per address
family plays the hashlimit table: its key is the container's address and the destination address
and port, so containers sharing a bundle chain keep their own buckets; each element carries its
own `limit` and lives `ceil(burst / rate)` seconds after its last connection (`update` renews
it). As in silk the limit comes after established traffic and invalid TCP and before
`deny_networks`; traffic to the overlay (c2c) is not limited.

Over the limit: reject (ICMP port unreachable, like the rest of the chain), logged first with
`logging`; with `dry_run` only logged (and counted), the connection goes on.
"""

from __future__ import annotations

import math

from events.models import CellConfig
from nft.objects import Rule, Ruleset, Set, SetFlag
from reconciler.logprefix import LogPrefix, log_statement

LIMIT_SETS = {4: "outbound-limit4", 6: "outbound-limit6"}
_KEY = {4: ("ipv4_addr", "ipv4_addr", "inet_service"), 6: ("ipv6_addr", "ipv6_addr", "inet_service")}
_IP = {4: "ip", 6: "ip6"}
SET_SIZE = 65536  # buckets per family on a cell; when full, new destinations go unlimited, never refused


def add_limit_sets(rs: Ruleset, cfg: CellConfig) -> None:
    """The dynamic sets holding the buckets, when the limit (or its dry run) is on."""
    oc = cfg.outbound_connections
    if not oc.active:
        return
    expire = math.ceil(oc.burst / oc.rate_per_sec)
    for v, name in LIMIT_SETS.items():
        rs.add_set(Set(name, _KEY[v], (SetFlag.DYNAMIC, SetFlag.TIMEOUT), timeout=expire, size=SET_SIZE))


def limit_rules(chain: str, cfg: CellConfig) -> list[Rule]:
    """The rules of one egress chain that enforce (or log) the limit; none when it is off."""
    oc = cfg.outbound_connections
    if not oc.active:
        return []
    if oc.dry_run:
        verdict, comment = (
            f"counter {log_statement(LogPrefix.LIMIT_DRY_RUN)}",
            "outbound_connections (dry run: log only)",
        )
    elif oc.logging:
        verdict, comment = f"counter {log_statement(LogPrefix.LIMIT_REJECT)} reject", "outbound_connections limit"
    else:
        verdict, comment = "counter reject", "outbound_connections limit"
    bucket = f"limit rate over {oc.rate_per_sec}/second burst {oc.burst} packets"
    return [
        Rule(
            chain,
            f"ct state new update @{name} {{ {_IP[v]} saddr . {_IP[v]} daddr . tcp dport {bucket} }} {verdict}",
            comment,
        )
        for v, name in LIMIT_SETS.items()
    ]
