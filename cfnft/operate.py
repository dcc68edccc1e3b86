"""Operators' questions: `cfnft explain` (offline from a cell state document, or live),
`cfnft stats` and `cfnft status --all/--object`, answered by the cells' reconcilers over NATS
from what they last committed to their kernels."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from cfnft.errors import EXIT_DIFFERS, EXIT_OK, InputError, OperationError

M = TypeVar("M", bound=BaseModel)


async def request(args: argparse.Namespace, subject: str, payload: dict[str, Any], model: type[M], what: str) -> M:
    """One NATS request/reply with a cell's reconciler, its answer read as `model`; OperationError if
    nobody answers in time or the answer is not one (cfnft/replies.py)."""
    from nats.errors import NoRespondersError, TimeoutError

    from cfnft.commands import _nats

    async with _nats(args, "send a request through") as nc:
        try:
            reply = await nc.request(subject, json.dumps(payload).encode(), timeout=args.timeout)
        except (TimeoutError, NoRespondersError):
            raise OperationError(f"no reconciler for cell {args.cell} answered {what} within {args.timeout}s") from None
    from cfnft.replies import cell_answer

    return cell_answer(reply.data, model, args.cell, what)


def cmd_explain(args: argparse.Namespace) -> int:
    from events import subjects
    from reconciler.explain import ExplainInputError, Explanation, Probe, explain

    probe = Probe.parse(args.to)
    if args.trace and args.established:
        raise ExplainInputError("--trace sends a new connection's first packet; it cannot trace --established")
    if args.state is not None:
        from cfnft.commands import _load_state

        answer = explain(_load_state(args.state, False).state, args.source, probe, established=args.established)
    else:
        import asyncio

        payload = {"source": args.source, "to": args.to, "established": args.established}
        answer = asyncio.run(request(args, subjects.explain(args.cell), payload, Explanation, "the explain request"))
    traced = None
    if args.trace:
        from cfnft.trace import trace

        traced = trace(answer, probe, args.netns, timeout=5)
    if args.json:
        out = answer.model_dump(mode="json")
        if traced is not None:
            out["trace"] = {
                "steps": [{"chain": s.chain, "rule": s.text, "verdict": s.verdict} for s in traced.steps],
                "kernel_accepted": traced.accepted,
                "agrees": traced.agrees,
                "disagreement": traced.disagreement,
            }
        print(json.dumps(out, indent=2))
    else:
        print(answer.text())
        if traced is not None:
            print(traced.text())
    if traced is not None and not traced.agrees:
        raise OperationError(f"the kernel disagrees with the model: {traced.disagreement}")
    return EXIT_OK if answer.allowed else EXIT_DIFFERS


def add_explain_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], nats_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "explain",
        help="would a container's packet pass, and which rule decides it",
        description="Explain the fate of a new connection's first packet from a container: the verdict and the "
        "one thing that decides it (security group and rule as Cloud Controller shows it, egress policy, c2c "
        "policy, deny_networks, host access, established/related, or the default deny) with its nft rule. "
        "Offline from --state, or live from --cell (the reconciler answers from what it committed). "
        "Exit 0 allowed, 1 denied, 2 bad input, 3 the cell did not answer or --trace disagrees.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", type=Path, metavar="FILE", help="cell state document")
    where.add_argument("--cell", help="ask this cell's reconciler over NATS")
    p.add_argument("--from", dest="source", required=True, metavar="HANDLE", help="container handle or address")
    p.add_argument(
        "--to",
        required=True,
        metavar="PROTO:IP[:PORT]",
        help="tcp:IP:PORT, udp:IP:PORT, icmp:IP[:TYPE/CODE], icmpv6:IP[:TYPE/CODE]; IPv6 as [IP] before a port",
    )
    p.add_argument("--established", action="store_true", help="a packet of an existing connection")
    p.add_argument("--json", action="store_true", help="the answer as JSON")
    p.add_argument(
        "--trace",
        action="store_true",
        help="also send the packet through this machine's cell kernel with nftables tracing, and fail if the "
        "kernel's path disagrees with the model (root; --netns for a cell in a namespace)",
    )
    p.add_argument("--netns", metavar="NAME", help="with --trace: the cell's network namespace")
    p.add_argument("--timeout", type=float, default=2.0, help="with --cell: seconds to wait for the answer")
    nats_args(p)


def cmd_stats(args: argparse.Namespace) -> int:
    import asyncio

    from events import subjects
    from reconciler.stats import CellStats

    stats = asyncio.run(request(args, subjects.stats(args.cell), {}, CellStats, "the stats request"))
    if args.unused:
        unused = stats.unused()
        print(json.dumps(unused, indent=2) if args.json else "\n".join(unused) or "every rule has matched packets")
    else:
        print(json.dumps(stats.model_dump(mode="json"), indent=2) if args.json else stats.text())
    return EXIT_OK


def add_stats_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], nats_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "stats",
        help="packets and bytes per security-group rule, c2c policy and deny rule on a cell",
        description="Ask a cell's reconciler for its kernel's counters, mapped back to the rules as Cloud "
        "Controller and the policy server show them: per security group and rule, per c2c and egress policy, "
        "per deny_networks entry and default deny. Counters start when a rule's element is written.",
    )
    p.add_argument("--cell", required=True)
    p.add_argument("--unused", action="store_true", help="only the rules that matched nothing")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    nats_args(p)


def cmd_fleet_status(args: argparse.Namespace) -> int:
    import asyncio

    from cfnft import fleet
    from cfnft.commands import _nats

    subject = None
    if args.object:
        try:
            subject = fleet.object_subject(args.object)
        except ValueError as e:
            raise InputError(str(e)) from None

    async def main() -> int:
        async with _nats(args, "ask the cells through") as nc:
            expected = await fleet.known_cells(nc) | set(args.expect)
            version = await fleet.stream_version(nc, subject) if subject else None
            answers = await fleet.gather(nc, {"object": subject} if subject else {}, expected, args.timeout)
        if subject is not None:
            report, everywhere = fleet.object_report(subject, version, answers, expected)
            cells = {cell: a.model_dump(mode="json", exclude_unset=True) for cell, a in answers.items()}
            print(json.dumps({"subject": subject, "version": version, "cells": cells}) if args.json else report)
            return EXIT_OK if everywhere else EXIT_DIFFERS
        lines = fleet.cell_lines(answers, expected, args.timeout)
        if args.json:
            print(json.dumps([{"cell": x.cell, "state": x.state, "detail": x.detail} for x in lines], indent=2))
        else:
            width = max((len(x.cell) for x in lines), default=0)
            print("\n".join(f"{x.cell:<{width}}  {x.state:<11}  {x.detail}" for x in lines) or "no cell answered")
            in_sync = sum(x.state == "in sync" for x in lines)
            print(f"{in_sync} of {len(lines)} cells in sync")
        return EXIT_OK if lines and all(x.state == "in sync" for x in lines) else EXIT_DIFFERS

    return asyncio.run(main())
