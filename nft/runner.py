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
from nft.readback import parse_listing, table_block
from nft.transaction import Transaction

if TYPE_CHECKING:
    import nftables  # type: ignore[import-untyped]  # Debian's binding ships no type information


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

    def read(self, table: Table, *, elements: bool = True) -> Ruleset | None:
        """The table as the kernel holds it, or None if it does not exist.

        With `elements=False` every set and map comes back empty (nft's terse listing, `nft -t`):
        chains, rules with their fingerprints, and set definitions, at a fraction of the cost of
        a full read of a big table. Enough to tell whether anyone changed the table's structure
        (`nft.same_structure`); never diff such a read, which would re-add every element."""
        listed = self._worker.call(self._read, table, elements)
        return listed[0] if listed is not None else None

    def read_counters(self, table: Table) -> Counters | None:
        """Packet and byte counters of the table's rules and set elements, or None without the table."""
        listed = self._worker.call(self._read, table, True)
        return listed[1] if listed is not None else None

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

    async def read_async(self, table: Table, *, elements: bool = True) -> Ruleset | None:
        listed = await self._worker.call_async(self._read, table, elements)
        return listed[0] if listed is not None else None

    async def read_counters_async(self, table: Table) -> Counters | None:
        listed = await self._worker.call_async(self._read, table, True)
        return listed[1] if listed is not None else None

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
        if dry_run or rc != 0:
            # libnftables 1.0.6 keeps what a dry run or failed batch added to its cache, and trusts
            # that cache while the kernel's generation is unchanged: a later batch would then be
            # checked against objects that never existed ("interval overlaps"). A new context
            # starts with an empty cache; it costs well under a millisecond.
            self._open()
        if rc != 0:
            raise NftError.from_batch(rc, err, batch, what="nft check" if dry_run else "nft transaction")

    def _read(self, table: Table, elements: bool) -> tuple[Ruleset, Counters] | None:
        if not elements:
            # nft 1.0.6 fetches every set element for `list table` even in terse mode, and skips
            # them only for `list ruleset`: on a full cell 35 ms instead of 450 ms. That lists the
            # other tables of the family too (without their elements); only ours is parsed.
            try:
                listing = self._list(f"list ruleset {table.family}", terse=True)
            except NftError:
                pass  # another table of the family cannot be listed; ours can, at full cost
            else:
                block = table_block(listing, table)
                return parse_listing(block) if block is not None else None
        try:
            listing = self._list(f"list table {table.family} {table.name}", terse=not elements)
        except NftError as e:
            if e.not_found:
                return None
            raise
        return parse_listing(listing)

    def _list(self, command: str, *, terse: bool) -> str:
        """nft's listing for `command`, with handles and numbers; raises NftError."""
        nft = self._nft()
        # Numbers for protocols, ICMP types and priorities: set elements then hold nothing but
        # numbers, addresses and ranges. Handles pair rules with their kernel identity.
        flags = ("numeric_proto", "numeric_symbol", "numeric_prio", "handle") + (("terse",) if terse else ())
        for flag in flags:
            getattr(nft, f"set_{flag}_output")(True)
        try:
            rc, out, err = nft.cmd(command)
        finally:
            for flag in flags:
                getattr(nft, f"set_{flag}_output")(False)
        if rc != 0:
            raise NftError(rc, err, what=command)
        return str(out)

    def _list_tables(self) -> list[str]:
        rc, out, err = self._nft().cmd("list tables")
        if rc != 0:
            raise NftError(rc, err, what="list tables")
        return [line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table ")]
