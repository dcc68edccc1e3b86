"""Is one container's enforcement in the kernel? (CNI CHECK, `cfnft check`.)"""

from __future__ import annotations

from events.models import Container
from nft.objects import AddrRange, IntRange, Ruleset
from reconciler.compile import app_chain, netin_chain


def container_problems(c: Container, kernel: Ruleset | None) -> list[str]:
    """What is missing for `c` in the read-back table; empty when all is in place."""
    if kernel is None:
        return ["table inet cfnft does not exist"]
    problems: list[str] = []

    def dispatch(map_name: str, key: AddrRange, expect_chain: str | None) -> None:
        element = kernel.elements.get(map_name, {}).get((key,))
        if element is None or not element.value:
            problems.append(f"no {map_name} element for {key.start} (container {c.handle})")
            return
        target = element.value.split()[-1]
        if expect_chain is not None and target != expect_chain:
            problems.append(f"{map_name} element for {key.start} jumps to {target}, expected {expect_chain}")
        if target not in kernel.chains:
            problems.append(f"{map_name} element for {key.start} jumps to missing chain {target}")

    dispatch("egress4", AddrRange.single(c.ip), None)
    dispatch("ingress4", AddrRange.single(c.ip), app_chain(c.app_guid))
    if c.ipv6 is not None:
        dispatch("egress6", AddrRange.single(c.ipv6), None)
        dispatch("ingress6", AddrRange.single(c.ipv6), app_chain(c.app_guid))
    for m in c.port_mappings:
        element = kernel.elements.get("port-mappings", {}).get((IntRange.single(m.host_port),))
        chain = netin_chain(m.host_port)
        if element is None or element.value != f"goto {chain}" or chain not in kernel.chains:
            problems.append(f"no port mapping {m.host_port} -> {c.ip}:{m.container_port} (container {c.handle})")
    return problems
