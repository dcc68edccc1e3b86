"""The root of cfnft's errors, and the exit codes the command line maps them to.

Every error a user can act on derives from `CfnftError`. Its class says what kind of failure it
is, which decides the exit code; its fields say which object failed (file, key, container,
subject, route, network namespace) and with what input; its `str()` says both in words an
operator can act on. The command line turns any of them into `cfnft <command>: <str(error)>` on
stderr and the class's exit code (`cfnft.commands.run`); nothing else turns errors into exit
codes, and no traceback reaches the user.

The tree (each class lives next to the code that raises it):

    CfnftError
    ├── InputError                bad input or configuration, found before anything changed: exit 2
    │   ├── StateError            events/problems.py  a document (cell state, config file, NATS message,
    │   │                                             CF response) is invalid: every `Problem`, by path
    │   └── TlsConfigError        events/tls.py       a CA, certificate or key file cannot be loaded
    └── OperationError            the operation failed: exit 3
        ├── NftError              nft/errors.py       libnftables refused a command or batch
        ├── NamespaceError        nft/errors.py       a network namespace cannot be entered
        ├── ReadbackError         nft/errors.py       the kernel's listing of our table cannot be parsed
        ├── TransactionError      nft/transaction.py  an object given to a transaction is invalid
        ├── NatsUnavailable       events/connect.py   a one-shot command cannot reach or use NATS
        ├── SourceError           events/httpsource.py  a call to a CF HTTP API (policy server, CC, UAA)
        ├── BbsError              events/bbs/errors.py  a call to BBS (Unavailable, Tls, Api, Protocol)
        └── FatalSourceError      events/poller.py    a watcher gave up on its source

`SourceError` and `BbsError` stay two families: each carries the classification its own watcher
branches on and labels metrics with (`Reason` for HTTP sources, `kind` for BBS), and nothing but
the command line catches "any CF source error". A watcher retries both; only when it gives up
does `FatalSourceError` reach the command line.

This module imports nothing, so every layer (nft/, events/, reconciler/) may derive from it.
The CNI plugin does not: it speaks the CNI protocol's own error objects (`cni.errors.CniError`,
with the spec's codes, printed as JSON on stdout), runs with the standard library only, and is
never run through this command line.
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
