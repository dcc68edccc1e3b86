"""Problems found in input documents, in words a CF operator can act on.

Every way of reading CF data (the cell state document, a NATS message, a policy-server or
Cloud Controller response) reports what is wrong as `Problem`s: a path into the input and one
line saying what is wrong with which value, e.g.

    security_groups[3].rules[7].ports: '80-70': start after end
    containers[0].colour: unknown key

Strict readers raise `StateError` (an `InputError`, cfnft/errors.py) holding all of them.
Lenient readers (the daemon, the watchers) drop the smallest part of the input that is bad, keep
the rest, and return the problems so they can be logged. Dropping is always towards less access:
a dropped rule or policy allows nothing, and a dropped container is unknown to the table, which
fails closed.

Pydantic's own messages never reach a user; `problems_from` rewrites them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cfnft.errors import InputError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# Keys that can be printed bare in a path; anything else is quoted like ['odd key'].
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHOW_MAX = 60


def show(value: object) -> str:
    """An input value as it appears in a message: strings quoted, JSON words for the rest, long values cut."""
    if isinstance(value, str):
        value = str(value)  # a StrEnum member shows as its value
        return repr(value if len(value) <= _SHOW_MAX else value[: _SHOW_MAX - 1] + "…")
    if value is None or isinstance(value, (bool, int, float, list, dict)):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        text = str(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 1] + "…"


def format_path(loc: Loc) -> str:
    """`('security_groups', 3, 'rules', 7, 'ports')` -> `security_groups[3].rules[7].ports`."""
    out = []
    for part in loc:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _BARE_KEY.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{part!r}]")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input document: where (`loc`, printed as `path`) and what (`message`).

    `dropped` is False for the one kind of problem a lenient reader recovers from without leaving
    anything out: an unknown key, ignored while its entry is kept (a newer CF may add fields)."""

    loc: Loc
    message: str
    dropped: bool = True

    @property
    def path(self) -> str:
        return format_path(self.loc)

    def __str__(self) -> str:
        path = self.path
        return f"{path}: {self.message}" if path else self.message


class StateError(InputError):
    """An input document could not be used: `problems` lists everything found, in document order;
    `source` names the document (a file) when there is one, `what` says what it was meant to be.

    `str()` is one line for one problem, and otherwise a header and one indented line per problem
    (the first `SHOWN` of them), as the command line prints it:

        cell.json: invalid cell state (2 problems):
          security_groups[0].rules[0].ports: '90-80': start after end
          containers[0].colour: unknown key
    """

    SHOWN = 20

    def __init__(self, problems: Sequence[Problem], source: str | None = None, what: str = "document") -> None:
        self.problems = list(problems)
        self.source = source
        self.what = what
        super().__init__(str(self))

    def one_line(self) -> str:
        """Every problem on one line, for a log line or a metric's reason (no file name)."""
        return "; ".join(str(p) for p in self.problems)

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{prefix}{self.problems[0]}"
        shown = [f"\n  {p}" for p in self.problems[: self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            shown.append(f"\n  … and {len(self.problems) - self.SHOWN} more")
        return f"{prefix}invalid {self.what} ({len(self.problems)} problems):{''.join(shown)}"


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = show(error.get("input"))
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("value_error", "assertion_error"):
        # Our validators raise ValueError with a finished sentence that already quotes the value.
        return str(ctx["error"])
    if kind == "string_type":
        return f"{value}: must be a string"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{value}: must be an integer"
    if kind in ("bool_type", "bool_parsing"):
        return f"{value}: must be true or false"
    if kind == "list_type":
        return f"{value}: must be a list"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"{value}: must be an object"
    if kind in ("enum", "literal_error"):
        return f"{value}: must be one of {ctx['expected']}"
    if kind == "greater_than_equal":
        return f"{value}: must be at least {ctx['ge']}"
    if kind == "greater_than":
        return f"{value}: must be greater than {ctx['gt']}"
    if kind == "less_than_equal":
        return f"{value}: must be at most {ctx['le']}"
    if kind == "less_than":
        return f"{value}: must be less than {ctx['lt']}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"{value}: too short"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} item(s)"
    msg: str = error["msg"]
    return f"{value}: {msg[:1].lower()}{msg[1:]}"


def _clean_loc(loc: Sequence[str | int]) -> Loc:
    # Pydantic inserts schema tags (e.g. 'function-after[...]') for some validators; they are not input keys.
    return tuple(p for p in loc if isinstance(p, int) or "[" not in p)


def problems_from(error: ValidationError, at: Loc = ()) -> list[Problem]:
    """Rewrite a pydantic ValidationError as problems, with `at` (where the validated value sits) prefixed."""
    return [Problem(at + _clean_loc(e["loc"]), _message(e)) for e in error.errors()]


def validate_strict(model: type[M], data: object, at: Loc = ()) -> M:
    """`model.model_validate(data)`, with StateError (our one-line problems) instead of pydantic's error."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise StateError(problems_from(error, at)) from None


def _without(data: object, loc: Loc) -> object:
    """A copy of `data` with the key at `loc` removed; only the containers along the path are copied.
    `loc` is where pydantic found an unknown key, so the path runs through objects and lists."""
    head, rest = loc[0], loc[1:]
    if isinstance(data, dict):
        if not rest:
            return {k: v for k, v in data.items() if k != head}
        return {**data, head: _without(data[head], rest)}
    assert isinstance(data, list) and isinstance(head, int) and rest
    return [*data[:head], _without(data[head], rest), *data[head + 1 :]]


# Parses one list item found at a `Loc`: the item, or None when it has to be dropped, and the problems.
ItemParser = Callable[[object, Loc], tuple[T | None, list[Problem]]]


def validate_unit(
    model: type[M], data: object, at: Loc = (), nested: Mapping[str, ItemParser[object]] | None = None
) -> tuple[M | None, list[Problem]]:
    """Validate one droppable unit (a container, a group, a rule, a policy) leniently.

    Unknown keys are reported (as not `dropped`) and ignored. Lists named in `nested` (key -> parser of one item)
    are checked item by item, and only their bad items are dropped. Any other problem drops the
    whole unit: the result is None.
    """
    problems: list[Problem] = []
    update: dict[str, list[object]] = {}
    if nested and isinstance(data, dict):
        # Items are checked even when the unit itself turns out bad, so strict readers see every problem.
        for key, parse in nested.items():
            if key in data:
                update[key], found = validate_items(parse, data[key], at + (key,))
                problems += found
        # The unit is checked with empty lists in their place, so a missing required list still counts.
        data = {k: ([] if k in update else v) for k, v in data.items()}
    try:
        unit = model.model_validate(data)
    except ValidationError as error:
        errors = error.errors()
        found = problems_from(error, at)
        if not all(e["type"] == "extra_forbidden" for e in errors):
            return None, found + problems
        problems = [replace(p, dropped=False) for p in found] + problems
        for e in errors:
            data = _without(data, _clean_loc(e["loc"]))
        try:
            unit = model.model_validate(data)
        except ValidationError:  # pragma: no cover - pydantic reports every error in one pass
            return None, problems
    return (unit.model_copy(update=update) if update else unit), problems


def validate_items(parse: ItemParser[T], data: object, at: Loc) -> tuple[list[T], list[Problem]]:
    """Parse a list item by item with `parse(item, loc)`, dropping the items it rejects (returns None for).

    A value that is not a list at all yields no items and one problem.
    """
    if not isinstance(data, list):
        return [], [Problem(at, f"{show(data)}: must be a list")]
    kept: list[T] = []
    problems: list[Problem] = []
    for i, item in enumerate(data):
        parsed, found = parse(item, at + (i,))
        problems += found
        if parsed is not None:
            kept.append(parsed)
    return kept, problems


def item_parser(model: type[M], nested: Mapping[str, ItemParser[object]] | None = None) -> ItemParser[M]:
    """An ItemParser that validates each item as `model` with `validate_unit`."""
    return lambda data, at: validate_unit(model, data, at, nested)


def read_json(path: str | PathLike[str]) -> object:
    """A JSON file's content; any failure is a StateError naming the file (and line, for bad JSON)."""
    name = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise StateError([Problem((), f"cannot read: {err.strerror or err}")], source=name) from None
    except UnicodeDecodeError:
        raise StateError([Problem((), "not UTF-8 text")], source=name) from None
    except json.JSONDecodeError as err:
        raise StateError(
            [Problem((), f"line {err.lineno} column {err.colno}: not valid JSON: {err.msg}")], name
        ) from None


def load_model_file(model: type[M], path: str | PathLike[str], what: str = "configuration") -> M:
    """A configuration file validated by `model`; a StateError names the file and says it is a `what`."""
    try:
        return validate_strict(model, read_json(path))
    except StateError as err:
        raise StateError(err.problems, source=str(path), what=what) from None
