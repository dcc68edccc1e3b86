"""CNI error results: the codes the spec reserves, ours (100+), and the error object printed on stdout."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Error codes of a CNI error result. 0-99 are the spec's; 100+ are cfnft-cni's own."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    """STATUS: the plugin cannot service ADD (the reconciler is unreachable)."""
    DEGRADED = 51
    """STATUS: the reconciler answers but is not in sync: new and existing containers may lack rules."""
    RULES_MISSING = 100
    """CHECK: the reconciler reports that the container's rules are not (all) in the kernel."""
    BAD_ANSWER = 101
    """The reconciler answered something this plugin does not understand (a version mismatch or a bug)."""
    INTERNAL = 999
    """A bug in cfnft-cni (the same code the Go skeleton uses)."""


class CniError(Exception):
    """A failed CNI operation: printed as the spec's error object on stdout, exit status 1."""

    def __init__(self, code: Code, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def result(self, cni_version: str) -> dict[str, object]:
        """The error object of the spec, in the version the runtime asked for."""
        return {"cniVersion": cni_version, "code": int(self.code), "msg": self.msg, "details": self.details}

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg
