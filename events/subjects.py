"""Every NATS subject and JetStream name cfnft uses, in one place.

State objects live in one JetStream stream that keeps only the last message per subject, so
the stream *is* the current desired state of the foundation: a reconciler that starts from
nothing replays it (deliver policy "last per subject") and knows everything, with no watcher
or CF API up. A deletion is an explicit message whose object is null, never a missing one.

    cfnft.state.container.<cell_id>.<handle>   ContainerMessage      one container on one cell
    cfnft.state.app.<app_guid>                 AppInstancesMessage   overlay addresses of an app's instances, all cells
    cfnft.state.asg.<guid>                     SecurityGroupMessage  one Cloud Controller security group
    cfnft.state.c2c.<destination app guid>     C2CPoliciesMessage    all c2c policies whose destination is that app
    cfnft.state.egress                         EgressPoliciesMessage all dynamic egress policies
    cfnft.state.config.<cell_id>               CellConfigMessage     operator config of one cell
    cfnft.state.epoch.<source>                 EpochMessage          which kinds a publisher has published whole

Plain (not stored) subjects:

    cfnft.resync.all / cfnft.resync.cell.<cell_id>   ResyncRequest   re-list sources, re-read kernels
    cfnft.status.<cell_id>                           request/reply   a reconciler's view of its cell
    cfnft.explain.<cell_id>                          request/reply   explain a packet from what the cell committed
    cfnft.stats.<cell_id>                            request/reply   packets and bytes per rule, from the kernel
    cfnft.fleet.status                               scatter/gather  every reconciler answers with its status
"""

from __future__ import annotations

import re

STATE_STREAM = "CFNFT_STATE"
STATE_PREFIX = "cfnft.state"
STATE_WILDCARD = "cfnft.state.>"

RESYNC_ALL = "cfnft.resync.all"
RESYNC_CELL_PREFIX = "cfnft.resync.cell"
STATUS_PREFIX = "cfnft.status"
EXPLAIN_PREFIX = "cfnft.explain"
STATS_PREFIX = "cfnft.stats"
FLEET_STATUS = "cfnft.fleet.status"

# NATS subject tokens may not contain these; handles and guids never do, but input is input.
_BAD_TOKEN = re.compile(r"[\s.*>]")


def token(value: str, what: str) -> str:
    """Check that `value` can be one subject token; raise ValueError naming `what` if not."""
    if not value or _BAD_TOKEN.search(value):
        raise ValueError(f"{what} {value!r} cannot be used in a NATS subject (empty, or has '.', '*', '>' or space)")
    return value


def container(cell_id: str, handle: str) -> str:
    return f"{STATE_PREFIX}.container.{token(cell_id, 'cell id')}.{token(handle, 'container handle')}"


def containers_of_cell(cell_id: str) -> str:
    return f"{STATE_PREFIX}.container.{token(cell_id, 'cell id')}.*"


def app_instances(app_guid: str) -> str:
    return f"{STATE_PREFIX}.app.{token(app_guid, 'app guid')}"


def security_group(guid: str) -> str:
    return f"{STATE_PREFIX}.asg.{token(guid, 'security group guid')}"


def c2c_policies(destination_app_guid: str) -> str:
    return f"{STATE_PREFIX}.c2c.{token(destination_app_guid, 'app guid')}"


EGRESS_POLICIES = f"{STATE_PREFIX}.egress"


def cell_config(cell_id: str) -> str:
    return f"{STATE_PREFIX}.config.{token(cell_id, 'cell id')}"


def epoch(source: str) -> str:
    return f"{STATE_PREFIX}.epoch.{token(source, 'publisher name')}"


EPOCHS = f"{STATE_PREFIX}.epoch.*"


def resync_cell(cell_id: str) -> str:
    return f"{RESYNC_CELL_PREFIX}.{token(cell_id, 'cell id')}"


def status(cell_id: str) -> str:
    return f"{STATUS_PREFIX}.{token(cell_id, 'cell id')}"


def explain(cell_id: str) -> str:
    return f"{EXPLAIN_PREFIX}.{token(cell_id, 'cell id')}"


def stats(cell_id: str) -> str:
    return f"{STATS_PREFIX}.{token(cell_id, 'cell id')}"
