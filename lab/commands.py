"""`cfnft demo` and `cfnft bench`: the lab's commands, added to the `cfnft` command line through the
`cfnft.commands` entry point group (see lab/pyproject.toml), so the product never imports the lab.

Each `add_*` takes the command line's subparsers, adds its command and sets `handler`, which
`cfnft.commands.run` calls with the parsed arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from cfnft.errors import InputError

SCENARIOS = [
    "cold",
    "incremental",
    "e2e",
    "failover",
    "resume",
    "cni",
    "packet",
    "policy-load",
    "flowlog",
    "foundation",
]


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="a two-cell foundation on this machine, and CF's network promises shown with real packets",
        description="Start a cluster of three nats-servers (TLS, the role identities), the BBS and policy-server "
        "simulators, their watchers, two cells (network namespaces) with reconcilers and the real CNI chain; push "
        "two apps and walk through default deny, a DNS security group, a c2c policy across cells, a dynamic ASG "
        "change on a running app, the NATS node leading the stream killed before a change, and a flushed table "
        "being repaired, printing each probe and how long the change took to take effect. Needs root. Removes "
        "everything it created on exit, also on Ctrl-C.",
    )
    p.add_argument("--ci", action="store_true", help="non-interactive: exit 1 if any probe ends other than expected")
    p.add_argument("--keep", action="store_true", help="stay up after the walk-through, for inspection, until Ctrl-C")
    p.set_defaults(handler=run_demo)


def add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure cfnft against its baselines on a synthetic full cell and a large foundation",
        description="Run benchmark scenarios on a full cell (250 containers, 20 security groups with 1,000 rules, "
        "500 c2c policies) and on one cell of a large foundation (`foundation`: 30,000 apps with 90,000 addresses, "
        "2,000 security groups, 4,000 c2c policies in a real nats-server) in throwaway network namespaces, and print "
        "each figure with its target and its ratio against the named baseline, measured side by side in the same "
        "run; failover runs a 3-node NATS cluster (one replica against three, the stream leader killed); "
        "policy-load measures the load cfnft's policy watcher puts on the policy server at 6,000 security "
        "groups next to 1,000 vxlan-policy-agents. Needs root.",
    )
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="what to run (repeatable; default: all)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for reporting)")
    p.set_defaults(handler=run_bench)


def run_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise InputError("needs root: it creates network namespaces and nftables tables (sudo .venv/bin/cfnft demo)")
    from lab.demo import run

    if args.log_level == "info":
        # The walk-through is the output; the components' own log lines would drown it.
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return asyncio.run(run(ci=args.ci, keep=args.keep))
    except KeyboardInterrupt:
        print("cfnft demo: interrupted; everything it created has been removed", file=sys.stderr)
        return 130


def run_bench(args: argparse.Namespace) -> int:
    from lab.bench.report import run

    return run(args.scenario or SCENARIOS, args.json, args.quick)
