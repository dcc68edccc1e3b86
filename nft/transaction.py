"""One atomic change to one table, queued as typed (verb, object) operations.

Methods are named after nft's verbs. Each call validates its object; the first invalid one makes
the transaction invalid (`err`), and rendering it raises that error, so a caller can queue a whole
batch and check once. The transaction orders its own batch, whatever order the calls came in, so
that every reference resolves when nft reads it and nothing is removed while still in use:

    1. add table
    2. flush chains that already exist (refills, and every chain about to be deleted)
    3. delete elements
    4. delete sets, maps and chains that are re-added in this transaction (definition changes)
    5. add sets and maps, then chains; then flush chains added here (the add + flush idiom)
    6. add rules
    7. add elements
    8. delete sets and maps, then chains, that are not re-added
    9. delete table

Element deletions come before additions so that changing a map element's value is a delete then
an add; they also come before step 4 so that a chain can be replaced once the map elements
jumping to it are gone. Sets go before chains in step 8 because a removed map's elements may jump
to a removed chain, while nothing but (already flushed) rules can hold a set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Union

from nft.datatypes import CHAIN_VERDICTS, DATATYPES, VERDICTS, FieldKind, check_key, key_text
from nft.objects import AddrRange, Chain, Element, IntRange, Map, Rule, Set, SetFlag, Table
from nft.render import chain_spec, element_text, rule_statement, set_keyword, set_spec

# nft identifiers: chain, set and table names. Names that are nft keywords ("accept", "counter",
# "fwd", ...) are rejected by nft's parser, so give every name a prefix with a hyphen ("ctr-...").
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,254}")

NftObject = Union[Table, Chain, Rule, Set, Map, Element]


class _Phase(IntEnum):
    """The steps of the module docstring, in execution order."""

    ADD_TABLE = 0
    FLUSH = 1
    DELETE_ELEMENTS = 2
    DELETE_REPLACED = 3
    DEFINE = 4
    FLUSH_NEW = 5
    ADD_RULES = 6
    ADD_ELEMENTS = 7
    REMOVE = 8
    DELETE_TABLE = 9


class Verb(StrEnum):
    ADD = "add"
    DELETE = "delete"
    FLUSH = "flush"


@dataclass(frozen=True, slots=True)
class Op:
    """One queued operation. For FLUSH the object is the chain."""

    verb: Verb
    obj: NftObject


class TransactionError(ValueError):
    """An object given to a transaction is invalid; says which call and why."""

    def __init__(self, op: Op, reason: str) -> None:
        self.op = op
        self.reason = reason
        super().__init__(f"{op.verb} {_describe(op.obj)}: {reason}")


class Transaction:
    """A batch of changes to one table that libnftables commits all or nothing.

    Example:
        tx = Transaction(Table(Family.INET, "cfnft"))
        tx.flush(Chain("ctr-3f2a9c"))
        tx.add(Rule("ctr-3f2a9c", "ip daddr . th dport @asg-web accept", comment="app=<guid>"))
        batch = tx.render()
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self._ops: list[Op] = []
        self._err: TransactionError | None = None
        self._added: dict[tuple[str, str], Chain | Set | Map] = {}  # by (kind, name); sets and maps share "set"
        self._deleted: set[tuple[str, str]] = set()
        self._chains_with_rules: set[str] = set()
        self._element_ops: set[tuple[Verb, str, tuple[object, ...]]] = set()
        if not _NAME.fullmatch(table.name):
            self._fail(Op(Verb.ADD, table), f"invalid table name {table.name!r}")

    @property
    def err(self) -> TransactionError | None:
        """The first validation error, or None while the transaction is valid."""
        return self._err

    @property
    def is_empty(self) -> bool:
        return not self._ops

    def __len__(self) -> int:
        return len(self._ops)

    @property
    def ops(self) -> list[Op]:
        """The operations in the order they were queued."""
        return list(self._ops)

    def add_table(self) -> None:
        """Create the table if it does not exist."""
        self._queue(Op(Verb.ADD, self.table))

    def delete_table(self) -> None:
        """Delete the table with everything in it; rendered last."""
        self._queue(Op(Verb.DELETE, self.table))

    def add(self, obj: Chain | Rule | Set | Map | Element) -> None:
        """Add a chain, set, map, rule (appended to its chain) or element. Adding a chain, set or
        map that already exists with the same definition changes nothing (nft's `add`)."""
        op = Op(Verb.ADD, obj)
        reason = self._check_add(obj)
        if reason:
            self._fail(op, reason)
        else:
            self._queue(op)

    def delete(self, obj: Chain | Set | Map | Element) -> None:
        """Delete a chain (its rules go with it), set, map or element, which must exist."""
        op = Op(Verb.DELETE, obj)
        reason = self._check_delete(obj)
        if reason:
            self._fail(op, reason)
        else:
            self._queue(op)

    def flush(self, chain: Chain | str) -> None:
        """Remove every rule of a chain (before this transaction's rules are added)."""
        target = chain if isinstance(chain, Chain) else Chain(chain)
        op = Op(Verb.FLUSH, target)
        if not _NAME.fullmatch(target.name):
            self._fail(op, f"invalid chain name {target.name!r}")
        elif target.name in self._chains_with_rules:
            self._fail(op, "flush after rules were added to the chain in this transaction would drop them")
        else:
            self._queue(op)

    def plan(self) -> list[Op]:
        """The operations in execution order (see the module docstring). Raises the first validation error."""
        if self._err is not None:
            raise self._err
        replaced = self._added.keys() & self._deleted
        phases: list[list[Op]] = [[] for _ in _Phase]
        flushed: set[str] = set()
        for op in self._ops:
            obj = op.obj
            if isinstance(obj, Table):
                phases[_Phase.ADD_TABLE if op.verb is Verb.ADD else _Phase.DELETE_TABLE].append(op)
            elif isinstance(obj, Element):
                phases[_Phase.ADD_ELEMENTS if op.verb is Verb.ADD else _Phase.DELETE_ELEMENTS].append(op)
            elif isinstance(obj, Rule):
                phases[_Phase.ADD_RULES].append(op)
            elif op.verb is Verb.ADD:
                phases[_Phase.DEFINE].append(op)
            elif op.verb is Verb.FLUSH:
                assert isinstance(obj, Chain)
                if obj.name not in flushed:
                    flushed.add(obj.name)
                    new = ("chain", obj.name) in self._added and ("chain", obj.name) not in self._deleted
                    phases[_Phase.FLUSH_NEW if new else _Phase.FLUSH].append(op)
            else:
                assert isinstance(obj, (Chain, Set, Map))
                if isinstance(obj, Chain) and obj.name not in flushed:
                    flushed.add(obj.name)
                    phases[_Phase.FLUSH].append(Op(Verb.FLUSH, Chain(obj.name)))
                is_replaced = (_kind(obj), obj.name) in replaced
                phases[_Phase.DELETE_REPLACED if is_replaced else _Phase.REMOVE].append(op)
        phases[_Phase.DEFINE] = _sets_first(phases[_Phase.DEFINE])
        phases[_Phase.REMOVE] = _sets_first(phases[_Phase.REMOVE])
        phases[_Phase.DELETE_ELEMENTS] = _grouped_by_set(phases[_Phase.DELETE_ELEMENTS])
        phases[_Phase.ADD_ELEMENTS] = _grouped_by_set(phases[_Phase.ADD_ELEMENTS])
        return [op for phase in phases for op in phase]

    def render(self) -> str:
        """The whole batch as nft text for one libnftables call; "" for an empty transaction."""
        lines = [text for text, _ in self.render_lines()]
        return "\n".join(lines) + "\n" if lines else ""

    def render_lines(self) -> list[tuple[str, Op | None]]:
        """Each line of the batch with the operation it came from (None for the lines that open
        and close an element command).

        Consecutive element operations on one set become one command, one element per line, so
        that nft's error location points at the element it refused."""
        prefix = f"{self.table.family} {self.table.name}"
        lines: list[tuple[str, Op | None]] = []
        for verb, group in batches(self.plan()):
            first = group[0]
            obj = first.obj
            if isinstance(obj, Element):
                lines.append((f"{verb} element {prefix} {obj.set} {{", None))
                for op in group:
                    element = op.obj
                    assert isinstance(element, Element)
                    text = element_text(element) if verb is Verb.ADD else key_text(element.key)
                    lines.append((f"\t{text},", op))
                lines.append(("}", None))
            else:
                lines.append((render_op(prefix, first), first))
        return lines

    def _queue(self, op: Op) -> None:
        if self._err is not None:
            return
        obj = op.obj
        if isinstance(obj, (Chain, Set, Map)) and op.verb is Verb.ADD:
            if self._added.get((_kind(obj), obj.name)) == obj:
                return  # the same definition twice: nft's add is idempotent, queue it once
            self._added[(_kind(obj), obj.name)] = obj
        elif isinstance(obj, (Chain, Set, Map)) and op.verb is Verb.DELETE:
            self._deleted.add((_kind(obj), obj.name))
        elif isinstance(obj, Rule):
            self._chains_with_rules.add(obj.chain)
        elif isinstance(obj, Element):
            self._element_ops.add((op.verb, obj.set, obj.key))
        self._ops.append(op)

    def _fail(self, op: Op, reason: str) -> None:
        if self._err is None:
            self._err = TransactionError(op, reason)

    def _check_add(self, obj: object) -> str | None:
        if isinstance(obj, Chain):
            return _check_chain(obj) or self._check_redefinition(obj)
        if isinstance(obj, (Set, Map)):
            return _check_set(obj) or self._check_redefinition(obj)
        if isinstance(obj, Rule):
            if not _NAME.fullmatch(obj.chain):
                return f"invalid chain name {obj.chain!r}"
            if ("chain", obj.chain) in self._deleted and ("chain", obj.chain) not in self._added:
                return f"chain {obj.chain!r} is deleted in this transaction"
            return _check_rule_text(obj.text)
        if isinstance(obj, Element):
            if ("set", obj.set) in self._deleted and ("set", obj.set) not in self._added:
                return f"set {obj.set!r} is deleted in this transaction"
            if (Verb.ADD, obj.set, obj.key) in self._element_ops:
                return "element added twice in one transaction"
            return self._check_element(obj)
        return f"cannot add a {type(obj).__name__}"

    def _check_delete(self, obj: object) -> str | None:
        if isinstance(obj, (Chain, Set, Map)):
            if not _NAME.fullmatch(obj.name):
                return f"invalid name {obj.name!r}"
            kind = _kind(obj)
            if (kind, obj.name) in self._added:
                return f"{kind} {obj.name!r} was added in this transaction; delete it before adding it"
            if (kind, obj.name) in self._deleted:
                return f"{kind} {obj.name!r} deleted twice"
            return None
        if isinstance(obj, Element):
            if (Verb.ADD, obj.set, obj.key) in self._element_ops:
                return "element was added in this transaction; delete it before adding it"
            if (Verb.DELETE, obj.set, obj.key) in self._element_ops:
                return "element deleted twice in one transaction"
            return self._check_element(obj, deleting=True)
        return f"cannot delete a {type(obj).__name__}"

    def _check_redefinition(self, obj: Chain | Set | Map) -> str | None:
        earlier = self._added.get((_kind(obj), obj.name))
        if earlier is not None and earlier != obj:
            return f"{_kind(obj)} {obj.name!r} added twice with different definitions"
        return None

    def _check_element(self, element: Element, *, deleting: bool = False) -> str | None:
        if not _NAME.fullmatch(element.set):
            return f"invalid set name {element.set!r}"
        if not element.key or not all(isinstance(f, (AddrRange, IntRange)) for f in element.key):
            return "a key is a non-empty tuple of AddrRange/IntRange"
        target = self._added.get(("set", element.set))
        if isinstance(target, (Set, Map)):
            try:
                check_key(target.name, target.type, element.key, interval=SetFlag.INTERVAL in target.flags)
            except ValueError as e:
                return str(e)
            if not deleting and isinstance(target, Map) != (element.value is not None):
                return "a map element needs a value and a set element must have none"
        if not deleting and element.value is not None:
            return _check_value(element.value)
        return None


def render_op(prefix: str, op: Op) -> str:
    """One non-element operation as an nft command, e.g. `add chain inet cfnft ctr-a`."""
    obj = op.obj
    if isinstance(obj, Table):
        return f"{op.verb} table {obj.family} {obj.name}"
    if isinstance(obj, Chain):
        spec = chain_spec(obj) if op.verb is Verb.ADD else None
        return f"{op.verb} chain {prefix} {obj.name}" + (f" {{ {spec} }}" if spec else "")
    if isinstance(obj, (Set, Map)):
        if op.verb is Verb.ADD:
            return f"add {set_keyword(obj)} {prefix} {obj.name} {{ {'; '.join(set_spec(obj))}; }}"
        return f"delete {set_keyword(obj)} {prefix} {obj.name}"
    if isinstance(obj, Rule):
        return f"add rule {prefix} {obj.chain} {rule_statement(obj)}"
    raise TypeError(f"no single command for {op}")


def batches(plan: list[Op]) -> Iterator[tuple[Verb, list[Op]]]:
    """The plan with consecutive element operations on one set joined: one nft command each."""
    group: list[Op] = []
    for op in plan:
        obj = op.obj
        if (
            group
            and isinstance(obj, Element)
            and op.verb is group[0].verb
            and isinstance(group[0].obj, Element)
            and group[0].obj.set == obj.set
        ):
            group.append(op)
            continue
        if group:
            yield group[0].verb, group
        group = [op]
    if group:
        yield group[0].verb, group


def _sets_first(ops: list[Op]) -> list[Op]:
    return [op for op in ops if isinstance(op.obj, (Set, Map))] + [op for op in ops if isinstance(op.obj, Chain)]


def _grouped_by_set(ops: list[Op]) -> list[Op]:
    by_set: dict[str, list[Op]] = {}
    for op in ops:
        assert isinstance(op.obj, Element)
        by_set.setdefault(op.obj.set, []).append(op)
    return [op for group in by_set.values() for op in group]


def _kind(obj: Chain | Set | Map) -> str:
    return "chain" if isinstance(obj, Chain) else "set"  # sets and maps share one namespace


def _check_chain(chain: Chain) -> str | None:
    if not _NAME.fullmatch(chain.name):
        return f"invalid chain name {chain.name!r}"
    base_fields = (chain.type, chain.hook, chain.priority)
    if any(f is not None for f in (*base_fields, chain.policy)) and any(f is None for f in base_fields):
        return "a base chain needs type, hook and priority together"
    return None


def _check_set(s: Set | Map) -> str | None:
    if not _NAME.fullmatch(s.name):
        return f"invalid set name {s.name!r}"
    if not s.type:
        return "a set needs a key type"
    for name in s.type:
        if name not in DATATYPES:
            return f"unsupported key datatype {name!r} (supported: {', '.join(DATATYPES)})"
    if isinstance(s, Map) and s.value_type != "verdict":
        value_type = DATATYPES.get(s.value_type)
        if value_type is None or value_type.kind is not FieldKind.INTEGER:
            return f"unsupported map value type {s.value_type!r} (verdict or an integer type)"
    if not all(isinstance(f, SetFlag) for f in s.flags):
        return f"flags must be SetFlag values, got {s.flags!r}"
    return None


def _check_rule_text(text: str) -> str | None:
    if not text.strip():
        return "empty rule"
    if "\n" in text or "\r" in text:
        return "a rule is one line"
    parts = text.split('"')
    if len(parts) % 2 == 0:
        return "unbalanced double quote"
    outside = " ".join(parts[::2])
    for char, why in ((";", "would end the command"), ("#", "would start an nft comment")):
        if char in outside:
            return f"{char!r} outside quotes {why}"
    if re.search(r"\bcomment\b", outside):
        return "the renderer writes the rule comment; pass it as Rule.comment"
    return None


def _check_value(value: str) -> str | None:
    words = value.split()
    if len(words) == 1 and (words[0] in VERDICTS or words[0].isdigit()):
        return None
    if len(words) == 2 and words[0] in CHAIN_VERDICTS and _NAME.fullmatch(words[1]):
        return None
    return f"invalid map value {value!r} (a verdict such as 'jump <chain>', 'drop', or a number)"


def _describe(obj: object) -> str:
    if isinstance(obj, Table):
        return f"table {obj.family} {obj.name}"
    if isinstance(obj, Rule):
        return f"rule in chain {obj.chain!r}: {obj.text}"
    if isinstance(obj, Element):
        shown = key_text(obj.key) if all(isinstance(f, (AddrRange, IntRange)) for f in obj.key) else repr(obj.key)
        return f"element {shown} of set {obj.set!r}"
    if isinstance(obj, (Chain, Set, Map)):
        return f"{type(obj).__name__.lower()} {obj.name!r}"
    return repr(obj)
