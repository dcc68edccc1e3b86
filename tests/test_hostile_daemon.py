"""A cell never opens, stalls or crash-loops because of one bad object: the real reconciler, over a
real nats-server, with the kernel of a lab cell (real packets) where enforcement is the point, and
FakeNft where the kernel adds nothing to what is shown.

Each bad message is published as a publisher without our models would publish it: raw JSON on a
subject of the state stream.
"""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest

from events import subjects
from lab.netlab import Lab, Outcome, probe_many
from reconciler.admission import Limits
from reconciler.compile import TABLE
from reconciler.config import ReconcilerConfig
from tests.daemons import eventually, publish_doc, publish_raw, running_daemon

OPEN, REJECTED = Outcome.OPEN, Outcome.REJECTED
WEB, API = "app-web", "app-api"


def sg(guid, dest, ports="80", log=False):
    rule = {"protocol": "tcp", "destination": dest, "ports": ports, **({"log": True} if log else {})}
    return {"guid": guid, "name": guid, "rules": [rule], "globally_enabled": {"running": True, "staging": False}}


def ctr(handle, ip, app, **extra):
    return {"handle": handle, "ip": str(ip), "app_guid": app, "space_guid": "space-1", "workload": "app", **extra}


def reachable(netns, target, outcome):
    return lambda: probe_many(netns, [target], timeout=0.3)[0].outcome is outcome


async def probe(netns, target):
    return (await asyncio.to_thread(probe_many, netns, [target], timeout=0.5))[0].outcome


def kernel_sets(d):
    return set(d.kernel.read(TABLE).sets)


@pytest.fixture
def cell_lab():
    with Lab(ipv6=False) as lab:
        cell = lab.add_cell("a")
        lab.add_internet()
        ctrs = {name: cell.add_container(name) for name in ("web0", "api0", "new0")}
        ctrs["api0"].listen(tcp=[8080])
        yield cell, ctrs


# --- one bad object costs only itself, end to end --------------------------------------------------


async def test_bad_objects_cost_only_themselves_and_every_later_change_is_enforced(nats_server, cell_lab, tmp_path):
    cell, c = cell_lab
    url = nats_server.url
    doc = {
        "cell_id": "a",
        "containers": [ctr("web0", c["web0"].ip, WEB), ctr("api0", c["api0"].ip, API)],
        "security_groups": [sg("public", "192.0.2.10"), sg("second", "192.0.2.12")],
    }
    await publish_doc(url, doc)
    async with running_daemon(tmp_path, url, netns=cell.name) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        free_ip = str(c["web0"].ip + 100)
        bad_app = {"kind": "container", "cell_id": "a", "handle": "evil", "container": ctr("evil", free_ip, "bad:app")}
        long_guid = "g" * 250
        forged = {"kind": "asg", "guid": "other", "security_group": sg("public", "0.0.0.0/0", "1-65535")}
        lagging = ctr("stale", c["new0"].ip, WEB)  # a BBS record holding the address the cell gives new0
        await publish_raw(
            url,
            # The silent stall: an app guid nft cannot name, and a c2c policy to it.
            (subjects.container("a", "evil"), bad_app),
            ("cfnft.state.c2c.bad:app", {"kind": "c2c", "destination_app_guid": "bad:app", "policies": [
                {"source": {"id": WEB}, "destination": {"id": "bad:app", "protocol": "tcp",
                                                         "ports": {"start": 1, "end": 9}}}]}),
            # Crash loops: a guid with a quote, a 250-character guid, an inner id that differs from the subject.
            ('cfnft.state.asg.g"x', {"kind": "asg", "guid": 'g"x', "security_group": sg('g"x', "192.0.2.20")}),
            (f"cfnft.state.asg.{long_guid}", {"kind": "asg", "guid": long_guid, "security_group": sg(long_guid, "192.0.2.21")}),  # noqa: E501
            (subjects.security_group("other"), forged),
            (subjects.container("a", "stale"), {"kind": "container", "cell_id": "a", "handle": "stale", "container": lagging}),  # noqa: E501
            (subjects.security_group("junk"), b"\xff not json"),
        )  # fmt: skip
        await eventually(lambda: d.metric("cfnft_bad_messages_total") >= 6, what="the bad messages counted")
        # The cell's own registration of new0 wins its address over the lagging NATS record.
        status, body = await d.http("POST", "/v1/containers", {"container": ctr("new0", c["new0"].ip, WEB)})
        assert status == 200, body
        assert await probe(c["new0"], ("tcp", "192.0.2.10", 80)) is OPEN, "the new container is enforced"
        # A later deletion reaches the kernel at once.
        started = time.monotonic()
        await publish_raw(
            url, (subjects.security_group("second"), {"kind": "asg", "guid": "second", "security_group": None})
        )
        await eventually(lambda: "sg-second-ports4" not in kernel_sets(d), timeout=1.0, what="the deletion enforced")
        assert time.monotonic() - started < 1.0
        assert await probe(c["web0"], ("tcp", "192.0.2.12", 80)) is REJECTED
        assert await probe(c["web0"], ("tcp", "192.0.2.10", 80)) is OPEN
        assert await probe(c["web0"], ("tcp", "192.0.2.13", 443)) is REJECTED, "the forged group opened nothing"
        # Everyone can see what was dropped, and why; the cell is ready and alive.
        await eventually(lambda: d.rec.ready, what="ready")
        ready_status, ready = await d.ops("/readyz")
        nc = await nats.connect(url)
        try:
            reply = json.loads((await nc.request(subjects.status("a"), b"", timeout=5)).data)
        finally:
            await nc.close()
        for shown in (ready["dropped"], reply["dropped"]):
            what = {e["what"]: e["reason"] for e in shown}
            assert "app guid 'bad:app' is not usable" in what[subjects.container("a", "evil")]
            assert "is not usable in an nft name" in what['cfnft.state.asg.g"x']
            assert "is not usable in an nft name" in what[f"cfnft.state.asg.{long_guid}"]
            assert "holds security group 'public', not 'other'" in what[subjects.security_group("other")]
            assert "cfnft.state.c2c.bad:app" in what
            assert "held by new0, a newer registration" in what["container stale"]
        assert ready_status == 200 and reply["in_sync"] is True and d.rec.fatal is None


async def test_an_object_the_compiler_refuses_is_found_and_left_out_alone(nats_server, cell_lab, tmp_path):
    """Two group guids whose set names the compiler cannot keep apart ('x' logged, 'x-log'): admission
    has nothing against either, the compile fails; one group is found, left out and named, the rest
    is enforced, and the group is tried again as soon as it changes."""
    cell, c = cell_lab
    doc = {
        "cell_id": "a",
        "containers": [ctr("web0", c["web0"].ip, WEB)],
        "security_groups": [sg("public", "192.0.2.10")],
    }
    await publish_doc(nats_server.url, doc)
    async with running_daemon(tmp_path, nats_server.url, netns=cell.name) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        doc["security_groups"] += [sg("x", "192.0.2.30", log=True), sg("x-log", "192.0.2.31")]
        await publish_doc(nats_server.url, doc)
        await eventually(lambda: "sg-x-log-ports4" in kernel_sets(d), what="x-log enforced")
        assert await probe(c["web0"], ("tcp", "192.0.2.31", 80)) is OPEN
        assert await probe(c["web0"], ("tcp", "192.0.2.30", 80)) is REJECTED
        assert await probe(c["web0"], ("tcp", "192.0.2.10", 80)) is OPEN
        dropped = {e["what"]: e["reason"] for e in d.rec.status()["dropped"]}
        assert "defined twice" in dropped["asg x"] and d.rec.ready
        doc["security_groups"][1] = sg("x", "192.0.2.30")  # no logged rule: the names no longer collide
        await publish_doc(nats_server.url, doc)
        await eventually(reachable(c["web0"], ("tcp", "192.0.2.30", 80), OPEN), what="x tried again, enforced")
        assert "asg x" not in {e["what"] for e in d.rec.status()["dropped"]}


async def test_an_object_the_kernel_refuses_is_found_and_left_out_alone(nats_server, tmp_path):
    """What the kernel refuses though every check passed (FakeNft told to refuse one group's elements):
    a dry run of the whole table finds it is the content, the culprit is searched with dry runs and
    left out; nothing exits, everything else is enforced."""
    doc = {
        "cell_id": "a",
        "containers": [ctr("web0", "10.255.1.2", WEB)],
        "security_groups": [sg("public", "192.0.2.10")],
    }
    await publish_doc(nats_server.url, doc)
    async with running_daemon(tmp_path, nats_server.url, give_up_after_failures=2) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        d.kernel.refuse("203.0.113.66")
        doc["security_groups"] += [sg("refused", "203.0.113.66"), sg("fine", "203.0.113.67")]
        await publish_doc(nats_server.url, doc)
        await eventually(lambda: "sg-fine-ports4" in d.kernel.read(TABLE).sets, what="the rest enforced")
        assert "sg-refused-ports4" not in d.kernel.read(TABLE).sets
        dropped = {e["what"]: e["reason"] for e in d.rec.status()["dropped"]}
        assert dropped["asg refused"] == "the kernel refused it"
        assert d.rec.fatal is None and d.rec.ready


@pytest.mark.parametrize(
    ("subject", "payload", "reason"),
    [
        pytest.param(
            subjects.container("a", "h9"),
            {"kind": "container", "cell_id": "a", "handle": "h9", "container": ctr("h9", "10.255.1.9", "bad:app")},
            "app guid 'bad:app'",
            id="app-guid-colon",
        ),
        pytest.param(
            subjects.container("a", "h9"),
            {"kind": "container", "cell_id": "a", "handle": "h9", "container": ctr("h8", "10.255.1.9", WEB)},
            "holds container 'h8', not 'h9'",
            id="handle-not-subject",
        ),
        pytest.param(
            subjects.container("a", "h9"),
            {
                "kind": "container",
                "cell_id": "a",
                "handle": "h9",
                "container": ctr("h9", "10.255.1.9", WEB, port_mappings=[{"host_port": 22, "container_port": 22}]),
            },
            "host port 22 is outside Garden's range",
            id="host-port-ssh",
        ),  # fmt: skip
        pytest.param(
            subjects.container("a", "h9"),
            {
                "kind": "container",
                "cell_id": "a",
                "handle": "h9",
                "container": ctr("h9", "10.255.1.9", WEB, ipv6="fe80::9%eth0"),
            },
            "zone id",
            id="ipv6-zone",
        ),  # fmt: skip
        pytest.param(
            'cfnft.state.asg.q"uote',
            {"kind": "asg", "guid": 'q"uote', "security_group": sg('q"uote', "192.0.2.9")},
            "not usable in an nft name",
            id="guid-quote",
        ),
        pytest.param(
            subjects.cell_config("a"),
            {"kind": "config", "cell_id": "a", "config": {"dns_servers": ["fe80::1%lo"]}},
            "zone id",
            id="config-zone",
        ),
        pytest.param(
            subjects.security_group("g"),
            {"kind": "asg", "guid": "g", "security_group": None, "x": 1},
            "unknown key",
            id="unknown-key",
        ),
        pytest.param(
            subjects.c2c_policies("web"),
            {"kind": "c2c", "destination_app_guid": "api", "policies": []},
            "arrived on",
            id="other-subject",
        ),  # fmt: skip
    ],
)
async def test_a_bad_message_is_refused_alone_and_the_cell_stays_up(nats_server, tmp_path, subject, payload, reason):
    doc = {
        "cell_id": "a",
        "containers": [ctr("web0", "10.255.1.2", WEB), ctr("api0", "10.255.1.3", API)],
        "security_groups": [sg("public", "192.0.2.10")],
    }
    await publish_doc(nats_server.url, doc)
    async with running_daemon(tmp_path, nats_server.url, give_up_after_failures=1) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        before = d.kernel.dump()
        await publish_raw(nats_server.url, (subject, payload))
        await eventually(lambda: d.metric("cfnft_bad_messages_total") == 1, what="refused")
        dropped = {e["what"]: e["reason"] for e in d.rec.status()["dropped"]}
        assert reason in dropped[subject], dropped
        assert d.kernel.dump() == before, "nothing of it reached the kernel"
        await publish_raw(
            nats_server.url,
            (subjects.security_group("public"), {"kind": "asg", "guid": "public", "security_group": None}),
        )
        await eventually(lambda: "sg-public-ports4" not in d.kernel.read(TABLE).sets, what="a later change")
        assert d.rec.fatal is None and d.rec.ready
        assert d.metric("cfnft_dropped_objects") == 1


async def test_two_containers_claiming_one_address_or_host_port_never_stop_the_cell(nats_server, tmp_path):
    """Same IPv4, same IPv6, same host port, from NATS and from the CNI plugin: the newest registration
    wins each, the losers are named, and nothing else changes."""
    mapping = [{"host_port": 61001, "container_port": 8080}]
    doc = {
        "cell_id": "a",
        "containers": [
            ctr("old-ip", "10.255.1.2", WEB),
            ctr("old-v6", "10.255.1.3", WEB, ipv6="fd00::3"),
            ctr("old-port", "10.255.1.4", WEB, port_mappings=mapping),
        ],
        "security_groups": [sg("public", "192.0.2.10")],
    }
    await publish_doc(nats_server.url, doc)
    async with running_daemon(tmp_path, nats_server.url, give_up_after_failures=1) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        newer = [
            ctr("new-ip", "10.255.1.2", API),
            ctr("new-v6", "10.255.1.13", API, ipv6="fd00::3"),
        ]
        await publish_raw(
            nats_server.url,
            *((subjects.container("a", n["handle"]), {"kind": "container", "cell_id": "a", "handle": n["handle"],
                                                      "container": n}) for n in newer),
        )  # fmt: skip
        status, _ = await d.http("POST", "/v1/containers", {"container": ctr("cni-port", "10.255.1.14", API,
                                                                              port_mappings=mapping)})  # fmt: skip
        assert status == 200
        await eventually(lambda: len(d.rec.status()["dropped"]) == 3, what="three losers")
        lost = {e["what"]: e["reason"] for e in d.rec.status()["dropped"]}
        assert lost == {
            "container old-ip": "address 10.255.1.2 is held by new-ip, a newer registration",
            "container old-v6": "address fd00::3 is held by new-v6, a newer registration",
            "container old-port": "host port 61001 is mapped by cni-port, a newer registration: mapping left out",
        }
        table = d.kernel.read(TABLE)
        egress = {str(e.key[0].start): e.comment.split()[0] for e in table.elements["egress4"].values()}
        assert egress == {"10.255.1.2": "new-ip", "10.255.1.4": "old-port", "10.255.1.13": "new-v6",
                          "10.255.1.14": "cni-port"}  # fmt: skip
        assert d.rec.fatal is None and d.rec.ready


# --- the CNI endpoint ---------------------------------------------------------------------------


async def test_cni_refuses_what_it_cannot_enforce_and_keeps_nothing_of_it(tmp_path):
    async with running_daemon(tmp_path, None) as d:
        d.rec.intake.synced.set()  # no NATS and no saved state: let it start from nothing
        d.rec.intake.dirty.set()
        await eventually(lambda: d.rec.converged, what="converged")
        status, body = await d.http("POST", "/v1/containers", {"container": ctr("h1", "10.255.1.2", "bad:app")})
        assert status == 400 and "app guid 'bad:app'" in body["error"]
        status, body = await d.http("POST", "/v1/containers", {"container": ctr("h2", "192.0.2.2", WEB)})
        assert status == 409 and "outside the overlay network 10.255.0.0/16" in body["error"]
        assert d.rec.store.registered == {} and "192.0.2.2" not in d.kernel.dump()
        for bad in ("nan", "inf", "1e9", "0", "-1", "soon"):
            status, body = await d.http("DELETE", f"/v1/containers/h1?timeout_seconds={bad}")
            assert status == 400 and "timeout_seconds" in body["error"], bad
        assert (await d.http("DELETE", "/v1/containers/h1?timeout_seconds=120"))[0] == 200


# --- limits and responsiveness ------------------------------------------------------------------


async def test_a_group_over_the_element_cap_is_left_out_and_the_others_keep_working(nats_server, tmp_path):
    huge = sg("huge", ",".join(f"198.51.100.{i}" for i in range(1, 255, 2)), "1000-1001,1003")
    huge["rules"][0]["ports"] = ",".join(str(p) for p in range(1000, 1100, 2))
    doc = {
        "cell_id": "a",
        "containers": [ctr("web0", "10.255.1.2", WEB)],
        "security_groups": [sg("public", "192.0.2.10"), huge],
    }
    await publish_doc(nats_server.url, doc)
    async with running_daemon(tmp_path, nats_server.url, limits=Limits(max_elements_per_group=1000)) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        sets = d.kernel.read(TABLE).sets
        assert "sg-public-ports4" in sets and "sg-huge-ports4" not in sets
        dropped = {e["what"]: e["reason"] for e in d.rec.status()["dropped"]}
        assert dropped["asg huge"].startswith("its rules need 6350 set elements")


async def test_the_cni_socket_and_healthz_answer_while_the_biggest_group_compiles(nats_server, cell_lab, tmp_path):
    """Compile, diff and render run on a worker thread, the commit on the kernel's: while a group at
    the element cap goes in (about a second of work), the event loop keeps answering /healthz and
    the CNI socket. Behaviour, not timing: the bound is generous (the target is 100 ms)."""
    cell, _ = cell_lab
    cap = 60_000
    dests = ",".join(f"198.51.{i // 250}.{i % 250 + 1}" for i in range(0, 600, 2))
    big = sg("big", dests, ",".join(str(p) for p in range(2000, 2400, 2)))
    doc = {"cell_id": "a", "containers": [ctr("web0", "10.255.1.2", WEB)], "security_groups": []}
    await publish_doc(nats_server.url, doc)
    async with running_daemon(
        tmp_path, nats_server.url, netns=cell.name, limits=Limits(max_elements_per_group=cap)
    ) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        generation = d.rec.generation
        doc["security_groups"] = [big]
        worst = 0.0
        started = time.monotonic()
        publishing = asyncio.create_task(publish_doc(nats_server.url, doc))
        while not (d.rec.generation > generation and d.rec.ready):
            t0 = time.monotonic()
            health, _ = await d.ops("/healthz")
            status, _ = await d.http("GET", "/v1/status")
            worst = max(worst, time.monotonic() - t0)
            assert health == 200 and status == 200
            await asyncio.sleep(0.01)
        took = time.monotonic() - started
        await publishing
        table = await d.kernel.read_async(TABLE)
        assert table is not None and len(table.elements["sg-big-ports4"]) == cap
        assert took > 0.5, f"the change took only {took:.2f}s: the test measures nothing"
        assert worst < 0.5, f"the endpoints stalled {worst:.2f}s during a {took:.1f}s change"


# --- the configuration keys -----------------------------------------------------------------------


def test_limits_are_part_of_the_reconciler_config() -> None:
    cfg = ReconcilerConfig.model_validate({"cell_id": "a", "limits": {"host_port_min": 60000}})
    assert cfg.limits.host_port_min == 60000 and cfg.limits.max_elements_per_group == 50_000
    with pytest.raises(ValueError, match="host_port_min 65000 is above host_port_max 61000"):
        Limits(host_port_min=65000, host_port_max=61000)
