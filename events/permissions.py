"""Who may do what on NATS: the three roles of cfnft and the subjects each may use.

nats-server enforces these (design.md §6, "Who may write"): the lab renders them into its server
configuration (examples/nats/ is generated from here) and the BOSH job `cfnft-nats` renders the same
lists (tests/test_bosh_templates.py compares them with this module).

- **watcher** (`cfnft watch`): writes state, manages the state stream, and reads it back (a restarted
  watcher publishes only differences; the policy watcher reads which spaces have containers), and
  holds the lease of its kind in the bucket CFNFT_LEASES (events/lease.py).
- **operator** (`cfnft publish`, `resync`, `status`, `explain`, `stats`): what a watcher may do, plus
  reading any one message of the stream, resync requests, and status, explain and stats requests to
  any cell or (status) to all of them, and watching every `cfnft.` subject (`nats sub 'cfnft.>'`).
- **cell** (`cfnft reconcile`, one identity per cell): reads its own containers and config and the
  foundation-wide objects, through consumers it may create only with those filters and its own
  names, answers status, explain and stats requests on its own subjects (and the fleet-wide status
  request), and nothing else: it can neither write state
  nor create or change the stream, nor read it any other way. It may ask for the stream's info
  (creation time, first and last sequence: how a resuming cell knows the stream it left is still
  there), which, asked for, also lists subject names: other cells' container handles, never their
  contents.

A cell's limits rest on the JetStream API subject that names the consumer and its filter
(`$JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter>`, nats-server >= 2.9), which the server
refuses unless the filter inside the request equals the one in the subject; the older forms
without a filter in the subject are not allowed to cells. Each client uses an inbox prefix of its
own role (and cell), and may subscribe only below it, so no identity can read replies or
deliveries meant for another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from events import subjects
from events.lease import LEASE_BUCKET

JS_API = "$JS.API"
JS_FLOW_CONTROL = "$JS.FC"


class Role(StrEnum):
    WATCHER = "watcher"
    OPERATOR = "operator"
    CELL = "cell"


@dataclass(frozen=True, slots=True)
class Permissions:
    """One identity's allow-lists; anything not listed is refused by nats-server."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # May publish a reply to requests it received (status requests, JetStream flow control), and
    # only to those; without it, answering would need publish rights on other clients' inboxes.
    allow_responses: bool = False


@dataclass(frozen=True, slots=True)
class CellConsumer:
    """One JetStream consumer a cell's reconciler reads through: its filter, under one of two fixed
    names. A replacement goes into the other name, so a consumer left on a lost server (which cannot
    be deleted until the cluster gives up on it) never blocks its successor."""

    names: tuple[str, str]
    filter_subject: str


def inbox_prefix(role: Role, cell_id: str | None = None) -> str:
    """The prefix of every reply and delivery subject a client of `role` creates."""
    if role is Role.CELL:
        if cell_id is None:
            raise ValueError("a cell's inbox prefix needs its cell id")
        return f"_INBOX.cell.{subjects.token(cell_id, 'cell id')}"
    return f"_INBOX.{role.value}"


def identity_name(role: Role, cell_id: str | None = None) -> str:
    """The NATS user of an identity: `watcher`, `operator`, or `cell-<cell id>` (one per cell)."""
    if role is Role.CELL:
        if cell_id is None:
            raise ValueError("a cell's identity needs its cell id")
        return f"cell-{subjects.token(cell_id, 'cell id')}"
    return role.value


def cell_consumers(cell_id: str) -> tuple[CellConsumer, ...]:
    """What one cell reads: its containers and config, every foundation-wide object, and the
    publishers' epoch markers (which say whether the stream holds a whole publication).

    The names are fixed per cell and filter, so the server can tie each name to its filter and a
    cell can neither take over another cell's consumer nor read another's deliveries."""
    subjects.token(cell_id, "cell id")
    if any(c in cell_id for c in "/\\"):
        raise ValueError(f"cell id {cell_id!r} cannot be used in a JetStream consumer name (has '/' or '\\')")
    return tuple(
        CellConsumer((f"cfnft-{cell_id}-{kind}-0", f"cfnft-{cell_id}-{kind}-1"), flt)
        for kind, flt in (
            ("containers", subjects.containers_of_cell(cell_id)),
            ("config", subjects.cell_config(cell_id)),
            ("apps", f"{subjects.STATE_PREFIX}.app.*"),
            ("asgs", f"{subjects.STATE_PREFIX}.asg.*"),
            ("c2c", f"{subjects.STATE_PREFIX}.c2c.*"),
            ("egress", subjects.EGRESS_POLICIES),
            ("epochs", subjects.EPOCHS),
        )
    )


def consumer_create_subject(stream: str, name: str, filter_subject: str) -> str:
    """The API subject that creates consumer `name` with its filter (what nats-py sends for a named consumer)."""
    return f"{JS_API}.CONSUMER.CREATE.{stream}.{name}.{filter_subject}"


def _state_writer() -> tuple[str, ...]:
    stream = subjects.STATE_STREAM
    return (
        subjects.STATE_WILDCARD,
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.CREATE.{stream}",
        f"{JS_API}.STREAM.UPDATE.{stream}",
        # Reading the stream back: nats-py's ordered consumers use the form without a name.
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"{JS_FLOW_CONTROL}.{stream}.>",
        # The last message of one subject: a publisher that does not know whether its publication
        # was stored reads it back (events/publisher.py); `cfnft status --object` shows it.
        f"{JS_API}.STREAM.MSG.GET.{stream}",
    )


def _lease_holder() -> tuple[str, ...]:
    """The JetStream key-value bucket of the watchers' leases (events/lease.py): create it, read
    and write its keys."""
    stream = f"KV_{LEASE_BUCKET}"
    return (
        f"$KV.{LEASE_BUCKET}.>",
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.CREATE.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
    )


def watcher_permissions() -> Permissions:
    return Permissions(
        publish=(*_state_writer(), *_lease_holder()),
        subscribe=(subjects.RESYNC_ALL, f"{inbox_prefix(Role.WATCHER)}.>"),
    )


def operator_permissions() -> Permissions:
    return Permissions(
        publish=(
            *_state_writer(),
            *_lease_holder(),
            subjects.RESYNC_ALL,
            f"{subjects.RESYNC_CELL_PREFIX}.*",
            f"{subjects.STATUS_PREFIX}.*",
            f"{subjects.EXPLAIN_PREFIX}.*",
            f"{subjects.STATS_PREFIX}.*",
            subjects.FLEET_STATUS,
        ),
        # Everything cfnft publishes, as `nats sub 'cfnft.>'` shows it to an operator.
        subscribe=("cfnft.>", f"{inbox_prefix(Role.OPERATOR)}.>"),
    )


def cell_permissions(cell_id: str) -> Permissions:
    stream = subjects.STATE_STREAM
    publish = [f"{JS_API}.STREAM.INFO.{stream}"]
    for consumer in cell_consumers(cell_id):
        for name in consumer.names:
            publish.append(consumer_create_subject(stream, name, consumer.filter_subject))
            # A cell replaces a consumer it lost: the new one from where the old one was, then the old one goes.
            publish.append(f"{JS_API}.CONSUMER.DELETE.{stream}.{name}")
    return Permissions(
        publish=tuple(publish),
        subscribe=(
            subjects.RESYNC_ALL,
            subjects.resync_cell(cell_id),
            subjects.status(cell_id),
            subjects.explain(cell_id),
            subjects.stats(cell_id),
            subjects.FLEET_STATUS,
            f"{inbox_prefix(Role.CELL, cell_id)}.>",
        ),
        allow_responses=True,
    )
