"""Commits transactions to the kernel and reads tables back, through libnftables.

Why this binding: we use Debian's `python3-nftables`, the binding the nftables project ships in
its own source tree. It is built from the same source package as the system's libnftables, so
binding and library always match (nft 1.0.6 here); it is a thin ctypes wrapper with no other
dependency. The PyPI packages (`pip-nftables`, `oxl-libnftables`) are copies of the same module
released on their own schedule, which would add a second thing to keep in step with the system
library and buy nothing. Talking to libnftables in-process (rather than running `nft`) saves a
process start per transaction, which matters for the per-container latency budget.

Atomicity: a transaction is one libnftables call. The batch goes in as a file (a memfd), because
for a batch given as a buffer nft 1.0.6 reports errors against the buffer's first line; from a
file it names the real line, which `NftError.batch_excerpt` shows.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from nft.errors import NftError
from nft.netns import NamespaceThread
from nft.objects import Counters, Ruleset, Table
from nft.readback import parse_counters, parse_rule_texts, parse_ruleset
from nft.transaction import Transaction

if TYPE_CHECKING:
    import nftables


class NftRunner:
    """The kernel side of `NftInterface`: libnftables, optionally inside a named network namespace.

    With `netns` set, every libnftables call runs on one worker thread that entered
    /var/run/netns/<netns>; the rest of the process stays in its own namespace. The sync methods
    block; the `*_async` ones await the same worker from an asyncio loop.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ctx: nftables.Nftables | None = None
        self._worker = NamespaceThread(netns, setup=self._open)

    def __enter__(self) -> NftRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._worker.close()

    def apply(self, tx: Transaction) -> None:
        """Commits `tx` atomically: all of it or, on NftError, none of it."""
        batch = tx.render()
        if batch:
            self._worker.call(self._run_batch, batch, False)

    def check(self, tx: Transaction) -> None:
        """Has the kernel validate `tx` without committing it (nft --check); raises NftError if it would fail."""
        batch = tx.render()
        if batch:
            self._worker.call(self._run_batch, batch, True)

    def read(self, table: Table) -> Ruleset | None:
        """The table as the kernel holds it, or None if it does not exist."""
        return self._worker.call(self._read, table)

    def read_counters(self, table: Table) -> Counters | None:
        """Packet and byte counters of the table's rules and set elements, or None without the table."""
        return self._worker.call(self._read_counters, table)

    def list_tables(self) -> list[str]:
        """`family name` of every table in the namespace (nothing else of other tables is read)."""
        return self._worker.call(self._list_tables)

    async def apply_async(self, tx: Transaction) -> None:
        batch = tx.render()
        if batch:
            await self._worker.call_async(self._run_batch, batch, False)

    async def check_async(self, tx: Transaction) -> None:
        batch = tx.render()
        if batch:
            await self._worker.call_async(self._run_batch, batch, True)

    async def read_async(self, table: Table) -> Ruleset | None:
        return await self._worker.call_async(self._read, table)

    async def read_counters_async(self, table: Table) -> Counters | None:
        return await self._worker.call_async(self._read_counters, table)

    # Everything below runs on the worker thread.

    def _open(self) -> None:
        import nftables  # Debian's python3-nftables; imported here so nft/ loads without it

        self._ctx = nftables.Nftables()

    def _nft(self) -> nftables.Nftables:
        assert self._ctx is not None, "libnftables context is opened by the worker thread"
        return self._ctx

    def _run_batch(self, batch: str, dry_run: bool) -> None:
        nft = self._nft()
        fd = os.memfd_create("cfnft-batch", os.MFD_CLOEXEC)
        try:
            os.write(fd, batch.encode())
            nft.set_dry_run(dry_run)
            rc, _, err = nft.cmd_from_file(f"/proc/self/fd/{fd}")
        finally:
            nft.set_dry_run(False)
            os.close(fd)
        if rc != 0:
            raise NftError.from_batch(rc, err, batch, what="nft check" if dry_run else "nft transaction")

    def _list(self, table: Table, *, json: bool) -> str | None:
        nft = self._nft()
        nft.set_json_output(json)
        nft.set_numeric_proto_output(True)
        nft.set_numeric_symbol_output(True)
        nft.set_numeric_prio_output(True)
        # The text listing is only for rule text: no set elements, no counter values, with handles.
        nft.set_terse_output(not json)
        nft.set_stateless_output(not json)
        nft.set_handle_output(not json)
        command = f"list table {table.family} {table.name}"
        try:
            rc, out, err = nft.cmd(command)
        finally:
            nft.set_json_output(False)
            nft.set_terse_output(False)
            nft.set_stateless_output(False)
            nft.set_handle_output(False)
        if rc != 0:
            error = NftError(rc, err, what=command)
            if error.not_found:
                return None
            raise error
        return out

    def _read(self, table: Table) -> Ruleset | None:
        listing = self._list(table, json=True)
        texts = self._list(table, json=False) if listing is not None else None
        if listing is None or texts is None:
            return None
        return parse_ruleset(listing, parse_rule_texts(texts))

    def _read_counters(self, table: Table) -> Counters | None:
        listing = self._list(table, json=True)
        return parse_counters(listing) if listing is not None else None

    def _list_tables(self) -> list[str]:
        rc, out, err = self._nft().cmd("list tables")
        if rc != 0:
            raise NftError(rc, err, what="list tables")
        return [line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table ")]
