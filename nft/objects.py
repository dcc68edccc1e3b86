"""Typed nftables objects: the vocabulary of one table, with no knowledge of Cloud Foundry.

Every object is a frozen value. A `Ruleset` is the complete desired (or read-back) content of
one table; `nft.diff` turns two rulesets into one `Transaction`, and `nft.runner` commits it
atomically through libnftables.

Set and map keys are held as numbers, not as nft text, so that what we wrote and what the
kernel lists back compare equal however nft chooses to print them (`10.0.0.0/24` versus
`10.0.0.0-10.0.0.255`, `tcp` versus `6`, `echo-request` versus `8`).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Family(StrEnum):
    INET = "inet"
    IP = "ip"
    IP6 = "ip6"


class ChainType(StrEnum):
    FILTER = "filter"
    NAT = "nat"
    ROUTE = "route"


class Hook(StrEnum):
    PREROUTING = "prerouting"
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"
    POSTROUTING = "postrouting"


class Policy(StrEnum):
    ACCEPT = "accept"
    DROP = "drop"


class SetFlag(StrEnum):
    INTERVAL = "interval"
    CONSTANT = "constant"
    TIMEOUT = "timeout"
    DYNAMIC = "dynamic"


@dataclass(frozen=True, slots=True)
class Table:
    family: Family
    name: str


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain. Base chains set `type`, `hook`, `priority` and `policy` together; regular chains set none."""

    name: str
    type: ChainType | None = None
    hook: Hook | None = None
    priority: int | None = None
    policy: Policy | None = None

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule in nft syntax, e.g. `ip daddr @deny-always counter reject`.

    `comment` is for humans (app and space guids). The renderer appends a fingerprint of
    `text` to it, so read-back can tell whether the kernel still holds exactly this rule.

    Read-back fills the last two fields: `handle` is the kernel's rule handle, `text` is then
    nft's own listing of the rule (which may differ in spelling from what we wrote), and
    `kernel_fingerprint` the fingerprint found in its comment (None for a rule we did not write).
    """

    chain: str
    text: str
    comment: str | None = None
    handle: int | None = None
    kernel_fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.text)

    @property
    def is_listed(self) -> bool:
        """True for a rule read back from a kernel (or a fake of one)."""
        return self.handle is not None

    @property
    def claimed_fingerprint(self) -> str | None:
        """The fingerprint this rule stands for: the one in its kernel comment if read back, else its own."""
        return self.kernel_fingerprint if self.is_listed else self.fingerprint


@functools.lru_cache(maxsize=65536)
def _fingerprint(text: str) -> str:
    # Diff asks for the fingerprint of every rule of every changed chain on every pass.
    return hashlib.blake2s(text.encode(), digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True, eq=False)
class AddrRange:
    """An inclusive range of IP addresses of one family; a single address has start == end.

    Equal when family, start and end are; `bounds` is (IP version, start, end) as numbers."""

    start: IPAddress
    end: IPAddress
    # Keys are hashed and compared by the ten thousand in every diff, and ipaddress hashes an
    # address by formatting it as a hex string and compares in Python: use these numbers instead.
    bounds: tuple[int, int, int] = field(init=False, repr=False)
    _hash: int | None = field(default=None, init=False, repr=False)  # on first use

    def __post_init__(self) -> None:
        if self.start.version != self.end.version:
            raise ValueError(f"address range {self.start}-{self.end} mixes IPv4 and IPv6")
        lo, hi = int(self.start), int(self.end)
        if lo > hi:
            raise ValueError(f"address range {self.start}-{self.end}: start after end")
        object.__setattr__(self, "bounds", (self.start.version, lo, hi))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not AddrRange:
            return NotImplemented
        return self.bounds == other.bounds

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash(self.bounds)
            object.__setattr__(self, "_hash", cached)
        return cached

    @classmethod
    def single(cls, addr: IPAddress) -> AddrRange:
        return cls(addr, addr)


@dataclass(frozen=True, slots=True, eq=False)
class IntRange:
    """An inclusive range of small integers (ports, protocol numbers, ICMP type/code)."""

    lo: int
    hi: int
    _hash: int | None = field(default=None, init=False, repr=False)  # as for AddrRange

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError(f"range {self.lo}-{self.hi}: start after end")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not IntRange:
            return NotImplemented
        return self.lo == other.lo and self.hi == other.hi

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash((self.lo, self.hi))
            object.__setattr__(self, "_hash", cached)
        return cached

    @classmethod
    def single(cls, value: int) -> IntRange:
        return cls(value, value)


KeyField = Union[AddrRange, IntRange]


@dataclass(frozen=True, slots=True)
class Set:
    """A named set. `type` lists the datatypes of a (possibly concatenated) key, e.g.
    ("ipv4_addr", "inet_proto", "inet_service"). `counter` gives every element its own counter.

    A set with flag `dynamic` is filled by the kernel from rules (`update @set { key limit ... }`,
    a meter): its elements are the kernel's, never desired, never read back, never diffed.
    `timeout` (seconds) is how long an element lives unseen, `size` the most it holds."""

    name: str
    type: tuple[str, ...]
    flags: tuple[SetFlag, ...] = ()
    counter: bool = False
    timeout: int | None = None
    size: int | None = None

    @property
    def is_dynamic(self) -> bool:
        return SetFlag.DYNAMIC in self.flags


@dataclass(frozen=True, slots=True)
class Map:
    """A named map from a key (as for `Set`) to `value_type`, usually "verdict"."""

    name: str
    type: tuple[str, ...]
    value_type: str = "verdict"
    flags: tuple[SetFlag, ...] = ()


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a set or map. `value` is set for map elements, e.g. "jump asg-1f2e3d4c"."""

    set: str
    key: tuple[KeyField, ...]
    value: str | None = None
    comment: str | None = None


@dataclass(slots=True)
class Ruleset:
    """The whole content of one table. Chains keep their rules in order."""

    table: Table
    chains: dict[str, Chain] = field(default_factory=dict)
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    sets: dict[str, Set | Map] = field(default_factory=dict)
    elements: dict[str, dict[tuple[KeyField, ...], Element]] = field(default_factory=dict)

    def add_chain(self, chain: Chain) -> None:
        if chain.name in self.chains:
            raise ValueError(f"chain {chain.name!r} defined twice")
        self.chains[chain.name] = chain
        self.rules[chain.name] = []

    def add_rule(self, rule: Rule) -> None:
        if rule.chain not in self.chains:
            raise ValueError(f"rule for unknown chain {rule.chain!r}: {rule.text}")
        self.rules[rule.chain].append(rule)

    def add_set(self, s: Set | Map) -> None:
        if s.name in self.sets:
            raise ValueError(f"set {s.name!r} defined twice")
        self.sets[s.name] = s
        self.elements[s.name] = {}

    def add_element(self, element: Element) -> None:
        s = self.sets.get(element.set)
        if s is None:
            raise ValueError(f"element for unknown set {element.set!r}")
        if len(element.key) != len(s.type):
            raise ValueError(f"element {element.key} does not fit the key {s.type} of set {s.name!r}")
        self.elements[s.name][element.key] = element

    def counts(self) -> tuple[int, int, int]:
        """(chains, rules, elements), for metrics and benchmarks."""
        return (
            len(self.chains),
            sum(len(r) for r in self.rules.values()),
            sum(len(e) for e in self.elements.values()),
        )


@dataclass(frozen=True, slots=True)
class Counter:
    """Packets and bytes counted by one rule or set element."""

    packets: int = 0
    bytes: int = 0

    def __add__(self, other: Counter) -> Counter:
        return Counter(self.packets + other.packets, self.bytes + other.bytes)


@dataclass(slots=True)
class Counters:
    """Counter values of one table, kept apart from `Ruleset` because they never take part in a diff.

    `rules` is keyed by (chain, fingerprint) and sums rules that share both; rules we did not
    write are left out. `elements` is keyed by (set, key) and holds elements of sets with `counter`.
    """

    rules: dict[tuple[str, str], Counter] = field(default_factory=dict)
    elements: dict[tuple[str, tuple[KeyField, ...]], Counter] = field(default_factory=dict)
