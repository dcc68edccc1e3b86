"""An in-memory kernel with the same interface as `NftRunner`, for tests of everything above nft/.

`FakeNft` applies a transaction's operations, in the order the transaction renders them, to a copy
of its tables and swaps the copy in only if every operation succeeded, as the kernel's atomic
commit does. It refuses what the kernel refuses (checked against nft 1.0.6): dangling `jump`,
`goto`, `@set` and `vmap @map` references, deleting a missing or still-used object, re-adding a
set or base chain with another definition, a map element whose key exists with another value, a
range in a set without `flags interval`, and overlapping elements in interval sets (concatenated
ones included). Its errors are `NftError`s worded like nft's, pointing at the batch line.
"""

from __future__ import annotations

import functools
import heapq
import re
from dataclasses import dataclass

from nft.datatypes import check_key, field_bounds
from nft.diff import render_ruleset, same_set
from nft.errors import NftError
from nft.objects import Chain, Counter, Counters, Element, KeyField, Map, Rule, Ruleset, Set, SetFlag, Table
from nft.render import clean_comment, normalize_value, rule_human_comment
from nft.transaction import Op, Transaction, Verb

_BATCH_NAME = "fake-batch"
_SET_REFERENCE = re.compile(r"@([A-Za-z0-9_.\-]+)")
_CHAIN_REFERENCE = re.compile(r"\b(?:jump|goto)\s+([A-Za-z0-9_.\-]+)")

ENOENT = "Could not process rule: No such file or directory"
EEXIST = "Could not process rule: File exists"
EBUSY = "Could not process rule: Device or resource busy"
EOPNOTSUPP = "Could not process rule: Operation not supported"


@dataclass
class _Refused(Exception):
    """One operation the fake kernel refuses; `op` is the element to blame inside an element command."""

    message: str
    op: Op | None = None


class FakeNft:
    """A fake of `NftRunner`: apply/check/read/read_counters, sync and async, plus inspection.

    `transactions` lists every committed transaction. `fail_next(n, error)` makes the next `n`
    `apply` calls raise `error` (an NftError by default) without changing anything; `heal()` forgets
    those still pending. `refuse(text)` makes it refuse, for good, every batch with a line containing
    `text` (in `apply` and `check`), as a kernel refuses content it cannot take.
    """

    def __init__(self) -> None:
        self._tables: dict[Table, Ruleset] = {}
        self._next_handle = 1
        self._failures: list[BaseException] = []
        self._refused: list[str] = []
        self.transactions: list[Transaction] = []

    def fail_next(self, n: int = 1, error: BaseException | None = None) -> None:
        """The next `n` calls of `apply` fail with `error` and change nothing."""
        injected = error or NftError(1, "Error: Could not process rule: Cannot allocate memory (injected)")
        self._failures.extend([injected] * n)

    def heal(self) -> None:
        """Forget the failures `fail_next` still holds: the next `apply` succeeds."""
        self._failures.clear()

    def refuse(self, text: str) -> None:
        """From now on, refuse every batch with a line containing `text` (EOPNOTSUPP, at that line)."""
        self._refused.append(text)

    def apply(self, tx: Transaction) -> None:
        lines = tx.render_lines()  # raises the transaction's validation error, as the runner does
        if not lines:
            return
        if self._failures:
            raise self._failures.pop(0)
        table, handle = self._run(tx, lines, "nft transaction")
        self._swap(tx.table, table)
        self._next_handle = handle
        self.transactions.append(tx)

    def check(self, tx: Transaction) -> None:
        lines = tx.render_lines()
        if lines:
            self._run(tx, lines, "nft check")

    def read(self, table: Table, *, elements: bool = True) -> Ruleset | None:
        """A copy of the table; with `elements=False` its sets and maps are empty, as the runner's."""
        current = self._tables.get(table)
        return _copy(current, with_elements=elements) if current is not None else None

    def read_counters(self, table: Table) -> Counters | None:
        """Zero counters for every rule we wrote and every element of a set with `counter`."""
        current = self._tables.get(table)
        if current is None:
            return None
        counters = Counters()
        for chain, rules in current.rules.items():
            for rule in rules:
                if rule.kernel_fingerprint is not None:
                    counters.rules[(chain, rule.kernel_fingerprint)] = Counter()
        for name, s in current.sets.items():
            if isinstance(s, Set) and s.counter:
                for key in current.elements[name]:
                    counters.elements[(name, key)] = Counter()
        return counters

    def dump(self) -> str:
        """Every table as `render_ruleset` text, sorted: what `nft -f` would load to get this state."""
        return "".join(render_ruleset(self._tables[t]) for t in sorted(self._tables, key=lambda t: (t.family, t.name)))

    async def apply_async(self, tx: Transaction) -> None:
        self.apply(tx)

    async def check_async(self, tx: Transaction) -> None:
        self.check(tx)

    async def read_async(self, table: Table, *, elements: bool = True) -> Ruleset | None:
        return self.read(table, elements=elements)

    async def read_counters_async(self, table: Table) -> Counters | None:
        return self.read_counters(table)

    def _swap(self, table: Table, content: Ruleset | None) -> None:
        if content is None:
            self._tables.pop(table, None)
        else:
            self._tables[table] = content

    def _run(self, tx: Transaction, lines: list[tuple[str, Op | None]], what: str) -> tuple[Ruleset | None, int]:
        current = self._tables.get(tx.table)
        kernel = _Kernel(tx.table, _copy(current) if current is not None else None, self._next_handle)
        batch = "".join(text + "\n" for text, _ in lines)
        for n, (text, _) in enumerate(lines):
            if any(needle in text for needle in self._refused):
                raise _error(batch, lines, n, EOPNOTSUPP, what)
        i = 0
        while i < len(lines):
            op = lines[i][1]
            if op is None or not isinstance(op.obj, Element):
                # One command, or the line that opens an element command (`add set ... {` adds the
                # set as it goes) or closes one.
                if op is not None:
                    try:
                        kernel.single(op)
                    except _Refused as refused:
                        raise _error(batch, lines, i, refused.message, what) from None
                i += 1
                continue
            # The elements of one command, one per line: checked together, like nft does.
            end = i
            while end < len(lines) and (o := lines[end][1]) is not None and isinstance(o.obj, Element):
                end += 1
            group = [op for _, op in lines[i:end] if op is not None]
            try:
                kernel.elements(group, set_form=lines[i - 1][1] is not None)
            except _Refused as refused:
                where = next((j for j in range(i, end) if lines[j][1] is refused.op), i - 1)
                raise _error(batch, lines, where, refused.message, what) from None
            i = end
        return kernel.table, kernel.next_handle


class _Kernel:
    """The state of one table during one transaction, changed op by op like the kernel's."""

    def __init__(self, table: Table, content: Ruleset | None, next_handle: int) -> None:
        self.name = table
        self.table = content
        self.next_handle = next_handle

    def single(self, op: Op) -> None:
        obj = op.obj
        if isinstance(obj, Table):
            if op.verb is Verb.ADD:
                self.table = self.table or Ruleset(obj)
            elif self.table is None:
                raise _Refused(ENOENT)
            else:
                self.table = None
            return
        rs = self._existing()
        if isinstance(obj, Chain):
            {Verb.ADD: self._add_chain, Verb.DELETE: self._delete_chain, Verb.FLUSH: self._flush}[op.verb](rs, obj)
        elif isinstance(obj, (Set, Map)):
            (self._add_set if op.verb is Verb.ADD else self._delete_set)(rs, obj)
        elif isinstance(obj, Rule):
            self._add_rule(rs, obj)

    def elements(self, ops: list[Op], *, set_form: bool) -> None:
        """One element command. `set_form`: an `add set ... { elements = ... }` command, whose
        elements nft leaves to the kernel to check against the set's existing ones."""
        rs = self._existing()
        elements = [op.obj for op in ops if isinstance(op.obj, Element)]
        name = elements[0].set
        s = rs.sets.get(name)
        if s is None:
            raise _Refused(ENOENT)
        current = rs.elements[name]
        if ops[0].verb is Verb.DELETE:
            for op, element in zip(ops, elements):
                if element.key not in current:
                    # nft looks up interval elements in its own cache before the kernel does.
                    raise _Refused("element does not exist" if SetFlag.INTERVAL in s.flags else ENOENT, op)
                del current[element.key]
            return
        interval = SetFlag.INTERVAL in s.flags
        fresh: list[tuple[KeyField, ...]] = []
        for op, element in zip(ops, elements):
            try:
                check_key(name, s.type, element.key, interval=interval)
            except ValueError as e:
                raise _Refused(str(e), op) from None
            if isinstance(s, Map) != (element.value is not None):
                raise _Refused("map elements need a value, set elements take none", op)
            value = normalize_value(element.value) if element.value is not None else None
            if value is not None:
                self._check_target(rs, value, op)
            existing = current.get(element.key)
            if existing is not None:
                if existing.value != value:
                    raise _Refused(EEXIST, op)
                continue  # nft's add leaves an existing element (and its comment) alone
            current[element.key] = Element(name, element.key, value, clean_comment(element.comment))
            fresh.append(element.key)
        if interval and fresh:
            clash = _overlap(list(current), set(fresh))
            if clash is not None:
                key, with_fresh = clash
                blamed = next(op for op, element in zip(ops, elements) if element.key == key)
                if len(s.type) > 1:
                    raise _Refused(EEXIST, blamed)  # concatenations: the kernel's check
                if with_fresh:
                    raise _Refused("conflicting intervals specified", blamed)
                # nft checks against the set's elements it fetched for `add element`, not for `add set`
                raise _Refused(EEXIST if set_form else "interval overlaps with an existing one", blamed)

    def _existing(self) -> Ruleset:
        if self.table is None:
            raise _Refused(ENOENT)
        return self.table

    def _add_chain(self, rs: Ruleset, chain: Chain) -> None:
        have = rs.chains.get(chain.name)
        if have is None:
            rs.add_chain(chain)
        elif not chain.is_base or have == chain:
            return
        elif have.is_base and (have.type, have.hook, have.priority) == (chain.type, chain.hook, chain.priority):
            rs.chains[chain.name] = chain  # a policy change updates the chain in place
        else:
            raise _Refused(EOPNOTSUPP)

    def _delete_chain(self, rs: Ruleset, chain: Chain) -> None:
        if chain.name not in rs.chains:
            raise _Refused(ENOENT)
        if rs.rules[chain.name] or chain.name in _chain_users(rs):
            raise _Refused(EBUSY)
        del rs.chains[chain.name]
        del rs.rules[chain.name]

    def _flush(self, rs: Ruleset, chain: Chain) -> None:
        if chain.name not in rs.chains:
            raise _Refused(ENOENT)
        rs.rules[chain.name] = []

    def _add_set(self, rs: Ruleset, s: Set | Map) -> None:
        have = rs.sets.get(s.name)
        if have is None:
            rs.add_set(s)
        elif not same_set(have, s):
            raise _Refused(EEXIST)

    def _delete_set(self, rs: Ruleset, s: Set | Map) -> None:
        if s.name not in rs.sets:
            raise _Refused(ENOENT)
        if any(s.name in _sets_used(r.text) for rules in rs.rules.values() for r in rules):
            raise _Refused(EBUSY)
        del rs.sets[s.name]
        del rs.elements[s.name]

    def _add_rule(self, rs: Ruleset, rule: Rule) -> None:
        if rule.chain not in rs.chains:
            raise _Refused(ENOENT)
        for name in _sets_used(rule.text):
            if name not in rs.sets:
                raise _Refused(ENOENT)
        for name in _chains_used(rule.text):
            self._check_chain_target(rs, name)
        listed = Rule(
            rule.chain,
            rule.text,
            rule_human_comment(rule),
            handle=self.next_handle,
            kernel_fingerprint=rule.claimed_fingerprint,
        )
        self.next_handle += 1
        rs.rules[rule.chain].append(listed)

    def _check_target(self, rs: Ruleset, value: str, op: Op) -> None:
        for name in _chains_used(value):
            try:
                self._check_chain_target(rs, name)
            except _Refused as refused:
                raise _Refused(refused.message, op) from None

    @staticmethod
    def _check_chain_target(rs: Ruleset, name: str) -> None:
        target = rs.chains.get(name)
        if target is None:
            raise _Refused(ENOENT)
        if target.is_base:
            raise _Refused(EOPNOTSUPP)


@functools.lru_cache(maxsize=65536)
def _sets_used(text: str) -> frozenset[str]:
    return frozenset(_SET_REFERENCE.findall(text))


@functools.lru_cache(maxsize=65536)
def _chains_used(text: str) -> frozenset[str]:
    return frozenset(_CHAIN_REFERENCE.findall(text))


def _chain_users(rs: Ruleset) -> set[str]:
    """Names of chains something jumps to: rules and map element verdicts."""
    used: set[str] = set()
    for rules in rs.rules.values():
        for rule in rules:
            used |= _chains_used(rule.text)
    for name, s in rs.sets.items():
        if isinstance(s, Map):
            for element in rs.elements[name].values():
                if element.value:
                    used |= _chains_used(element.value)
    return used


def _overlap(
    keys: list[tuple[KeyField, ...]], fresh: set[tuple[KeyField, ...]]
) -> tuple[tuple[KeyField, ...], bool] | None:
    """A newly added key that overlaps another key in every field, and whether that other key is
    new too; None if there is none.

    A sweep over the first field: only keys whose first-field intervals intersect are compared."""
    bounds = sorted(((tuple(field_bounds(f) for f in key), key) for key in keys), key=lambda b: b[0][0])
    active: list[tuple[int, int, tuple[tuple[int, int], ...], tuple[KeyField, ...]]] = []
    for serial, (b, key) in enumerate(bounds):
        lo = b[0][0]
        while active and active[0][0] < lo:
            heapq.heappop(active)
        for _, _, other_b, other in active:
            if (key in fresh or other in fresh) and all(x[0] <= y[1] and y[0] <= x[1] for x, y in zip(b, other_b)):
                return (key, other in fresh) if key in fresh else (other, False)
        heapq.heappush(active, (b[0][1], serial, b, key))
    return None


def _copy(rs: Ruleset, *, with_elements: bool = True) -> Ruleset:
    """A copy deep enough to change independently (the objects themselves are frozen)."""
    return Ruleset(
        rs.table,
        dict(rs.chains),
        {name: list(rules) for name, rules in rs.rules.items()},
        dict(rs.sets),
        {name: dict(elements) if with_elements else {} for name, elements in rs.elements.items()},
    )


def _error(batch: str, lines: list[tuple[str, Op | None]], index: int, message: str, what: str) -> NftError:
    text = lines[index][0]
    width = max(1, len(text.strip()))
    indent = len(text) - len(text.lstrip())
    stderr = f"{_BATCH_NAME}:{index + 1}:{indent + 1}-{indent + width}: Error: {message}\n{text}\n"
    stderr += " " * indent + "^" * width
    return NftError.from_batch(1, stderr, batch, what=what)
