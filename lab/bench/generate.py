"""A synthetic but CF-shaped full cell, for benchmarks: deterministic for a given seed.

Shape (defaults = docs/design.md §5 and the engine issue): 250 containers of 125 apps in 10 spaces,
20 security groups totalling 1,000 rules (half global for running, half bound to some spaces,
one also global for staging), 500 c2c policies between the apps, and every app with instances
on other cells too. Destinations come from 100.64.0.0/10, which no test sends traffic to.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class CellShape:
    containers: int = 250
    apps: int = 125
    spaces: int = 10
    groups: int = 20
    rules: int = 1000
    c2c_policies: int = 500
    seed: int = 1


_CGNAT = int(ipaddress.IPv4Address("100.64.0.0"))


def _guid(kind: str, n: int) -> str:
    return f"{kind[:8]:0<8}-0000-4000-8000-{n:012d}"


def _destination(rng: random.Random) -> str:
    def addr() -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(_CGNAT + rng.randrange(1 << 22))

    form = rng.random()
    if form < 0.4:
        return str(addr())
    if form < 0.7:
        prefix = rng.choice((16, 20, 24, 28))
        return str(ipaddress.IPv4Network(f"{addr()}/{prefix}", strict=False))
    if form < 0.9:
        start = addr()
        return f"{start}-{start + rng.randrange(1, 300)}"
    return ",".join(str(addr()) for _ in range(rng.randrange(2, 4)))


def _rule(rng: random.Random) -> dict:
    proto = rng.choices(("tcp", "udp", "icmp", "all"), weights=(60, 20, 10, 10))[0]
    rule: dict = {"protocol": proto, "destination": _destination(rng)}
    if proto in ("tcp", "udp"):
        form = rng.random()
        if form < 0.5:
            rule["ports"] = str(rng.choice((53, 80, 443, 1433, 3306, 5432, 6379, 8080, 8443, 9200)))
        elif form < 0.75:
            rule["ports"] = ",".join(str(rng.randrange(1024, 65535)) for _ in range(rng.randrange(2, 5)))
        else:
            lo = rng.randrange(1024, 60000)
            rule["ports"] = f"{lo}-{lo + rng.randrange(1, 2000)}"
    elif proto == "icmp":
        rule["type"], rule["code"] = rng.choice(((-1, -1), (8, 0), (0, -1), (3, 4)))
    if rng.random() < 0.05:
        rule["log"] = True
    return rule


def _c2c_policy(rng: random.Random, src: str, dst: str) -> dict:
    port = rng.choice((8080, 8443, 9000, 5000))
    return {
        "source": {"id": src},
        "destination": {
            "id": dst,
            "protocol": rng.choice(("tcp", "tcp", "udp")),
            "ports": {"start": port, "end": port + rng.choice((0, 0, 10))},
        },
    }


def full_cell(shape: CellShape = CellShape(), cell_id: str = "cell-bench") -> dict:
    """The cell state document (docs/design.md §2.1) of a full cell."""
    rng = random.Random(shape.seed)
    spaces = [_guid("space", i) for i in range(shape.spaces)]
    apps = [(_guid("app", i), spaces[i % shape.spaces]) for i in range(shape.apps)]
    containers = []
    for i in range(shape.containers):
        app, space = apps[i % shape.apps]
        ip = ipaddress.IPv4Address("10.255.0.0") + 256 + 2 + i  # 10.255.1.2 onwards
        workload = "staging" if i % 50 == 49 else "app"
        containers.append(
            {
                "handle": _guid("ctr", i),
                "ip": str(ip),
                "app_guid": app,
                "space_guid": space,
                "org_guid": _guid("org", 1),
                "workload": workload,
                "ports": [8080],
            }
        )
    per_group = shape.rules // shape.groups
    groups = []
    for g in range(shape.groups):
        is_global = g < shape.groups // 2
        bound = [] if is_global else rng.sample(spaces, k=max(1, shape.spaces // 2))
        groups.append(
            {
                "guid": _guid("sg", g),
                "name": f"bench-group-{g}",
                "rules": [_rule(rng) for _ in range(per_group)],
                "globally_enabled": {"running": is_global, "staging": g == 0},
                "relationships": {
                    "running_spaces": {"data": [{"guid": s} for s in bound]},
                    "staging_spaces": {"data": []},
                },
            }
        )
    policies = []
    for _ in range(shape.c2c_policies):
        (src, _), (dst, _) = rng.sample(apps, 2)
        policies.append(_c2c_policy(rng, src, dst))
    instances = {}
    for n, (app, _) in enumerate(apps):
        instances[app] = [
            str(ipaddress.IPv4Address("10.255.0.0") + (2 + n % 200) * 256 + 2 + n % 250) for _ in range(1)
        ]
        instances[app] += [str(ipaddress.IPv4Address("10.255.0.0") + (3 + n % 200) * 256 + 3 + n % 250)]
    return {
        "cell_id": cell_id,
        "containers": containers,
        "security_groups": groups,
        "c2c_policies": policies,
        "app_instances": instances,
        "config": {"dns_servers": ["169.254.0.2"], "deny_networks": {"always": ["100.127.0.0/16"]}},
    }


@dataclass(frozen=True)
class FoundationShape:
    """A large foundation as one cell sees it (docs/design.md §5, foundation scale): every app's
    instance addresses, every security group and every c2c policy of the foundation, and the
    cell's own `containers`."""

    apps: int = 30_000
    addresses_per_app: int = 3
    spaces: int = 3_000
    groups: int = 2_000
    global_groups: int = 5
    rules_per_group: int = 5
    c2c_policies: int = 4_000
    local_destination_share: float = 0.1  # of the policies, the share whose destination is a local app
    containers: int = 250
    seed: int = 7


# 1,000 cells with a /22 each: 10.32.0.0/12, this cell the first.
FOUNDATION_OVERLAY = ipaddress.IPv4Network("10.32.0.0/12")
_CELL_BLOCK = 1024


def foundation_address(cell: int, host: int) -> ipaddress.IPv4Address:
    return FOUNDATION_OVERLAY.network_address + cell * _CELL_BLOCK + 2 + host


def foundation(shape: FoundationShape = FoundationShape(), cell_id: str = "cell-0") -> dict:
    """The cell state document (docs/design.md §2.1) of cell 0 of a large foundation.

    Local containers belong to `containers * 4 // 5` local apps (some apps have two instances
    here); each local container is one of its app's instances, the others on random cells. Running
    groups: `global_groups` global ones, the rest bound to two random spaces each (a tenth of them
    also for staging). Policies connect random apps; `local_destination_share` of them have a local
    app as destination, so their source apps' addresses matter to this cell and the others' do not."""
    rng = random.Random(shape.seed)
    spaces = [_guid("space", i) for i in range(shape.spaces)]
    apps = [(_guid("app", i), spaces[rng.randrange(shape.spaces)]) for i in range(shape.apps)]
    local_apps = max(1, shape.containers * 4 // 5)
    containers = []
    local_ips: dict[str, list[str]] = {}
    for i in range(shape.containers):
        app, space = apps[i % local_apps]
        ip = str(foundation_address(0, i))
        local_ips.setdefault(app, []).append(ip)
        containers.append(
            {
                "handle": _guid("ctr", i),
                "ip": ip,
                "app_guid": app,
                "space_guid": space,
                "org_guid": _guid("org", 1),
                "workload": "staging" if i % 50 == 49 else "app",
                "ports": [8080],
            }
        )
    instances = {}
    for app, _ in apps:
        here = local_ips.get(app, [])
        elsewhere = [
            str(foundation_address(rng.randrange(1, 1000), rng.randrange(1000)))
            for _ in range(shape.addresses_per_app - len(here))
        ]
        instances[app] = here + elsewhere
    groups = []
    for g in range(shape.groups):
        is_global = g < shape.global_groups
        bound = [] if is_global else rng.sample(spaces, k=2)
        groups.append(
            {
                "guid": _guid("sg", g),
                "name": f"foundation-group-{g}",
                "rules": [_rule(rng) for _ in range(shape.rules_per_group * (4 if is_global else 1))],
                "globally_enabled": {"running": is_global, "staging": g == 0},
                "relationships": {
                    "running_spaces": {"data": [{"guid": s} for s in bound]},
                    "staging_spaces": {"data": [{"guid": s} for s in bound] if g % 10 == 9 else []},
                },
            }
        )
    policies = []
    for _ in range(shape.c2c_policies):
        local = rng.random() < shape.local_destination_share
        dst = apps[rng.randrange(local_apps)][0] if local else apps[rng.randrange(shape.apps)][0]
        policies.append(_c2c_policy(rng, apps[rng.randrange(shape.apps)][0], dst))
    return {
        "cell_id": cell_id,
        "containers": containers,
        "security_groups": groups,
        "c2c_policies": policies,
        "app_instances": instances,
        "config": {
            "overlay_network": str(FOUNDATION_OVERLAY),
            "dns_servers": ["169.254.0.2"],
            "deny_networks": {"always": ["100.127.0.0/16"]},
        },
    }


def irrelevant_apps(doc: dict) -> list[str]:
    """The apps of `doc` whose addresses do not concern its cell: not local, and not the source of a
    c2c policy towards a local app."""
    local = {c["app_guid"] for c in doc["containers"]}
    sources = {p["source"]["id"] for p in doc["c2c_policies"] if p["destination"]["id"] in local}
    return [app for app in doc["app_instances"] if app not in local and app not in sources]
