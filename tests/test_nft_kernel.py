"""nft/ against the real kernel, each test in a network namespace it creates and deletes.

Nothing here reads more of the host than its list of table names, and nothing writes to it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    NamespaceError,
    NftError,
    NftRunner,
    Policy,
    Rule,
    Ruleset,
    Set,
    SetFlag,
    Table,
    Transaction,
    diff,
    same_structure,
)
from nft.render import clean_comment
from tests.test_nft_fake import REFUSED, REFUSED_SET_FORM
from tests.test_nft_fake import ruleset as fake_reference_ruleset

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft"),
]

TABLE = Table(Family.INET, "cfnft")


def make_netns() -> str:
    name = f"cfnft-test-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    name = make_netns()
    try:
        yield name
    finally:
        delete_netns(name)


@pytest.fixture
def runner(netns: str) -> Iterator[NftRunner]:
    with NftRunner(netns) as r:
        yield r


def nft_in(netns: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args], input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout


def listing(netns: str) -> str:
    return nft_in(netns, "-a", "list", "ruleset")


def net(text: str) -> AddrRange:
    n = ip_network(text)
    return AddrRange(n.network_address, n.broadcast_address)


def one(text: str) -> AddrRange:
    return AddrRange.single(ip_address(text))


def span(a: str, b: str) -> AddrRange:
    return AddrRange(ip_address(a), ip_address(b))


def ports(lo: int, hi: int | None = None) -> IntRange:
    return IntRange(lo, lo if hi is None else hi)


def rich_ruleset() -> Ruleset:
    """Base chains (filter and nat), a verdict map with comments, concatenated interval sets with
    counters for IPv4 and IPv6, ICMP and ICMPv6 sets, a plain port set, and jumps between chains."""
    rs = Ruleset(TABLE)
    rs.add_chain(Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, 5, Policy.ACCEPT))
    rs.add_chain(Chain("cfnft-input", ChainType.FILTER, Hook.INPUT, -5, Policy.ACCEPT))
    rs.add_chain(Chain("cfnft-postrouting", ChainType.NAT, Hook.POSTROUTING, 100, Policy.ACCEPT))
    for name in ("ctr-a", "ctr-b", "asg-shared"):
        rs.add_chain(Chain(name))
    v4 = ("ipv4_addr", "inet_proto", "inet_service")
    rs.add_set(Set("asg-ports", v4, (SetFlag.INTERVAL,), counter=True))
    rs.add_set(Set("asg-ports6", ("ipv6_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True))
    rs.add_set(Set("asg-icmp", ("ipv4_addr", "icmp_type", "icmp_code"), (SetFlag.INTERVAL,)))
    rs.add_set(Set("asg-icmp6", ("ipv6_addr", "icmpv6_type", "icmpv6_code"), (SetFlag.INTERVAL,)))
    rs.add_set(Set("deny-always", ("ipv4_addr",), (SetFlag.INTERVAL,)))
    rs.add_set(Set("host-ports", ("inet_service",)))
    rs.add_set(Map("ctr-dispatch", ("ipv4_addr",)))
    for key, comment in [
        ((net("10.0.0.0/8"), ports(6), ports(80, 443)), 'web "prod" ü'),
        ((one("192.0.2.1"), ports(6), ports(53)), None),
        ((span("192.0.2.5", "192.0.2.9"), ports(17), ports(0, 65535)), "udp range"),
        ((net("0.0.0.0/0"), ports(132), ports(9)), None),
    ]:
        rs.add_element(Element("asg-ports", key, comment=comment))
    rs.add_element(Element("asg-ports6", (net("2001:db8::/32"), ports(6), ports(443))))
    rs.add_element(Element("asg-ports6", (span("2001:db9::1", "2001:db9::5"), ports(17), ports(53))))
    rs.add_element(Element("asg-icmp", (net("10.0.0.0/8"), ports(0, 255), ports(0, 255)), comment="any icmp"))
    rs.add_element(Element("asg-icmp", (one("192.0.2.1"), ports(8), ports(0))))
    rs.add_element(Element("asg-icmp", (one("192.0.2.2"), ports(3), ports(0, 4))))
    rs.add_element(Element("asg-icmp6", (net("2001:db8::/32"), ports(128), ports(0))))
    rs.add_element(Element("asg-icmp6", (one("::1"), ports(1), ports(4))))
    rs.add_element(Element("deny-always", (net("169.254.0.0/16"),)))
    rs.add_element(Element("deny-always", (net("10.0.0.0/25"),)))
    rs.add_element(Element("deny-always", (net("10.0.0.128/25"),)))  # adjacent: stays two elements
    rs.add_element(Element("host-ports", (ports(53),), comment="dns"))
    rs.add_element(Element("host-ports", (ports(8080),)))
    rs.add_element(Element("ctr-dispatch", (one("10.255.1.2"),), "jump ctr-a", "app a space s"))
    rs.add_element(Element("ctr-dispatch", (one("10.255.1.3"),), "goto ctr-b", "app b"))
    rs.add_element(Element("ctr-dispatch", (one("10.255.1.4"),), "drop"))
    rules = [
        ("cfnft-forward", "ct state established,related accept", "return traffic"),
        ("cfnft-forward", "ip saddr vmap @ctr-dispatch", None),
        ("cfnft-forward", "ip saddr 10.255.0.0/16 counter reject", "fail closed"),
        ("cfnft-input", 'iifname "lo" accept', None),
        ("cfnft-input", "ip saddr 10.255.0.0/16 th dport @host-ports accept", "host services"),
        ("cfnft-postrouting", 'ip saddr 10.255.0.0/16 oifname != "lo" masquerade', None),
        ("ctr-a", "ip daddr @deny-always counter reject", "deny"),
        ("ctr-a", "jump asg-shared", None),
        ("ctr-a", 'limit rate 1/second log prefix "cfnft-deny: " counter reject', "x" * 200),
        ("asg-shared", "ip daddr . meta l4proto . th dport @asg-ports counter accept", "asg shared"),
        ("asg-shared", "ip6 daddr . meta l4proto . th dport @asg-ports6 counter accept", None),
        ("asg-shared", "ip daddr . icmp type . icmp code @asg-icmp counter accept", None),
        ("asg-shared", "ip6 daddr . icmpv6 type . icmpv6 code @asg-icmp6 accept", None),
        ("ctr-b", "counter reject with icmpx type admin-prohibited", 'app "b"'),
    ]
    for chain, text, comment in rules:
        rs.add_rule(Rule(chain, text, comment))
    return rs


def copy_ruleset(rs: Ruleset) -> Ruleset:
    return Ruleset(
        rs.table,
        dict(rs.chains),
        {k: list(v) for k, v in rs.rules.items()},
        dict(rs.sets),
        {k: dict(v) for k, v in rs.elements.items()},
    )


def as_kernel_keeps(elements: dict[str, dict[tuple, Element]]) -> dict[str, dict[tuple, Element]]:
    """Elements with their comments as the kernel keeps them (cleaned, cut to 128 bytes)."""
    return {
        name: {k: Element(e.set, e.key, e.value, clean_comment(e.comment)) for k, e in by_key.items()}
        for name, by_key in elements.items()
    }


def assert_converged(runner: NftRunner, desired: Ruleset) -> Ruleset:
    actual = runner.read(TABLE)
    assert actual is not None
    leftover = diff(desired, actual)
    assert leftover.is_empty, leftover.render()
    assert actual.chains == desired.chains
    assert actual.sets.keys() == desired.sets.keys()
    return actual


def test_apply_read_back_is_idempotent(runner: NftRunner, netns: str) -> None:
    """A rich ruleset applies in one transaction, reads back equal, and a second diff is empty."""
    desired = rich_ruleset()
    assert runner.read(TABLE) is None
    runner.apply(diff(desired, None))
    actual = assert_converged(runner, desired)
    for name, elements in desired.elements.items():
        assert actual.elements[name].keys() == elements.keys(), name
    assert actual.elements["ctr-dispatch"][(one("10.255.1.2"),)].comment == "app a space s"
    assert actual.elements["asg-ports"][(net("10.0.0.0/8"), ports(6), ports(80, 443))].comment == "web 'prod' ü"
    before = listing(netns)
    runner.apply(diff(desired, actual))
    assert listing(netns) == before


def test_mutations_converge(runner: NftRunner) -> None:
    """Element, rule, set and chain changes each converge in one transaction."""
    desired = rich_ruleset()
    runner.apply(diff(desired, None))

    desired = copy_ruleset(desired)
    # An element changes its ports; a vmap element changes its verdict; a comment changes.
    del desired.elements["asg-ports"][(one("192.0.2.1"), ports(6), ports(53))]
    desired.add_element(Element("asg-ports", (one("192.0.2.1"), ports(6), ports(853))))
    desired.add_element(Element("ctr-dispatch", (one("10.255.1.4"),), "jump ctr-a", "now a"))
    desired.add_element(Element("host-ports", (ports(53),), comment="dns renamed"))
    # A rule changes; a chain referenced by a vmap element goes away with its element.
    desired.rules["ctr-a"][0] = Rule("ctr-a", "ip daddr @deny-always counter drop", "deny")
    del desired.chains["ctr-b"], desired.rules["ctr-b"]
    del desired.elements["ctr-dispatch"][(one("10.255.1.3"),)]
    # A set goes away (and the rule using it); another changes its definition under an unchanged rule.
    del desired.sets["asg-icmp6"], desired.elements["asg-icmp6"]
    desired.rules["asg-shared"] = [r for r in desired.rules["asg-shared"] if "@asg-icmp6" not in r.text]
    desired.sets["deny-always"] = Set("deny-always", ("ipv4_addr",), (SetFlag.INTERVAL,), counter=True)
    # A base chain changes priority.
    desired.chains["cfnft-input"] = Chain("cfnft-input", ChainType.FILTER, Hook.INPUT, 10, Policy.ACCEPT)
    actual = runner.read(TABLE)
    tx = diff(desired, actual)
    runner.check(tx)
    runner.apply(tx)
    converged = assert_converged(runner, desired)
    assert converged.elements == as_kernel_keeps(desired.elements)
    assert [r.kernel_fingerprint for r in converged.rules["ctr-a"]] == [r.fingerprint for r in desired.rules["ctr-a"]]


def test_rule_deleted_from_outside_is_repaired(runner: NftRunner, netns: str) -> None:
    desired = rich_ruleset()
    runner.apply(diff(desired, None))
    listed = nft_in(netns, "-a", "list", "chain", "inet", "cfnft", "asg-shared")
    handle = re.search(r"@asg-icmp counter.* # handle (\d+)", listed)
    assert handle is not None
    nft_in(netns, "delete", "rule", "inet", "cfnft", "asg-shared", "handle", handle.group(1))
    repair = diff(desired, runner.read(TABLE))
    assert repair.render().startswith("flush chain inet cfnft asg-shared\n")
    runner.apply(repair)
    assert_converged(runner, desired)


def test_foreign_objects_are_removed(runner: NftRunner, netns: str) -> None:
    """Chains, rules, elements and sets (even of datatypes nft/ does not model) added by hand go away."""
    desired = rich_ruleset()
    runner.apply(diff(desired, None))
    nft_in(netns, "add", "chain", "inet", "cfnft", "intruder")
    nft_in(netns, "add", "rule", "inet", "cfnft", "ctr-a", "accept")
    nft_in(netns, "add", "element", "inet", "cfnft", "deny-always", "{ 203.0.113.0/24 }")
    nft_in(netns, "add", "set", "inet", "cfnft", "macs", "{ type ether_addr; elements = { 02:00:00:00:00:01 }; }")
    nft_in(netns, "add", "chain", "inet", "cfnft", "noted", '{ comment "by hand"; }')
    nft_in(netns, "add", "rule", "inet", "cfnft", "noted", "ether saddr @macs drop")
    runner.apply(diff(desired, runner.read(TABLE)))
    actual = assert_converged(runner, desired)
    assert actual.elements == as_kernel_keeps(desired.elements)


def test_invalid_transaction_changes_nothing(runner: NftRunner, netns: str) -> None:
    """One bad operation among valid ones: NftError pointing at it, and the kernel exactly as before."""
    runner.apply(diff(rich_ruleset(), None))
    before = listing(netns)
    for bad in (Rule("ctr-a", "jump ctr-missing"), Element("deny-always", (one("169.254.1.1"),))):
        tx = Transaction(TABLE)
        tx.add(Chain("ctr-new"))
        tx.add(Rule("ctr-new", "counter accept"))
        tx.add(Element("asg-ports", (one("203.0.113.9"), ports(6), ports(22))))
        tx.delete(Element("host-ports", (ports(8080),)))
        tx.add(bad)
        with pytest.raises(NftError) as caught:
            runner.apply(tx)
        marked = [line for line in caught.value.batch_excerpt.splitlines() if line.startswith(">")]
        assert len(marked) == 1
        assert ("ctr-missing" in marked[0]) or ("169.254.1.1" in marked[0])
        assert listing(netns) == before


def test_check_never_changes_the_kernel(runner: NftRunner, netns: str) -> None:
    runner.check(diff(rich_ruleset(), None))
    assert runner.read(TABLE) is None
    runner.apply(diff(rich_ruleset(), None))
    before = listing(netns)
    runner.check(diff(Ruleset(TABLE), runner.read(TABLE)))  # would remove everything
    tx = Transaction(TABLE)
    tx.delete(Element("deny-always", (one("203.0.113.1"),)))
    with pytest.raises(NftError) as caught:
        runner.check(tx)
    assert caught.value.not_found
    assert "nft check failed" in str(caught.value)
    assert listing(netns) == before


def test_check_then_apply_on_one_runner(runner: NftRunner) -> None:
    """A dry run leaves nothing behind in libnftables' cache that would make the real apply fail
    (nft 1.0.6 would report the set's own elements as overlapping)."""
    desired = rich_ruleset()
    runner.check(diff(desired, None))
    runner.apply(diff(desired, None))
    bad = diff(desired, None)  # everything again, and the table's rules twice: refused below
    bad.add(Rule("ctr-a", "jump ctr-missing"))
    with pytest.raises(NftError):
        runner.apply(bad)
    tx = Transaction(TABLE)
    tx.add(Element("deny-always", (net("203.0.113.0/24"),)))
    runner.apply(tx)
    assert (net("203.0.113.0/24"),) in runner.read(TABLE).elements["deny-always"]  # type: ignore[union-attr]


def test_runner_acts_only_inside_its_namespace(runner: NftRunner, netns: str) -> None:
    """The table appears in the namespace and not on the host; the calling thread stays on the host."""
    host_before = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    own_netns = os.readlink("/proc/thread-self/ns/net")
    runner.apply(diff(rich_ruleset(), None))
    assert "table inet cfnft" in nft_in(netns, "list", "tables")
    assert runner.list_tables() == ["inet cfnft"]
    host_after = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert host_after == host_before
    assert os.readlink("/proc/thread-self/ns/net") == own_netns


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(NamespaceError, match="cfnft-test-does-not-exist"):
        NftRunner("cfnft-test-does-not-exist")


async def test_async_methods(runner: NftRunner) -> None:
    desired = rich_ruleset()
    await runner.check_async(diff(desired, None))
    await runner.apply_async(diff(desired, None))
    actual = await runner.read_async(TABLE)
    assert actual is not None and diff(desired, actual).is_empty
    assert await runner.read_counters_async(TABLE) is not None


def test_counters_count_real_packets(runner: NftRunner, netns: str) -> None:
    """Per-rule and per-element counters read back after pings inside the namespace."""
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    rs = Ruleset(TABLE)
    rs.add_chain(Chain("cfnft-output", ChainType.FILTER, Hook.OUTPUT, 0, Policy.ACCEPT))
    rs.add_set(Set("ping-dst", ("ipv4_addr", "icmp_type", "icmp_code"), (SetFlag.INTERVAL,), counter=True))
    echo = (net("127.0.0.0/8"), ports(8), ports(0))
    rs.add_element(Element("ping-dst", echo))
    rs.add_element(Element("ping-dst", (net("127.0.0.0/8"), ports(0), ports(0))))
    rule = Rule("cfnft-output", "ip daddr . icmp type . icmp code @ping-dst counter accept", "pings")
    rs.add_rule(rule)
    runner.apply(diff(rs, None))
    subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "127.0.0.1"],
        check=True,
        capture_output=True,
    )
    counters = runner.read_counters(TABLE)
    assert counters is not None
    assert counters.elements[("ping-dst", echo)].packets == 3
    assert counters.elements[("ping-dst", echo)].bytes > 0
    assert counters.rules[("cfnft-output", rule.fingerprint)].packets == 6  # requests and replies
    assert diff(rs, runner.read(TABLE)).is_empty  # counters never make a diff


def test_fake_dump_loads_with_nft_f(runner: NftRunner, netns: str) -> None:
    """FakeNft.dump() is text `nft -f` accepts, and it loads the same ruleset."""
    fake = FakeNft()
    fake.apply(diff(rich_ruleset(), None))
    nft_in(netns, "-f", "-", stdin=fake.dump())
    assert_converged(runner, rich_ruleset())


@pytest.mark.parametrize(("tx", "kind", "blamed"), REFUSED + REFUSED_SET_FORM)
def test_fake_refuses_like_the_kernel(
    runner: NftRunner, netns: str, tx: Transaction, kind: str | None, blamed: str
) -> None:
    """Each refusal FakeNft is tested for is also the kernel's, with the same not_found/exists and line."""
    runner.apply(diff(fake_reference_ruleset(), None))
    before = listing(netns)
    with pytest.raises(NftError) as caught:
        runner.apply(tx)
    error = caught.value
    assert (error.not_found, error.exists) == (kind == "not_found", kind == "exists"), error.stderr
    marked = [line for line in error.batch_excerpt.splitlines() if line.startswith(">")]
    assert len(marked) == 1 and blamed in marked[0], error.batch_excerpt
    assert listing(netns) == before


# Property: random small rulesets, applied one after another in one namespace, always converge.

SET_TYPES = [
    ("ipv4_addr",),
    ("ipv6_addr",),
    ("inet_service",),
    ("ipv4_addr", "inet_proto", "inet_service"),
    ("ipv6_addr", "inet_proto", "inet_service"),
    ("ipv4_addr", "icmp_type", "icmp_code"),
    ("ipv6_addr", "icmpv6_type", "icmpv6_code"),
]
COMMENTS = st.one_of(st.none(), st.text(alphabet='ab "ü\t,:}{#;', max_size=12), st.just("z" * 150))


@st.composite
def key_fields(draw: st.DrawFn, types: tuple[str, ...], slot: int, interval: bool) -> tuple:
    """A key whose first field lies in block `slot`, so keys with different slots never overlap."""
    fields = []
    for index, type_name in enumerate(types):
        if type_name in ("ipv4_addr", "ipv6_addr"):
            cls, bits = (IPv4Address, 32) if type_name == "ipv4_addr" else (IPv6Address, 128)
            block = 16 if index == 0 else draw(st.integers(0, 4))
            start = (slot << (bits - 8)) if index == 0 else draw(st.integers(0, 2**bits - 1)) & ~((1 << block) - 1)
            size = 1 << block
            if not interval:
                fields.append(AddrRange.single(cls(start + draw(st.integers(0, size - 1)))))
                continue
            lo = draw(st.integers(0, size - 1))
            hi = draw(st.integers(lo, size - 1))
            fields.append(AddrRange(cls(start + lo), cls(start + hi)))
        else:
            top = 65535 if type_name == "inet_service" else 255
            if index == 0:
                fields.append(IntRange.single(slot) if not interval else IntRange(slot * 100, slot * 100 + 50))
                continue
            lo = draw(st.integers(0, top))
            hi = draw(st.integers(lo, top)) if interval else lo
            fields.append(IntRange(lo, hi))
    return tuple(fields)


@st.composite
def rulesets(draw: st.DrawFn) -> Ruleset:
    rs = Ruleset(TABLE)
    chain_count = draw(st.integers(0, 4))
    chains = [f"ctr-{i}" for i in range(chain_count)]
    for name in chains:
        rs.add_chain(Chain(name))
    sets: list[Set] = []
    for i in range(draw(st.integers(0, 4))):
        types = draw(st.sampled_from(SET_TYPES))
        interval = len(types) > 1 or draw(st.booleans())
        s = Set(f"asg-{i}", types, (SetFlag.INTERVAL,) if interval else (), counter=draw(st.booleans()))
        rs.add_set(s)
        sets.append(s)
        for slot in draw(st.sets(st.integers(1, 40), max_size=6)):
            rs.add_element(Element(s.name, draw(key_fields(types, slot, interval)), comment=draw(COMMENTS)))
    if chains and draw(st.booleans()):
        rs.add_set(Map("ctr-dispatch", ("ipv4_addr",)))
        for i in draw(st.sets(st.integers(1, 250), max_size=5)):
            verdict = draw(st.sampled_from([f"jump {c}" for c in chains] + [f"goto {c}" for c in chains] + ["drop"]))
            key = (AddrRange.single(IPv4Address(f"10.255.0.{i}")),)
            rs.add_element(Element("ctr-dispatch", key, verdict, draw(COMMENTS)))
        rs.add_chain(Chain("cfnft-forward", ChainType.FILTER, Hook.FORWARD, draw(st.integers(-10, 10)), Policy.ACCEPT))
        rs.add_rule(Rule("cfnft-forward", "ip saddr vmap @ctr-dispatch", draw(COMMENTS)))
    match_of = {
        ("ipv4_addr",): "ip daddr",
        ("ipv6_addr",): "ip6 daddr",
        ("inet_service",): "th dport",
        ("ipv4_addr", "inet_proto", "inet_service"): "ip daddr . meta l4proto . th dport",
        ("ipv6_addr", "inet_proto", "inet_service"): "ip6 daddr . meta l4proto . th dport",
        ("ipv4_addr", "icmp_type", "icmp_code"): "ip daddr . icmp type . icmp code",
        ("ipv6_addr", "icmpv6_type", "icmpv6_code"): "ip6 daddr . icmpv6 type . icmpv6 code",
    }
    for index, name in enumerate(chains):
        options = ["counter accept", "ct state established,related accept", "meta l4proto 6 th dport 22 drop"]
        options += [f"{match_of[s.type]} @{s.name} counter accept" for s in sets]
        options += [f"jump {later}" for later in chains[index + 1 :]]  # no loops
        for text in draw(st.lists(st.sampled_from(options), max_size=4)):
            rs.add_rule(Rule(name, text, draw(COMMENTS)))
    return rs


@pytest.fixture(scope="module")
def shared_runner() -> Iterator[tuple[NftRunner, FakeNft]]:
    """One namespace for all examples, and a FakeNft that receives the same transactions."""
    name = make_netns()
    try:
        with NftRunner(name) as r:
            yield r, FakeNft()
    finally:
        delete_netns(name)


@settings(max_examples=25, deadline=None)
@given(desired=rulesets())
def test_random_rulesets_converge(shared_runner: tuple[NftRunner, FakeNft], desired: Ruleset) -> None:
    """From whatever the previous example left, diff + apply reaches `desired` and reads back equal;
    FakeNft accepts the same transaction and ends in the same state."""
    runner, fake = shared_runner
    tx = diff(desired, runner.read(TABLE))
    runner.apply(tx)
    fake.apply(tx)
    actual = runner.read(TABLE)
    assert actual is not None
    leftover = diff(desired, actual)
    assert leftover.is_empty, f"{tx.render()}\n--- leftover:\n{leftover.render()}"
    assert actual.elements == as_kernel_keeps(desired.elements)
    mirrored = fake.read(TABLE)
    assert mirrored is not None and mirrored.elements == actual.elements and mirrored.chains == actual.chains
    assert diff(desired, mirrored).is_empty


def add_junk(netns: str) -> None:
    """Foreign objects in our table: chains (one jumped to from a map), rules, elements, a set of
    a datatype nft/ does not model, and a set of ours with another definition."""
    nft_in(netns, "add", "chain", "inet", "cfnft", "intruder")
    nft_in(netns, "add", "rule", "inet", "cfnft", "ctr-a", "accept")
    nft_in(netns, "add", "element", "inet", "cfnft", "deny-always", "{ 203.0.113.0/24 }")
    nft_in(netns, "add", "element", "inet", "cfnft", "ctr-dispatch", "{ 10.255.9.9 : jump intruder }")
    nft_in(netns, "add", "set", "inet", "cfnft", "macs", "{ type ether_addr; elements = { 02:00:00:00:00:01 }; }")
    nft_in(netns, "add", "rule", "inet", "cfnft", "intruder", "ether saddr @macs drop")


def test_recreate_table_replaces_everything(runner: NftRunner, netns: str) -> None:
    """One transaction turns a table full of foreign junk into exactly the desired one; the same
    transaction also works where the table does not exist."""
    runner.apply(diff(rich_ruleset(), None))
    add_junk(netns)
    desired = rich_ruleset()
    desired.sets["host-ports"] = Set("host-ports", ("inet_service",), (SetFlag.INTERVAL,))  # redefined
    tx = diff(desired, None)
    tx.recreate_table()
    runner.apply(tx)
    actual = assert_converged(runner, desired)
    assert actual.elements == as_kernel_keeps(desired.elements)
    assert actual.sets == desired.sets
    assert "intruder" not in listing(netns) and "macs" not in listing(netns)
    nft_in(netns, "delete", "table", "inet", "cfnft")
    runner.apply(tx)
    assert_converged(runner, desired)


def test_failed_recreate_changes_nothing(runner: NftRunner, netns: str) -> None:
    runner.apply(diff(rich_ruleset(), None))
    add_junk(netns)
    before = listing(netns)
    tx = diff(rich_ruleset(), None)
    tx.add(Rule("ctr-a", "jump ctr-missing"))
    tx.recreate_table()
    with pytest.raises(NftError) as caught:
        runner.apply(tx)
    assert caught.value.not_found
    assert listing(netns) == before


def test_read_without_elements(runner: NftRunner, netns: str) -> None:
    """The terse read has every chain, rule (with our fingerprints) and set definition of the full
    read, and no element; same_structure on it sees changes to chains, rules and sets only."""
    desired = rich_ruleset()
    runner.apply(diff(desired, None))
    full, structure = runner.read(TABLE), runner.read(TABLE, elements=False)
    assert full is not None and structure is not None
    assert structure.chains == full.chains and structure.rules == full.rules and structure.sets == full.sets
    assert structure.elements == {name: {} for name in full.sets}
    assert same_structure(desired, structure)
    nft_in(netns, "add", "element", "inet", "cfnft", "deny-always", "{ 203.0.113.0/24 }")
    assert same_structure(desired, runner.read(TABLE, elements=False))
    assert not diff(desired, runner.read(TABLE)).is_empty
    nft_in(netns, "add", "rule", "inet", "cfnft", "ctr-a", "accept")
    assert not same_structure(desired, runner.read(TABLE, elements=False))


def test_read_without_elements_next_to_other_tables(runner: NftRunner, netns: str) -> None:
    """The cheap read lists the whole family and keeps only our table: not one of the same family
    whose name starts like ours (listed before ours), nor one of another family with our name."""
    others = (
        "table inet cfnft2 {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 192.0.2.1 }\n\t}\n"
        "\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tip saddr @s drop\n\t}\n}\n"
        "table ip cfnft {\n\tchain c {\n\t\tcounter accept\n\t}\n}\n"
    )
    nft_in(netns, "-f", "-", stdin=others)
    desired = rich_ruleset()
    runner.apply(diff(desired, None))
    structure = runner.read(TABLE, elements=False)
    assert structure is not None and same_structure(desired, structure)
    assert structure.rules == runner.read(TABLE).rules  # type: ignore[union-attr]
    nft_in(netns, "delete", "table", "inet", "cfnft")
    assert runner.read(TABLE, elements=False) is None
    assert runner.read(Table(Family.INET, "cfnft2"), elements=False) is not None


async def test_read_without_elements_async(runner: NftRunner) -> None:
    runner.apply(diff(rich_ruleset(), None))
    structure = await runner.read_async(TABLE, elements=False)
    assert structure is not None and same_structure(rich_ruleset(), structure)
    assert not any(structure.elements.values())
    assert await runner.read_async(Table(Family.INET, "absent"), elements=False) is None
