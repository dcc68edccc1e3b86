"""The smallest transaction that turns what the kernel holds into what we want.

Chains are compared by definition and by the sequence of rule fingerprints (plus human comments);
a chain whose rules differ in any way is flushed and refilled in the same transaction, which is
cheap and leaves no room for handle bookkeeping. Sets and maps are compared by definition and then
element by element (keys as numbers, values, comments). A changed definition means delete and
re-create, and every chain whose kernel rules use the old object is refilled with it.

`diff(x, read_back(apply(x)))` is empty: everything compared here is what nft lists back.
"""

from __future__ import annotations

import re

from nft.objects import Chain, Element, KeyField, Map, Rule, Ruleset, Set
from nft.render import clean_comment, normalize_value, rule_human_comment, sorted_flags
from nft.transaction import Transaction

# Names a rule refers to: `@set`, `vmap @map`, `jump chain`, `goto chain`.
_REFERENCE = re.compile(r"@([A-Za-z0-9_.\-]+)|\b(?:jump|goto)\s+([A-Za-z0-9_.\-]+)")


def diff(desired: Ruleset, actual: Ruleset | None) -> Transaction:
    """A transaction that makes the table `actual` (None: it does not exist) equal `desired`."""
    tx = Transaction(desired.table)
    if actual is None:
        tx.add_table()
        for name in sorted(desired.sets):
            tx.add(desired.sets[name])
            for element in desired.elements.get(name, {}).values():
                tx.add(element)
        for name in sorted(desired.chains):
            tx.add(desired.chains[name])
            for rule in desired.rules.get(name, []):
                tx.add(rule)
        return tx

    replaced_chains = {
        name
        for name, chain in desired.chains.items()
        if name in actual.chains and not same_chain(chain, actual.chains[name])
    }
    # Objects whose kernel version goes away: kept chains whose rules use one must be refilled.
    gone = replaced_chains | (actual.chains.keys() - desired.chains.keys()) | (actual.sets.keys() - desired.sets.keys())

    for name in sorted(desired.sets):
        want, have = desired.sets[name], actual.sets.get(name)
        wanted_elements = desired.elements.get(name, {})
        if have is None or not same_set(want, have):
            if have is not None:
                gone.add(name)
                tx.delete(have)
            tx.add(want)
            for element in wanted_elements.values():
                tx.add(element)
        else:
            _diff_elements(tx, wanted_elements, actual.elements.get(name, {}), replaced_chains)
    for name in sorted(actual.sets.keys() - desired.sets.keys()):
        tx.delete(actual.sets[name])

    for name in sorted(desired.chains):
        want_chain, have_chain = desired.chains[name], actual.chains.get(name)
        wanted_rules = desired.rules.get(name, [])
        if have_chain is None or name in replaced_chains:
            if have_chain is not None:
                tx.delete(have_chain)
            tx.add(want_chain)
        else:
            had_rules = actual.rules.get(name, [])
            if _rule_identities(wanted_rules) == _rule_identities(had_rules) and not (_references(had_rules) & gone):
                continue
            tx.flush(want_chain)
        for rule in wanted_rules:
            tx.add(rule)
    for name in sorted(actual.chains.keys() - desired.chains.keys()):
        tx.delete(actual.chains[name])
    return tx


def same_chain(a: Chain, b: Chain) -> bool:
    return (a.type, a.hook, a.priority, a.policy) == (b.type, b.hook, b.priority, b.policy)


def same_set(a: Set | Map, b: Set | Map) -> bool:
    """Same kind, key type, flags (in any order) and counter or value type."""
    if type(a) is not type(b) or a.type != b.type or sorted_flags(a.flags) != sorted_flags(b.flags):
        return False
    if isinstance(a, Map) and isinstance(b, Map):
        return a.value_type == b.value_type
    return isinstance(a, Set) and isinstance(b, Set) and a.counter == b.counter


def same_element(a: Element, b: Element) -> bool:
    """Same value and comment, as the kernel keeps them (keys are compared by the caller)."""
    if a.value == b.value and a.comment == b.comment:
        return True
    value_a = normalize_value(a.value) if a.value is not None else None
    value_b = normalize_value(b.value) if b.value is not None else None
    return value_a == value_b and clean_comment(a.comment) == clean_comment(b.comment)


def _diff_elements(
    tx: Transaction,
    wanted: dict[tuple[KeyField, ...], Element],
    had: dict[tuple[KeyField, ...], Element],
    replaced_chains: set[str],
) -> None:
    for key, element in had.items():
        want = wanted.get(key)
        # An element whose verdict names a replaced chain must let go of it before the chain is deleted.
        if want is None or not same_element(want, element) or _value_target(element) in replaced_chains:
            tx.delete(element)
    for key, element in wanted.items():
        have = had.get(key)
        if have is None or not same_element(element, have) or _value_target(have) in replaced_chains:
            tx.add(element)


def _value_target(element: Element) -> str | None:
    words = element.value.split() if element.value else []
    return words[1] if len(words) == 2 and words[0] in ("jump", "goto") else None


def _rule_identities(rules: list[Rule]) -> list[tuple[str | None, str | None]]:
    return [(r.claimed_fingerprint, rule_human_comment(r)) for r in rules]


def _references(rules: list[Rule]) -> set[str]:
    names: set[str] = set()
    for rule in rules:
        for match in _REFERENCE.finditer(rule.text):
            names.add(match.group(1) or match.group(2))
    return names
