"""Turns nft's listing of one table back into a `Ruleset` and its `Counters`.

The input is the text listing with handles and numeric output (`nft -a -n list table inet cfnft`
with numeric protocols, symbols and priorities, so that set elements are plain numbers, addresses,
prefixes and ranges). We parse the text rather than libnftables' JSON because of cost: for a full
cell (20 sets of 1,000 concatenated interval elements with counters, 250 chains) libnftables takes
about 0.2 s to print the text listing but 0.7-0.9 s to print the JSON one, before Python spends
further time decoding it; text keeps a whole read well under a second. The grammar we accept is
the small one nft/ writes; anything else in the table is reported as a ReadbackError rather than
silently misread. Rule text is kept as nft prints it; what diff needs is the fingerprint in the
rule's comment.
"""

from __future__ import annotations

import gc
import re
import socket
from ipaddress import IPv4Address, IPv6Address

from nft.datatypes import DATATYPES, FieldKind
from nft.errors import ReadbackError
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
    KeyField,
    Map,
    Policy,
    Rule,
    Ruleset,
    Set,
    SetFlag,
    Table,
)

_TABLE = re.compile(r"table (\S+) (\S+) \{(?: # handle \d+)?")
_BLOCK = re.compile(r"\t(set|map|chain) (\S+) \{(?: # handle \d+)?")
_BASE_CHAIN = re.compile(r"\t\ttype (\S+) hook (\S+) priority (-?\d+);(?: policy (\S+);)?")
_RULE = re.compile(r'\t\t(.*?)(?: comment "([^"]*)")? # handle (\d+)')
_COMMENT_LINE = re.compile(r'\t\tcomment "[^"]*"')
_COUNTER = re.compile(r"counter packets (\d+) bytes (\d+)")
_TAGGED_COMMENT = re.compile(r"^(?:(.*) )?\[([0-9a-f]{8})\]$", re.DOTALL)
# One element: key fields (no spaces inside a field) joined by " . ", then the optional parts in
# the order nft prints them. Written without lazy quantifiers: this runs once per element.
_ELEMENT = re.compile(
    r'\s*(?P<key>[^\s,"]+(?: \. [^\s,"]+)*)(?: counter packets (?P<packets>\d+) bytes (?P<bytes>\d+))?'
    r'(?: comment "(?P<comment>[^"]*)")?(?: : (?P<value>[^\s,"]+(?: [^\s,"]+)?))?\s*(?:,|$)'
)


def split_comment(comment: str | None) -> tuple[str | None, str | None]:
    """A kernel rule comment as (human comment, fingerprint); the fingerprint is None if absent."""
    if comment is None:
        return None, None
    match = _TAGGED_COMMENT.match(comment)
    if match is None:
        return comment or None, None
    return match.group(1) or None, match.group(2)


def table_block(listing: str, table: Table) -> str | None:
    """The lines of `table` in a listing of several tables (`list ruleset`), or None if absent.

    nft starts each table with `table <family> <name> {` and ends it with `}` at the start of a
    line; everything inside is indented."""
    header = f"table {table.family} {table.name} {{"
    if listing.startswith(header):
        start = 0
    else:
        found = listing.find("\n" + header)
        if found < 0:
            return None
        start = found + 1
    end = listing.find("\n}", start)
    if end < 0:
        raise ReadbackError(f"table {table.name}", "listing ends inside the table")
    return listing[start : end + 2]


def parse_listing(listing: str) -> tuple[Ruleset, Counters]:
    """The table in `listing` (one `list table` with handles and numeric output) and its counters."""
    # A full cell is ~100k small objects; the cyclic collector would rescan them many times over
    # while they are built (a third of the parse time) and none of them can form a cycle.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Parser(listing).parse()
    finally:
        if was_enabled:
            gc.enable()


class _Parser:
    def __init__(self, listing: str) -> None:
        self.lines = listing.split("\n")
        self.i = 0
        self.counters = Counters()
        # Element fields repeat a lot (ports, protocols); one cache per kind, keyed by text.
        self._fields: dict[FieldKind, dict[str, KeyField]] = {kind: {} for kind in FieldKind}

    def parse(self) -> tuple[Ruleset, Counters]:
        header = _TABLE.fullmatch(self._next())
        if header is None:
            raise ReadbackError("listing", f"expected a table header, got {self.lines[0]!r}")
        try:
            rs = Ruleset(Table(Family(header.group(1)), header.group(2)))
        except ValueError as e:
            raise ReadbackError("listing", str(e)) from None
        while True:
            line = self._next()
            if line == "}":
                return rs, self.counters
            if not line:
                continue
            block = _BLOCK.fullmatch(line)
            if block is None:
                raise ReadbackError(f"table {rs.table.name}", f"unexpected line {line!r}")
            kind, name = block.groups()
            if kind == "chain":
                self._chain(rs, name)
            else:
                self._set(rs, kind, name)

    def _next(self) -> str:
        if self.i >= len(self.lines):
            raise ReadbackError("listing", "ends inside a block")
        line = self.lines[self.i]
        self.i += 1
        return line

    def _chain(self, rs: Ruleset, name: str) -> None:
        rs.add_chain(Chain(name))
        while (line := self._next()) != "\t}":
            rule = _RULE.fullmatch(line)
            if rule is not None:
                self._rule(rs, name, *rule.groups())
                continue
            if _COMMENT_LINE.fullmatch(line):
                continue  # chain comments are not modelled (nor listed in nft's JSON)
            base = _BASE_CHAIN.fullmatch(line)
            if base is None:
                raise ReadbackError(f"chain {name!r}", f"unexpected line {line!r}")
            try:
                type_, hook, prio, policy = base.groups()
                chain = Chain(name, ChainType(type_), Hook(hook), int(prio), Policy(policy) if policy else None)
            except ValueError as e:
                raise ReadbackError(f"chain {name!r}", str(e)) from None
            rs.chains[name] = chain

    def _rule(self, rs: Ruleset, chain: str, text: str, comment: str | None, handle: str) -> None:
        human, fingerprint = split_comment(comment)
        counter = _COUNTER.search(text)
        if counter is not None:
            text = _COUNTER.sub("counter", text)  # rule text must not change as packets flow
            if fingerprint is not None:
                key = (chain, fingerprint)
                value = Counter(int(counter.group(1)), int(counter.group(2)))
                self.counters.rules[key] = self.counters.rules.get(key, Counter()) + value
        rs.rules[chain].append(Rule(chain, text, human, handle=int(handle), kernel_fingerprint=fingerprint))

    def _set(self, rs: Ruleset, kind: str, name: str) -> None:
        where = f"{kind} {name!r}"
        types: tuple[str, ...] = ()
        value_type = None
        flags: tuple[SetFlag, ...] = ()
        counter = False
        timeout: int | None = None
        size: int | None = None
        elements = ""
        while (line := self._next()) != "\t}":
            body = line.strip()
            try:
                if body.startswith("type "):
                    key, _, value_type = body[5:].partition(" : ")
                    types = tuple(key.split(" . "))
                elif _COMMENT_LINE.fullmatch(line):
                    continue
                elif body.startswith("flags "):
                    flags = tuple(SetFlag(f.strip()) for f in body[6:].split(","))
                elif body == "counter":
                    counter = True
                elif body.startswith("timeout "):
                    timeout = _seconds(body[8:])
                elif body.startswith("size "):
                    size = _int(body[5:])
                elif body.startswith("elements = {"):
                    elements = self._element_block(body[len("elements = {") :])
                else:
                    raise ValueError(f"unexpected line {line!r}")
            except ValueError as e:
                raise ReadbackError(where, str(e)) from None
        if not types:
            raise ReadbackError(where, "no type line")
        if kind == "map" and not value_type:
            raise ReadbackError(where, "no value type on the type line")
        s: Set | Map = (
            Map(name, types, value_type or "", flags)
            if kind == "map"
            else Set(name, types, flags, counter, timeout, size)
        )
        rs.add_set(s)
        if isinstance(s, Set) and s.is_dynamic:
            return  # the kernel's elements (a meter's), with state of their own: not ours to read
        # A set of a datatype nft/ does not model is not ours: it is read without its elements,
        # which is all diff needs to delete it (or to re-create it with our definition).
        if elements and all(t in DATATYPES for t in types):
            self._elements(rs, s, elements)

    def _element_block(self, first: str) -> str:
        # The block ends at the first line ending in " }" outside a quoted comment; nft wraps
        # long blocks with continuation lines that start with whitespace.
        parts = [first]
        while not (parts[-1].endswith("}") and "".join(parts).count('"') % 2 == 0):
            parts.append(self._next().strip())
        return " ".join(parts)[:-1].strip()

    def _elements(self, rs: Ruleset, s: Set | Map, text: str) -> None:
        kinds = [DATATYPES[t].kind for t in s.type]
        store = rs.elements[s.name]
        pos = 0
        while pos < len(text):
            m = _ELEMENT.match(text, pos)
            if m is None or m.end() == pos:
                raise ReadbackError(f"set {s.name!r}", f"cannot parse elements at {text[pos : pos + 80]!r}")
            pos = m.end()
            fields = m.group("key").split(" . ")
            if len(fields) != len(kinds):
                raise ReadbackError(f"set {s.name!r}", f"element {m.group('key')!r} does not match type {s.type}")
            try:
                key = tuple(self._field(kind, f) for kind, f in zip(kinds, fields))
            except ValueError as e:
                raise ReadbackError(f"set {s.name!r}", f"element {m.group('key')!r}: {e}") from None
            value = m.group("value")
            if isinstance(s, Map) != (value is not None):
                raise ReadbackError(f"set {s.name!r}", f"element {m.group(0).strip()!r}: value does not fit")
            store[key] = Element(s.name, key, value, m.group("comment"))
            if m.group("packets") is not None:
                self.counters.elements[(s.name, key)] = Counter(int(m.group("packets")), int(m.group("bytes")))

    def _field(self, kind: FieldKind, text: str) -> KeyField:
        cache = self._fields[kind]
        cached = cache.get(text)
        if cached is None:
            cached = cache[text] = _parse_field(kind, text)
        return cached


def _parse_field(kind: FieldKind, text: str) -> KeyField:
    if kind is FieldKind.INTEGER:
        lo, _, hi = text.partition("-")
        return IntRange(_int(lo), _int(hi or lo))
    parse = _ipv4 if kind is FieldKind.IPV4 else _ipv6
    if "/" in text:
        addr, _, length = text.partition("/")
        start = parse(addr)
        size = 1 << (start.max_prefixlen - int(length))
        if int(start) % size:
            raise ValueError(f"{text} is not a network address")
        return AddrRange(start, type(start)(int(start) + size - 1))
    lo, _, hi = text.partition("-")
    start = parse(lo)
    return AddrRange(start, parse(hi) if hi else start)


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")


def _seconds(text: str) -> int:
    """nft's spelling of a duration (`10s`, `1m10s`, `1h`) in whole seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or not text.strip():
        raise ValueError(f"not a duration: {text!r}")
    days, hours, minutes, seconds, _ms = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a number (the listing must be numeric)") from None


# Through inet_pton: several times faster than ipaddress' own string parsing, which dominates
# the read of a big table otherwise.
def _ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _ipv6(text: str) -> IPv6Address:
    try:
        return IPv6Address(int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big"))
    except OSError:
        raise ValueError(f"{text!r} is not an IPv6 address") from None
