"""What the table logs, and how: every `log` statement of ours hands its packet to NFLOG group
`FLOW_LOG_GROUP` (read by the flow log, reconciler/flowlog.py) under one of these prefixes, which
say what happened to the packet. Not the kernel log: it is not per network namespace, it loses
fields, and nothing but a syslog parser could read it back."""

from __future__ import annotations

from enum import StrEnum

FLOW_LOG_GROUP = 100
"""The NFLOG group of cfnft's log statements (one listener per group and namespace)."""


class LogPrefix(StrEnum):
    ASG_ACCEPT = "cfnft-asg-ok "
    ASG_DENY = "cfnft-asg-deny "
    C2C_ACCEPT = "cfnft-c2c-ok "
    C2C_DENY = "cfnft-c2c-deny "
    LIMIT_REJECT = "cfnft-orl-deny "
    LIMIT_DRY_RUN = "cfnft-orl-dryrun "

    @property
    def direction(self) -> str:
        return "ingress" if self in (LogPrefix.C2C_ACCEPT, LogPrefix.C2C_DENY) else "egress"

    @property
    def allowed(self) -> bool:
        return self in (LogPrefix.ASG_ACCEPT, LogPrefix.C2C_ACCEPT, LogPrefix.LIMIT_DRY_RUN)


def log_statement(prefix: LogPrefix) -> str:
    """The nft statement that logs a packet under `prefix` to the flow log."""
    return f'log prefix "{prefix.value}" group {FLOW_LOG_GROUP}'
