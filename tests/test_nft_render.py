"""Rendering and transactions: each object and verb renders to exact nft text; the batch order is the transaction's."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from nft import (
    AddrRange,
    Chain,
    ChainType,
    Element,
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
    Transaction,
    TransactionError,
    diff,
    render_key,
    render_ruleset,
)
from nft.render import clean_comment, key_order, rule_comment

TABLE = Table(Family.INET, "cfnft")


def net(text: str) -> AddrRange:
    n = ip_network(text)
    return AddrRange(n.network_address, n.broadcast_address)


def span(a: str, b: str) -> AddrRange:
    return AddrRange(ip_address(a), ip_address(b))


def one(a: str) -> AddrRange:
    return AddrRange.single(ip_address(a))


@pytest.mark.parametrize(
    ("set_type", "key", "text"),
    [
        pytest.param(("ipv4_addr",), (one("10.0.0.1"),), "10.0.0.1", id="v4-single"),
        pytest.param(("ipv4_addr",), (net("10.0.0.0/8"),), "10.0.0.0/8", id="v4-cidr"),
        pytest.param(("ipv4_addr",), (net("0.0.0.0/0"),), "0.0.0.0/0", id="v4-all"),
        pytest.param(("ipv4_addr",), (span("10.0.0.0", "10.0.0.254"),), "10.0.0.0-10.0.0.254", id="v4-not-cidr"),
        pytest.param(("ipv4_addr",), (span("10.0.0.1", "10.0.0.2"),), "10.0.0.1-10.0.0.2", id="v4-unaligned-pair"),
        pytest.param(("ipv6_addr",), (one("2001:db8::1"),), "2001:db8::1", id="v6-single"),
        pytest.param(("ipv6_addr",), (net("2001:db8::/32"),), "2001:db8::/32", id="v6-cidr"),
        pytest.param(("ipv6_addr",), (net("::/0"),), "::/0", id="v6-all"),
        pytest.param(("ipv6_addr",), (span("2001:db8::1", "2001:db8::5"),), "2001:db8::1-2001:db8::5", id="v6-range"),
        pytest.param(("inet_service",), (IntRange.single(443),), "443", id="port"),
        pytest.param(("inet_service",), (IntRange(0, 65535),), "0-65535", id="port-range"),
        pytest.param(
            ("ipv4_addr", "inet_proto", "inet_service"),
            (net("10.0.0.0/8"), IntRange.single(6), IntRange(80, 443)),
            "10.0.0.0/8 . 6 . 80-443",
            id="concat-proto-port",
        ),
        pytest.param(
            ("ipv6_addr", "icmpv6_type", "icmpv6_code"),
            (net("2001:db8::/32"), IntRange.single(128), IntRange(0, 255)),
            "2001:db8::/32 . 128 . 0-255",
            id="concat-icmpv6",
        ),
    ],
)
def test_render_key(set_type: tuple[str, ...], key: tuple, text: str) -> None:
    """Keys render as the shortest nft spelling: address, CIDR, or range."""
    assert render_key(set_type, key) == text


@pytest.mark.parametrize(
    ("set_type", "key", "message"),
    [
        pytest.param(("ipv4_addr",), (one("2001:db8::1"),), "IPv6 address in a ipv4_addr", id="family"),
        pytest.param(("inet_service",), (IntRange.single(65536),), "out of range 0-65535", id="port-too-big"),
        pytest.param(("ipv4_addr",), (IntRange.single(1),), "expected an address", id="kind"),
        pytest.param(("ipv4_addr", "inet_service"), (one("10.0.0.1"),), "has 1 fields", id="arity"),
        pytest.param(("ether_addr",), (IntRange.single(1),), "unsupported key datatype", id="datatype"),
    ],
)
def test_render_key_rejects_what_does_not_fit(set_type: tuple[str, ...], key: tuple, message: str) -> None:
    """A key that does not fit its set's type is an error naming the field, not bad nft text."""
    with pytest.raises(ValueError, match=message):
        render_key(set_type, key)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        pytest.param("app=1 space=2", "app=1 space=2", id="plain"),
        pytest.param('say "hi"', "say 'hi'", id="double-quotes"),
        pytest.param("a\nb\tc  d ", "a b c d", id="control-and-spaces"),
        pytest.param("", None, id="empty"),
        pytest.param("x" * 200, "x" * 128, id="truncated"),
        pytest.param("é" * 100, "é" * 64, id="truncated-by-bytes-not-splitting-a-character"),
    ],
)
def test_clean_comment(raw: str, clean: str | None) -> None:
    """Comments are cut to the kernel's 128 bytes and lose what nft cannot quote."""
    assert clean_comment(raw) == clean


def test_rule_comment_keeps_fingerprint_when_truncating() -> None:
    """A long human comment is cut so that the fingerprint still fits in 128 bytes."""
    rule = Rule("ctr-a", "counter accept", comment="y" * 300)
    comment = rule_comment(rule)
    assert len(comment.encode()) == 128
    assert comment.endswith(f" [{rule.fingerprint}]")
    assert rule_comment(Rule("ctr-a", "counter accept")) == f"[{rule.fingerprint}]"
    assert len(rule.fingerprint) == 8


def small_ruleset() -> Ruleset:
    rs = Ruleset(TABLE)
    rs.add_chain(Chain("ctr-a"))
    rs.add_chain(Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 5, Policy.ACCEPT))
    rs.add_set(Set("asg-web", ("ipv4_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True))
    rs.add_set(Map("ctr-dispatch", ("ipv4_addr",)))
    # Added out of order: the renderer sorts elements numerically.
    rs.add_element(Element("asg-web", (net("192.0.2.0/24"), IntRange.single(17), IntRange.single(53))))
    rs.add_element(Element("asg-web", (net("10.0.0.0/8"), IntRange.single(6), IntRange(80, 443)), comment="web"))
    rs.add_element(Element("ctr-dispatch", (one("10.255.1.2"),), "jump ctr-a", comment="app a"))
    rs.add_rule(Rule("cfnft-forward", "ip saddr vmap @ctr-dispatch", comment="dispatch"))
    rs.add_rule(Rule("ctr-a", "ip daddr . meta l4proto . th dport @asg-web counter accept"))
    rs.add_rule(Rule("ctr-a", "counter reject"))
    return rs


def test_render_ruleset_exact_text() -> None:
    """A table renders as the batch that creates it: table, definitions (sets, then chains, sorted),
    rules in order, then each set's elements in one command, one element a line, sorted by number."""
    rs = small_ruleset()
    fp = {r.text: r.fingerprint for rules in rs.rules.values() for r in rules}
    assert render_ruleset(rs) == (
        "add table inet cfnft\n"
        "add set inet cfnft asg-web { type ipv4_addr . inet_proto . inet_service; flags interval; counter; }\n"
        "add map inet cfnft ctr-dispatch { type ipv4_addr : verdict; }\n"
        "add chain inet cfnft cfnft-forward { type filter hook forward priority 5; policy accept; }\n"
        "add chain inet cfnft ctr-a\n"
        "add rule inet cfnft cfnft-forward ip saddr vmap @ctr-dispatch comment "
        f'"dispatch [{fp["ip saddr vmap @ctr-dispatch"]}]"\n'
        "add rule inet cfnft ctr-a ip daddr . meta l4proto . th dport @asg-web counter accept comment "
        f'"[{fp["ip daddr . meta l4proto . th dport @asg-web counter accept"]}]"\n'
        f'add rule inet cfnft ctr-a counter reject comment "[{fp["counter reject"]}]"\n'
        "add set inet cfnft asg-web { type ipv4_addr . inet_proto . inet_service; flags interval; counter; "
        "elements = {\n"
        '\t10.0.0.0/8 . 6 . 80-443 comment "web",\n'
        "\t192.0.2.0/24 . 17 . 53,\n"
        "} }\n"
        "add map inet cfnft ctr-dispatch { type ipv4_addr : verdict; elements = {\n"
        '\t10.255.1.2 comment "app a" : jump ctr-a,\n'
        "} }\n"
    )


def test_render_ruleset_is_the_batch_a_cold_apply_commits() -> None:
    """One renderer: what `cfnft render` prints is what `diff(rs, None)` commits, but for the order of
    elements, which render_ruleset sorts and the diff leaves as the ruleset has them."""
    rs = small_ruleset()
    cold = diff(rs, None).render().splitlines()
    rendered = render_ruleset(rs).splitlines()
    assert cold != rendered and sorted(cold) == sorted(rendered)
    by_key = {name: dict(sorted(e.items(), key=lambda item: key_order(item[0]))) for name, e in rs.elements.items()}
    in_order = Ruleset(TABLE, rs.chains, rs.rules, rs.sets, by_key)
    assert diff(in_order, None).render() == render_ruleset(rs) == render_ruleset(in_order)


def test_render_ruleset_refuses_what_nft_would_refuse() -> None:
    rs = small_ruleset()
    rs.add_rule(Rule("ctr-a", "accept; flush ruleset"))
    with pytest.raises(TransactionError, match="would end the command"):
        render_ruleset(rs)


def test_render_empty_table() -> None:
    assert render_ruleset(Ruleset(TABLE)) == "add table inet cfnft\n"


R1 = Rule("ctr-a", "counter accept", comment="c")
E_SET = Element("asg-web", (one("10.0.0.1"),), comment="x")
E_MAP = Element("ctr-dispatch", (one("10.255.1.2"),), "jump ctr-a")


@pytest.mark.parametrize(
    ("verb", "obj", "text"),
    [
        pytest.param("add", Chain("ctr-a"), "add chain inet cfnft ctr-a", id="chain"),
        pytest.param(
            "add",
            Chain("cfnft-post", ChainType.NAT, Hook.POSTROUTING, 100, Policy.ACCEPT),
            "add chain inet cfnft cfnft-post { type nat hook postrouting priority 100; policy accept; }",
            id="base-chain",
        ),
        pytest.param(
            "add",
            Chain("cfnft-in", ChainType.FILTER, Hook.INPUT, -5),
            "add chain inet cfnft cfnft-in { type filter hook input priority -5; }",
            id="base-chain-no-policy",
        ),
        pytest.param(
            "add",
            Set("asg-web", ("ipv4_addr", "inet_service"), (SetFlag.INTERVAL,), counter=True),
            "add set inet cfnft asg-web { type ipv4_addr . inet_service; flags interval; counter; }",
            id="set",
        ),
        pytest.param(
            "add",
            Map("ctr-dispatch", ("ipv4_addr",)),
            "add map inet cfnft ctr-dispatch { type ipv4_addr : verdict; }",
            id="map",
        ),
        pytest.param("add", R1, f'add rule inet cfnft ctr-a counter accept comment "c [{R1.fingerprint}]"', id="rule"),
        pytest.param("add", E_SET, 'add element inet cfnft asg-web {\n\t10.0.0.1 comment "x",\n}', id="element"),
        pytest.param(
            "add", E_MAP, "add element inet cfnft ctr-dispatch {\n\t10.255.1.2 : jump ctr-a,\n}", id="map-element"
        ),
        pytest.param(
            "delete", E_MAP, "delete element inet cfnft ctr-dispatch {\n\t10.255.1.2,\n}", id="delete-element"
        ),
        pytest.param(
            "delete", Chain("ctr-a"), "flush chain inet cfnft ctr-a\ndelete chain inet cfnft ctr-a", id="delete-chain"
        ),
        pytest.param("delete", Set("asg-web", ("ipv4_addr",)), "delete set inet cfnft asg-web", id="delete-set"),
        pytest.param("delete", Map("ctr-dispatch", ("ipv4_addr",)), "delete map inet cfnft ctr-dispatch", id="del-map"),
        pytest.param("flush", Chain("ctr-a"), "flush chain inet cfnft ctr-a", id="flush"),
    ],
)
def test_transaction_renders_each_verb(verb: str, obj: object, text: str) -> None:
    """Each verb and object renders to one exact nft command."""
    tx = Transaction(TABLE)
    getattr(tx, verb)(obj)
    assert tx.err is None
    assert tx.render() == text + "\n"


def test_table_verbs() -> None:
    tx = Transaction(TABLE)
    tx.delete_table()
    tx.add_table()
    assert tx.render() == "add table inet cfnft\ndelete table inet cfnft\n"


def test_empty_transaction() -> None:
    tx = Transaction(TABLE)
    assert tx.is_empty
    assert tx.render() == ""


def test_transaction_orders_its_own_batch() -> None:
    """Calls queued in the worst order still render as: table, flushes, element deletions, replaced
    objects, definitions, rules, element additions, removals (sets before chains), table deletion."""
    tx = Transaction(TABLE)
    tx.add(Element("ctr-dispatch", (one("10.255.1.3"),), "jump ctr-b"))
    tx.delete(Chain("ctr-old"))
    tx.delete(Map("old-map", ("ipv4_addr",)))
    tx.add(Rule("ctr-b", "counter accept"))
    tx.delete(Element("ctr-dispatch", (one("10.255.1.2"),)))
    tx.add(Chain("ctr-b"))
    tx.flush(Chain("ctr-a"))
    tx.delete(Set("asg-web", ("ipv4_addr",)))
    tx.add(Set("asg-web", ("ipv4_addr", "inet_service"), (SetFlag.INTERVAL,)))
    tx.add_table()
    fp = Rule("ctr-b", "counter accept").fingerprint
    assert tx.render().splitlines() == [
        "add table inet cfnft",
        "flush chain inet cfnft ctr-old",
        "flush chain inet cfnft ctr-a",
        "delete element inet cfnft ctr-dispatch {",
        "\t10.255.1.2,",
        "}",
        "delete set inet cfnft asg-web",
        "add set inet cfnft asg-web { type ipv4_addr . inet_service; flags interval; }",
        "add chain inet cfnft ctr-b",
        f'add rule inet cfnft ctr-b counter accept comment "[{fp}]"',
        "add element inet cfnft ctr-dispatch {",
        "\t10.255.1.3 : jump ctr-b,",
        "}",
        "delete map inet cfnft old-map",
        "delete chain inet cfnft ctr-old",
    ]


def test_add_then_flush_of_a_new_chain_flushes_after_adding_it() -> None:
    """The knftables idiom add chain + flush chain + add rules works for a chain that may not exist yet."""
    tx = Transaction(TABLE)
    tx.add(Chain("ctr-a"))
    tx.flush(Chain("ctr-a"))
    tx.add(R1)
    assert tx.render().splitlines()[:2] == ["add chain inet cfnft ctr-a", "flush chain inet cfnft ctr-a"]


def test_elements_of_one_set_become_one_command() -> None:
    tx = Transaction(TABLE)
    tx.add(Element("asg-web", (one("10.0.0.1"),)))
    tx.add(Element("asg-other", (one("10.0.0.9"),)))
    tx.add(Element("asg-web", (one("10.0.0.2"),)))
    assert tx.render() == (
        "add element inet cfnft asg-web {\n\t10.0.0.1,\n\t10.0.0.2,\n}\n"
        "add element inet cfnft asg-other {\n\t10.0.0.9,\n}\n"
    )


@pytest.mark.parametrize(
    ("verb", "obj", "message"),
    [
        pytest.param("add", Chain("bad name"), "invalid chain name", id="chain-name"),
        pytest.param("add", Chain("c-1", ChainType.FILTER), "type, hook and priority together", id="half-base"),
        pytest.param("add", Rule("ctr-a", "accept\ndrop"), "one line", id="rule-newline"),
        pytest.param("add", Rule("ctr-a", "accept; flush ruleset"), "would end the command", id="rule-semicolon"),
        pytest.param("add", Rule("ctr-a", "accept # x"), "nft comment", id="rule-hash"),
        pytest.param("add", Rule("ctr-a", 'accept comment "x"'), "pass it as Rule.comment", id="rule-comment"),
        pytest.param("add", Rule("ctr-a", 'log prefix "x accept'), "unbalanced", id="rule-quote"),
        pytest.param("add", Rule("ctr-a", "  "), "empty rule", id="rule-empty"),
        pytest.param("add", Set("asg-x", ("ether_addr",)), "unsupported key datatype", id="set-type"),
        pytest.param("add", Map("ctr-m", ("ipv4_addr",), "ifname"), "unsupported map value type", id="map-value"),
        pytest.param("add", Element("m", (one("10.0.0.1"),), "jump bad name"), "invalid map value", id="value"),
        pytest.param("add", Element("m", ()), "non-empty tuple", id="empty-key"),
    ],
)
def test_invalid_objects_are_refused(verb: str, obj: object, message: str) -> None:
    """An invalid object makes the transaction invalid with an error naming it; render raises it."""
    tx = Transaction(TABLE)
    getattr(tx, verb)(obj)
    assert tx.err is not None
    assert message in str(tx.err)
    assert not tx.is_empty, "refused before its first command is not 'nothing to do'"
    with pytest.raises(TransactionError, match=message):
        tx.render()


def test_element_checked_against_set_added_in_same_transaction() -> None:
    tx = Transaction(TABLE)
    tx.add(Set("asg-plain", ("ipv4_addr",)))
    tx.add(Element("asg-plain", (net("10.0.0.0/8"),)))
    assert tx.err is not None and "needs a set with flags interval" in str(tx.err)
    tx = Transaction(TABLE)
    tx.add(Set("asg-plain", ("ipv4_addr",)))
    tx.add(Element("asg-plain", (one("10.0.0.1"),), "accept"))
    assert tx.err is not None and "map element needs a value" in str(tx.err)


def test_first_error_sticks() -> None:
    """Later calls, valid or not, neither clear nor replace the first error."""
    tx = Transaction(TABLE)
    tx.add(Chain("ctr-a"))
    tx.add(Rule("ctr-a", "accept;"))
    tx.add(Chain("bad name"))
    tx.add(Chain("ctr-b"))
    assert tx.err is not None
    assert "outside quotes" in str(tx.err) and "bad name" not in str(tx.err)
    assert len(tx) == 1


@pytest.mark.parametrize(
    "calls",
    [
        pytest.param([("add", Chain("ctr-a")), ("delete", Chain("ctr-a"))], id="delete-after-add"),
        pytest.param([("delete", Chain("ctr-a")), ("delete", Chain("ctr-a"))], id="delete-twice"),
        pytest.param([("add", Chain("ctr-a")), ("add", Chain("ctr-a", ChainType.FILTER, Hook.INPUT, 0))], id="redef"),
        pytest.param([("delete", Chain("ctr-a")), ("add", R1)], id="rule-in-deleted-chain"),
        pytest.param([("add", R1), ("flush", Chain("ctr-a"))], id="flush-after-rules"),
        pytest.param([("add", E_SET), ("add", E_SET)], id="element-twice"),
        pytest.param([("add", E_SET), ("delete", E_SET)], id="element-delete-after-add"),
        pytest.param([("delete", Set("asg-web", ("ipv4_addr",))), ("add", E_SET)], id="element-in-deleted-set"),
    ],
)
def test_contradictory_calls_are_refused(calls: list[tuple[str, object]]) -> None:
    """Calls whose combined meaning depends on their order are refused rather than reordered."""
    tx = Transaction(TABLE)
    for verb, obj in calls:
        getattr(tx, verb)(obj)
    assert tx.err is not None


def test_identical_definition_twice_is_queued_once() -> None:
    tx = Transaction(TABLE)
    tx.add(Chain("ctr-a"))
    tx.add(Chain("ctr-a"))
    assert tx.err is None and tx.render() == "add chain inet cfnft ctr-a\n"


# --- add_elements: the bulk form of add(element) ---------------------------------------------

PORTS = Set("asg-web", ("ipv4_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True)
DISPATCH = Map("ctr-dispatch", ("ipv4_addr",))
ADD_PORTS = (
    "add set inet cfnft asg-web { type ipv4_addr . inet_proto . inet_service; flags interval; counter; elements = {"
)


def web(cidr: str, port: int, comment: str | None = None) -> Element:
    return Element("asg-web", (net(cidr), IntRange.single(6), IntRange.single(port)), comment=comment)


def test_add_elements_is_add_for_each() -> None:
    """Same batch, same ops, same order as one add() per element, into a set and a map."""
    elements = [web("10.0.0.0/8", 443, "web"), web("192.0.2.0/24", 80), web("198.51.100.7/32", 22)]
    entries = [Element("ctr-dispatch", (one(f"10.255.1.{i}"),), f"jump ctr-{i}", f"app {i}") for i in range(3)]
    one_by_one, bulk = Transaction(TABLE), Transaction(TABLE)
    for tx in (one_by_one, bulk):
        tx.add(PORTS)
        tx.add(DISPATCH)
    for e in elements + entries:
        one_by_one.add(e)
    bulk.add_elements(PORTS, elements[:1])
    bulk.add_elements(DISPATCH, entries)
    bulk.add_elements(PORTS, iter(elements[1:]))
    assert bulk.err is None
    assert bulk.render() == one_by_one.render()
    assert [(op.verb, op.obj) for op in bulk.plan()] == [(op.verb, op.obj) for op in one_by_one.plan()]
    assert len(bulk) == len(one_by_one) == 8
    assert [op.obj for op in bulk.ops][2:] == elements[:1] + entries + elements[1:]


@pytest.mark.parametrize(
    ("target", "element", "message"),
    [
        pytest.param(PORTS, Element("asg-other", web("10.0.0.0/8", 1).key), "given for set 'asg-web'", id="set"),
        pytest.param(PORTS, Element("asg-web", (net("10.0.0.0/8"),)), "has 1 fields", id="arity"),
        pytest.param(
            PORTS,
            Element("asg-web", (net("10.0.0.0/8"), IntRange.single(6), IntRange.single(70000))),
            "out of range 0-65535",
            id="port-range",
        ),
        pytest.param(
            PORTS,
            Element("asg-web", (net("2001:db8::/32"), IntRange.single(6), IntRange.single(80))),
            "IPv6 address in a ipv4_addr field",
            id="family",
        ),
        pytest.param(DISPATCH, Element("ctr-dispatch", (net("10.0.0.0/8"),), "drop"), "flags interval", id="range"),
        pytest.param(DISPATCH, Element("ctr-dispatch", (one("10.0.0.1"),)), "needs a value", id="no-value"),
        pytest.param(DISPATCH, Element("ctr-dispatch", (one("10.0.0.1"),), "jump bad name"), "map value", id="value"),
        pytest.param(PORTS, Element("asg-web", ()), "non-empty tuple", id="empty-key"),
        pytest.param(PORTS, web("10.1.0.0/16", 80), "added twice", id="duplicate"),
    ],
)
def test_add_elements_refuses_what_add_refuses(target: Set | Map, element: Element, message: str) -> None:
    """The first bad element makes the transaction invalid, with the error add() gives, naming it;
    the elements before it were queued, those after it were not."""
    tx = Transaction(TABLE)
    tx.add(target)
    good = web("10.1.0.0/16", 80) if isinstance(target, Set) else Element("ctr-dispatch", (one("10.9.9.9"),), "drop")
    tx.add_elements(target, [good, element, good])
    assert tx.err is not None and message in str(tx.err), tx.err
    assert tx.err.op.obj is element
    assert len(tx) == 2
    with pytest.raises(TransactionError, match=message):
        tx.render()


def test_add_elements_checks_the_set_it_is_given() -> None:
    tx = Transaction(TABLE)
    tx.add(Set("asg-web", ("ipv4_addr",)))
    tx.add_elements(PORTS, [web("10.0.0.0/8", 80)])
    assert tx.err is not None and "added twice with different definitions" in str(tx.err)
    tx = Transaction(TABLE)
    tx.delete(PORTS)
    tx.add_elements(PORTS, [web("10.0.0.0/8", 80)])
    assert tx.err is not None and "deleted in this transaction" in str(tx.err)
    tx = Transaction(TABLE)
    tx.add_elements(Set("asg-x", ("ether_addr",)), [])
    assert tx.err is not None and "unsupported key datatype" in str(tx.err)


def test_elements_of_a_known_set_are_added_with_the_set() -> None:
    """`add set <definition> { elements }` where the transaction knows the set (nft then fetches no
    elements before the commit), `add element` where it does not; deletions always `delete element`."""
    tx = Transaction(TABLE)
    tx.add(Element("asg-other", (one("10.0.0.9"),)))
    tx.add_elements(PORTS, [web("10.0.0.0/8", 80)])
    tx.add(DISPATCH)
    tx.add(Element("ctr-dispatch", (one("10.255.1.2"),), "jump ctr-a"))
    tx.delete(web("192.0.2.0/24", 80))
    assert tx.render().splitlines() == [
        "delete element inet cfnft asg-web {",
        "\t192.0.2.0/24 . 6 . 80,",
        "}",
        "add map inet cfnft ctr-dispatch { type ipv4_addr : verdict; }",
        "add element inet cfnft asg-other {",
        "\t10.0.0.9,",
        "}",
        ADD_PORTS,
        "\t10.0.0.0/8 . 6 . 80,",
        "} }",
        "add map inet cfnft ctr-dispatch { type ipv4_addr : verdict; elements = {",
        "\t10.255.1.2 : jump ctr-a,",
        "} }",
    ]


def test_one_definition_per_set() -> None:
    """add_elements and add must agree on what a set is, in either order."""
    other = Set("asg-web", ("ipv4_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,))
    for calls in (
        [("add_elements", PORTS, [web("10.0.0.0/8", 80)]), ("add", other)],
        [("add_elements", PORTS, [web("10.0.0.0/8", 80)]), ("add_elements", other, [web("10.1.0.0/16", 80)])],
        [("add", other), ("add_elements", PORTS, [web("10.0.0.0/8", 80)])],
    ):
        tx = Transaction(TABLE)
        for name, *args in calls:
            getattr(tx, name)(*args)
        assert tx.err is not None and "different definitions" in str(tx.err), calls


def test_add_elements_then_add_or_delete_the_same_key() -> None:
    """Keys queued in bulk count for later single calls: a second add and a delete after the add are refused."""
    for verb in ("add", "delete"):
        tx = Transaction(TABLE)
        tx.add_elements(PORTS, [web("10.0.0.0/8", 80)])
        getattr(tx, verb)(web("10.0.0.0/8", 80))
        assert tx.err is not None and "added" in str(tx.err)


# --- the rendered batch is kept until something new is queued --------------------------------


def test_render_is_kept_until_the_next_call() -> None:
    tx = Transaction(TABLE)
    tx.add(Chain("ctr-a"))
    first = tx.render()
    assert tx.render() is first
    lines = tx.render_lines()
    assert tx.render_lines() is lines
    tx.add(R1)
    assert tx.render() != first and tx.render().endswith(rule_comment(R1) + '"\n')
    tx.add_elements(PORTS, [web("10.0.0.0/8", 80)])
    assert "\t10.0.0.0/8 . 6 . 80," in tx.render()
    assert tx.render() == "".join(text + "\n" for text, _ in tx.render_lines())
    tx.add(Rule("ctr-a", "accept;"))
    with pytest.raises(TransactionError):
        tx.render()


def test_render_lines_pair_each_line_with_its_operation() -> None:
    tx = Transaction(TABLE)
    tx.add_table()
    tx.add(PORTS)
    tx.add_elements(PORTS, [web("10.0.0.0/8", 80), web("192.0.2.0/24", 443)])
    tx.delete(Element("asg-old", (one("10.0.0.1"),)))
    lines = tx.render_lines()
    assert "".join(text + "\n" for text, _ in lines) == tx.render()
    assert [op.obj if op else None for _, op in lines] == [
        TABLE,
        None,
        Element("asg-old", (one("10.0.0.1"),)),
        None,
        PORTS,
        PORTS,  # the `add set ... { elements = {` line
        web("10.0.0.0/8", 80),
        web("192.0.2.0/24", 443),
        None,
    ]


# --- recreate_table: the whole table replaced in one commit ----------------------------------


def test_recreate_table_deletes_first() -> None:
    """add + delete + add table, then the transaction's usual order; also when called first."""
    for call_first in (False, True):
        tx = Transaction(TABLE)
        if call_first:
            tx.recreate_table()
        tx.add(PORTS)
        tx.add(Chain("ctr-a"))
        tx.add(R1)
        tx.add_elements(PORTS, [web("10.0.0.0/8", 80)])
        if not call_first:
            tx.recreate_table()
        assert tx.err is None and tx.recreates_table
        assert tx.render().splitlines() == [
            "add table inet cfnft",
            "delete table inet cfnft",
            "add table inet cfnft",
            "add set inet cfnft asg-web { type ipv4_addr . inet_proto . inet_service; flags interval; counter; }",
            "add chain inet cfnft ctr-a",
            f'add rule inet cfnft ctr-a {R1.text} comment "{rule_comment(R1)}"',
            ADD_PORTS,
            "\t10.0.0.0/8 . 6 . 80,",
            "} }",
        ]


def test_recreate_table_alone_leaves_an_empty_table() -> None:
    tx = Transaction(TABLE)
    tx.recreate_table()
    tx.recreate_table()
    assert not tx.is_empty
    assert tx.render() == "add table inet cfnft\ndelete table inet cfnft\nadd table inet cfnft\n"


@pytest.mark.parametrize(
    "calls",
    [
        pytest.param([("delete", Chain("ctr-a")), ("recreate_table",)], id="delete-before"),
        pytest.param([("recreate_table",), ("delete", Chain("ctr-a"))], id="delete-after"),
        pytest.param([("recreate_table",), ("delete", Element("asg-web", (one("10.0.0.1"),)))], id="element-after"),
        pytest.param([("delete_table",), ("recreate_table",)], id="delete-table-before"),
        pytest.param([("recreate_table",), ("delete_table",)], id="delete-table-after"),
    ],
)
def test_recreate_table_refuses_deletions(calls: list[tuple]) -> None:
    """A re-created table starts empty: a deletion in the same transaction is a mistake."""
    tx = Transaction(TABLE)
    for name, *args in calls:
        getattr(tx, name)(*args)
    assert tx.err is not None and "re-created" in str(tx.err)


def test_key_fields_are_values() -> None:
    """Equal by family and numbers (whatever objects hold them), usable as dict keys, and never
    equal across families or kinds."""
    a, b = net("10.0.0.0/24"), span("10.0.0.0", "10.0.0.255")
    assert a == b and hash(a) == hash(b) and {(a,): 1}[(b,)] == 1
    assert a != net("10.0.0.0/25") and a != span("10.0.0.1", "10.0.0.255")
    assert one("0.0.0.1") != one("::1") and one("::1") == AddrRange.single(ip_address("0::1"))
    assert IntRange(80, 443) == IntRange(80, 443) and hash(IntRange(80, 443)) == hash(IntRange(80, 443))
    assert IntRange(80, 443) != IntRange(80, 444) and IntRange(1, 1) != one("0.0.0.1")
    assert a.bounds == (4, 0x0A000000, 0x0A0000FF)
    with pytest.raises(ValueError, match="start after end"):
        span("10.0.0.2", "10.0.0.1")
