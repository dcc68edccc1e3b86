"""Operators' questions a reconciler answers over NATS request/reply, from what it committed to
its kernel (not from what it is about to write): `cfnft explain --cell`, `cfnft stats --cell`,
and `cfnft status --all/--object` (every reconciler answers `cfnft.fleet.status`, optionally with
the version of one object it enforces).
Answers are JSON; a question that cannot be answered is `{"error": ..., "bad_input": bool}`.

Also the per-group and per-policy totals on /metrics. Their cardinality is bounded by what is on
the cell, never by the foundation: one series per security group that applies to a container
here, one per local destination app for c2c (the granularity of a c2c message, not one per
policy), and a fixed handful of deny reasons; never one per rule or element. They are read from
the kernel every `rule_metrics_seconds` (one full listing of the table, on the worker thread
that also applies changes, hence not on every scrape)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from events import subjects
from nft import NftError
from reconciler.compile import TABLE
from reconciler.explain import ExplainInputError, Probe, explain
from reconciler.stats import CellStats, cell_stats

if TYPE_CHECKING:
    from reconciler.daemon import Reconciler

log = logging.getLogger(__name__)


def answer_explain(rec: Reconciler, data: bytes) -> dict[str, Any]:
    try:
        request = json.loads(data or b"{}")
        if not isinstance(request, dict) or not isinstance(request.get("source"), str):
            raise ExplainInputError('the request must be {"source": HANDLE, "to": "PROTO:IP[:PORT]"}')
        probe = Probe.parse(str(request.get("to", "")))
        if rec.committed is None:
            return {"error": "nothing committed to the kernel yet", "bad_input": False}
        state, ruleset = rec.committed
        found = explain(state, request["source"], probe, established=bool(request.get("established")), ruleset=ruleset)
        return found.model_dump(mode="json")
    except (ExplainInputError, ValueError) as e:
        return {"error": str(e), "bad_input": True}


async def read_stats(rec: Reconciler) -> CellStats | None:
    """The committed state's per-rule hits, from the kernel's counters now; None before any commit."""
    if rec.committed is None:
        return None
    state, ruleset = rec.committed
    counters = await rec.runner.read_counters_async(TABLE)
    if counters is None:
        raise NftError(1, "table inet cfnft does not exist", what="reading counters")
    return cell_stats(state, ruleset, counters)


async def answer_stats(rec: Reconciler) -> dict[str, Any]:
    try:
        stats = await read_stats(rec)
    except NftError as e:
        return {"error": f"cannot read the kernel's counters: {e}", "bad_input": False}
    if stats is None:
        return {"error": "nothing committed to the kernel yet", "bad_input": False}
    return stats.model_dump(mode="json")


class RuleMetrics(Collector):
    """The last read of the per-group / per-app / per-reason totals, as Prometheus counters."""

    def __init__(self) -> None:
        self.stats: CellStats | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        groups = CounterMetricFamily(
            "cfnft_security_group_packets", "packets accepted by a security group's rules", labels=["guid", "name"]
        )
        group_bytes = CounterMetricFamily(
            "cfnft_security_group_bytes", "bytes accepted by a security group's rules", labels=["guid", "name"]
        )
        c2c = CounterMetricFamily(
            "cfnft_c2c_packets", "packets accepted by the c2c policies into a local app", labels=["destination_app"]
        )
        denied = CounterMetricFamily("cfnft_denied_packets", "packets rejected, by reason", labels=["reason"])
        if self.stats is not None:
            for g in self.stats.security_groups:
                groups.add_metric([g.guid, g.name], g.hits.packets)
                group_bytes.add_metric([g.guid, g.name], g.hits.bytes)
            per_app: dict[str, int] = {}
            for p in self.stats.policies:
                if p.destination_app is not None:
                    per_app[p.destination_app] = per_app.get(p.destination_app, 0) + p.hits.packets
            for app, packets in sorted(per_app.items()):
                c2c.add_metric([app], packets)
            reasons: dict[str, int] = {}
            for d in self.stats.denies:
                reason = d.what.split(" ")[0] if d.what.startswith("deny_networks") else d.what.split(" (")[0]
                reason = "c2c default deny" if reason.startswith("c2c default deny") else reason
                reasons[reason] = reasons.get(reason, 0) + d.hits.packets
            for reason, packets in sorted(reasons.items()):
                denied.add_metric([reason], packets)
        yield from (groups, group_bytes, c2c, denied)


async def refresh_rule_metrics(rec: Reconciler, collector: RuleMetrics) -> None:
    """Re-read the counters every `rule_metrics_seconds`, for as long as the reconciler runs."""
    while True:
        await asyncio.sleep(rec.config.rule_metrics_seconds)
        try:
            collector.stats = await read_stats(rec)
        except NftError as e:
            log.error("reading the rule counters for /metrics failed: %s", e)


def answer_fleet_status(rec: Reconciler, data: bytes) -> dict[str, Any]:
    """The cell's status; with `{"object": SUBJECT}`, also the version of that object it enforces."""
    status = rec.status()
    try:
        request = json.loads(data or b"{}")
    except ValueError:
        request = {}
    subject = request.get("object") if isinstance(request, dict) else None
    if isinstance(subject, str):
        version = rec.realization.enforced_version(subject, rec.store.position(subject), rec.committed_generation)
        status["enforced"] = {"subject": subject, "version": version}
    return status


async def serve_operator_requests(rec: Reconciler, nc: NATS) -> None:
    """Subscribe this cell's operator subjects on `nc`."""

    async def on_explain(m: Msg) -> None:
        await m.respond(json.dumps(answer_explain(rec, m.data)).encode())

    async def on_stats(m: Msg) -> None:
        await m.respond(json.dumps(await answer_stats(rec)).encode())

    await nc.subscribe(subjects.explain(rec.config.cell_id), cb=on_explain)

    async def on_fleet_status(m: Msg) -> None:
        await m.respond(json.dumps(answer_fleet_status(rec, m.data)).encode())

    await nc.subscribe(subjects.stats(rec.config.cell_id), cb=on_stats)
    await nc.subscribe(subjects.FLEET_STATUS, cb=on_fleet_status)
