"""The smallest transaction that turns what the kernel holds into what we want.

Chains are compared by definition and by the sequence of rule fingerprints (plus human comments);
a chain whose rules differ in any way is flushed and refilled in the same transaction, which is
cheap and leaves no room for handle bookkeeping. Sets and maps are compared by definition and then
element by element (keys as numbers, values, comments). A changed definition means delete and
re-create, and every chain whose kernel rules use the old object is refilled with it.

`diff(x, read_back(apply(x)))` is empty: everything compared here is what nft lists back.

Cost: a caller that keeps the desired ruleset it committed and diffs the next one against it pays
only for what changed, when the two share their unchanged parts. A rule list or element dict that
is the very same object on both sides is equal without a look inside, so such parts must never be
changed in place once a ruleset holding them was handed to `diff`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from nft.objects import Chain, Element, KeyField, Map, Rule, Ruleset, Set
from nft.render import clean_comment, key_order, normalize_value, rule_human_comment, sorted_flags
from nft.transaction import Transaction

# Names a rule refers to: `@set`, `vmap @map`, `jump chain`, `goto chain`.
_REFERENCE = re.compile(r"@([A-Za-z0-9_.\-]+)|\b(?:jump|goto)\s+([A-Za-z0-9_.\-]+)")


@dataclass(frozen=True, slots=True)
class Touched:
    """What may differ between a ruleset and an earlier one, as whoever made the second from the first
    knows: whole chains and sets by name, and of a set changed an element at a time (a dispatch map)
    only the keys of those elements. Everything else is the same on both sides."""

    names: frozenset[str] = frozenset()
    elements: Mapping[str, frozenset[tuple[KeyField, ...]]] = field(default_factory=dict)

    def __or__(self, other: Touched) -> Touched:
        keys = {name: self.elements.get(name, frozenset()) | other.elements.get(name, frozenset())
                for name in self.elements.keys() | other.elements.keys()}  # fmt: skip
        return Touched(self.names | other.names, keys)


def diff(desired: Ruleset, actual: Ruleset | None, only: Touched | None = None) -> Transaction:
    """A transaction that makes the table `actual` (None: it does not exist) equal `desired`.

    `only`, when given, says what may differ between the two (the caller changed only that since it
    computed `actual`), so that the cost follows the change, not the size of the table."""
    if actual is None:
        return _creation(desired, sort_elements=False)
    tx = Transaction(desired.table)
    if only is None:
        chains, sets = desired.chains.keys() | actual.chains.keys(), desired.sets.keys() | actual.sets.keys()
    else:
        names = only.names | only.elements.keys()
        chains = {n for n in names if n in desired.chains or n in actual.chains}
        sets = {n for n in names if n in desired.sets or n in actual.sets}
    replaced_chains = {
        name
        for name in chains & desired.chains.keys() & actual.chains.keys()
        if not same_chain(desired.chains[name], actual.chains[name])
    }
    # Objects whose kernel version goes away: kept chains whose rules use one must be refilled.
    gone = replaced_chains | {n for n in chains if n not in desired.chains} | {n for n in sets if n not in desired.sets}

    for name in sorted(n for n in sets if n in desired.sets):
        want, have = desired.sets[name], actual.sets.get(name)
        wanted_elements = desired.elements.get(name, {})
        if have is None or not same_set(want, have):
            if have is not None:
                gone.add(name)
                tx.delete(have)
            tx.add(want)
            tx.add_elements(want, wanted_elements.values())
            continue
        if isinstance(want, Set) and want.is_dynamic:
            continue  # the kernel's own elements
        had_elements = actual.elements.get(name, {})
        # The same dict: the compiler reused an unchanged fragment. A map's elements still have to
        # let go of a chain being replaced, so only then are they looked at one by one.
        if wanted_elements is had_elements and (isinstance(want, Set) or not replaced_chains):
            continue
        if only is not None and name not in only.names and not replaced_chains:
            _diff_keys(tx, want, wanted_elements, had_elements, only.elements[name])
            continue
        _diff_elements(tx, want, wanted_elements, had_elements, replaced_chains)
    for name in sorted(n for n in sets if n not in desired.sets):
        tx.delete(actual.sets[name])

    for name in sorted(n for n in chains if n in desired.chains):
        want_chain, have_chain = desired.chains[name], actual.chains.get(name)
        wanted_rules = desired.rules.get(name, [])
        if have_chain is None or name in replaced_chains:
            if have_chain is not None:
                tx.delete(have_chain)
            tx.add(want_chain)
        else:
            had_rules = actual.rules.get(name, [])
            if _same_rules(wanted_rules, had_rules) and not (gone and _references(had_rules) & gone):
                continue
            tx.flush(want_chain)
        for rule in wanted_rules:
            tx.add(rule)
    for name in sorted(n for n in chains if n not in desired.chains):
        tx.delete(actual.chains[name])
    return tx


def render_ruleset(rs: Ruleset) -> str:
    """The `nft -f` text that creates the table holding exactly `rs`: the batch `diff(rs, None)`
    commits, rendered by the same code, with each set's elements in key order so that equal
    rulesets give equal text (the diff keeps the ruleset's order: sorting costs a cold apply
    several milliseconds). Raises TransactionError for a ruleset nft would refuse."""
    return _creation(rs, sort_elements=True).render()


def _creation(desired: Ruleset, *, sort_elements: bool) -> Transaction:
    """The transaction that creates `desired`'s table with everything in it."""
    tx = Transaction(desired.table)
    tx.add_table()
    for name in sorted(desired.sets):
        s = desired.sets[name]
        elements = desired.elements.get(name, {}).values()
        tx.add(s)
        tx.add_elements(s, sorted(elements, key=lambda e: key_order(e.key)) if sort_elements else elements)
    for name in sorted(desired.chains):
        tx.add(desired.chains[name])
        for rule in desired.rules.get(name, []):
            tx.add(rule)
    return tx


def same_chain(a: Chain, b: Chain) -> bool:
    return (a.type, a.hook, a.priority, a.policy) == (b.type, b.hook, b.priority, b.policy)


def same_set(a: Set | Map, b: Set | Map) -> bool:
    """Same kind, key type, flags (in any order) and counter or value type."""
    if a is b or a == b:
        return True
    if type(a) is not type(b) or a.type != b.type or sorted_flags(a.flags) != sorted_flags(b.flags):
        return False
    if isinstance(a, Map) and isinstance(b, Map):
        return a.value_type == b.value_type
    return (
        isinstance(a, Set) and isinstance(b, Set) and (a.counter, a.timeout, a.size) == (b.counter, b.timeout, b.size)
    )


def same_element(a: Element, b: Element) -> bool:
    """Same value and comment, as the kernel keeps them (keys are compared by the caller)."""
    if a.value == b.value and a.comment == b.comment:
        return True
    value_a = normalize_value(a.value) if a.value is not None else None
    value_b = normalize_value(b.value) if b.value is not None else None
    return value_a == value_b and clean_comment(a.comment) == clean_comment(b.comment)


def same_structure(desired: Ruleset, actual: Ruleset | None) -> bool:
    """Whether `actual` has exactly the chains (with their definitions), rules (as `diff`
    compares them) and set and map definitions of `desired`, elements left out.

    Cheap, and meant for a read without elements (`read(table, elements=False)`): False means that
    `diff(desired, <full read>)` would change something; True says nothing about elements."""
    if actual is None or desired.chains.keys() != actual.chains.keys() or desired.sets.keys() != actual.sets.keys():
        return False
    for name, chain in desired.chains.items():
        if not same_chain(chain, actual.chains[name]):
            return False
        if not _same_rules(desired.rules.get(name, []), actual.rules.get(name, [])):
            return False
    return all(same_set(s, actual.sets[name]) for name, s in desired.sets.items())


def _diff_keys(
    tx: Transaction,
    s: Set | Map,
    wanted: Mapping[tuple[KeyField, ...], Element],
    had: Mapping[tuple[KeyField, ...], Element],
    keys: Collection[tuple[KeyField, ...]],
) -> None:
    """As `_diff_elements`, for the elements of these keys only (the others are the same on both sides)."""
    added = []
    for key in keys:
        want, have = wanted.get(key), had.get(key)
        if want is have or (want is not None and have is not None and same_element(want, have)):
            continue
        if have is not None:
            tx.delete(have)
        if want is not None:
            added.append(want)
    if added:
        tx.add_elements(s, added)


def _diff_elements(
    tx: Transaction,
    s: Set | Map,
    wanted: dict[tuple[KeyField, ...], Element],
    had: dict[tuple[KeyField, ...], Element],
    replaced_chains: set[str],
) -> None:
    if replaced_chains:
        _diff_elements_releasing(tx, s, wanted, had, replaced_chains)
        return
    stale = 0
    for key, element in had.items():
        want = wanted.get(key)
        if want is None or (want is not element and not same_element(want, element)):
            tx.delete(element)
            stale += 1
    if not stale and len(wanted) == len(had):
        return  # every key we had is still wanted, unchanged, and there are no others
    tx.add_elements(
        s,
        [
            element
            for key, element in wanted.items()
            if (have := had.get(key)) is None or (have is not element and not same_element(element, have))
        ],
    )


def _diff_elements_releasing(
    tx: Transaction,
    s: Set | Map,
    wanted: dict[tuple[KeyField, ...], Element],
    had: dict[tuple[KeyField, ...], Element],
    replaced_chains: set[str],
) -> None:
    """As `_diff_elements`, and every element whose verdict names a replaced chain is deleted and
    re-added, so that it lets go of the old chain before the chain is deleted."""
    for key, element in had.items():
        want = wanted.get(key)
        if want is None or not same_element(want, element) or _value_target(element) in replaced_chains:
            tx.delete(element)
    tx.add_elements(
        s,
        [
            element
            for key, element in wanted.items()
            if (have := had.get(key)) is None
            or not same_element(element, have)
            or _value_target(have) in replaced_chains
        ],
    )


def _value_target(element: Element) -> str | None:
    words = element.value.split() if element.value else []
    return words[1] if len(words) == 2 and words[0] in ("jump", "goto") else None


def _same_rules(wanted: list[Rule], had: list[Rule]) -> bool:
    """The kernel would list the same rules: by fingerprint and human comment, in order."""
    # Equal objects (the compiler's or a previous desired ruleset's) settle it without hashing text.
    if wanted is had or wanted == had:
        return True
    return len(wanted) == len(had) and _rule_identities(wanted) == _rule_identities(had)


def _rule_identities(rules: list[Rule]) -> list[tuple[str | None, str | None]]:
    return [(r.claimed_fingerprint, rule_human_comment(r)) for r in rules]


def _references(rules: list[Rule]) -> set[str]:
    names: set[str] = set()
    for rule in rules:
        for match in _REFERENCE.finditer(rule.text):
            names.add(match.group(1) or match.group(2))
    return names
