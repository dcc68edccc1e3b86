"""Reading a reconciler's answer to a NATS request: JSON of the shape the command expects, or one
`OperationError` that names the cell (or says none was named) and what was wrong with the answer.

Anything may answer on a cell's subjects (an older reconciler, a stray responder): what it sends
is input like any other, so it is validated before a command reads a field of it, and a bad
answer is a failed operation (exit 3), never a traceback or a wrong verdict.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cfnft.errors import InputError, OperationError
from events.problems import problems_from, show

M = TypeVar("M", bound=BaseModel)


class Enforced(BaseModel):
    """With `{"object": SUBJECT}` in the fleet status request: the version of it the cell enforces."""

    model_config = ConfigDict(strict=True, frozen=True)

    subject: str
    version: int | None


class CellStatus(BaseModel):
    """A reconciler's status (`Reconciler.status()`), as far as the command line reads it. Strict,
    so `"in_sync": "yes"` is a bad answer, not a cell in sync; further keys (the state summary, the
    table's counts) are kept for `--json`."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    cell_id: str
    in_sync: bool
    nats_synced: bool
    nats_connected: bool
    generation: int
    committed_generation: int
    last_commit_at: float | None
    consecutive_failures: int
    enforced: Enforced | None = None


class FailedAnswer(BaseModel):
    """What a reconciler answers when it could not do what was asked (reconciler/operator.py)."""

    model_config = ConfigDict(strict=True, frozen=True)

    error: str
    bad_input: bool = False


def decode(data: bytes, model: type[M], cell: str | None, what: str) -> M:
    """`data` as `model`; OperationError naming `cell` (None: the answer named no cell) otherwise."""
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        sender = f"cell {cell}" if cell is not None else "a responder that names no cell"
        raise OperationError(f"{sender}: bad answer to {what}: {wrong(data, e)}") from None


SHOWN = 3  # problems named on the line; an answer of the wrong kind altogether has many


def wrong(data: bytes, error: ValidationError) -> str:
    """What is wrong with JSON `data` that `error` refused, on one line."""
    if any(e["type"] == "json_invalid" for e in error.errors()):
        return f"not JSON: {show(data.decode(errors='replace'))}"
    problems = [str(p) for p in problems_from(error)]
    more = f"; … and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return "; ".join(problems[:SHOWN]) + more


def cell_answer(data: bytes, model: type[M], cell: str, what: str) -> M:
    """A cell's answer to a request for one cell: `model`, or its reconciler's refusal raised
    (InputError when the request was bad, OperationError otherwise), or a bad answer raised."""
    try:
        raw = json.loads(data)
    except ValueError:
        raw = None
    if isinstance(raw, dict) and "error" in raw:
        failed = decode(data, FailedAnswer, cell, what)
        raise (InputError if failed.bad_input else OperationError)(f"cell {cell}: {failed.error}")
    return decode(data, model, cell, what)


def sender_of(data: bytes) -> str | None:
    """The cell an answer says it is from, when it is a JSON object with a string `cell_id`."""
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    cell = raw.get("cell_id") if isinstance(raw, dict) else None
    return cell if isinstance(cell, str) else None
