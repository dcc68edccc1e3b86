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

`recreate_table()` puts `add table` and `delete table` before all of that, so the batch replaces
whatever the table held with exactly what the transaction adds, in one commit.

Elements are added with `add set <name> { <definition>; elements = { ... } }` whenever the
transaction knows the set's definition (it adds the set, or `add_elements` was given it), else
with `add element`. The two differ in cost: for any `add element` or `delete element` command,
nft 1.0.6 first fetches every element of every single-field interval set in the namespace (~7 ms
on a full cell, for one element), while adding a set fetches nothing. The kernel still checks each
element (an overlap or another value for the key is EEXIST). Unlike `add element`, though, the
set form creates a missing set, holding just these elements: a caller that believes a set exists
when it does not (diff trusting a stale `actual`) finds out from its next comparison with the
kernel, not from a failed commit.

Element deletions come before additions so that changing a map element's value is a delete then
an add; they also come before step 4 so that a chain can be replaced once the map elements
jumping to it are gone. Sets go before chains in step 8 because a removed map's elements may jump
to a removed chain, while nothing but (already flushed) rules can hold a set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Union

from cfnft.errors import OperationError
from nft.datatypes import CHAIN_VERDICTS, DATATYPES, VERDICTS, FieldKind, check_key, key_checker, key_text
from nft.objects import AddrRange, Chain, Element, IntRange, KeyField, Map, Rule, Set, SetFlag, Table
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


@dataclass(frozen=True, slots=True)
class _Elements:
    """Element operations of one verb on one set: queued by one `add_elements` call, or one
    command of the plan (with the set's definition, when known, for the `add set` form). Their
    `Op`s are made only when someone asks for them."""

    verb: Verb
    set: str
    elements: Collection[Element]
    definition: Set | Map | None = None


class TransactionError(OperationError):
    """An object given to a transaction is invalid; says which call (`op`: the verb and the object)
    and why (`reason`). Found before anything reaches the kernel, so nothing was changed."""

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

    The rendered batch is kept until the next call that queues something, so that a caller and
    the runner may both render it and pay once.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self._log: list[Op | _Elements] = []  # what was queued, in order
        self._count = 0
        self._err: TransactionError | None = None
        self._table_verbs: set[Verb] = set()
        self._recreate = False
        self._added: dict[tuple[str, str], Chain | Set | Map] = {}  # by (kind, name); sets and maps share "set"
        self._deleted: set[tuple[str, str]] = set()
        self._chains_with_rules: set[str] = set()
        # Element operations by (verb, set), in the order each pair first came, then by key: they
        # render grouped this way, one command per set, and the keys tell duplicates.
        self._elements: dict[tuple[Verb, str], dict[tuple[KeyField, ...], Element]] = {}
        self._definitions: dict[str, Set | Map] = {}  # what each set is, where known: see the module docstring
        self._lines: list[tuple[str, Op | None]] | None = None
        self._rendered: str | None = None
        if not _NAME.fullmatch(table.name):
            self._fail(Op(Verb.ADD, table), f"invalid table name {table.name!r}")

    @property
    def err(self) -> TransactionError | None:
        """The first validation error, or None while the transaction is valid."""
        return self._err

    @property
    def is_empty(self) -> bool:
        """Whether committing would change nothing. An invalid transaction is never empty: whoever
        asks whether there is work to do must not mistake "refused before the first command" for
        "nothing to do" (a caller that skips empty transactions would otherwise stall silently)."""
        return self._err is None and not self._count

    def __len__(self) -> int:
        return self._count

    @property
    def ops(self) -> list[Op]:
        """The operations in the order they were queued."""
        return [op for entry in self._log for op in _ops_of(entry)]

    @property
    def recreates_table(self) -> bool:
        """True once `recreate_table` was called."""
        return self._recreate

    def add_table(self) -> None:
        """Create the table if it does not exist."""
        if Verb.ADD not in self._table_verbs:
            self._queue(Op(Verb.ADD, self.table))

    def delete_table(self) -> None:
        """Delete the table with everything in it; rendered last."""
        op = Op(Verb.DELETE, self.table)
        if self._recreate:
            self._fail(op, _RECREATED)
        elif Verb.DELETE not in self._table_verbs:
            self._queue(op)

    def recreate_table(self) -> None:
        """Replace the whole table, whatever it holds and whether or not it exists, by what this
        transaction adds. The batch starts `add table`, `delete table` (the add makes the delete
        safe on a missing table), then adds the table again with everything queued: one commit,
        so the old table enforces until the new one does.

        Nothing can be deleted in such a transaction, before or after this call: the table starts
        empty. Flushing a chain the transaction adds is fine. Typical use, after repeated failures:

            tx = diff(desired, None)
            tx.recreate_table()
        """
        if self._err is not None:
            return
        if any(isinstance(entry, Op) and entry.verb is Verb.DELETE for entry in self._log):
            self._fail(Op(Verb.DELETE, self.table), "nothing can be deleted in a re-created table")
            return
        self._recreate = True
        self._invalidate()
        self.add_table()

    def add(self, obj: Chain | Rule | Set | Map | Element) -> None:
        """Add a chain, set, map, rule (appended to its chain) or element. Adding a chain, set or
        map that already exists with the same definition changes nothing (nft's `add`)."""
        op = Op(Verb.ADD, obj)
        reason = self._check_add(obj)
        if reason:
            self._fail(op, reason)
        else:
            self._queue(op)

    def add_elements(self, s: Set | Map, elements: Iterable[Element]) -> None:
        """Add many elements of the set or map `s`, as calling `add` for each would, checked in
        bulk against `s`'s definition (which must be the one this transaction adds, if it adds
        one). This is how whole sets are loaded: a cold start adds tens of thousands of elements."""
        if self._err is not None:
            return
        reason = _check_set(s) or self._check_redefinition(s)
        if not reason and self._definitions.get(s.name, s) != s:
            reason = f"{set_keyword(s)} {s.name!r} given with different definitions"
        if not reason and ("set", s.name) in self._deleted and ("set", s.name) not in self._added:
            reason = f"set {s.name!r} is deleted in this transaction"
        if reason:
            self._fail(Op(Verb.ADD, s), reason)
            return
        fits = key_checker(s.type, interval=SetFlag.INTERVAL in s.flags)
        is_map = isinstance(s, Map)
        valid_values: set[str] = set()
        queued = self._elements.setdefault((Verb.ADD, s.name), {})
        run: list[Element] = []
        for element in elements:
            key, value = element.key, element.value
            if (
                element.set == s.name
                and type(key) is tuple
                and fits(key)
                and (value is not None) == is_map
                and (value is None or value in valid_values or _check_value(value) is None)
            ):
                size = len(queued)
                queued.setdefault(key, element)
                if len(queued) > size:  # not a duplicate
                    if value is not None:
                        valid_values.add(value)
                    run.append(element)
                    continue
            # Not the common case: the reason is the one `add` gives.
            why = self._check_add(element) or _element_mismatch(s, element) or "a key is a tuple of key fields"
            self._fail(Op(Verb.ADD, element), why)
            break
        if run:
            self._definitions[s.name] = s
            self._log.append(_Elements(Verb.ADD, s.name, run))
            self._count += len(run)
            self._invalidate()
        if not queued:
            del self._elements[(Verb.ADD, s.name)]

    def delete(self, obj: Chain | Set | Map | Element) -> None:
        """Delete a chain (its rules go with it), set, map or element, which must exist."""
        op = Op(Verb.DELETE, obj)
        reason = _RECREATED if self._recreate else self._check_delete(obj)
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
        return [op for command in self._commands() for op in _ops_of(command)]

    def render(self) -> str:
        """The whole batch as nft text for one libnftables call; "" for an empty transaction."""
        if self._rendered is None:
            texts = [text for _, lines in self._rendered_commands() for text in lines]
            self._rendered = "\n".join(texts) + "\n" if texts else ""
        return self._rendered

    def render_lines(self) -> list[tuple[str, Op | None]]:
        """Each line of `render()` with the operation it came from: None for the lines that open
        and close an element command, except that an `add set ... { elements = {` line is the add
        of the set.

        Element operations on one set are one command, one element per line, so that nft's error
        location points at the element it refused."""
        if self._lines is None:
            pairs: list[tuple[str, Op | None]] = []
            for command, lines in self._rendered_commands():
                if isinstance(command, Op):
                    pairs.append((lines[0], command))
                    continue
                header_op = Op(Verb.ADD, command.definition) if command.definition is not None else None
                pairs.append((lines[0], header_op))
                pairs.extend(zip(lines[1:-1], [Op(command.verb, element) for element in command.elements]))
                pairs.append((lines[-1], None))
            self._lines = pairs
        return self._lines

    def _rendered_commands(self) -> Iterator[tuple[Op | _Elements, list[str]]]:
        """Each command of the batch, in execution order, with its lines of nft text: the one place
        where batch text is made, for `render`, `render_lines` and so `render_ruleset`."""
        for command in self._commands():
            if isinstance(command, Op):
                yield command, [render_op(self._prefix, command)]
            else:
                text = _element_text(command.verb)
                body = [f"\t{text(element)}," for element in command.elements]
                yield command, [self._element_header(command), *body, _element_footer(command)]

    @property
    def _prefix(self) -> str:
        return f"{self.table.family} {self.table.name}"

    def _element_header(self, command: _Elements) -> str:
        s = command.definition
        if s is None:
            return f"{command.verb} element {self._prefix} {command.set} {{"
        return f"add {set_keyword(s)} {self._prefix} {s.name} {{ {'; '.join(set_spec(s))}; elements = {{"

    def _commands(self) -> list[Op | _Elements]:
        """The batch in execution order: single operations, and per set the element operations of
        one verb (one nft command each). Raises the first validation error."""
        if self._err is not None:
            raise self._err
        replaced = self._added.keys() & self._deleted
        phases: list[list[Op]] = [[] for _ in _Phase]
        flushed: set[str] = set()
        for entry in self._log:
            if not isinstance(entry, Op) or type(entry.obj) is Element:
                continue  # elements come from self._elements, grouped by set
            obj = entry.obj
            if isinstance(obj, Table):
                phases[_Phase.ADD_TABLE if entry.verb is Verb.ADD else _Phase.DELETE_TABLE].append(entry)
            elif isinstance(obj, Rule):
                phases[_Phase.ADD_RULES].append(entry)
            elif entry.verb is Verb.ADD:
                phases[_Phase.DEFINE].append(entry)
            elif entry.verb is Verb.FLUSH:
                assert isinstance(obj, Chain)
                if obj.name not in flushed:
                    flushed.add(obj.name)
                    new = ("chain", obj.name) in self._added and ("chain", obj.name) not in self._deleted
                    phases[_Phase.FLUSH_NEW if new else _Phase.FLUSH].append(entry)
            else:
                assert isinstance(obj, (Chain, Set, Map))
                if isinstance(obj, Chain) and obj.name not in flushed:
                    flushed.add(obj.name)
                    phases[_Phase.FLUSH].append(Op(Verb.FLUSH, Chain(obj.name)))
                is_replaced = (_kind(obj), obj.name) in replaced
                phases[_Phase.DELETE_REPLACED if is_replaced else _Phase.REMOVE].append(entry)
        phases[_Phase.DEFINE] = _sets_first(phases[_Phase.DEFINE])
        phases[_Phase.REMOVE] = _sets_first(phases[_Phase.REMOVE])
        commands: list[Op | _Elements] = []
        if self._recreate:
            commands += [Op(Verb.ADD, self.table), Op(Verb.DELETE, self.table)]
        for phase, ops in zip(_Phase, phases):
            if phase is _Phase.DELETE_ELEMENTS or phase is _Phase.ADD_ELEMENTS:
                verb = Verb.DELETE if phase is _Phase.DELETE_ELEMENTS else Verb.ADD
                for (queued_verb, name), elements in self._elements.items():
                    if queued_verb is verb:
                        definition = self._definitions.get(name) if verb is Verb.ADD else None
                        commands.append(_Elements(verb, name, elements.values(), definition))
            else:
                commands += ops
        return commands

    def _invalidate(self) -> None:
        self._lines = None
        self._rendered = None

    def _queue(self, op: Op) -> None:
        if self._err is not None:
            return
        obj = op.obj
        if isinstance(obj, Table):
            self._table_verbs.add(op.verb)
        elif isinstance(obj, (Chain, Set, Map)) and op.verb is Verb.ADD:
            if self._added.get((_kind(obj), obj.name)) == obj:
                return  # the same definition twice: nft's add is idempotent, queue it once
            self._added[(_kind(obj), obj.name)] = obj
            if not isinstance(obj, Chain):
                self._definitions[obj.name] = obj
        elif isinstance(obj, (Chain, Set, Map)) and op.verb is Verb.DELETE:
            self._deleted.add((_kind(obj), obj.name))
        elif isinstance(obj, Rule):
            self._chains_with_rules.add(obj.chain)
        elif isinstance(obj, Element):
            self._elements.setdefault((op.verb, obj.set), {})[obj.key] = obj
        self._log.append(op)
        self._count += 1
        self._invalidate()

    def _fail(self, op: Op, reason: str) -> None:
        if self._err is None:
            self._err = TransactionError(op, reason)
            self._invalidate()

    def _element_queued(self, verb: Verb, element: Element) -> bool:
        group = self._elements.get((verb, element.set))
        return group is not None and element.key in group

    def _check_add(self, obj: object) -> str | None:
        if isinstance(obj, Chain):
            return _check_chain(obj) or self._check_redefinition(obj)
        if isinstance(obj, (Set, Map)):
            reason = _check_set(obj) or self._check_redefinition(obj)
            if not reason and self._definitions.get(obj.name, obj) != obj:
                reason = f"{set_keyword(obj)} {obj.name!r} given with different definitions"
            return reason
        if isinstance(obj, Rule):
            if not _NAME.fullmatch(obj.chain):
                return f"invalid chain name {obj.chain!r}"
            if ("chain", obj.chain) in self._deleted and ("chain", obj.chain) not in self._added:
                return f"chain {obj.chain!r} is deleted in this transaction"
            return _check_rule_text(obj.text)
        if isinstance(obj, Element):
            if ("set", obj.set) in self._deleted and ("set", obj.set) not in self._added:
                return f"set {obj.set!r} is deleted in this transaction"
            if self._element_queued(Verb.ADD, obj):
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
            if self._element_queued(Verb.ADD, obj):
                return "element was added in this transaction; delete it before adding it"
            if self._element_queued(Verb.DELETE, obj):
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
        target = self._definitions.get(element.set)
        if target is not None:
            reason = _element_mismatch(target, element, deleting=deleting)
            if reason:
                return reason
        if not deleting and element.value is not None:
            return _check_value(element.value)
        return None


_RECREATED = "the table is re-created in this transaction: there is nothing to delete"


def _element_mismatch(s: Set | Map, element: Element, *, deleting: bool = False) -> str:
    """Why `element` does not fit `s` ("" if it does)."""
    if element.set != s.name:
        return f"element of set {element.set!r} given for {set_keyword(s)} {s.name!r}"
    try:
        check_key(s.name, s.type, element.key, interval=SetFlag.INTERVAL in s.flags)
    except ValueError as e:
        return str(e)
    if not deleting and isinstance(s, Map) != (element.value is not None):
        return "a map element needs a value and a set element must have none"
    return ""


def _ops_of(entry: Op | _Elements) -> Iterable[Op]:
    return (entry,) if isinstance(entry, Op) else (Op(entry.verb, element) for element in entry.elements)


def _element_footer(command: _Elements) -> str:
    return "} }" if command.definition is not None else "}"


def _element_text(verb: Verb) -> Callable[[Element], str]:
    """What an element command lists per element: everything for an add, the key for a delete."""
    return element_text if verb is Verb.ADD else _key_only


def _key_only(element: Element) -> str:
    return key_text(element.key)


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


def _sets_first(ops: list[Op]) -> list[Op]:
    return [op for op in ops if isinstance(op.obj, (Set, Map))] + [op for op in ops if isinstance(op.obj, Chain)]


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
