"""Errors raised by nft/. libnftables' raw `(rc, stdout, stderr)` never leaves this package:
every failure becomes an `NftError` that says what failed and shows the batch lines nft blamed.
All are `OperationError`s (cfnft/errors.py): the kernel side failed, exit 3."""

from __future__ import annotations

import re

from cfnft.errors import OperationError

# nft prefixes each error with the input location, "<file>:<line>:<col>-<col>: Error: ...", also
# for errors the kernel reports, which nft maps back to the command. (For a batch given as a
# buffer, nft 1.0.6 omits the location and echoes the buffer's first line instead: that is why
# the runner hands batches to libnftables as a file.)
_LOCATION = re.compile(r"^[^\n]*?:(\d+):\d+(?:-\d+)?: Error:", re.MULTILINE)
_EXCERPT_CONTEXT = 2


class NftError(OperationError):
    """An nft command or batch failed.

    `rc` is libnftables' return code, `stderr` nft's own message, and `batch_excerpt` the lines of
    the batch around the one nft pointed at (empty when it pointed nowhere). `not_found` and
    `exists` tell the two failures callers branch on (ENOENT, EEXIST) from all others.
    """

    def __init__(self, rc: int, stderr: str, batch_excerpt: str = "", *, what: str = "nft batch") -> None:
        self.rc = rc
        self.stderr = stderr.strip()
        self.batch_excerpt = batch_excerpt
        self.what = what
        super().__init__(str(self))

    @classmethod
    def from_batch(cls, rc: int, stderr: str, batch: str, *, what: str = "nft batch") -> NftError:
        """Builds the error for a failed `batch`, cutting out the lines nft blamed."""
        return cls(rc, stderr, excerpt(batch, stderr), what=what)

    @property
    def not_found(self) -> bool:
        # The kernel says ENOENT; for interval sets nft finds a missing element itself first.
        return "No such file or directory" in self.stderr or "element does not exist" in self.stderr

    @property
    def exists(self) -> bool:
        return "File exists" in self.stderr

    def __str__(self) -> str:
        first = next((line for line in self.stderr.splitlines() if "Error:" in line), self.stderr.split("\n", 1)[0])
        message = first.split("Error:", 1)[-1].strip() or f"return code {self.rc}"
        text = f"{self.what} failed: {message}"
        if self.batch_excerpt:
            text += "\n" + self.batch_excerpt
        return text


class NamespaceError(OperationError):
    """The network namespace a runner was asked to work in cannot be entered."""

    def __init__(self, netns: str, reason: str) -> None:
        self.netns = netns
        self.reason = reason
        super().__init__(f"network namespace {netns!r}: {reason}")


class ReadbackError(OperationError):
    """The kernel's listing of a table could not be turned into a `Ruleset`."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"cannot read back {where}: {reason}")


def excerpt(batch: str, stderr: str) -> str:
    """The batch lines around the one nft blamed, numbered, the blamed one marked with `>`."""
    lines = batch.splitlines()
    target = _blamed_line(lines, stderr)
    if target is None:
        return ""
    lo, hi = max(0, target - _EXCERPT_CONTEXT), min(len(lines), target + _EXCERPT_CONTEXT + 1)
    width = len(str(hi))
    return "\n".join(f"{'>' if i == target else ' '} {i + 1:>{width}} | {lines[i]}" for i in range(lo, hi))


def _blamed_line(lines: list[str], stderr: str) -> int | None:
    match = _LOCATION.search(stderr)
    if match is None:
        return None
    index = int(match.group(1)) - 1
    return index if 0 <= index < len(lines) else None
