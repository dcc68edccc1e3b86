"""`cfnft explain`: the model's answer, checked against real packets and against the kernel's own trace.

Two cells joined by the underlay (c2c crosses cells in both directions), an internet with
listeners. For every kind of deciding rule, the explanation and a real probe must agree
(allowed = the packet got through or the target itself answered; denied = our reject came back),
and `trace` (nftables tracing of the same packet in the cell) must pass through the rule the
model names and end with the same verdict.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from events.models import load_cell_state
from lab.netlab import Lab, Outcome, probe_many
from nft import NftRunner, diff
from reconciler.compile import TABLE, compile_ruleset
from reconciler.explain import Decider, ExplainInputError, Probe, explain

WEB, API, STAGER, DB = "app-web", "app-api", "app-stager", "app-db"
SPACE1, SPACE2 = "space-1", "space-2"


def group(guid, rules, **bindings):
    return {
        "guid": guid,
        "name": f"{guid}-name",
        "rules": rules,
        "globally_enabled": {"running": bindings.get("running", False), "staging": False},
        "relationships": {"running_spaces": {"data": [{"guid": s} for s in bindings.get("spaces", ())]}},
    }


GROUPS = [
    group(
        "public",
        [
            {"protocol": "tcp", "destination": "192.0.2.10", "ports": "80,443"},
            {"protocol": "icmp", "destination": "203.0.113.0/25", "type": 8, "code": -1},
            {"protocol": "all", "destination": "203.0.113.200"},
            {"protocol": "tcp", "destination": "2001:db8::1", "ports": "443", "log": True},
        ],
        spaces=[SPACE1],
    ),
    group("wide", [{"protocol": "tcp", "destination": "198.51.100.0/24", "ports": "80"}], running=True),
]
EGRESS = [
    {
        "id": "ep-1",
        "source": {"id": API, "type": "app"},
        "destination": {"name": "ntp", "protocol": "udp", "ports": [{"start": 123, "end": 123}],
                        "ips": [{"start": "192.0.2.77", "end": "192.0.2.77"}]},
    }
]  # fmt: skip
C2C = [
    {"source": {"id": WEB}, "destination": {"id": API, "protocol": "tcp", "ports": {"start": 8080, "end": 8080}}},
    {"source": {"id": WEB}, "destination": {"id": DB, "protocol": "tcp", "ports": {"start": 5432, "end": 5432}}},
    {"source": {"id": DB}, "destination": {"id": WEB, "protocol": "tcp", "ports": {"start": 8080, "end": 8080}}},
]


@pytest.fixture(scope="module")
def world():
    with Lab() as lab:
        a, b = lab.add_cell("a"), lab.add_cell("b")
        lab.add_internet()
        ctrs = {
            "web0": (a.add_container("web0"), WEB, SPACE1, "app"),
            "api0": (a.add_container("api0"), API, SPACE2, "app"),
            "stage0": (a.add_container("stage0"), STAGER, SPACE1, "staging"),
            "db0": (b.add_container("db0"), DB, SPACE2, "app"),
        }
        ctrs["api0"][0].listen(tcp=[8080])
        ctrs["web0"][0].listen(tcp=[8080])
        ctrs["db0"][0].listen(tcp=[5432])
        a.listen(tcp=[9000, 9001], udp=[53])
        runners = {name: NftRunner(netns=cell.name) for name, cell in (("a", a), ("b", b))}
        try:
            yield lab, {"a": a, "b": b}, ctrs, runners
        finally:
            for r in runners.values():
                r.close()


def cell_doc(world, cell_name, **config):
    _, cells, ctrs, _ = world
    cell = cells[cell_name]
    here = {n: v for n, v in ctrs.items() if v[0].cell is cell}
    elsewhere = {v[1]: [str(v[0].ip)] for v in ctrs.values() if v[0].cell is not cell}
    containers = []
    for name, (c, app, space, workload) in here.items():
        entry = {"handle": name, "ip": str(c.ip), "app_guid": app, "space_guid": space, "workload": workload}
        entry["ipv6"] = str(c.ip6)
        if name == "web0":
            entry["egress_rules"] = [{"protocol": "tcp", "destination": "192.0.2.60", "ports": "80"}]
        containers.append(entry)
    deny = {"always": [], "running": ["198.51.100.0/25"], "staging": []}
    cfg = {"dns_servers": [str(cell.gateway)], "host_tcp_services": [f"{cell.gateway}:9000"], "deny_networks": deny}
    return {
        "cell_id": cell_name,
        "containers": containers,
        "security_groups": GROUPS,
        "egress_policies": EGRESS,
        "c2c_policies": C2C,
        "app_instances": elsewhere,
        "config": cfg | config,
    }


def apply_all(world, **config):
    states = {}
    for name, runner in world[3].items():
        state = load_cell_state(cell_doc(world, name, **config))
        runner.apply(diff(compile_ruleset(state), runner.read(TABLE)))
        states[name] = state
    return states


def cases(world):
    """(cell, source, probe, expected decider) for every kind of deciding rule."""
    _, cells, c, _ = world
    gw = cells["a"].gateway
    api, web, db = c["api0"][0].ip, c["web0"][0].ip, c["db0"][0].ip
    return [
        ("a", "web0", "tcp:192.0.2.10:80", Decider.SECURITY_GROUP),
        ("a", "web0", "tcp:[2001:db8::1]:443", Decider.SECURITY_GROUP),  # a logged rule, IPv6
        ("a", "web0", "udp:203.0.113.200:123", Decider.SECURITY_GROUP),  # protocol all
        ("a", "web0", "icmp:203.0.113.5", Decider.SECURITY_GROUP),
        ("a", "web0", "icmp:203.0.113.5:0/0", Decider.DEFAULT_DENY),  # an echo reply is not type 8
        ("a", "web0", "tcp:192.0.2.11:80", Decider.DEFAULT_DENY),
        ("a", "api0", "tcp:198.51.100.10:80", Decider.DENY_NETWORKS),
        ("a", "api0", "tcp:198.51.100.200:80", Decider.SECURITY_GROUP),
        ("a", "api0", "udp:192.0.2.77:123", Decider.EGRESS_POLICY),
        ("a", "stage0", "tcp:192.0.2.10:80", Decider.DEFAULT_DENY),  # running groups only
        ("a", "web0", f"tcp:{api}:8080", Decider.C2C_POLICY),
        ("a", "web0", f"tcp:{api}:9090", Decider.C2C_DEFAULT_DENY),
        ("a", "api0", f"tcp:{web}:8080", Decider.C2C_DEFAULT_DENY),
        ("a", "web0", f"tcp:{db}:5432", Decider.C2C_POLICY),  # to another cell
        ("a", "web0", f"tcp:{db}:22", Decider.C2C_DEFAULT_DENY),
        ("b", "db0", f"tcp:{web}:8080", Decider.C2C_POLICY),  # the other direction
        ("b", "db0", f"tcp:{api}:8080", Decider.C2C_DEFAULT_DENY),
        ("a", "web0", "tcp:10.255.1.250:80", Decider.NO_CONTAINER),
        ("a", "web0", f"udp:{gw}:53", Decider.HOST_ACCESS),
        ("a", "web0", f"tcp:{gw}:9000", Decider.HOST_ACCESS),
        ("a", "web0", f"tcp:{gw}:9001", Decider.HOST_DEFAULT_DENY),
    ]


def probe_outcomes(world, todo):
    _, _, c, _ = world
    out = []
    for source, probe in todo:
        p = Probe.parse(probe)
        target = ("icmp", str(p.dst)) if p.port is None else (p.proto.value, str(p.dst), p.port)
        out.append(probe_many(c[source][0], [target], timeout=0.5)[0])
    return out


def test_explain_agrees_with_real_packets_for_every_kind_of_deciding_rule(world):
    states = apply_all(world)
    todo = cases(world)
    results = probe_outcomes(world, [(src, probe) for _, src, probe, _ in todo if ":0/0" not in probe])
    results_iter = iter(results)
    wrong = []
    for cell, src, probe, decider in todo:
        e = explain(states[cell], src, Probe.parse(probe))
        if e.decider is not decider:
            wrong.append(f"{src} -> {probe}: decided by {e.decider}, expected {decider}")
        if ":0/0" in probe:
            continue  # the probes send echo requests only; this one is for the model and the trace
        r = next(results_iter)
        got = r.outcome in (Outcome.OPEN, Outcome.REFUSED)
        if r.outcome is Outcome.TIMEOUT or got != e.allowed:
            wrong.append(f"{src} -> {probe}: explain says {'allowed' if e.allowed else 'denied'}, packet {r}")
    assert not wrong, "\n".join(wrong)


def test_the_explanation_names_the_group_rule_and_policy(world):
    states = apply_all(world)
    e = explain(states["a"], "web0", Probe.parse("tcp:[2001:db8::1]:443"))
    assert e.security_group == {
        "guid": "public",
        "name": "public-name",
        "rule_index": 3,
        "rule": {"protocol": "tcp", "destination": "2001:db8::1", "ports": "443", "log": True},
    }
    assert e.logged and e.nft.chain.startswith("asg-") and "@sg-public-log-ports6" in e.nft.rule
    e = explain(states["a"], "api0", Probe.parse("udp:192.0.2.77:123"))
    assert e.policy is not None and e.policy["id"] == "ep-1" and "ntp" in e.reason
    e = explain(states["a"], "api0", Probe.parse("tcp:198.51.100.10:80"))
    assert (e.allowed, e.network) == (False, "198.51.100.0/25")
    e = explain(states["a"], "web0", Probe.parse("tcp:192.0.2.10:443"), established=True)
    assert (e.allowed, e.decider, e.nft.chain) == (True, Decider.ESTABLISHED, "forward")


def test_static_rules_decide_without_dynamic_asgs(world):
    states = apply_all(world, dynamic_asgs=False)
    e = explain(states["a"], "web0", Probe.parse("tcp:192.0.2.60:80"))
    assert (e.allowed, e.decider) == (True, Decider.CONTAINER_RULE)
    assert e.policy == {"protocol": "tcp", "destination": "192.0.2.60", "ports": "80"}
    assert explain(states["a"], "web0", Probe.parse("tcp:192.0.2.10:80")).decider is Decider.DEFAULT_DENY
    [r1, r2] = probe_outcomes(world, [("web0", "tcp:192.0.2.60:80"), ("web0", "tcp:192.0.2.10:80")])
    assert (r1.outcome, r2.outcome) == (Outcome.OPEN, Outcome.REJECTED)


def test_trace_follows_the_model_through_the_kernel(world):
    from cfnft.trace import trace

    states = apply_all(world)
    _, cells, _, _ = world
    seen = set()
    for cell, src, probe, decider in cases(world):
        if decider in seen and decider is not Decider.C2C_POLICY:
            continue  # one of each kind (c2c both ways) keeps the test short
        seen.add(decider)
        p = Probe.parse(probe)
        e = explain(states[cell], src, p)
        result = trace(e, p, cells[cell].name)
        assert result.agrees, f"{src} -> {probe}: {result.disagreement}\n{result.text()}"


def test_trace_reports_a_kernel_that_disagrees(world):
    """A rule deleted behind the model's back: the trace sees the packet take another way."""
    from cfnft.trace import trace

    states = apply_all(world)
    _, cells, _, runners = world
    e = explain(states["a"], "web0", Probe.parse("tcp:192.0.2.10:80"))
    handle = next(r.handle for r in runners["a"].read(TABLE).rules[e.nft.chain] if "@sg-public-ports4" in r.text)
    cells["a"].run(["nft", "delete", "rule", "inet", "cfnft", e.nft.chain, "handle", str(handle)])
    result = trace(e, Probe.parse("tcp:192.0.2.10:80"), cells["a"].name)
    assert not result.agrees and not result.accepted
    assert "never met the model's rule" in (result.disagreement or "")


def test_cli_explain_prints_json_and_exits_by_verdict(world, tmp_path):
    doc = tmp_path / "cell.json"
    doc.write_text(json.dumps(cell_doc(world, "a")))
    apply_all(world)
    _, cells, _, _ = world

    def cfnft(*args):
        return subprocess.run([sys.executable, "-m", "cfnft.cli", *args], capture_output=True, text=True)

    allowed = cfnft("explain", "--state", str(doc), "--from", "web0", "--to", "tcp:192.0.2.10:80", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["security_group"]["rule_index"] == 0
    traced = cfnft(
        "explain", "--state", str(doc), "--from", "web0", "--to", "tcp:192.0.2.11:80",
        "--trace", "--netns", cells["a"].name,
    )  # fmt: skip
    assert traced.returncode == 1, traced.stderr
    assert "default deny" in traced.stdout and "the kernel agrees with the model" in traced.stdout
    for bad in (["--to", "tcp:192.0.2.10"], ["--to", "sctp:192.0.2.10:80"], ["--from", "nobody"]):
        args = {"--from": "web0", "--to": "tcp:192.0.2.10:80"} | dict([bad])
        r = cfnft("explain", "--state", str(doc), *[x for kv in args.items() for x in kv])
        assert r.returncode == 2 and r.stderr.startswith("cfnft explain: ") and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("tcp:192.0.2.1", "needs a port"),
        ("tcp:192.0.2.1:0", "needs a port"),
        ("icmp:2001:db8::1", "icmp goes with IPv4"),
        ("icmp:192.0.2.1:8", "TYPE/CODE"),
        ("udp:not-an-ip:53", "not an IP address"),
        ("gre:192.0.2.1", "protocol must be"),
    ],
)
def test_bad_destinations_are_refused_with_the_reason(text, message):
    with pytest.raises(ExplainInputError, match=message):
        Probe.parse(text)


def test_destinations_parse_every_form():
    assert str(Probe.parse("tcp:[2001:db8::1]:443")) == "tcp [2001:db8::1]:443"
    assert str(Probe.parse("icmpv6:2001:db8::1")) == "icmpv6 [2001:db8::1] type 128 code 0"
    assert str(Probe.parse("icmp:192.0.2.1:3/4")) == "icmp 192.0.2.1 type 3 code 4"


async def test_live_explain_answers_from_what_the_cell_committed(nats_server, tmp_path):
    """The reconciler answers over NATS request/reply; a bad question is bad input, not a failure."""
    import contextlib

    from cfnft.publish import publish_state
    from events.connect import NatsConfig
    from nft import FakeNft
    from reconciler.config import ReconcilerConfig
    from reconciler.daemon import Reconciler

    doc = {
        "cell_id": "z",
        "containers": [{"handle": "w", "ip": "10.255.9.2", "app_guid": WEB, "space_guid": SPACE1, "workload": "app"}],
        "security_groups": GROUPS,
    }
    import nats

    nc = await nats.connect(nats_server.url)
    await publish_state(nc, load_cell_state(doc))
    cfg = ReconcilerConfig(
        cell_id="z",
        nats=NatsConfig(servers=[nats_server.url], insecure=True),
        socket_path=tmp_path / "s",
        state_dir=tmp_path,
    )
    rec = Reconciler(cfg, FakeNft())
    task = asyncio.create_task(rec.run())
    try:
        while not rec.ready:
            await asyncio.sleep(0.05)
        args = [
            "explain",
            "--cell",
            "z",
            "--from",
            "w",
            "--nats-url",
            nats_server.url,
            "--nats-insecure",
            "--json",
            "--to",
        ]
        ok = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "cfnft.cli", *args, "tcp:192.0.2.10:443"], capture_output=True
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["security_group"]["guid"] == "public"
        bad = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "cfnft.cli", *args[:4], "nobody", *args[5:], "tcp:192.0.2.10:443"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert bad.returncode == 2 and "no container 'nobody'" in bad.stderr, bad.stderr
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()
