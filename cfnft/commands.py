"""What each `cfnft` subcommand does. Errors a user can act on become one line on stderr and an
exit code (2: bad input or config, kernel untouched; 3: the operation failed); never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfnft import logs
from cfnft.errors import EXIT_DIFFERS, EXIT_FAILED, EXIT_OK, CfnftError, InputError, OperationError

if TYPE_CHECKING:  # imported where they are used, so that each command loads only what it needs
    from nats.aio.client import Client as NATS

    from events.models import CellState
    from nft import NftRunner
    from reconciler.config import ReconcilerConfig

log = logging.getLogger("cfnft")


def run(args: argparse.Namespace) -> int:
    # Commands added through the `cfnft.commands` entry points (the lab's demo and bench) bring
    # their own handler.
    handler = getattr(args, "handler", None) or _HANDLERS[args.command]
    logs.setup(json_lines=args.command in ("reconcile", "watch"), level=args.log_level)
    try:
        return handler(args)
    except CfnftError as e:
        print(f"cfnft {args.command}: {e}", file=sys.stderr)
        return e.exit_code


# ------------------------------------------------------------------ one-shot


def _load_state(path: Path, lenient: bool) -> CellState:
    from events.models import load_cell_state_file
    from events.problems import StateError

    try:
        if lenient:
            state, problems = load_cell_state_file(path, lenient=True)
            for p in problems:
                print(f"cfnft: {path}: skipped: {p}", file=sys.stderr)
            return state
        return load_cell_state_file(path)
    except StateError as e:
        lines = [str(p) for p in e.problems]
        if len(lines) == 1 and not e.problems[0].loc:
            raise InputError(f"{path}: {lines[0]}") from None
        shown = "\n  ".join(lines[:20]) + (f"\n  … and {len(lines) - 20} more" if len(lines) > 20 else "")
        raise InputError(f"{path}: invalid cell state ({len(lines)} problem{'s' * (len(lines) != 1)}):\n  {shown}")


def _first_line(e: Exception) -> str:
    """A configuration error as the one line an operator needs (the first problem; more after a fix)."""
    return str(e).splitlines()[0]


def _runner(netns: str | None) -> NftRunner:
    from nft import NamespaceError, NftError, NftRunner

    try:
        return NftRunner(netns=netns)
    except (NftError, NamespaceError, OSError) as e:
        raise OperationError(f"cannot use nftables{f' in netns {netns}' if netns else ''}: {e}") from None


def cmd_render(args: argparse.Namespace) -> int:
    from nft import TransactionError, render_ruleset
    from reconciler.compile import compile_ruleset

    state = _load_state(args.state, args.lenient)
    try:
        text = render_ruleset(compile_ruleset(state))  # the batch a cold `cfnft apply` commits
    except TransactionError as e:
        raise OperationError(f"the compiled ruleset is not valid nft: {e}") from None
    sys.stdout.write(text)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from nft import NftError, TransactionError, diff
    from reconciler.compile import TABLE, compile_ruleset

    state = _load_state(args.state, args.lenient)
    desired = compile_ruleset(state)
    runner = _runner(args.netns)
    try:
        tx = diff(desired, runner.read(TABLE))
        if tx.is_empty:
            print("cfnft apply: the kernel already matches; nothing to do", file=sys.stderr)
            return EXIT_OK
        runner.apply(tx)
    except (NftError, TransactionError) as e:
        raise OperationError(f"nothing was changed: {e}") from None
    chains, rules, elements = desired.counts()
    print(
        f"cfnft apply: committed {len(tx)} changes in one transaction; table inet cfnft now has "
        f"{chains} chains, {rules} rules, {elements} elements for {len(state.containers)} containers",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from nft import NftError, TransactionError, diff
    from reconciler.compile import TABLE, compile_ruleset

    state = _load_state(args.state, lenient=False)
    runner = _runner(args.netns)
    try:
        tx = diff(compile_ruleset(state), runner.read(TABLE))
        repair = tx.render()
    except (NftError, TransactionError) as e:
        raise OperationError(str(e)) from None
    if tx.is_empty:
        print("cfnft check: the kernel matches the state", file=sys.stderr)
        return EXIT_OK
    print(f"cfnft check: the kernel differs from the state; {len(tx)} changes would repair it:", file=sys.stderr)
    sys.stdout.write(repair)
    return EXIT_DIFFERS


# ------------------------------------------------------------------ daemon


def _reconciler_config(args: argparse.Namespace) -> ReconcilerConfig:
    from events.problems import StateError
    from reconciler.config import ReconcilerConfig, load_config

    try:
        cfg = load_config(args.config) if args.config else None
    except StateError as e:
        raise InputError(_first_line(e)) from None
    if cfg is None:
        if not args.cell_id:
            raise InputError("give --config FILE or at least --cell-id")
        cfg = ReconcilerConfig(cell_id=args.cell_id)
    updates: dict[str, object] = {}
    if args.cell_id:
        updates["cell_id"] = args.cell_id
    if args.netns:
        updates["netns"] = args.netns
    if args.socket:
        updates["socket_path"] = args.socket
    if args.state_dir:
        updates["state_dir"] = args.state_dir
    if args.metrics_listen:
        updates["metrics_listen"] = args.metrics_listen
    nats_updates = _nats_overrides(args)
    if nats_updates:
        updates["nats"] = cfg.nats.model_copy(update=nats_updates)
    return cfg.model_copy(update=updates)


def _nats_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """NatsConfig keyword arguments from the --nats-* flags given."""
    out: dict[str, Any] = {}
    if args.nats_url:
        out["servers"] = args.nats_url
    for flag, key in (
        ("nats_ca", "ca_file"),
        ("nats_cert", "cert_file"),
        ("nats_key", "key_file"),
        ("nats_creds", "creds_file"),
    ):
        if getattr(args, flag):
            out[key] = getattr(args, flag)
    return out


def cmd_reconcile(args: argparse.Namespace) -> int:
    from reconciler.daemon import Reconciler
    from reconciler.endpoint import start_endpoints

    cfg = _reconciler_config(args)
    runner = _runner(cfg.netns)

    async def main() -> int:
        rec = Reconciler(cfg, runner)
        runners = await start_endpoints(rec, cfg.socket_path, cfg.metrics_listen)
        try:
            await rec.run()
        finally:
            for r in runners:
                await r.cleanup()
        return EXIT_FAILED if rec.fatal is not None else EXIT_OK

    log.info("starting reconciler for cell %s", cfg.cell_id, extra={"cell_id": cfg.cell_id})
    try:
        return asyncio.run(main())
    except OSError as e:
        raise OperationError(str(e)) from None


def cmd_watch(args: argparse.Namespace) -> int:
    from cfnft.watch import load_watch_config, run_watchers
    from events.poller import FatalSourceError
    from events.problems import StateError
    from events.tls import TlsConfigError

    unknown = set(args.only) - {"bbs", "policy", "cc"}
    if unknown:
        raise InputError(f"unknown watcher {', '.join(sorted(unknown))}: choose from bbs, policy, cc")
    try:
        cfg = load_watch_config(args.config)
    except StateError as e:
        raise InputError(_first_line(e)) from None
    try:
        asyncio.run(run_watchers(cfg, set(args.only) or None))
    except (FatalSourceError, TlsConfigError) as e:
        raise OperationError(str(e)) from None
    return EXIT_OK


# ------------------------------------------------------------------ NATS operations


async def _connect(args: argparse.Namespace) -> NATS:
    from events.connect import NatsConfig, NatsUnavailable, connect

    try:
        return await connect(NatsConfig(**_nats_overrides(args)), "cfnft-cli", forever=False)
    except NatsUnavailable as e:
        raise OperationError(str(e)) from None


def cmd_publish(args: argparse.Namespace) -> int:
    from cfnft.publish import publish_state

    state = _load_state(args.state, lenient=False)
    if not state.cell_id:
        raise InputError(f"{args.state}: cell_id is required to publish containers")

    async def main() -> int:
        nc = await _connect(args)
        try:
            sent, deleted = await publish_state(nc, state, prune=args.prune)
        finally:
            await nc.close()
        print(
            f"cfnft publish: {sent} objects published, {deleted} deleted (unchanged objects skipped)", file=sys.stderr
        )
        return EXIT_OK

    return asyncio.run(main())


def cmd_resync(args: argparse.Namespace) -> int:
    from events import subjects
    from events.messages import ResyncRequest

    async def main() -> int:
        nc = await _connect(args)
        try:
            subject = subjects.resync_cell(args.cell) if args.cell else subjects.RESYNC_ALL
            await nc.publish(subject, ResyncRequest(cell_id=args.cell, reason=args.reason).model_dump_json().encode())
            await nc.flush()
        finally:
            await nc.close()
        print(f"cfnft resync: requested on {subject}", file=sys.stderr)
        return EXIT_OK

    return asyncio.run(main())


def cmd_status(args: argparse.Namespace) -> int:
    from nats.errors import NoRespondersError, TimeoutError

    from events import subjects

    async def main() -> int:
        nc = await _connect(args)
        try:
            reply = await nc.request(subjects.status(args.cell), b"", timeout=args.timeout)
        except (TimeoutError, NoRespondersError):
            raise OperationError(f"no reconciler for cell {args.cell} answered within {args.timeout}s") from None
        finally:
            await nc.close()
        status: object = json.loads(reply.data)
        print(json.dumps(status, indent=2))
        return EXIT_OK if isinstance(status, dict) and status.get("in_sync") else EXIT_DIFFERS

    return asyncio.run(main())


_HANDLERS = {
    "render": cmd_render,
    "apply": cmd_apply,
    "check": cmd_check,
    "reconcile": cmd_reconcile,
    "watch": cmd_watch,
    "publish": cmd_publish,
    "resync": cmd_resync,
    "status": cmd_status,
}
