"""Turns libnftables' listing of one table back into a `Ruleset` (and its counters).

Input is the JSON listing (`nft -j list table ...`, asked with numeric output so that protocols,
ICMP types and priorities arrive as numbers) plus, for rule text, the terse, stateless text
listing with handles (`nft -t -s -a list table ...`): nft's JSON for a rule is an expression tree,
and only nft itself prints it back as the syntax people read. Rules are matched across the two
listings by handle. What `diff` needs from a rule is the fingerprint in its comment.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

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

_RULE_LINE = re.compile(r'^\t\t(.*?)(?: comment "[^"]*")? # handle (\d+)$', re.MULTILINE)
_TAGGED_COMMENT = re.compile(r"^(?:(.*) )?\[([0-9a-f]{8})\]$", re.DOTALL)

Json = dict[str, Any]


def parse_rule_texts(listing: str) -> dict[int, str]:
    """Rule handle -> rule text (without comment) from a `-t -s -a` text listing."""
    return {int(m.group(2)): m.group(1) for m in _RULE_LINE.finditer(listing)}


def split_comment(comment: str | None) -> tuple[str | None, str | None]:
    """A kernel rule comment as (human comment, fingerprint); the fingerprint is None if absent."""
    if comment is None:
        return None, None
    match = _TAGGED_COMMENT.match(comment)
    if match is None:
        return comment or None, None
    return match.group(1) or None, match.group(2)


def parse_ruleset(listing_json: str | Json, rule_texts: dict[int, str]) -> Ruleset:
    """The `Ruleset` of the one table in `listing_json`. Raises ReadbackError on anything it cannot map."""
    objects = _objects(listing_json)
    table = _table(objects)
    rs = Ruleset(table)
    chains = [o["chain"] for o in objects if "chain" in o]
    for chain in chains:
        rs.add_chain(_chain(chain))
    for obj in objects:
        kind = "set" if "set" in obj else "map" if "map" in obj else None
        if kind is None:
            continue
        s = _set(obj[kind], kind)
        rs.add_set(s)
        for element, _ in _elements(obj[kind], s):
            rs.elements[s.name][element.key] = element
    for obj in objects:
        if "rule" not in obj:
            continue
        raw = obj["rule"]
        handle = raw["handle"]
        if handle not in rule_texts:
            raise ReadbackError(f"rule {handle} of chain {raw['chain']!r}", "not in the text listing (table changed?)")
        human, fingerprint = split_comment(raw.get("comment"))
        rs.rules[raw["chain"]].append(
            Rule(raw["chain"], rule_texts[handle], human, handle=handle, kernel_fingerprint=fingerprint)
        )
    return rs


def parse_counters(listing_json: str | Json) -> Counters:
    """Counter values of the rules we wrote (by chain and fingerprint) and of set elements."""
    objects = _objects(listing_json)
    counters = Counters()
    for obj in objects:
        kind = "set" if "set" in obj else "map" if "map" in obj else None
        if kind is not None:
            s = _set(obj[kind], kind)
            for element, counter in _elements(obj[kind], s):
                if counter is not None:
                    counters.elements[(s.name, element.key)] = counter
        elif "rule" in obj:
            raw = obj["rule"]
            _, fingerprint = split_comment(raw.get("comment"))
            values = [e["counter"] for e in raw.get("expr", []) if isinstance(e.get("counter"), dict)]
            if fingerprint is None or not values:
                continue
            key = (raw["chain"], fingerprint)
            counter = Counter(values[0]["packets"], values[0]["bytes"])
            counters.rules[key] = counters.rules.get(key, Counter()) + counter
    return counters


def _objects(listing_json: str | Json) -> list[Json]:
    data = json.loads(listing_json) if isinstance(listing_json, str) else listing_json
    try:
        return list(data["nftables"])
    except (KeyError, TypeError):
        raise ReadbackError("listing", "no 'nftables' array in libnftables' JSON") from None


def _table(objects: list[Json]) -> Table:
    tables = [o["table"] for o in objects if "table" in o]
    if len(tables) != 1:
        raise ReadbackError("listing", f"expected one table, found {len(tables)}")
    return Table(Family(tables[0]["family"]), tables[0]["name"])


def _chain(raw: Json) -> Chain:
    if "hook" not in raw:
        return Chain(raw["name"])
    try:
        policy = Policy(raw["policy"]) if "policy" in raw else None
        return Chain(raw["name"], ChainType(raw["type"]), Hook(raw["hook"]), int(raw["prio"]), policy)
    except (KeyError, ValueError) as e:
        raise ReadbackError(f"chain {raw.get('name')!r}", f"unexpected base chain definition {raw}: {e}") from None


def _set(raw: Json, kind: str) -> Set | Map:
    name = raw["name"]
    types = tuple(raw["type"]) if isinstance(raw["type"], list) else (raw["type"],)
    for type_name in types:
        if type_name not in DATATYPES:
            raise ReadbackError(f"{kind} {name!r}", f"key datatype {type_name!r} is not one nft/ models")
    try:
        flags = tuple(SetFlag(f) for f in raw.get("flags", []))
    except ValueError as e:
        raise ReadbackError(f"{kind} {name!r}", str(e)) from None
    if kind == "map":
        return Map(name, types, raw["map"], flags)
    counter = any("counter" in stmt for stmt in raw.get("stmt", []))
    return Set(name, types, flags, counter)


def _elements(raw: Json, s: Set | Map) -> Iterable[tuple[Element, Counter | None]]:
    kinds = [DATATYPES[t].kind for t in s.type]
    for item in raw.get("elem", []):
        value: str | None = None
        if isinstance(s, Map):
            item, raw_value = item
            value = _value(raw_value, s)
        comment = None
        counter = None
        if isinstance(item, dict) and "elem" in item:
            wrapped = item["elem"]
            item = wrapped["val"]
            comment = wrapped.get("comment")
            if isinstance(wrapped.get("counter"), dict):
                counter = Counter(wrapped["counter"]["packets"], wrapped["counter"]["bytes"])
        fields = item["concat"] if isinstance(item, dict) and "concat" in item else [item]
        if len(fields) != len(kinds):
            raise ReadbackError(f"set {s.name!r}", f"element {item} does not match the key type {s.type}")
        try:
            key = tuple(_field(f, k) for f, k in zip(fields, kinds))
        except (ValueError, KeyError, TypeError) as e:
            raise ReadbackError(f"set {s.name!r}", f"element {item}: {e}") from None
        yield Element(s.name, key, value, comment), counter


_ADDRESS_CLASS = {FieldKind.IPV4: ipaddress.IPv4Address, FieldKind.IPV6: ipaddress.IPv6Address}


def _field(raw: Any, kind: FieldKind) -> KeyField:
    if kind is FieldKind.INTEGER:
        if isinstance(raw, dict):
            lo, hi = raw["range"]
            return IntRange(_int(lo), _int(hi))
        return IntRange.single(_int(raw))
    cls = _ADDRESS_CLASS[kind]
    if isinstance(raw, str):
        return AddrRange.single(cls(raw))
    if "prefix" in raw:
        start = cls(raw["prefix"]["addr"])
        size = 1 << (start.max_prefixlen - raw["prefix"]["len"])
        return AddrRange(start, cls(int(start) + size - 1))
    lo, hi = raw["range"]
    return AddrRange(cls(lo), cls(hi))


def _int(raw: Any) -> int:
    if isinstance(raw, int):
        return raw
    # Numeric output is on, so a name here means a datatype printed symbolically regardless.
    try:
        return int(raw, 0)
    except (TypeError, ValueError):
        raise ValueError(f"{raw!r} is not a number (list with numeric output)") from None


def _value(raw: Any, m: Map) -> str:
    if isinstance(raw, dict) and len(raw) == 1:
        verdict, arg = next(iter(raw.items()))
        if isinstance(arg, dict) and "target" in arg:
            return f"{verdict} {arg['target']}"
        return str(verdict)
    if isinstance(raw, (int, str)):
        return str(_int(raw)) if m.value_type != "verdict" else str(raw)
    raise ReadbackError(f"map {m.name!r}", f"unexpected value {raw!r}")
