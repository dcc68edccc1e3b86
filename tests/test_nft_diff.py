"""diff: the smallest ordered transaction from what the kernel holds to what we want.

Every case also applies the transaction to a FakeNft holding `actual` and checks the result
reads back equal to `desired`, so the order is one the (fake) kernel accepts.
"""

from __future__ import annotations

import copy
from ipaddress import ip_address, ip_network

from nft import (
    AddrRange,
    Chain,
    ChainType,
    Element,
    FakeNft,
    Family,
    Hook,
    IntRange,
    Map,
    Policy,
    Rule,
    Ruleset,
    Set,
    SetFlag,
    Table,
    Touched,
    diff,
    render_ruleset,
    same_structure,
)

TABLE = Table(Family.INET, "cfnft")
FORWARD = Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 5, Policy.ACCEPT)
WEB = Set("asg-web", ("ipv4_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True)
DISPATCH = Map("ctr-dispatch", ("ipv4_addr",))
# Diff knows each set's definition, so it adds elements with the `add set` form (see nft.transaction).
ADD_WEB = (
    "add set inet cfnft asg-web { type ipv4_addr . inet_proto . inet_service; flags interval; counter; elements = {"
)
ADD_DISPATCH = "add map inet cfnft ctr-dispatch { type ipv4_addr : verdict; elements = {"


def net(text: str) -> AddrRange:
    n = ip_network(text)
    return AddrRange(n.network_address, n.broadcast_address)


def one(text: str) -> AddrRange:
    return AddrRange.single(ip_address(text))


def web(cidr: str, port: int, comment: str | None = None) -> Element:
    return Element("asg-web", (net(cidr), IntRange.single(6), IntRange.single(port)), comment=comment)


def base() -> Ruleset:
    rs = Ruleset(TABLE)
    rs.add_chain(FORWARD)
    rs.add_chain(Chain("ctr-a"))
    rs.add_chain(Chain("ctr-b"))
    rs.add_set(WEB)
    rs.add_set(DISPATCH)
    rs.add_element(web("10.0.0.0/8", 443, "web"))
    rs.add_element(web("192.0.2.0/24", 80))
    rs.add_element(Element("ctr-dispatch", (one("10.255.1.2"),), "jump ctr-a", "app a"))
    rs.add_element(Element("ctr-dispatch", (one("10.255.1.3"),), "jump ctr-b", "app b"))
    rs.add_rule(Rule("cfnft-forward", "ip saddr vmap @ctr-dispatch"))
    rs.add_rule(Rule("ctr-a", "ip daddr . meta l4proto . th dport @asg-web counter accept", "app a"))
    rs.add_rule(Rule("ctr-a", "counter reject"))
    rs.add_rule(Rule("ctr-b", "counter reject", "app b"))
    return rs


def kernel_with(rs: Ruleset) -> FakeNft:
    fake = FakeNft()
    fake.apply(diff(rs, None))
    return fake


def converge(desired: Ruleset, actual: Ruleset) -> list[str]:
    """Applies diff(desired, actual) to a fake holding `actual`; returns the batch lines."""
    fake = kernel_with(actual)
    tx = diff(desired, fake.read(TABLE))
    fake.apply(tx)
    assert fake.dump() == render_ruleset(desired)
    assert diff(desired, fake.read(TABLE)).is_empty
    return tx.render().splitlines()


def fp(text: str) -> str:
    return Rule("x", text).fingerprint


def test_missing_table_adds_everything_in_order() -> None:
    lines = diff(base(), None).render().splitlines()
    assert lines[0] == "add table inet cfnft"
    assert [line.split(" {")[0] for line in lines[1:6]] == [
        "add set inet cfnft asg-web",
        "add map inet cfnft ctr-dispatch",
        "add chain inet cfnft cfnft-forward",
        "add chain inet cfnft ctr-a",
        "add chain inet cfnft ctr-b",
    ]
    assert lines[6].startswith("add rule inet cfnft cfnft-forward")
    assert lines[-1] == "} }" and ADD_DISPATCH in lines


def test_no_change_is_empty() -> None:
    assert diff(base(), base()).is_empty
    assert diff(base(), kernel_with(base()).read(TABLE)).is_empty


def test_changed_rule_flushes_and_refills_only_its_chain() -> None:
    desired = base()
    desired.rules["ctr-b"][0] = Rule("ctr-b", "counter drop", "app b")
    assert converge(desired, base()) == [
        "flush chain inet cfnft ctr-b",
        f'add rule inet cfnft ctr-b counter drop comment "app b [{fp("counter drop")}]"',
    ]


def test_changed_human_comment_refills() -> None:
    desired = base()
    desired.rules["ctr-b"][0] = Rule("ctr-b", "counter reject", "app b renamed")
    assert converge(desired, base())[0] == "flush chain inet cfnft ctr-b"


def test_reordered_rules_refill() -> None:
    desired = base()
    desired.rules["ctr-a"].reverse()
    assert converge(desired, base())[0] == "flush chain inet cfnft ctr-a"


def test_foreign_rule_is_removed() -> None:
    """A rule without our fingerprint (added by someone else) makes its chain refill."""
    fake = kernel_with(base())
    actual = fake.read(TABLE)
    assert actual is not None
    listed = actual.rules["ctr-b"][0]
    actual.rules["ctr-b"].append(Rule("ctr-b", "accept", None, handle=999, kernel_fingerprint=None))
    lines = diff(base(), actual).render().splitlines()
    assert lines[0] == "flush chain inet cfnft ctr-b"
    assert lines[1].endswith(f'comment "app b [{listed.kernel_fingerprint}]"')


def test_base_chain_definition_change_deletes_and_recreates() -> None:
    desired = base()
    desired.chains["cfnft-forward"] = Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 10, Policy.DROP)
    assert converge(desired, base()) == [
        "flush chain inet cfnft cfnft-forward",
        "delete chain inet cfnft cfnft-forward",
        "add chain inet cfnft cfnft-forward { type filter hook forward priority 10; policy drop; }",
        "add rule inet cfnft cfnft-forward ip saddr vmap @ctr-dispatch"
        f' comment "[{fp("ip saddr vmap @ctr-dispatch")}]"',
    ]


def test_element_changes() -> None:
    """Added, removed and re-commented elements; a changed verdict is a delete then an add."""
    desired = base()
    del desired.elements["asg-web"][web("192.0.2.0/24", 80).key]
    desired.add_element(web("198.51.100.0/24", 8080))
    desired.add_element(web("10.0.0.0/8", 443, "web, renamed"))
    desired.add_element(Element("ctr-dispatch", (one("10.255.1.3"),), "jump ctr-a", "app b"))
    assert converge(desired, base()) == [
        "delete element inet cfnft asg-web {",
        "\t10.0.0.0/8 . 6 . 443,",
        "\t192.0.2.0/24 . 6 . 80,",
        "}",
        "delete element inet cfnft ctr-dispatch {",
        "\t10.255.1.3,",
        "}",
        ADD_WEB,
        '\t10.0.0.0/8 . 6 . 443 comment "web, renamed",',
        "\t198.51.100.0/24 . 6 . 8080,",
        "} }",
        ADD_DISPATCH,
        '\t10.255.1.3 comment "app b" : jump ctr-a,',
        "} }",
    ]


def test_keys_compare_as_numbers() -> None:
    """A range spelled differently but covering the same addresses is the same element."""
    desired = base()
    actual = base()
    del actual.elements["asg-web"][web("192.0.2.0/24", 80).key]
    span = AddrRange(ip_address("192.0.2.0"), ip_address("192.0.2.255"))
    actual.add_element(Element("asg-web", (span, IntRange(6, 6), IntRange(80, 80))))
    assert diff(desired, actual).is_empty


def test_set_definition_change_recreates_and_refills_users() -> None:
    """A changed set is deleted and re-created; ctr-a, whose rules are unchanged but use it, is
    flushed before the delete and refilled after the re-create."""
    desired = base()
    new_web = Set("asg-web", ("ipv4_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=False)
    desired.sets["asg-web"] = new_web
    lines = converge(desired, base())
    assert lines[0] == "flush chain inet cfnft ctr-a"
    assert lines[1] == "delete set inet cfnft asg-web"
    assert lines[2] == "add set inet cfnft asg-web { type ipv4_addr . inet_proto . inet_service; flags interval; }"
    assert lines[3].startswith("add rule inet cfnft ctr-a ip daddr")
    assert lines[5] == ADD_WEB.replace("; counter", "")
    assert not any("ctr-b" in line for line in lines)


def test_flag_order_does_not_matter() -> None:
    desired, actual = base(), base()
    desired.sets["asg-web"] = Set(WEB.name, WEB.type, (SetFlag.TIMEOUT, SetFlag.INTERVAL), True)
    actual.sets["asg-web"] = Set(WEB.name, WEB.type, (SetFlag.INTERVAL, SetFlag.TIMEOUT), True)
    assert diff(desired, actual).is_empty


def test_removed_chain_referenced_by_vmap_element() -> None:
    """The map element jumping to the chain goes first, then the chain (flushed, then deleted)."""
    desired = base()
    del desired.chains["ctr-b"], desired.rules["ctr-b"]
    del desired.elements["ctr-dispatch"][(one("10.255.1.3"),)]
    assert converge(desired, base()) == [
        "flush chain inet cfnft ctr-b",
        "delete element inet cfnft ctr-dispatch {",
        "\t10.255.1.3,",
        "}",
        "delete chain inet cfnft ctr-b",
    ]


def test_removed_set_and_its_only_user() -> None:
    desired = base()
    del desired.sets["asg-web"], desired.elements["asg-web"]
    del desired.chains["ctr-a"], desired.rules["ctr-a"]
    del desired.elements["ctr-dispatch"][(one("10.255.1.2"),)]
    lines = converge(desired, base())
    assert lines.index("flush chain inet cfnft ctr-a") < lines.index("delete set inet cfnft asg-web")
    assert lines.index("delete set inet cfnft asg-web") < lines.index("delete chain inet cfnft ctr-a")


def test_removed_map_with_elements_jumping_to_removed_chains() -> None:
    """Sets and maps are removed before chains, so a removed map releases the chains it jumps to."""
    desired = Ruleset(TABLE)
    desired.add_chain(FORWARD)
    assert converge(desired, base())[-3:] == [
        "delete map inet cfnft ctr-dispatch",
        "delete chain inet cfnft ctr-a",
        "delete chain inet cfnft ctr-b",
    ]


def test_regular_chain_becoming_base_releases_its_jumps() -> None:
    """A replaced chain that map elements jump to: those elements are deleted before it and re-added after."""
    desired, actual = base(), base()
    actual.add_chain(Chain("ctr-c"))
    actual.add_element(Element("ctr-dispatch", (one("10.255.1.4"),), "jump ctr-c"))
    desired.add_chain(Chain("ctr-c", ChainType.FILTER, Hook.OUTPUT, 0, Policy.ACCEPT))
    lines = diff(desired, actual).render().splitlines()
    assert lines.index("\t10.255.1.4,") < lines.index("delete chain inet cfnft ctr-c")
    fake = kernel_with(actual)
    tx = diff(desired, fake.read(TABLE))
    assert tx.render() == diff(desired, actual).render()


def test_diff_of_large_ruleset_is_empty_against_itself() -> None:
    desired = base()
    for i in range(2000):
        desired.add_element(web(f"11.{i // 250}.{i % 250}.0/24", 1000 + i % 7))
    actual = copy.deepcopy(desired)
    assert diff(desired, actual).is_empty


# --- unchanged parts shared between two rulesets are equal by identity -----------------------


class Sealed(dict):
    """An element dict that fails the test if diff looks inside it."""

    def _looked(self, *args: object) -> None:
        raise AssertionError("diff looked inside a shared element dict")

    items = values = keys = get = __iter__ = __getitem__ = __contains__ = _looked  # type: ignore[assignment]


class SealedRules(list):
    """A rule list that fails the test if diff looks inside it."""

    def _looked(self, *args: object) -> None:
        raise AssertionError("diff looked inside a shared rule list")

    __iter__ = __getitem__ = __eq__ = _looked  # type: ignore[assignment]


def sharing(previous: Ruleset) -> Ruleset:
    """What a compiler that reuses unchanged fragments hands over next: new containers, same parts."""
    return Ruleset(
        previous.table,
        dict(previous.chains),
        dict(previous.rules),
        dict(previous.sets),
        dict(previous.elements),
    )


def sealed_base() -> Ruleset:
    rs = base()
    rs.elements["asg-web"] = Sealed(rs.elements["asg-web"])
    rs.rules["ctr-a"] = SealedRules(rs.rules["ctr-a"])
    return rs


def test_shared_parts_are_not_looked_into() -> None:
    previous = sealed_base()
    assert diff(sharing(previous), previous).is_empty


def test_one_new_element_next_to_shared_parts() -> None:
    """The daemon's common case: one container more, everything else the same objects."""
    previous = sealed_base()
    desired = sharing(previous)
    desired.elements["ctr-dispatch"] = dict(previous.elements["ctr-dispatch"])
    desired.add_element(Element("ctr-dispatch", (one("10.255.1.4"),), "jump ctr-b", "app b 2"))
    assert diff(desired, previous).render().splitlines() == [
        ADD_DISPATCH,
        '\t10.255.1.4 comment "app b 2" : jump ctr-b,',
        "} }",
    ]


def test_shared_map_still_lets_go_of_a_replaced_chain() -> None:
    """A chain that becomes a base chain is deleted and re-added; the map elements jumping to it
    are deleted before and re-added after, even though the map's dict is the same object."""
    actual = base()
    actual.add_chain(Chain("ctr-c"))
    actual.add_element(Element("ctr-dispatch", (one("10.255.1.4"),), "jump ctr-b"))
    desired = sharing(actual)
    desired.chains["ctr-b"] = Chain("ctr-b", ChainType.FILTER, Hook.OUTPUT, 0, Policy.ACCEPT)
    desired.elements["ctr-dispatch"] = actual.elements["ctr-dispatch"]
    del desired.chains["ctr-c"], desired.rules["ctr-c"]
    desired.sets["ctr-dispatch"] = DISPATCH
    lines = diff(desired, actual).render().splitlines()
    assert lines.index("\t10.255.1.3,") < lines.index("delete chain inet cfnft ctr-b")
    assert lines.index("delete chain inet cfnft ctr-b") < lines.index('\t10.255.1.3 comment "app b" : jump ctr-b,')


def test_shared_rules_still_refill_when_their_set_is_replaced() -> None:
    previous = base()
    desired = sharing(previous)
    desired.sets["asg-web"] = Set(WEB.name, WEB.type, WEB.flags, counter=False)
    lines = diff(desired, previous).render().splitlines()
    assert lines[:2] == ["flush chain inet cfnft ctr-a", "delete set inet cfnft asg-web"]
    assert any(line.startswith("add rule inet cfnft ctr-a ip daddr") for line in lines)


def test_equal_but_separate_parts_compare_by_content() -> None:
    """Rebuilt (not shared) parts with the same content diff empty; a changed element in a rebuilt dict shows."""
    assert diff(base(), base()).is_empty
    desired = base()
    desired.add_element(web("192.0.2.0/24", 80, "now commented"))
    assert diff(desired, base()).render().splitlines() == [
        "delete element inet cfnft asg-web {",
        "\t192.0.2.0/24 . 6 . 80,",
        "}",
        ADD_WEB,
        '\t192.0.2.0/24 . 6 . 80 comment "now commented",',
        "} }",
    ]


# --- same_structure: what the drift probe compares on a read without elements ----------------


def test_same_structure() -> None:
    fake = kernel_with(base())
    structure = fake.read(TABLE, elements=False)
    assert structure is not None and not any(structure.elements.values())
    assert same_structure(base(), structure)
    assert not same_structure(base(), None)
    more_elements = base()
    more_elements.add_element(web("198.51.100.0/24", 8080))
    assert same_structure(more_elements, structure), "elements are not compared"


def structure_changes() -> list[tuple[str, Ruleset]]:
    changed_rule, extra_chain, extra_set, new_policy, new_set_type, new_comment = (base() for _ in range(6))
    changed_rule.rules["ctr-b"][0] = Rule("ctr-b", "counter drop", "app b")
    extra_chain.add_chain(Chain("ctr-c"))
    extra_set.add_set(Set("asg-extra", ("ipv4_addr",)))
    new_policy.chains["cfnft-forward"] = Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 5, Policy.DROP)
    new_set_type.sets["asg-web"] = Set(WEB.name, WEB.type, WEB.flags, counter=False)
    new_comment.rules["ctr-b"][0] = Rule("ctr-b", "counter reject", "app b renamed")
    return [
        ("rule", changed_rule),
        ("chain", extra_chain),
        ("set", extra_set),
        ("policy", new_policy),
        ("set-definition", new_set_type),
        ("rule-comment", new_comment),
    ]


def test_structure_changes_are_seen_both_ways() -> None:
    """Each change is seen whether it is in what we want or in what the kernel holds."""
    for what, changed in structure_changes():
        kernel = kernel_with(base()).read(TABLE, elements=False)
        assert not same_structure(changed, kernel), what
        changed_kernel = kernel_with(changed).read(TABLE, elements=False)
        assert not same_structure(base(), changed_kernel), what
        assert not diff(base(), kernel_with(changed).read(TABLE)).is_empty, what


def test_with_what_the_caller_touched_only_that_is_compared() -> None:
    def ruleset(dispatch: list[str], webs: list[Element]) -> Ruleset:
        rs = Ruleset(TABLE)
        rs.add_set(DISPATCH)
        rs.add_set(WEB)
        for ip in dispatch:
            rs.add_element(Element("ctr-dispatch", (one(ip),), "accept"))
        for e in webs:
            rs.add_element(e)
        return rs

    actual = ruleset(["10.255.1.2", "10.255.1.3"], [web("192.0.2.0/24", 443)])
    desired = ruleset(["10.255.1.2", "10.255.1.4"], [web("192.0.2.0/24", 443), web("198.51.100.0/24", 80)])
    b, c = (one("10.255.1.3"),), (one("10.255.1.4"),)
    everything = Touched(frozenset({"asg-web"}), {"ctr-dispatch": frozenset({b, c})})
    assert diff(desired, actual, only=everything).render() == diff(desired, actual).render()
    kernel = FakeNft()
    kernel.apply(diff(actual, None))
    kernel.apply(diff(desired, actual, only=everything))
    assert diff(desired, kernel.read(TABLE)).is_empty
    # What the caller says it did not touch is taken as the same on both sides.
    partial = diff(desired, actual, only=Touched(elements={"ctr-dispatch": frozenset({c})})).render()
    assert "10.255.1.4" in partial and "10.255.1.3" not in partial and "asg-web" not in partial
