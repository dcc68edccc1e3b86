"""The lab itself: topology reaches where it should, probes read the firewall right, teardown is total."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.netlab import (
    NETNS_DIR,
    REGISTRY_DIR,
    Lab,
    LabError,
    Outcome,
    Proto,
    Target,
    assert_reachability,
    icmp,
    probe_many,
    sweep_stale_labs,
    tcp,
    udp,
)

pytestmark = pytest.mark.kernel

OPEN, REFUSED, REJECTED, TIMEOUT = Outcome.OPEN, Outcome.REFUSED, Outcome.REJECTED, Outcome.TIMEOUT


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_container_reaches_internet_listeners_with_no_rules(lab: Lab) -> None:
    """Without a ruleset every listener answers, closed ports are refused by the target, ping works (v4 and v6)."""
    app = lab.cells["a"].add_container("app")
    assert app.ip is not None and app.ip in lab.cells["a"].overlay_subnet
    assert app.ip6 is not None
    assert_reachability(
        app,
        {
            ("tcp", "192.0.2.10", 80): OPEN,
            ("tcp", "198.51.100.20", 443): OPEN,
            ("tcp", "203.0.113.30", 8080): OPEN,
            ("tcp", "192.0.2.10", 81): REFUSED,
            ("udp", "198.51.100.20", 53): OPEN,
            ("udp", "203.0.113.30", 123): OPEN,
            ("udp", "198.51.100.20", 54): REFUSED,
            ("icmp", "192.0.2.10"): OPEN,
            ("icmp", "203.0.113.254"): OPEN,
            ("tcp", "2001:db8::1", 443): OPEN,
            ("tcp", "2001:db8::1", 444): REFUSED,
            ("udp", "2001:db8::ff", 53): OPEN,
            ("udp", "2001:db8::ff", 54): REFUSED,
            ("icmp", "2001:db8::1"): OPEN,
            ("icmp", "2001:db8:7::9"): OPEN,
        },
    )


def test_single_probes_and_banner_name_the_listener(lab: Lab) -> None:
    """tcp/udp/icmp return one Outcome; the detail shows which namespace's listener answered."""
    app = lab.cells["a"].add_container("app")
    assert tcp(app, "192.0.2.1", 80) is OPEN
    assert udp(app, "192.0.2.1", 53) is OPEN
    assert icmp(app, "192.0.2.1") is OPEN
    assert tcp(app, "192.0.2.1", 1) is REFUSED
    [result] = probe_many(app, [Target(Proto.TCP, "192.0.2.1", 8080)])
    assert result.detail == "internet tcp/8080"


def test_container_reaches_its_cell(lab: Lab) -> None:
    """A container reaches its cell's own address and its gateway, where host services would listen."""
    cell = lab.cells["a"]
    app = cell.add_container("app")
    cell.listen(tcp=[8853], udp=[53])
    assert_reachability(
        app,
        {
            ("tcp", str(cell.host_ip), 8853): OPEN,
            ("udp", str(cell.gateway), 53): OPEN,
            ("icmp", str(cell.gateway)): OPEN,
            ("tcp", str(cell.host_ip), 8854): REFUSED,
        },
    )


def test_containers_on_two_cells_reach_each_other(two_cell_lab: Lab) -> None:
    """Cell a's container reaches cell b's over the underlay and back, and both reach the internet."""
    web = two_cell_lab.cells["a"].add_container("web")
    db = two_cell_lab.cells["b"].add_container("db")
    assert db.ip is not None and db.ip in two_cell_lab.cells["b"].overlay_subnet
    db.listen(tcp=[5432], udp=[9000])
    web.listen(tcp=[8080])
    assert_reachability(
        web,
        {
            ("tcp", str(db.ip), 5432): OPEN,
            ("udp", str(db.ip), 9000): OPEN,
            ("icmp", str(db.ip)): OPEN,
            ("tcp", str(db.ip6), 5432): OPEN,
            ("tcp", str(db.ip), 5433): REFUSED,
            ("tcp", "192.0.2.10", 80): OPEN,
        },
    )
    assert_reachability(db, {("tcp", str(web.ip), 8080): OPEN, ("tcp", "203.0.113.1", 443): OPEN})
    [result] = probe_many(web, [("tcp", str(db.ip), 5432)])
    assert result.detail == "container db on b tcp/5432"


RULESET = """
table inet cfnft-labtest {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip daddr 192.0.2.10 tcp dport 80 reject
        ip daddr 192.0.2.11 tcp dport 80 drop
        ip daddr 192.0.2.12 tcp dport 80 reject with tcp reset
        ip daddr 192.0.2.13 tcp dport 80 reject with icmp type admin-prohibited
        ip daddr 198.51.100.10 udp dport 53 reject
        ip daddr 198.51.100.11 udp dport 53 drop
        ip daddr 203.0.113.10 icmp type echo-request reject
        ip daddr 203.0.113.11 icmp type echo-request drop
        ip daddr 192.0.2.100-192.0.2.199 tcp dport 443 reject
        ip6 daddr 2001:db8::10 tcp dport 80 reject
        ip6 daddr 2001:db8::11 tcp dport 80 drop
        ip6 daddr 2001:db8::12 udp dport 53 reject
        ip6 daddr 2001:db8::13 icmpv6 type echo-request reject
    }
}
"""


def test_probes_tell_nft_reject_from_drop(lab: Lab) -> None:
    """A real nft ruleset in the cell: reject reads REJECTED, drop TIMEOUT, tcp reset REFUSED, others OPEN."""
    cell = lab.cells["a"]
    app = cell.add_container("app")
    cell.run(["nft", "-f", "-"], input=RULESET)
    expected = {
        ("tcp", "192.0.2.10", 80): REJECTED,
        ("tcp", "192.0.2.11", 80): TIMEOUT,
        ("tcp", "192.0.2.12", 80): REFUSED,
        ("tcp", "192.0.2.13", 80): REJECTED,
        ("tcp", "192.0.2.14", 80): OPEN,
        ("tcp", "192.0.2.10", 443): OPEN,
        ("udp", "198.51.100.10", 53): REJECTED,
        ("udp", "198.51.100.11", 53): TIMEOUT,
        ("udp", "198.51.100.12", 53): OPEN,
        ("icmp", "203.0.113.10"): REJECTED,
        ("icmp", "203.0.113.11"): TIMEOUT,
        ("icmp", "203.0.113.12"): OPEN,
        ("tcp", "2001:db8::10", 80): REJECTED,
        ("tcp", "2001:db8::11", 80): TIMEOUT,
        ("tcp", "2001:db8::14", 80): OPEN,
        ("udp", "2001:db8::12", 53): REJECTED,
        ("icmp", "2001:db8::13"): REJECTED,
        ("icmp", "2001:db8::14"): OPEN,
    }
    assert_reachability(app, expected)
    by_target = {r.target: r for r in probe_many(app, [("tcp", "192.0.2.10", 80), ("tcp", "192.0.2.13", 80)])}
    # The reject comes from the cell, not the target: that is what makes it REJECTED and not REFUSED.
    assert by_target[Target.of(("tcp", "192.0.2.10", 80))].detail == f"icmp type 3 code 3 from {cell.gateway}"
    assert by_target[Target.of(("tcp", "192.0.2.13", 80))].detail == f"icmp type 3 code 13 from {cell.gateway}"
    host_tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert "cfnft-labtest" not in host_tables


def test_every_reject_in_a_burst_is_seen(lab: Lab) -> None:
    """A hundred rejected probes at once all read REJECTED: the lab turns off ICMP error rate limiting."""
    app = lab.cells["a"].add_container("app")
    lab.cells["a"].run(["nft", "-f", "-"], input=RULESET)
    assert_reachability(app, {("tcp", f"192.0.2.{100 + n}", 443): REJECTED for n in range(100)})


@pytest.mark.parametrize("fails", [False, True], ids=["clean-exit", "body-raises"])
def test_teardown_leaves_nothing_behind(fails: bool) -> None:
    """Namespaces, listeners, stray processes, the temp dir and the registry entry are all gone afterwards."""
    seen: dict[str, object] = {}

    def build() -> None:
        with Lab() as lab:
            cell = lab.add_cell("a")
            lab.add_internet()
            app = cell.add_container("app")
            app.listen(tcp=[8080])
            stray = subprocess.Popen(["ip", "netns", "exec", app.name, "sleep", "600"])
            seen.update(
                namespaces=lab.namespaces(),
                pids=[stray.pid, *(listener.process.pid for listener in lab.listeners())],
                tmpdir=lab.tmpdir,
                registry=REGISTRY_DIR / lab.lab_id,
                stray=stray,
            )
            assert (lab.tmpdir / "ipam").is_dir()
            if fails:
                raise RuntimeError("test body failed")

    if fails:
        with pytest.raises(RuntimeError):
            build()
    else:
        build()
    namespaces = seen["namespaces"]
    assert isinstance(namespaces, list) and len(namespaces) == 3
    assert [n for n in namespaces if (NETNS_DIR / n).exists()] == []
    stray = seen["stray"]
    assert isinstance(stray, subprocess.Popen)
    stray.wait(timeout=5)  # killed by the teardown, reaped here
    pids = seen["pids"]
    assert isinstance(pids, list)
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)] == []
    assert not Path(str(seen["tmpdir"])).exists()
    assert not Path(str(seen["registry"])).exists()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def test_sweep_removes_only_labs_whose_owner_is_gone() -> None:
    """A lab whose registry names a dead pid is swept; a live lab of this process is left alone."""
    with Lab() as live, Lab() as orphan:
        live.add_cell("a")
        orphan.add_cell("a")
        orphan.add_internet(tcp_ports=[80], udp_ports=[])
        (REGISTRY_DIR / orphan.lab_id).write_text(f"{_dead_pid()}\n")
        removed = set(sweep_stale_labs())  # may include dead labs of other runs on this machine
        assert set(orphan.namespaces()) <= removed
        assert not set(live.namespaces()) & removed
        assert [n for n in orphan.namespaces() if (NETNS_DIR / n).exists()] == []
        assert not (REGISTRY_DIR / orphan.lab_id).exists()
        assert all((NETNS_DIR / n).exists() for n in live.namespaces())
        assert (REGISTRY_DIR / live.lab_id).exists()


def test_cni_del_releases_the_address_and_veth(lab: Lab) -> None:
    """remove_container runs ptp DEL with the ADD result: host-local frees the IP, the cell loses the veth."""
    cell = lab.cells["a"]
    app = cell.add_container("app")
    lease = lab.tmpdir / "ipam" / "cfnft-lab-a" / str(app.ip)
    assert lease.exists()
    assert cell.run(["ip", "link", "show", app.host_veth], check=False).returncode == 0
    cell.remove_container(app)
    assert not lease.exists()
    assert cell.run(["ip", "link", "show", app.host_veth], check=False).returncode != 0
    assert not (NETNS_DIR / app.name).exists()
    assert "app" not in cell.containers
    other = cell.add_container("other")
    assert tcp(other, "192.0.2.1", 80) is OPEN


def test_lab_errors_name_what_failed(lab: Lab) -> None:
    """A port that is already taken, a duplicate cell, a bad name: LabError with the namespace or name."""
    internet = lab.internet
    with pytest.raises(LabError, match=rf"listener in {internet.name} .*Address already in use"):
        internet.listen(tcp=[80])
    with pytest.raises(LabError, match="cell 'a' already exists"):
        lab.add_cell("a")
    with pytest.raises(LabError, match="container name 'Bad_Name'"):
        lab.cells["a"].add_container("Bad_Name")
    with pytest.raises(LabError, match="only inside `with Lab"):
        Lab().add_cell("a")
    with pytest.raises(ValueError, match="TCP and UDP need a port"):
        Target.of(("tcp", "192.0.2.1"))


def test_ipv4_only_lab_has_no_ipv6() -> None:
    """Lab(ipv6=False) gives containers only an IPv4 address and still routes them to the internet."""
    with Lab(ipv6=False) as lab:
        cell = lab.add_cell("a")
        lab.add_internet()
        app = cell.add_container("app")
        assert app.ip6 is None
        assert tcp(app, "192.0.2.1", 80) is OPEN


def test_labs_do_not_see_each_other() -> None:
    """Two labs side by side reuse the same addresses, and one's ruleset does not reach the other."""
    with Lab() as one, Lab() as two:
        for lab in (one, two):
            lab.add_cell("a")
            lab.add_internet(tcp_ports=[80], udp_ports=[])
        first, second = one.cells["a"].add_container("app"), two.cells["a"].add_container("app")
        assert first.ip == second.ip
        one.cells["a"].run(["nft", "-f", "-"], input=RULESET)
        assert tcp(first, "192.0.2.11", 80) is TIMEOUT
        assert tcp(second, "192.0.2.11", 80) is OPEN
