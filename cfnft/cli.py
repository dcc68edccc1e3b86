"""The `cfnft` command. Each subcommand imports only what it needs, so `--help` is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
cfnft enforces Cloud Foundry container networking policy (application security groups,
container-to-container policies, dynamic egress policies) with one nftables table per cell,
driven by whole-state messages on NATS JetStream.

one-shot (no NATS needed):
  cfnft render --state cell.json            print the ruleset for a cell state document
  cfnft apply  --state cell.json            make the kernel match it (one atomic transaction)
  cfnft check  --state cell.json            exit 0 if the kernel matches, 1 with the repair diff

daemons and operations:
  cfnft reconcile --config reconciler.json  run a cell's reconciler
  cfnft watch --config watcher.json         run the BBS / policy server / Cloud Controller watchers
  cfnft publish --state cell.json           publish a state document to NATS as whole-state objects
  cfnft resync [--cell CELL]                ask watchers to re-list and reconcilers to repair drift
  cfnft status --cell CELL                  what a cell's reconciler knows, and whether it is in sync
  cfnft status --all | --object asg:GUID    which cells enforce the latest state (or one object)
  cfnft explain --from H --to tcp:IP:PORT   would this packet pass, and which rule decides it
  cfnft stats --cell CELL [--unused]        packets and bytes per security-group rule and policy
"""


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        required=True,
        type=Path,
        metavar="FILE",
        help="cell state document (JSON, see README 'The cell state document')",
    )


def _netns_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NAME", help="act inside this named network namespace (ip netns)")


def _nats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats-url",
        action="append",
        metavar="URL",
        help="NATS server URL; repeat it for every node of a cluster (default nats://127.0.0.1:4222)",
    )
    p.add_argument("--nats-ca", type=Path, metavar="FILE", help="CA bundle for TLS to NATS (enables TLS)")
    p.add_argument("--nats-cert", type=Path, metavar="FILE", help="client certificate for mutual TLS")
    p.add_argument("--nats-key", type=Path, metavar="FILE", help="client key for mutual TLS")
    p.add_argument("--nats-user", metavar="USER", help="NATS user (with --nats-password-file)")
    p.add_argument("--nats-password-file", type=Path, metavar="FILE", help="file holding the NATS user's password")
    p.add_argument("--nats-creds", type=Path, metavar="FILE", help="NATS credentials file (JWT and nkey seed)")
    p.add_argument(
        "--nats-insecure",
        action="store_true",
        help="allow NATS without TLS or credentials (labs only; logs a warning). Without it, cfnft refuses to "
        "talk to NATS unless TLS and credentials are set",
    )


def _add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> str:
    """Commands other distributions add through the `cfnft.commands` entry point group (the lab's
    demo and bench): each entry point is a function that adds its subparser and sets `handler`.
    Returns the paragraph of the description that names them, empty when there are none (on a cell)."""
    from importlib.metadata import entry_points

    lines = []
    for ep in sorted(entry_points(group="cfnft.commands"), key=lambda e: e.name):
        ep.load()(sub)
        lines.append(f"  cfnft {ep.name:<34}  from {ep.dist.name if ep.dist else 'another distribution'}")
    if not lines:
        return ""
    return "\nadded by other installed distributions:\n" + "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfnft", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "render",
        help="print the nft ruleset for a cell state (touches nothing)",
        description="Compile a cell state document and print the `nft -f` batch that creates table inet cfnft: "
        "the text a cold `cfnft apply` commits. Touches neither the kernel nor the network.",
    )
    _state_arg(p)
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip invalid rules/policies (reported on stderr) instead of refusing the document",
    )

    p = sub.add_parser(
        "apply",
        help="make the kernel's inet cfnft table match a cell state",
        description="Compile the state, diff it against the kernel and commit the difference "
        "as one libnftables transaction. Idempotent: a second apply changes nothing. "
        "Invalid input: exit 2, kernel untouched.",
    )
    _state_arg(p)
    _netns_arg(p)
    p.add_argument("--lenient", action="store_true", help="skip invalid rules/policies instead of refusing")

    p = sub.add_parser(
        "check",
        help="exit 0 if the kernel matches a cell state, 1 (with the diff) if not",
        description="Read table inet cfnft back and compare it with the compiled state. "
        "Exit 0 when equal; exit 1 and print the transaction that would repair it.",
    )
    _state_arg(p)
    _netns_arg(p)

    p = sub.add_parser(
        "reconcile",
        help="run a cell's reconciler (daemon)",
        description="Watch this cell's desired state on NATS JetStream and keep table inet cfnft "
        "equal to it. Serves the CNI plugin on a unix socket and /metrics, /healthz, "
        "/readyz on --metrics-listen. Flags override the config file.",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="reconciler config (JSON; see README)")
    p.add_argument("--cell-id", help="this cell's id")
    _nats_args(p)
    _netns_arg(p)
    p.add_argument("--socket", type=Path, metavar="PATH", help="CNI endpoint unix socket")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="where the last known state is kept")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="metrics and health listener")

    p = sub.add_parser(
        "watch",
        help="run the control-plane watchers (BBS, policy server, Cloud Controller)",
        description="Turn Diego BBS LRP events, policy-server and Cloud Controller changes into whole-state "
        "messages on cfnft.state.*. Runs every watcher the config file has a section for, or only those named. "
        "A watcher that cannot reach its source keeps the last published state and retries; one that is refused "
        "for good (bad certificate, bad credentials) ends the process with exit 3.",
    )
    p.add_argument("--config", type=Path, required=True, metavar="FILE", help="watcher config (JSON; see README)")
    p.add_argument(
        "only", nargs="*", metavar="WATCHER", help="run only these of the configured watchers: bbs, policy, cc"
    )
    _nats_args(p)

    p = sub.add_parser(
        "publish",
        help="publish a cell state document to NATS",
        description="Publish every object of a cell state document as whole-state messages on "
        "cfnft.state.* (containers under the document's cell_id). Unchanged objects "
        "are not republished. With --prune, objects of the same kinds that are in "
        "NATS but not in the document are deleted (containers: only of this cell).",
    )
    _state_arg(p)
    _nats_args(p)
    p.add_argument("--prune", action="store_true", help="delete objects the document no longer has")
    p.add_argument(
        "--stream-replicas",
        type=int,
        choices=range(1, 6),
        metavar="N",
        help="replicas of the state stream (1-5; 3 on a 3-node cluster): creates it so, or changes an existing "
        "stream to N. Without it an existing stream is left as it is and a missing one gets 1",
    )

    p = sub.add_parser(
        "resync",
        help="ask watchers to re-list and reconcilers to repair drift",
        description="Publish a resync request on cfnft.resync.all, or cfnft.resync.cell.CELL.",
    )
    p.add_argument("--cell", help="only this cell (default: every cell)")
    p.add_argument("--reason", default="operator request")
    _nats_args(p)

    p = sub.add_parser(
        "status",
        help="ask a cell's reconciler what it knows, or whether every cell enforces a change",
        description="--cell: request/reply on cfnft.status.CELL; prints the reconciler's answer as JSON. "
        "Exit 0 if it is in sync, 1 if not, 3 if it does not answer. "
        "--all: every cell's answer within --timeout: in sync, lagging (and why) or unreachable. "
        "--object asg:GUID|c2c:APP|app:APP: on how many cells the object's current version is enforced. "
        "Both exit 0 when every cell is in sync (enforces it), else 1.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell")
    which.add_argument("--all", action="store_true", help="every cell of the foundation")
    which.add_argument("--object", metavar="KIND:ID", help="asg:GUID, c2c:APP (its policies) or app:APP")
    p.add_argument(
        "--expect", action="append", default=[], metavar="CELL", help="with --all/--object: a cell that must answer"
    )
    p.add_argument("--json", action="store_true", help="with --all/--object: the answers as JSON")
    p.add_argument("--timeout", type=float, default=2.0)
    _nats_args(p)

    from cfnft.operate import add_explain_parser, add_stats_parser

    add_explain_parser(sub, _nats_args)
    add_stats_parser(sub, _nats_args)

    parser.description = DESCRIPTION + _add_plugin_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cfnft import commands  # deferred: keeps --help and argument errors instant

    try:
        return commands.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
