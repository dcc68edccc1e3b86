"""The kernel layer: typed nftables objects, rendering, atomic transactions, read-back and diff.

Nothing here knows about Cloud Foundry. Typical use:

    desired = compile(...)                      # a Ruleset
    tx = diff(desired, runner.read(desired.table))
    runner.apply(tx)                            # one atomic libnftables call
"""

from nft.diff import Touched, diff, render_ruleset, same_structure
from nft.errors import NamespaceError, NftError, ReadbackError
from nft.fake import FakeNft
from nft.interface import NftInterface
from nft.objects import (
    AddrRange,
    Chain,
    ChainType,
    Counter,
    Counters,
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
)
from nft.render import render_key
from nft.runner import NftRunner
from nft.transaction import Op, Transaction, TransactionError, Verb

__all__ = [
    "AddrRange",
    "Chain",
    "ChainType",
    "Counter",
    "Counters",
    "Element",
    "Family",
    "FakeNft",
    "Hook",
    "IntRange",
    "Map",
    "NamespaceError",
    "NftError",
    "NftInterface",
    "NftRunner",
    "Op",
    "Policy",
    "ReadbackError",
    "Rule",
    "Ruleset",
    "Set",
    "SetFlag",
    "Table",
    "Touched",
    "Transaction",
    "TransactionError",
    "Verb",
    "diff",
    "render_key",
    "render_ruleset",
    "same_structure",
]
