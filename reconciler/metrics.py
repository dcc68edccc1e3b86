"""Prometheus metrics of the reconciler. One registry per Reconciler, so tests can run several."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class ReconcilerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconcile_seconds = Histogram(
            "cfnft_reconcile_duration_seconds",
            "compile + diff + commit of one pass",
            ["outcome"],
            buckets=_FAST,
            registry=r,
        )
        self.enforce_latency = Histogram(
            "cfnft_event_to_enforced_seconds",
            "from a state change arriving to its kernel commit",
            buckets=_FAST,
            registry=r,
        )
        self.programming_latency = Histogram(
            "cfnft_programming_latency_seconds",
            "from a watcher observing a change at its source (carried in the message) to its kernel commit here",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.pending_changes = Gauge("cfnft_pending_changes", "state changes not yet committed", registry=r)
        self.chains = Gauge("cfnft_table_chains", "chains in inet cfnft", registry=r)
        self.rules = Gauge("cfnft_table_rules", "rules in inet cfnft", registry=r)
        self.elements = Gauge("cfnft_table_elements", "set and map elements in inet cfnft", registry=r)
        self.containers = Gauge("cfnft_containers", "containers enforced on this cell", registry=r)
        self.drift_repairs = Counter("cfnft_drift_repairs", "kernel changes made behind our back, repaired", registry=r)
        self.apply_failures = Counter("cfnft_apply_failures", "kernel transactions that failed", registry=r)
        self.table_rebuilds = Counter(
            "cfnft_table_rebuilds", "whole-table rebuilds after repeated failures", registry=r
        )
        self.revoked_connections = Counter(
            "cfnft_revoked_connections",
            "tracked connections ended because a change took their allowance away (revoke_established)",
            registry=r,
        )
        self.bad_messages = Counter(
            "cfnft_bad_messages", "state messages refused, or used without their bad entries", registry=r
        )
        self.dropped_objects = Gauge(
            "cfnft_dropped_objects", "objects and messages left out of the ruleset right now (see status)", registry=r
        )
        self.state_plane_complete = Gauge(
            "cfnft_state_plane_complete",
            "1 once a replay held a complete view of what the cell enforces; 0 before, and while it keeps "
            "state the stream lacks (stream missing, purged or recreated)",
            registry=r,
        )
        self.messages = Counter("cfnft_messages", "state messages received", registry=r)
        self.in_sync = Gauge("cfnft_in_sync", "1 once the full desired state is known and committed", registry=r)
        self.full_replays = Counter(
            "cfnft_stream_full_replays", "full replays of the state stream (at start, or after it was lost)", registry=r
        )
        self.resumes = Counter(
            "cfnft_stream_resumes", "consumers resumed where they stopped (reconnect, a server lost)", registry=r
        )
        self.nats_connected = Gauge("cfnft_nats_connected", "1 while connected to NATS", registry=r)
