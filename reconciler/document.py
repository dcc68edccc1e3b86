"""A cell state document made ready for the kernel, for `cfnft render`, `apply` and `check`.

The document has passed its models (events/models.py); here it meets what the daemon checks
too: every object as the kernel needs it (reconciler/admission.py, with the default `Limits`),
host ports held once (reconciler/conflicts.py: the later container in the document wins), and
finally the compiler and the transaction's own checks. So `cfnft render` prints only what a
transaction would take, and `cfnft apply` never fails half-way on a name.

Strict (the default): any problem refuses the document, listing every problem. Lenient: what is
bad is left out and listed, the rest is used; a problem of the cell's config still refuses it
(its deny networks must never silently vanish), as the models' lenient reading does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from events.models import CellState
from events.problems import Problem, StateError
from nft import Ruleset
from reconciler.admission import Limits, Unusable, document_problems
from reconciler.compile import Compiler
from reconciler.conflicts import Ranked, resolve
from reconciler.isolation import Check, find_culprits
from reconciler.keys import StateKey
from reconciler.planning import plan
from reconciler.units import units_of, without


@dataclass(frozen=True, slots=True)
class Ready:
    state: CellState
    """The document without what was left out."""
    desired: Ruleset
    left_out: list[Unusable]


def ready_for_kernel(state: CellState, *, lenient: bool, limits: Limits | None = None) -> Ready:
    """Check `state` as the daemon would and compile it. Raises StateError (strict: any problem;
    lenient: a problem that cannot be dropped)."""
    limits = limits or Limits()
    problems = document_problems(state, limits)
    # Host ports mapped twice: the later container keeps it (its mapping lost is all the earlier loses).
    containers, lost = resolve(Ranked(c, (0, i)) for i, c in enumerate(state.containers))
    if (problems or lost) and (not lenient or any(p.unit is None for p in problems)):
        raise StateError([_problem(p) for p in problems + lost])
    state = without(state.model_copy(update={"containers": containers}), {p.unit for p in problems if p.unit})
    problems += lost
    try:
        planned = plan(Compiler(), state, None, rebuild=False, limits=limits)
    except Exception as e:  # the compiler or the transaction refused the state: find what causes it
        culprits = asyncio.run(find_culprits(units_of(state), _compiles(state, limits)))
        reason = f"does not compile: {(str(e) or type(e).__name__).splitlines()[0]}"
        if not culprits:
            raise StateError([Problem((), f"the cell state {reason}")]) from None
        found = [Unusable(u, reason) for u in culprits]
        if not lenient:
            raise StateError([_problem(p) for p in found]) from None
        problems += found
        state = without(state, set(culprits))
        planned = plan(Compiler(), state, None, rebuild=False, limits=limits)
    return Ready(planned.state, planned.desired, problems + planned.oversized)


def _compiles(state: CellState, limits: Limits) -> Check:
    compiler = Compiler()

    async def passes(excluded: frozenset[StateKey]) -> bool:
        try:
            plan(compiler, without(state, excluded), None, rebuild=False, limits=limits)
        except Exception:  # whatever refused the document refuses this part of it too
            return False
        return True

    return passes


def _problem(u: Unusable) -> Problem:
    return Problem((), f"{u.unit}: {u.reason}" if u.unit is not None else f"config: {u.reason}")
