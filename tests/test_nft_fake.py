"""FakeNft refuses what the kernel refuses, commits all or nothing, and injects failures on request.

The same refusals are checked against the real kernel in test_nft_kernel.py
(test_fake_refuses_like_the_kernel), so these expectations are the kernel's, not the fake's.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from nft import (
    AddrRange,
    Chain,
    ChainType,
    Counter,
    Element,
    FakeNft,
    Family,
    Hook,
    IntRange,
    Map,
    NftError,
    Policy,
    Rule,
    Ruleset,
    Set,
    SetFlag,
    Table,
    Transaction,
    TransactionError,
    diff,
    render_ruleset,
)

TABLE = Table(Family.INET, "cfnft")
FORWARD = Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 5, Policy.ACCEPT)
PORTS = Set("asg-ports", ("ipv4_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True)
NETS = Set("asg-nets", ("ipv4_addr",), (SetFlag.INTERVAL,))
PLAIN = Set("asg-plain", ("ipv4_addr",))
DISPATCH = Map("ctr-dispatch", ("ipv4_addr",))


def net(text: str) -> AddrRange:
    n = ip_network(text)
    return AddrRange(n.network_address, n.broadcast_address)


def one(text: str) -> AddrRange:
    return AddrRange.single(ip_address(text))


def ruleset() -> Ruleset:
    rs = Ruleset(TABLE)
    rs.add_chain(FORWARD)
    rs.add_chain(Chain("ctr-a"))
    for s in (PORTS, NETS, PLAIN, DISPATCH):
        rs.add_set(s)
    rs.add_element(Element("asg-ports", (net("10.0.0.0/8"), IntRange.single(6), IntRange(80, 443)), comment="web"))
    rs.add_element(Element("asg-nets", (net("192.0.2.0/24"),)))
    rs.add_element(Element("asg-plain", (one("198.51.100.7"),)))
    rs.add_element(Element("ctr-dispatch", (one("10.255.1.2"),), "jump ctr-a", "app a"))
    rs.add_rule(Rule("cfnft-forward", "ip saddr vmap @ctr-dispatch"))
    rs.add_rule(Rule("ctr-a", "ip daddr . meta l4proto . th dport @asg-ports counter accept", "app a"))
    rs.add_rule(Rule("ctr-a", "ip daddr @asg-nets accept"))
    rs.add_rule(Rule("ctr-a", "counter reject"))
    return rs


@pytest.fixture
def fake() -> FakeNft:
    f = FakeNft()
    f.apply(diff(ruleset(), None))
    return f


def tx_of(*ops: tuple[str, object]) -> Transaction:
    tx = Transaction(TABLE)
    for verb, obj in ops:
        getattr(tx, verb)(obj)
    return tx


def test_dump_is_the_rendered_ruleset(fake: FakeNft) -> None:
    assert fake.dump() == render_ruleset(ruleset())
    assert FakeNft().dump() == ""


def test_read_back_is_listed_and_diffs_empty(fake: FakeNft) -> None:
    """Read rules carry handles and the fingerprint from their comment, like the kernel's."""
    rs = fake.read(TABLE)
    assert rs is not None
    rules = rs.rules["ctr-a"]
    assert all(r.is_listed for r in rules) and len({r.handle for r in rules}) == len(rules)
    assert [r.kernel_fingerprint for r in rules] == [r.fingerprint for r in ruleset().rules["ctr-a"]]
    assert diff(ruleset(), rs).is_empty
    assert fake.read(Table(Family.INET, "other")) is None


# Each case: the transaction, whether nft would call it not_found / exists, and the batch line it blames.
REFUSED = [
    pytest.param(tx_of(("add", Rule("ctr-a", "jump ctr-missing"))), "not_found", "jump ctr-missing", id="jump"),
    pytest.param(tx_of(("add", Rule("ctr-a", "goto ctr-missing"))), "not_found", "goto ctr-missing", id="goto"),
    pytest.param(tx_of(("add", Rule("ctr-a", "ip daddr @asg-missing accept"))), "not_found", "@asg-missing", id="set"),
    pytest.param(tx_of(("add", Rule("ctr-missing", "accept"))), "not_found", "ctr-missing", id="rule-in-missing"),
    pytest.param(
        tx_of(("add", Element("ctr-dispatch", (one("10.255.1.9"),), "jump ctr-missing"))),
        "not_found",
        "10.255.1.9",
        id="vmap-target",
    ),
    pytest.param(
        tx_of(("add", Element("ctr-dispatch", (one("10.255.1.9"),), "jump cfnft-forward"))),
        None,
        "10.255.1.9",
        id="jump-to-base-chain",
    ),
    pytest.param(tx_of(("delete", Chain("ctr-missing"))), "not_found", "ctr-missing", id="delete-missing-chain"),
    pytest.param(tx_of(("delete", Set("asg-missing", ("ipv4_addr",)))), "not_found", "asg-missing", id="del-set"),
    pytest.param(tx_of(("flush", Chain("ctr-missing"))), "not_found", "ctr-missing", id="flush-missing"),
    pytest.param(
        tx_of(("delete", Element("asg-plain", (one("198.51.100.8"),)))), "not_found", "198.51.100.8", id="del-elem"
    ),
    pytest.param(tx_of(("delete", NETS)), None, "delete set inet cfnft asg-nets", id="set-in-use"),
    pytest.param(tx_of(("delete", Chain("ctr-a"))), None, "delete chain inet cfnft ctr-a", id="chain-in-use"),
    pytest.param(
        tx_of(("add", Set("asg-plain", ("ipv4_addr",), (SetFlag.INTERVAL,)))), "exists", "asg-plain", id="set-redef"
    ),
    pytest.param(
        tx_of(("add", Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 7, Policy.ACCEPT))),
        None,
        "cfnft-forward",
        id="base-chain-prio",
    ),
    pytest.param(
        tx_of(("add", Element("ctr-dispatch", (one("10.255.1.2"),), "drop"))), "exists", "10.255.1.2", id="map-value"
    ),
    pytest.param(
        tx_of(("add", Element("asg-nets", (one("192.0.2.7"),)))), None, "192.0.2.7", id="overlap-single-field"
    ),
    pytest.param(
        tx_of(("add", Element("asg-ports", (net("10.1.0.0/16"), IntRange.single(6), IntRange.single(80))))),
        "exists",
        "10.1.0.0/16 . 6 . 80",
        id="overlap-concat",
    ),
    pytest.param(
        tx_of(
            ("add", Element("asg-nets", (net("203.0.113.0/24"),))),
            ("add", Element("asg-nets", (net("203.0.113.128/25"),))),
        ),
        None,
        "203.0.113",
        id="overlap-within-batch",
    ),
    pytest.param(
        tx_of(("add", Element("asg-plain", (net("203.0.113.0/24"),)))), None, "203.0.113.0/24", id="range-no-interval"
    ),
]


def bulk(s: Set | Map, *elements: Element) -> Transaction:
    """Elements added with the set's definition: the `add set ... { elements = ... }` form."""
    tx = Transaction(TABLE)
    tx.add_elements(s, elements)
    return tx


# As REFUSED, for elements added in the `add set` form, whose checks against the set's existing
# elements the kernel makes (nft fetched none).
REFUSED_SET_FORM = [
    pytest.param(bulk(NETS, Element("asg-nets", (one("192.0.2.7"),))), "exists", "192.0.2.7", id="set-form-overlap"),
    pytest.param(
        bulk(PORTS, Element("asg-ports", (net("10.1.0.0/16"), IntRange.single(6), IntRange.single(80)))),
        "exists",
        "10.1.0.0/16 . 6 . 80",
        id="set-form-overlap-concat",
    ),
    pytest.param(
        bulk(DISPATCH, Element("ctr-dispatch", (one("10.255.1.2"),), "drop")),
        "exists",
        "10.255.1.2",
        id="set-form-value",
    ),
    pytest.param(
        bulk(NETS, Element("asg-nets", (net("203.0.113.0/24"),)), Element("asg-nets", (net("203.0.113.128/25"),))),
        None,
        "203.0.113.128/25",
        id="set-form-overlap-within",
    ),
    pytest.param(
        bulk(
            Set("asg-nets", ("ipv4_addr",), (SetFlag.INTERVAL,), counter=True), Element("asg-nets", (one("10.9.9.9"),))
        ),
        "exists",
        "add set inet cfnft asg-nets",
        id="set-form-other-definition",
    ),
]


@pytest.mark.parametrize(("tx", "kind", "blamed"), REFUSED_SET_FORM)
def test_refused_set_form(fake: FakeNft, tx: Transaction, kind: str | None, blamed: str) -> None:
    before = fake.dump()
    with pytest.raises(NftError) as caught:
        fake.apply(tx)
    error = caught.value
    assert (error.not_found, error.exists) == (False, kind == "exists"), error
    marked = [line for line in error.batch_excerpt.splitlines() if line.startswith(">")]
    assert len(marked) == 1 and blamed in marked[0], error.batch_excerpt
    assert fake.dump() == before


def test_set_form_creates_a_missing_set(fake: FakeNft) -> None:
    """Unlike `add element`, the `add set` form creates the set if it is missing (as nft does)."""
    absent = Set("asg-new", ("ipv4_addr",), (SetFlag.INTERVAL,))
    fake.apply(bulk(absent, Element("asg-new", (net("198.51.100.0/24"),))))
    rs = fake.read(TABLE)
    assert (
        rs is not None and rs.sets["asg-new"] == absent and list(rs.elements["asg-new"]) == [(net("198.51.100.0/24"),)]
    )


@pytest.mark.parametrize(("tx", "kind", "blamed"), REFUSED)
def test_refused_transactions_change_nothing(fake: FakeNft, tx: Transaction, kind: str | None, blamed: str) -> None:
    """A refused transaction raises NftError naming the failing line and leaves the table as it was."""
    before = fake.dump()
    committed = len(fake.transactions)
    valid_first = Transaction(TABLE)
    valid_first.add(Chain("ctr-new"))
    for op in tx.ops:
        getattr(valid_first, op.verb.value)(op.obj)
    with pytest.raises(NftError) as caught:
        fake.apply(valid_first)
    error = caught.value
    assert error.not_found == (kind == "not_found")
    assert error.exists == (kind == "exists")
    marked = [line for line in error.batch_excerpt.splitlines() if line.startswith(">")]
    assert len(marked) == 1 and blamed in marked[0], error.batch_excerpt
    assert blamed in str(error)
    assert fake.dump() == before
    assert len(fake.transactions) == committed


def test_overlap_error_wording(fake: FakeNft) -> None:
    with pytest.raises(NftError, match="interval overlaps with an existing one"):
        fake.apply(tx_of(("add", Element("asg-nets", (one("192.0.2.7"),)))))


def test_adding_an_existing_element_keeps_it(fake: FakeNft) -> None:
    """nft's add leaves an existing element alone, comment included (a comment change needs delete + add)."""
    fake.apply(tx_of(("add", Element("asg-ports", (net("10.0.0.0/8"), IntRange.single(6), IntRange(80, 443)), None))))
    assert fake.dump() == render_ruleset(ruleset())


def test_policy_change_updates_base_chain(fake: FakeNft) -> None:
    fake.apply(tx_of(("add", Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 5, Policy.DROP))))
    rs = fake.read(TABLE)
    assert rs is not None and rs.chains["cfnft-forward"].policy is Policy.DROP


def test_invalid_transaction_raises_its_validation_error(fake: FakeNft) -> None:
    tx = tx_of(("add", Rule("ctr-a", "accept; drop")))
    with pytest.raises(TransactionError):
        fake.apply(tx)
    with pytest.raises(TransactionError):
        fake.check(tx)


def test_check_never_changes_state(fake: FakeNft) -> None:
    before = fake.dump()
    fake.check(tx_of(("add", Chain("ctr-new"))))
    with pytest.raises(NftError):
        fake.check(tx_of(("delete", Chain("ctr-missing"))))
    assert fake.dump() == before
    assert len(fake.transactions) == 1


def test_fail_next_injects_failures_then_recovers(fake: FakeNft) -> None:
    """fail_next(n) fails the next n applies without touching the table; then applies work again."""
    before = fake.dump()
    tx = tx_of(("add", Chain("ctr-new")))
    fake.fail_next(2)
    for _ in range(2):
        with pytest.raises(NftError, match="injected"):
            fake.apply(tx)
        assert fake.dump() == before
    fake.apply(tx)
    assert "add chain inet cfnft ctr-new" in fake.dump()
    assert fake.transactions[-1] is tx

    class Boom(Exception):
        pass

    fake.fail_next(1, Boom("netlink gone"))
    with pytest.raises(Boom):
        fake.apply(tx_of(("add", Chain("ctr-other"))))


def test_empty_transaction_is_not_recorded(fake: FakeNft) -> None:
    fake.apply(Transaction(TABLE))
    assert len(fake.transactions) == 1


def test_delete_table_and_recreate(fake: FakeNft) -> None:
    tx = Transaction(TABLE)
    tx.delete_table()
    fake.apply(tx)
    assert fake.read(TABLE) is None and fake.dump() == ""
    with pytest.raises(NftError) as caught:
        fake.apply(tx)
    assert caught.value.not_found


def test_counters_are_zero_for_every_rule_and_counted_element(fake: FakeNft) -> None:
    counters = fake.read_counters(TABLE)
    assert counters is not None
    fps = [r.fingerprint for r in ruleset().rules["ctr-a"]]
    assert counters.rules[("ctr-a", fps[0])] == Counter(0, 0)
    assert set(counters.elements) == {("asg-ports", k) for k in ruleset().elements["asg-ports"]}


async def test_async_interface(fake: FakeNft) -> None:
    await fake.apply_async(tx_of(("add", Chain("ctr-new"))))
    await fake.check_async(tx_of(("add", Chain("ctr-other"))))
    rs = await fake.read_async(TABLE)
    assert rs is not None and "ctr-new" in rs.chains and "ctr-other" not in rs.chains
    assert await fake.read_counters_async(TABLE) is not None


def test_read_without_elements(fake: FakeNft) -> None:
    """Chains, listed rules and set definitions as a full read has them; every set and map empty."""
    full, structure = fake.read(TABLE), fake.read(TABLE, elements=False)
    assert full is not None and structure is not None
    assert structure.chains == full.chains and structure.rules == full.rules and structure.sets == full.sets
    assert structure.elements == {name: {} for name in full.sets}
    assert any(full.elements.values())
    assert fake.read(Table(Family.INET, "other"), elements=False) is None


def junk_tx() -> Transaction:
    """Foreign objects in our table: a chain, a set of ours with an extra element, a set of another kind."""
    return tx_of(
        ("add", Chain("intruder")),
        ("add", Rule("intruder", "counter accept")),
        ("add", Element("asg-nets", (net("203.0.113.0/24"),))),
        ("add", Set("asg-extra", ("inet_service",))),
        ("add", Element("asg-extra", (IntRange.single(22),))),
        ("add", Rule("ctr-a", "th dport @asg-extra drop")),
    )


def test_recreate_table_replaces_everything(fake: FakeNft) -> None:
    """From a table with foreign junk, and from no table at all, the result is exactly the desired ruleset."""
    fake.apply(junk_tx())
    desired = ruleset()
    desired.rules["ctr-a"].pop()  # and one of our own rules goes too
    tx = diff(desired, None)
    tx.recreate_table()
    fake.apply(tx)
    assert fake.dump() == render_ruleset(desired)
    assert diff(desired, fake.read(TABLE)).is_empty
    empty = FakeNft()
    empty.apply(tx)
    assert empty.dump() == render_ruleset(desired)


def test_failed_recreate_changes_nothing(fake: FakeNft) -> None:
    fake.apply(junk_tx())
    before = fake.dump()
    tx = diff(ruleset(), None)
    tx.add(Rule("ctr-a", "jump ctr-missing"))
    tx.recreate_table()
    with pytest.raises(NftError) as caught:
        fake.apply(tx)
    assert caught.value.not_found
    assert fake.dump() == before
