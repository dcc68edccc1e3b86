"""`cfnft bench`: run the scenarios, print one table (or JSON) with ratios against named baselines."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field

from lab.bench.generate import CellShape, full_cell


@dataclass
class Row:
    scenario: str
    metric: str
    value: float
    unit: str
    target: str = ""
    baseline: str = ""
    ratio: float | None = None
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.rows.append(Row(*args, **kwargs))

    def table(self) -> str:
        head = f"{'scenario':<12} {'metric':<44} {'value':>12}  {'target':<14} {'vs baseline':<34}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            value = f"{r.value:,.1f} {r.unit}" if r.unit != "" else f"{r.value:,.0f}"
            vs = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else ""
            lines.append(f"{r.scenario:<12} {r.metric:<44} {value:>12}  {r.target:<14} {vs:<34} {r.note}")
        return "\n".join(lines)


def run(scenarios: list[str], as_json: bool, quick: bool) -> int:
    if os.geteuid() != 0:
        print("cfnft bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    from events.models import load_cell_state

    shape = CellShape()
    doc = full_cell(shape)
    state = load_cell_state(doc)
    report = Report()
    logging.getLogger().setLevel(logging.WARNING)  # the table is the output
    rules_each = _rules_per_container(state)
    print(
        f"full cell: {shape.containers} containers, {shape.groups} security groups / {shape.rules} rules "
        f"({rules_each:.0f} apply to an average container), {shape.c2c_policies} c2c policies",
        file=sys.stderr,
    )

    if "cold" in scenarios:
        from lab.bench.kernel import cold_apply

        r = cold_apply(state, repeat=1 if quick else 3)
        report.add("cold", "compile (pure, no kernel)", r.compile_s * 1e3, "ms")
        report.add(
            "cold",
            "cfnft apply: diff+render+commit",
            r.cfnft_s * 1e3,
            "ms",
            "<=1.5x nft -f",
            "nft -f same text",
            r.cfnft_s / r.nft_f_s,
        )
        report.add("cold", "raw nft -f of the same ruleset", r.nft_f_s * 1e3, "ms")
        if r.iptables_s is not None:
            report.add(
                "cold",
                f"iptables-restore silk-style ({r.iptables_rules} rules)",
                r.iptables_s * 1e3,
                "ms",
                ">=20x slower",
                "cfnft apply",
                r.iptables_s / r.cfnft_s,
            )
        report.add(
            "cold", "table size: chains/rules/elements", r.chains, "", note=f"{r.rules} rules, {r.elements} elements"
        )
    if "incremental" in scenarios:
        from lab.bench.incremental import incremental

        adds, edits = incremental(doc, adds=30 if quick else 100, edits=5 if quick else 20)
        report.add("incremental", "one container added, p50", adds.p50 * 1e3, "ms")
        report.add("incremental", "one container added, p99", adds.p99 * 1e3, "ms", "<5 ms")
        report.add("incremental", "one global ASG edit, p50", edits.p50 * 1e3, "ms")
        report.add("incremental", "one global ASG edit, p99", edits.p99 * 1e3, "ms", "<5 ms")
    if "e2e" in scenarios:
        from lab.bench.e2e import end_to_end

        lat, rss = end_to_end(doc, changes=40 if quick else 200)
        report.add(
            "e2e", "NATS publish -> kernel commit, p50", lat.p50 * 1e3, "ms", "<50 ms", "CF c2c poll 5 s", lat.p50 / 5.0
        )
        report.add("e2e", "NATS publish -> kernel commit, p99", lat.p99 * 1e3, "ms", "<250 ms")
        report.add("e2e", "reconciler RSS at a full cell", rss / 2**20, "MiB", "<100 MiB")
    if "failover" in scenarios:
        from lab.bench.failover import Failover, failover

        f = failover(doc, changes=40 if quick else 200, kills=1 if quick else 3)
        for name, lat in (("R1", f.r1), ("R3", f.r3)):
            ratio = {"ratio": lat.p50 / f.r1.p50, "baseline": "R1 stream"} if lat is f.r3 else {}
            report.add("failover", f"publish -> commit p50, {name} stream", lat.p50 * 1e3, "ms", **ratio)
            report.add("failover", f"publish -> commit p99, {name} stream", lat.p99 * 1e3, "ms")
        for how, samples in (("kill -9", f.killed), ("SIGTERM", f.stopped), ("lame duck", f.drained)):
            report.add(
                "failover",
                f"leader {how} -> next change committed",
                Failover.median(samples) * 1e3,
                "ms",
                note=f"median of {len(samples)}; max {max(samples) * 1e3:,.0f} ms",
            )
    if "resume" in scenarios:
        from lab.bench.resume import resume

        small, large = resume((10, 40) if quick else (25, 200))
        for r in (small, large):
            ratio = {"ratio": r.worst_after_ack / small.worst_after_ack, "baseline": f"{small.cells} cells"}
            note = f"{r.resumes} consumers resumed, {r.warnings} feed warnings, {r.replays} replays"
            report.add("resume", f"{r.cells} cells: kill -9 -> change on every cell", r.worst * 1e3, "ms", note=note)
            report.add(
                "resume",
                f"{r.cells} cells: change acked -> on every cell",
                r.worst_after_ack * 1e3,
                "ms",
                note=f"p50 {r.p50_after_ack * 1e3:,.0f} ms",
                **(ratio if r is large else {}),
            )
    if "cni" in scenarios:
        from lab.bench.cni import cni_add_latency

        adds, startup = cni_add_latency(doc, containers=20 if quick else 100)
        report.add(
            "cni",
            "cfnft-cni VERSION, process start to exit",
            startup.plugin.p50,
            "ms",
            "",
            "bare interpreter start",
            startup.plugin.p50 / startup.interpreter.p50,
        )
        report.add("cni", "cfnft-cni ADD to committed rules, p50", adds.add.p50, "ms")
        report.add("cni", "cfnft-cni ADD to committed rules, p99", adds.add.percentile(99), "ms")
        report.add("cni", "cfnft-cni DEL, p50", adds.delete.p50, "ms")

    if "packet" in scenarios:
        from lab.bench.packet import per_packet

        rates = per_packet(repeat=1 if quick else 3)
        flat = rates[0].pps
        for r in rates:
            report.add(
                "packet",
                f"UDP pps, {r.rules:>6,} rules (cfnft sets)",
                r.pps,
                "pps",
                "flat",
                f"cfnft at {rates[0].rules} rules",
                r.pps / flat,
            )
        for r in rates:
            report.add(
                "packet",
                f"UDP pps, {r.rules:>6,} rules (iptables chain)",
                r.linear_pps,
                "pps",
                "",
                "cfnft, same rules",
                r.linear_pps / r.pps,
            )

    if "policy-load" in scenarios:
        _policy_load(report, quick)
    if "foundation" in scenarios:
        _foundation(report, quick)

    if "flowlog" in scenarios:
        from lab.bench.flowlog import flow_log_rate

        rate = flow_log_rate(seconds=1.0 if quick else 2.0)
        report.add(
            "flowlog",
            "flow-log lines/s (NFLOG -> JSON lines)",
            rate.lines_per_second,
            "lines/s",
            "",
            "logged packets offered",
            rate.lines_per_second / rate.offered_pps,
        )

    if as_json:
        print(json.dumps({"shape": asdict(shape), "rows": [asdict(r) for r in report.rows]}, indent=2))
    else:
        print(report.table())
    return 0


def _policy_load(report: Report, quick: bool) -> None:
    from lab.bench.policyload import Load, policy_load

    r = policy_load(period=3.0 if quick else 10.0, syncer_lag=3.0 if quick else 10.0)
    agents = r.agents_asg
    kb = 1e-3
    report.add(
        "policy-load",
        f"{r.groups:,} groups: one cfnft listing",
        r.listing_bytes * kb,
        "KB",
        note=f"{r.listing_requests} requests (space batches x pages)",
    )
    report.add("policy-load", f"{r.cells:,} agents, ASGs every 60 s", agents.requests_per_s, "req/s")
    report.add("policy-load", f"{r.cells:,} agents, ASGs every 60 s", agents.bytes_per_s * kb, "KB/s")
    report.add(
        "policy-load",
        f"{r.cells:,} agents, c2c check every 5 s",
        r.agents_c2c.requests_per_s,
        "req/s",
        note=f"{r.agents_c2c.bytes_per_s * kb:.1f} KB/s",
    )

    def vs_agents(metric: str, load: Load, note: str = "") -> None:
        report.add("policy-load", metric, load.requests_per_s, "req/s", note=note)
        ratio = load.bytes_per_s / agents.bytes_per_s
        report.add("policy-load", metric, load.bytes_per_s * kb, "KB/s", "", "agents' ASG bytes", ratio)

    vs_agents("cfnft, no trigger, every 1 s (old)", r.cfnft_untriggered_1s, "measured: as fast as it could list")
    vs_agents("cfnft, no trigger, every 10 s", r.untriggered(10.0), "from the listing's cost")
    vs_agents(
        "cfnft, CC trigger, idle",
        r.cfnft_triggered_idle,
        f"measured; CC's stamp read {r.stamp_reads_per_s:.1f}/s (on CC)",
    )
    report.add(
        "policy-load",
        "cfnft, CC trigger, one change",
        r.change_listings,
        "listings",
        note=f"measured: syncer {r.syncer_lag:.0f} s late, published after {r.change_seconds:.1f} s",
    )
    vs_agents("cfnft, CC trigger, 60 changes/hour", r.triggered(60), "from the above, + safety listings")
    check_bytes = r.agents_c2c.bytes_per_s / r.agents_c2c.requests_per_s
    report.add("policy-load", "cfnft, c2c check every 1 s", 1.0, "req/s", note=f"{check_bytes * kb:.3f} KB/s")


def _rules_per_container(state) -> float:
    from reconciler.compile import applicable

    total = 0
    for i, c in enumerate(state.containers):
        a = applicable(state, i, c)
        total += sum(len(state.security_groups[g].rules) for g in a.groups)
    return total / max(1, len(state.containers))


def _foundation(report: Report, quick: bool) -> None:
    from lab.bench.foundation import foundation_bench

    r = foundation_bench(quick)
    s, p, pr = r.shape, r.process, r.publishing
    print(
        f"foundation: {s.apps:,} apps / {s.apps * s.addresses_per_app:,} addresses, {s.groups:,} security groups, "
        f"{s.c2c_policies:,} c2c policies; {s.containers} and 1,000 local containers",
        file=sys.stderr,
    )
    f = "foundation"
    report.add(f, "start to ready, empty kernel", p.ready_first_s, "s", note=f"RSS {p.rss_first / 2**20:.0f} MiB")
    report.add(f, "restart to ready (table + saved state)", p.ready_restart_s, "s", "<3 s")
    report.add(f, "restart to ready with the stream replayed", p.replayed_restart_s, "s", "<3 s")
    report.add(f, "reconciler RSS, restarted and replayed", p.rss_restart / 2**20, "MiB", "<120 MiB")
    report.add(
        f,
        "CPU per irrelevant app update",
        p.cpu_per_update_s * 1e6,
        "us",
        "<=1.5x bare",
        "bare nats-py js subscriber",
        p.cpu_per_update_s / p.bare_cpu_per_update_s,
        note=f"{p.updates:,} updates",
    )
    report.add(f, "bare nats-py js subscriber, CPU/update", p.bare_cpu_per_update_s * 1e6, "us")
    for what, small, big in (
        ("container added (register)", r.at_250.add, r.at_1000.add),
        ("global ASG edit (publish)", r.at_250.edit, r.at_1000.edit),
    ):
        report.add(f, f"{what} at {s.containers}, p50", small.p50 * 1e3, "ms")
        report.add(f, f"{what} at {s.containers}, p99", small.p99 * 1e3, "ms", "<5 ms")
        report.add(f, f"{what} at 1,000, p50", big.p50 * 1e3, "ms")
        report.add(
            f, f"{what} at 1,000, p99", big.p99 * 1e3, "ms", "<=1.5x", f"p99 at {s.containers}", big.p99 / small.p99
        )
    flood = r.relevant_under_flood
    report.add(f, "c2c change under 1,000 irrelevant/s, p50", flood.p50 * 1e3, "ms")
    report.add(f, "c2c change under 1,000 irrelevant/s, p99", flood.p99 * 1e3, "ms", "<25 ms")
    rate = pr.objects / pr.cfnft_s
    report.add(
        f,
        "cfnft publish of the foundation",
        rate,
        "obj/s",
        ">=20k/s or <=1.5x",
        "raw js publish, time",
        pr.cfnft_s / pr.raw_s,
        note=f"{pr.objects:,} objects",
    )
    report.add(f, "raw js publish, 1,000 acks in flight", pr.objects / pr.raw_s, "obj/s")
    report.add(f, "raw js publish, one ack at a time", pr.objects / pr.raw_sequential_s, "obj/s")
