"""nft syntax for the typed objects: the pieces of a transaction's batch (nft/transaction.py
renders every batch from them, `render_ruleset` included) and the forms read-back compares.

Everything here is a pure function of the objects.
"""

from __future__ import annotations

from nft.datatypes import check_key, field_bounds, key_text
from nft.objects import Chain, Element, KeyField, Map, Rule, Set, SetFlag

# The kernel keeps at most 128 bytes of comment (NFT_USERDATA_MAXLEN); nft rejects longer ones.
COMMENT_MAX_BYTES = 128
_FINGERPRINT_SUFFIX_BYTES = len(" [01234567]")
RULE_HUMAN_COMMENT_MAX_BYTES = COMMENT_MAX_BYTES - _FINGERPRINT_SUFFIX_BYTES


def render_key(set_type: tuple[str, ...], key: tuple[KeyField, ...]) -> str:
    """One set key in nft syntax, e.g. `10.0.0.0/8 . 6 . 80-443`. Raises ValueError if it does not fit."""
    check_key(None, set_type, key, interval=True)
    return key_text(key)


def key_order(key: tuple[KeyField, ...]) -> tuple[tuple[int, int], ...]:
    """Sort key ordering set elements numerically, as the kernel does."""
    return tuple(field_bounds(f) for f in key)


def clean_comment(text: str | None, max_bytes: int = COMMENT_MAX_BYTES) -> str | None:
    """A comment as the kernel will keep it: no double quotes (nft has no escape for them), no
    control characters, whitespace collapsed, cut to `max_bytes` of UTF-8. Empty becomes None."""
    if text is None:
        return None
    if len(text) <= max_bytes and text.isascii() and text.isprintable() and _already_clean(text):
        return text or None
    printable = "".join(" " if ch < " " or ch == "\x7f" else ch for ch in text.replace('"', "'"))
    collapsed = " ".join(printable.split())
    cut = collapsed.encode()[:max_bytes].decode("utf-8", "ignore").rstrip()
    return cut or None


def _already_clean(text: str) -> bool:
    return '"' not in text and "  " not in text and text == text.strip()


def rule_human_comment(rule: Rule) -> str | None:
    """The human part of a rule's comment as it reads back from the kernel."""
    return clean_comment(rule.comment, RULE_HUMAN_COMMENT_MAX_BYTES)


def rule_comment(rule: Rule) -> str:
    """The comment written with a rule: `<human comment> [<fingerprint>]`, or `[<fingerprint>]`."""
    human = rule_human_comment(rule)
    # A rule read back keeps the fingerprint it was written with; its text is nft's spelling.
    fingerprint = rule.claimed_fingerprint or rule.fingerprint
    return f"{human} [{fingerprint}]" if human else f"[{fingerprint}]"


def rule_statement(rule: Rule) -> str:
    """A rule's body with its comment, as written after `add rule <table> <chain>` or inside a chain block."""
    return f'{rule.text} comment "{rule_comment(rule)}"'


def element_text(element: Element) -> str:
    """One element as written in `elements = { ... }` or `add element`: key, comment, map value."""
    text = key_text(element.key)
    comment = clean_comment(element.comment)
    if comment:
        text += f' comment "{comment}"'
    if element.value is not None:
        text += f" : {normalize_value(element.value)}"
    return text


def normalize_value(value: str) -> str:
    """A map value with its whitespace collapsed (`jump  x` and `jump x` are the same verdict)."""
    return " ".join(value.split())


def set_keyword(s: Set | Map) -> str:
    return "map" if isinstance(s, Map) else "set"


def set_spec(s: Set | Map) -> list[str]:
    """The declaration statements of a set or map, e.g. ["type ipv4_addr . inet_service", "flags interval"]."""
    key = " . ".join(s.type)
    lines = [f"type {key} : {s.value_type}" if isinstance(s, Map) else f"type {key}"]
    if s.flags:
        lines.append("flags " + ", ".join(flag.value for flag in sorted_flags(s.flags)))
    if isinstance(s, Set) and s.counter:
        lines.append("counter")
    if isinstance(s, Set) and s.timeout is not None:
        lines.append(f"timeout {s.timeout}s")
    if isinstance(s, Set) and s.size is not None:
        lines.append(f"size {s.size}")
    return lines


def sorted_flags(flags: tuple[SetFlag, ...]) -> tuple[SetFlag, ...]:
    """Flags in one canonical order; nft lists them in its own order, so compare these."""
    return tuple(sorted(set(flags), key=lambda f: f.value))


def chain_spec(chain: Chain) -> str | None:
    """A base chain's declaration, e.g. `type filter hook forward priority 5; policy accept;`.

    None for a regular chain."""
    if not chain.is_base:
        return None
    spec = f"type {chain.type} hook {chain.hook} priority {chain.priority};"
    if chain.policy is not None:
        spec += f" policy {chain.policy};"
    return spec
