"""The store's compact forms (reconciler/compact.py): what goes in comes back out equal, and two
forms are equal exactly when their objects are."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address, ip_address

from events import subjects
from events.models import C2CPolicy, SecurityGroup
from reconciler.compact import Addresses, StoredGroup, StoredPolicies
from reconciler.feed import parse_state_message
from reconciler.store import DesiredStore


def test_addresses_pack_each_family_sorted_and_once() -> None:
    given = [ip_address(a) for a in ("10.0.0.9", "fd00::2", "10.0.0.1", "10.0.0.9", "fd00::1", "10.0.0.10")]
    packed = Addresses.of(given)
    assert packed is not None
    assert packed.addresses() == [
        IPv4Address("10.0.0.1"),
        IPv4Address("10.0.0.9"),
        IPv4Address("10.0.0.10"),
        IPv6Address("fd00::1"),
        IPv6Address("fd00::2"),
    ]
    assert list(packed.ipv4()) == [IPv4Address("10.0.0.1"), IPv4Address("10.0.0.9"), IPv4Address("10.0.0.10")]
    assert packed == Addresses.of(reversed(given)), "the same set of addresses in another order is equal"
    assert Addresses.of([]) is None, "no address: the app has no instance"


def test_a_group_comes_back_as_the_model_it_was_stored_from() -> None:
    group = SecurityGroup.model_validate(
        {
            "guid": "g1",
            "name": "web",
            "rules": [
                {"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "443,8443", "log": True},
                {"protocol": "icmp", "destination": "198.51.100.1-198.51.100.9", "type": 8, "code": -1},
                {"protocol": "all", "destination": "2001:db8::/64", "description": "v6"},
            ],
            "globally_enabled": {"running": False, "staging": True},
            "relationships": {
                "running_spaces": {"data": [{"guid": "s2"}, {"guid": "s1"}]},
                "staging_spaces": {"data": [{"guid": "s3"}]},
            },
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    stored = StoredGroup.of(group)
    assert (stored.running_spaces, stored.staging_spaces) == (("s1", "s2"), ("s3",))
    assert (stored.running_global, stored.staging_global, stored.elements) == (False, True, 4)
    back = stored.group()
    assert back.egress_rules() == group.egress_rules() and back.model_dump() == group.model_dump()
    assert back is not stored.group(), "each call parses anew: only the compiler keeps what it uses"
    assert StoredGroup.of(back) == stored
    renamed = group.model_copy(update={"name": "api"})
    assert StoredGroup.of(renamed) != stored


def test_a_group_without_its_bad_rules_is_stored_without_them() -> None:
    """Validation stays where the message arrives: what is stored is what passed it."""
    payload = {
        "kind": "asg",
        "guid": "g1",
        "security_group": {
            "guid": "g1",
            "name": "g1",
            "rules": [
                {"protocol": "tcp", "destination": "192.0.2.1", "ports": "443"},
                {"protocol": "tcp", "destination": "192.0.2.300", "ports": "443"},
            ],
        },
    }
    msg, problems = parse_state_message(subjects.security_group("g1"), json.dumps(payload).encode())
    assert len(problems) == 1
    store = DesiredStore("a")
    assert store.apply(msg, 1)
    assert [r.destination for r in store.groups["g1"].group().rules] == ["192.0.2.1"]


def test_policies_keep_their_apps_and_come_back_equal() -> None:
    def policy(src: str, dst: str, port: int) -> C2CPolicy:
        return C2CPolicy.model_validate(
            {"source": {"id": src, "tag": "0001"},
             "destination": {"id": dst, "protocol": "udp", "ports": {"start": port, "end": port + 5}}}
        )  # fmt: skip

    policies = [policy("a", "web", 8080), policy("b", "web", 9000)]
    stored = StoredPolicies.of(policies)
    assert stored is not None
    assert stored.pairs == (("a", "web"), ("b", "web"))
    assert stored.policies() == policies
    assert StoredPolicies.of(list(policies)) == stored
    assert StoredPolicies.of([policies[0]]) != stored
    assert StoredPolicies.of([]) is None, "no policy: the message deletes the list"
