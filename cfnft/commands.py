"""What each `cfnft` subcommand does. Handlers raise; `run` alone turns an error into what the user
sees: `cfnft <command>: <message>` on stderr and the exit code of its kind (cfnft/errors.py; 2: bad
input or config, kernel untouched; 3: the operation failed). Never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfnft import logs
from cfnft.errors import EXIT_DIFFERS, EXIT_FAILED, EXIT_OK, CfnftError, InputError, OperationError

if TYPE_CHECKING:  # imported where they are used, so that each command loads only what it needs
    from nats.aio.client import Client as NATS

    from events.connect import NatsConfig, ServerErrors
    from reconciler.config import ReconcilerConfig
    from reconciler.document import Ready

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
    except OSError as e:
        # The system refused a file or socket the command needs; its message names it.
        print(f"cfnft {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        # A bug. Still one line; the traceback is in the debug log, for a bug report.
        log.debug("the unexpected error", exc_info=True)
        print(
            f"cfnft {args.command}: unexpected {type(e).__name__}: {e} (a bug; --log-level debug shows where)",
            file=sys.stderr,
        )
        return EXIT_FAILED


# ------------------------------------------------------------------ one-shot


def _load_state(path: Path, lenient: bool) -> Ready:
    """The cell state document, checked as the kernel needs it and compiled (reconciler/document.py);
    StateError, listing every problem, if it is invalid (lenient: what cannot be left out)."""
    from events.models import load_cell_state_file
    from events.problems import StateError
    from reconciler.document import ready_for_kernel

    if lenient:
        state, problems = load_cell_state_file(path, lenient=True)
        for p in problems:
            print(f"cfnft: {path}: skipped: {p}", file=sys.stderr)
    else:
        state = load_cell_state_file(path)
    try:
        ready = ready_for_kernel(state, lenient=lenient)
    except StateError as e:
        raise StateError(e.problems, source=str(path), what="cell state") from None
    for u in ready.left_out:
        print(f"cfnft: {path}: skipped: {u.unit}: {u.reason}", file=sys.stderr)
    return ready


def cmd_render(args: argparse.Namespace) -> int:
    from nft import render_ruleset

    ready = _load_state(args.state, args.lenient)
    sys.stdout.write(render_ruleset(ready.desired))  # the batch a cold `cfnft apply` commits
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from nft import NftRunner, diff
    from reconciler.compile import TABLE

    ready = _load_state(args.state, args.lenient)
    desired, state = ready.desired, ready.state
    runner = NftRunner(netns=args.netns)
    tx = diff(desired, runner.read(TABLE))
    if tx.is_empty:
        print("cfnft apply: the kernel already matches; nothing to do", file=sys.stderr)
        return EXIT_OK
    runner.apply(tx)
    chains, rules, elements = desired.counts()
    print(
        f"cfnft apply: committed {len(tx)} changes in one transaction; table inet cfnft now has "
        f"{chains} chains, {rules} rules, {elements} elements for {len(state.containers)} containers",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from nft import NftRunner, diff
    from reconciler.compile import TABLE

    ready = _load_state(args.state, lenient=False)
    tx = diff(ready.desired, NftRunner(netns=args.netns).read(TABLE))
    repair = tx.render()
    if tx.is_empty:
        print("cfnft check: the kernel matches the state", file=sys.stderr)
        return EXIT_OK
    print(f"cfnft check: the kernel differs from the state; {len(tx)} changes would repair it:", file=sys.stderr)
    sys.stdout.write(repair)
    return EXIT_DIFFERS


# ------------------------------------------------------------------ daemon


def _reconciler_config(args: argparse.Namespace) -> ReconcilerConfig:
    """The config file with the flags given laid over it, validated whole: a bad flag is refused
    like a bad key in the file (StateError naming the key), and `--metrics-listen ''` turns the
    listener off as an empty `metrics_listen` does."""
    from events.connect import check_usable
    from events.problems import validate_strict
    from reconciler.config import ReconcilerConfig, load_config

    if args.config is None and args.cell_id is None:
        raise InputError("give --config FILE or at least --cell-id")
    cfg = load_config(args.config) if args.config else None
    data: dict[str, object] = dict(cfg) if cfg is not None else {}
    flags = {
        "cell_id": args.cell_id,
        "netns": args.netns,
        "socket_path": args.socket,
        "state_dir": args.state_dir,
        "metrics_listen": args.metrics_listen,
    }
    data.update({key: value for key, value in flags.items() if value is not None})
    nats_updates = _nats_overrides(args)
    if nats_updates:
        data["nats"] = {**(dict(cfg.nats) if cfg is not None else {}), **nats_updates}
    checked = validate_strict(ReconcilerConfig, data)
    check_usable(checked.nats)  # TLS and credentials, or --nats-insecure: refused before anything starts
    return checked


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
        ("nats_user", "user"),
        ("nats_password_file", "password_file"),
    ):
        if getattr(args, flag):
            out[key] = getattr(args, flag)
    if args.nats_insecure:
        out["insecure"] = True
    return out


def _nats_config(base: NatsConfig, args: argparse.Namespace, where: str) -> NatsConfig:
    """`base` (from a config file, or the defaults) with the command line's --nats-* flags, checked
    as a connection would check it (NatsConfigError, TlsConfigError): refused before anything starts."""
    from pydantic import ValidationError

    from events.connect import NatsConfig, check_usable

    try:
        cfg = NatsConfig.model_validate({**base.model_dump(exclude_unset=True), **_nats_overrides(args)})
    except ValidationError as e:
        problem = e.errors()[0]
        field = ".".join(str(p) for p in problem["loc"])
        raise InputError(f"{where}: nats{'.' + field if field else ''}: {problem['msg']}") from None
    check_usable(cfg)
    return cfg


def cmd_reconcile(args: argparse.Namespace) -> int:
    from nft import NftRunner
    from reconciler.daemon import Reconciler
    from reconciler.endpoint import start_endpoints

    cfg = _reconciler_config(args)
    runner = NftRunner(netns=cfg.netns)

    async def main() -> int:
        rec = Reconciler(cfg, runner)
        loop = asyncio.get_running_loop()
        if rec.flow_log is not None:  # log rotation moves the file away, then sends SIGHUP
            loop.add_signal_handler(signal.SIGHUP, rec.flow_log.reopen)
        runners = await start_endpoints(rec, cfg.socket_path, cfg.metrics_listen)
        running = asyncio.create_task(rec.run())
        # monit and bpm stop with SIGTERM: stop as on Ctrl-C, so what run() does on the way out
        # (the last committed state saved, NATS closed) is done.
        loop.add_signal_handler(signal.SIGTERM, running.cancel)
        try:
            await running
        except asyncio.CancelledError:
            log.info("stopped by SIGTERM")
        finally:
            for r in runners:
                await r.cleanup()
        return EXIT_FAILED if rec.fatal is not None else EXIT_OK

    log.info("starting reconciler for cell %s", cfg.cell_id, extra={"cell_id": cfg.cell_id})
    return asyncio.run(main())


def cmd_watch(args: argparse.Namespace) -> int:
    from cfnft.watch import load_watch_config, run_watchers

    unknown = set(args.only) - {"bbs", "policy", "cc"}
    if unknown:
        raise InputError(f"unknown watcher {', '.join(sorted(unknown))}: choose from bbs, policy, cc")
    cfg = load_watch_config(args.config)
    cfg = cfg.model_copy(update={"nats": _nats_config(cfg.nats, args, str(args.config))})
    asyncio.run(run_watchers(cfg, set(args.only) or None))
    return EXIT_OK


# ------------------------------------------------------------------ NATS operations


@contextlib.asynccontextmanager
async def _nats(args: argparse.Namespace, action: str) -> AsyncIterator[NATS]:
    """A NATS connection for one command, as the operator identity (its inbox prefix; see
    events/permissions.py). nats-py's errors while using it (no JetStream, the connection lost)
    become NatsUnavailable naming the servers and `action`; so does any failure, a request nobody
    answered included, after the server refused something (a permissions violation): that is why."""
    from nats.errors import Error as NatsClientError

    from events.connect import NatsConfig, NatsUnavailable, ServerErrors, connect
    from events.permissions import Role, inbox_prefix

    cfg = _nats_config(NatsConfig(), args, f"cfnft {args.command}")
    errors = ServerErrors("cfnft-cli")
    nc = await connect(cfg, "cfnft-cli", inbox_prefix(Role.OPERATOR), forever=False, errors=errors)
    try:
        yield nc
        # A refused publish is answered with an error before the flush's PONG; let it land.
        await nc.flush()
        await asyncio.sleep(0.05)
    except (NatsClientError, OperationError) as e:
        if errors.refused is None and isinstance(e, OperationError):
            raise
        raise NatsUnavailable(cfg.servers, _refusal(errors) or str(e) or type(e).__name__, action) from None
    finally:
        await nc.close()
    if errors.refused:
        raise NatsUnavailable(cfg.servers, _refusal(errors) or "", action)


def _refusal(errors: ServerErrors) -> str | None:
    if errors.refused is None:
        return None
    return f"the server refused it ({errors.refused}); does this identity have the operator role?"


def cmd_publish(args: argparse.Namespace) -> int:
    from cfnft.publish import publish_state

    state = _load_state(args.state, lenient=False).state
    if not state.cell_id:
        raise InputError(f"{args.state}: cell_id is required to publish containers")

    async def main() -> int:
        async with _nats(args, "publish to") as nc:
            sent, deleted = await publish_state(nc, state, prune=args.prune, replicas=args.stream_replicas)
        print(
            f"cfnft publish: {sent} objects published, {deleted} deleted (unchanged objects skipped)", file=sys.stderr
        )
        return EXIT_OK

    return asyncio.run(main())


def cmd_resync(args: argparse.Namespace) -> int:
    from events import subjects
    from events.messages import ResyncRequest

    async def main() -> int:
        subject = subjects.resync_cell(args.cell) if args.cell else subjects.RESYNC_ALL
        async with _nats(args, "publish to") as nc:
            await nc.publish(subject, ResyncRequest(cell_id=args.cell, reason=args.reason).model_dump_json().encode())
        print(f"cfnft resync: requested on {subject}", file=sys.stderr)
        return EXIT_OK

    return asyncio.run(main())


def cmd_status(args: argparse.Namespace) -> int:
    if args.cell is None:
        from cfnft.operate import cmd_fleet_status

        return cmd_fleet_status(args)
    from cfnft.operate import request
    from cfnft.replies import CellStatus
    from events import subjects

    status = asyncio.run(request(args, subjects.status(args.cell), {}, CellStatus, "the status request"))
    print(json.dumps(status.model_dump(mode="json", exclude_unset=True), indent=2))
    return EXIT_OK if status.in_sync else EXIT_DIFFERS


def cmd_explain(args: argparse.Namespace) -> int:
    from cfnft.operate import cmd_explain as explain

    return explain(args)


def cmd_stats(args: argparse.Namespace) -> int:
    from cfnft.operate import cmd_stats as stats

    return stats(args)


_HANDLERS = {
    "render": cmd_render,
    "apply": cmd_apply,
    "check": cmd_check,
    "reconcile": cmd_reconcile,
    "watch": cmd_watch,
    "publish": cmd_publish,
    "resync": cmd_resync,
    "status": cmd_status,
    "explain": cmd_explain,
    "stats": cmd_stats,
}
