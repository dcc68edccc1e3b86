"""`cfnft status --all` and `cfnft status --object KIND:ID`: has a change reached every cell?

Every reconciler answers a request on `cfnft.fleet.status` with its status (and, when asked, the
version of one object it enforces: reconciler/realization.py). An object's version is the stream
sequence of its last message, the one order the state stream has (docs/design.md §2.4). The command gathers answers
until the timeout, or until every expected cell has answered. The expected cells are those that
have containers on the state stream (the BBS watcher publishes them per cell) plus any named with
`--expect`; a cell that answers is counted even if it was not expected. A cell that was removed
from the foundation stays expected while its container subjects are on the stream (purge them:
`nats stream purge CFNFT_STATE --subject 'cfnft.state.container.<cell>.>'`). An answer that is not a
reconciler's status (cfnft/replies.py) fails the command, naming the cell it claims to be from.

- `--all`: per cell, `in sync` (the replay is complete and every change received is committed),
  `lagging` (with why: changes not committed, failed applies, replay not complete) or
  `unreachable` (no answer in time).
- `--object asg:GUID | c2c:APP | app:APP`: the object's current version on the stream, and the
  cells whose kernel enforces it: "enforced on N of M cells", then the lagging and unreachable.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from cfnft.errors import OperationError
from cfnft.replies import CellStatus, decode, sender_of
from events import subjects

_OBJECT_SUBJECTS = {"asg": subjects.security_group, "c2c": subjects.c2c_policies, "app": subjects.app_instances}


def object_subject(spec: str) -> str:
    """`asg:GUID`, `c2c:APP` or `app:APP` -> its state subject; ValueError with the reason."""
    kind, _, ident = spec.partition(":")
    if kind not in _OBJECT_SUBJECTS or not ident:
        raise ValueError(f"{spec!r}: expected asg:GUID, c2c:APP (its policies) or app:APP (its instances)")
    return _OBJECT_SUBJECTS[kind](ident)


async def known_cells(nc: NATS) -> set[str]:
    """Cells with container subjects on the state stream."""
    try:
        info = await nc.jetstream().stream_info(subjects.STATE_STREAM, subjects_filter=f"{subjects.STATE_PREFIX}.>")
    except NotFoundError:
        return set()
    cells = set()
    for subject in info.state.subjects or {}:
        parts = subject.split(".")
        if len(parts) == 5 and parts[2] == "container":
            cells.add(parts[3])
    return cells


async def gather(nc: NATS, request: dict[str, Any], expected: set[str], timeout: float) -> dict[str, CellStatus]:
    """Every reconciler's answer to `request`, by cell id, within `timeout`; OperationError at the
    first answer that is not a reconciler's status."""
    answers: dict[str, CellStatus] = {}
    bad: list[OperationError] = []
    done = asyncio.Event()
    inbox = nc.new_inbox()

    async def on_answer(m: Msg) -> None:
        try:
            answer = decode(m.data, CellStatus, sender_of(m.data), "the fleet status request")
        except OperationError as e:
            bad.append(e)
            done.set()
            return
        answers[answer.cell_id] = answer
        if expected and expected <= answers.keys():
            done.set()

    sub = await nc.subscribe(inbox, cb=on_answer)
    try:
        await nc.publish(subjects.FLEET_STATUS, json.dumps(request).encode(), reply=inbox)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            pass
    finally:
        await sub.unsubscribe()
    if bad:
        raise bad[0]
    return answers


@dataclass(frozen=True, slots=True)
class CellLine:
    cell: str
    state: str  # "in sync", "lagging", "unreachable"
    detail: str


def cell_lines(answers: dict[str, CellStatus], expected: set[str], timeout: float) -> list[CellLine]:
    out = []
    for cell in sorted(expected | answers.keys()):
        a = answers.get(cell)
        if a is None:
            out.append(CellLine(cell, "unreachable", f"no answer within {timeout}s"))
            continue
        pending = a.generation - a.committed_generation
        why = []
        if not a.nats_synced:
            why.append("replay of the state stream not complete")
        if pending:
            why.append(f"{pending} change{'s' * (pending != 1)} not committed")
        if a.consecutive_failures:
            why.append(f"{a.consecutive_failures} failed applies in a row")
        committed = a.last_commit_at
        ago = f"last commit {time.time() - committed:.1f}s ago" if committed else "nothing committed yet"
        if a.in_sync and not why:
            out.append(CellLine(cell, "in sync", f"generation {a.committed_generation}, {ago}"))
        else:
            out.append(CellLine(cell, "lagging", "; ".join(why or ["not converged yet"]) + f" ({ago})"))
    return out


def object_report(
    subject: str, version: int | None, answers: dict[str, CellStatus], expected: set[str]
) -> tuple[str, bool]:
    """The lines of `--object` and whether every cell enforces the stream's version."""
    cells = sorted(expected | answers.keys())
    if version is None:
        return f"{subject}: not on the state stream (never published, or purged)", False
    enforced, lagging, unreachable = [], [], []
    for cell in cells:
        a = answers.get(cell)
        if a is None:
            unreachable.append(cell)
            continue
        held = a.enforced.version if a.enforced is not None else None
        if held is not None and held >= version:
            enforced.append(cell)
        else:
            lagging.append(f"{cell} ({'not this version yet' if held is None else f'version {held}'})")
    lines = [f"{subject} version {version}: enforced on {len(enforced)} of {len(cells)} cells"]
    if lagging:
        lines.append(f"lagging: {', '.join(lagging)}")
    if unreachable:
        lines.append(f"unreachable: {', '.join(unreachable)}")
    return "\n".join(lines), len(enforced) == len(cells) and bool(cells)


async def stream_version(nc: NATS, subject: str) -> int | None:
    """The version of `subject` on the state stream: the stream sequence of its last message; None if
    there is none."""
    try:
        raw = await nc.jetstream().get_last_msg(subjects.STATE_STREAM, subject)
    except NotFoundError:
        return None
    return raw.seq
