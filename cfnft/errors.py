"""The root of cfnft's errors, and the exit codes the command line maps them to.

Every error a user can act on derives from `CfnftError`: its `str()` says what failed and where
(which file, container, rule, subject), and its class says what kind of failure it is, which
decides the exit code. The command line turns any of them into one line on stderr (see
`cfnft.commands.run`); nothing else turns errors into exit codes.

This module imports nothing, so every layer (nft/, events/, reconciler/) may derive from it.
The CNI plugin does not: it speaks the CNI protocol's own error objects (`cni.errors.CniError`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERS = 1  # `check`: the kernel differs; `status`: not in sync
EXIT_USAGE = 2  # bad input or configuration: nothing was changed
EXIT_FAILED = 3  # the operation failed (kernel, NATS, a CF source)


class CfnftError(Exception):
    """Something cfnft cannot do, explained. Subclasses say which kind."""

    exit_code = EXIT_FAILED


class InputError(CfnftError):
    """Bad input or configuration, found before anything was changed."""

    exit_code = EXIT_USAGE


class OperationError(CfnftError):
    """The operation itself failed (the kernel refused, NATS or a CF source did not answer)."""

    exit_code = EXIT_FAILED
