"""One bad object costs only itself: the pure parts (reconciler/admission.py, conflicts.py, units.py,
isolation.py, planning.py, store.py, stateplane.py, document.py, saved.py). The daemon over a real
nats-server and kernel is in test_hostile_daemon.py."""

from __future__ import annotations

import ipaddress
import json
import stat

import pytest

from events.messages import (
    AppInstancesMessage,
    C2CPoliciesMessage,
    CellConfigMessage,
    ContainerMessage,
    EpochMessage,
    SecurityGroupMessage,
)
from events.models import C2CPolicy, CellConfig, CellState, Container, SecurityGroup, load_cell_state
from events.problems import StateError
from reconciler.admission import Limits, StateCheck, Unusable, check_message, container_problems
from reconciler.admitted import AdmittedState
from reconciler.compile import Compiler
from reconciler.conflicts import CNI_REGISTRATION, NATS_RECORD, Ranked, resolve
from reconciler.document import ready_for_kernel
from reconciler.isolation import find_culprits
from reconciler.keys import Kind, StateKey
from reconciler.planning import oversized, plan
from reconciler.saved import SavedState
from reconciler.stateplane import StatePlane
from reconciler.store import DesiredStore
from reconciler.units import units_of, without

LIMITS = Limits()


def container(handle="h1", ip="10.255.1.2", app="app-1", **extra) -> Container:
    return Container.model_validate(
        {"handle": handle, "ip": ip, "app_guid": app, "space_guid": "space-1", "workload": "app", **extra}
    )


def group(guid="g1", dest="192.0.2.1", ports="443", **extra) -> SecurityGroup:
    return SecurityGroup.model_validate(
        {
            "guid": guid,
            "name": guid,
            "rules": [{"protocol": "tcp", "destination": dest, "ports": ports}],
            "globally_enabled": {"running": True},
            **extra,
        }
    )


def c2c(src: str, dst: str, port: int = 8080) -> C2CPolicy:
    return C2CPolicy.model_validate(
        {"source": {"id": src}, "destination": {"id": dst, "protocol": "tcp", "ports": {"start": port, "end": port}}}
    )


# --- admission ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"app_guid": "bad:app"}, "app guid 'bad:app' is not usable in an nft name"),
        ({"app_guid": "a" * 129}, "is not usable in an nft name"),
        ({"space_guid": 'sp"ace'}, "space guid"),
        ({"handle": "-starts-with-dash"}, "is not a CNI container id"),
        ({"ipv6": "fe80::1%eth0"}, "zone id"),
        ({"port_mappings": [{"host_port": 22, "container_port": 8080}]}, "host port 22 is outside Garden's range"),
        (
            {"port_mappings": [{"host_port": 61001, "container_port": 1}, {"host_port": 61001, "container_port": 2}]},
            "host port 61001 is mapped twice",
        ),
    ],
)
def test_a_container_the_kernel_cannot_take_is_named_with_why(extra, problem) -> None:
    c = container(**{"handle": "h1", **extra})
    found = container_problems(c, LIMITS)
    assert any(problem in p for p in found), found


def test_a_good_container_passes() -> None:
    assert container_problems(container(port_mappings=[{"host_port": 61001, "container_port": 8080}]), LIMITS) == []


def test_messages_whose_inner_ids_differ_from_their_subject_are_refused_whole() -> None:
    forged = ContainerMessage(cell_id="a", handle="h1", container=container(handle="h2"))
    checked = check_message(forged, LIMITS)
    assert checked.message is None and "holds container 'h2', not 'h1'" in checked.problems[0]
    moved = SecurityGroupMessage(guid="g1", security_group=group("g2"))
    assert check_message(moved, LIMITS).message is None
    zone = CellConfigMessage(cell_id="a", config=CellConfig(dns_servers=["fe80::53%eth0"]))
    assert check_message(zone, LIMITS).message is None


def test_list_messages_lose_only_their_bad_entries() -> None:
    msg = C2CPoliciesMessage(destination_app_guid="web", policies=[c2c("api", "web"), c2c("api", "other")])
    checked = check_message(msg, LIMITS)
    assert checked.message is not None and checked.message.policies == [c2c("api", "web")]
    assert "a policy for destination 'other' among the policies of 'web'" in checked.problems[0]
    addresses = AppInstancesMessage(app_guid="web", addresses=["10.255.1.2", "fd00::1%eth0"])
    checked = check_message(addresses, LIMITS)
    assert checked.message is not None and checked.message.addresses == [ipaddress.ip_address("10.255.1.2")]
    assert check_message(AppInstancesMessage(app_guid="bad:app", addresses=[]), LIMITS).message is None


def test_state_check_leaves_out_containers_outside_the_overlay_and_groups_over_the_cap() -> None:
    huge = group("huge", dest=",".join(f"198.51.100.{i}" for i in range(1, 201, 2)), ports="2,4,6,8,10")
    state = CellState(
        containers=[container("in"), container("out", ip="192.0.2.7")],
        security_groups=[group("fine"), huge],
        config=CellConfig(overlay_network="10.255.0.0/16"),
    )
    found = StateCheck(Limits(max_elements_per_group=499)).problems(state)
    assert {(u.unit, u.reason.split(",")[0]) for u in found} == {
        (StateKey(Kind.CONTAINER, "out"), "address 192.0.2.7 is outside the overlay network 10.255.0.0/16"),
        (StateKey(Kind.GROUP, "huge"), "its rules need 500 set elements"),
    }


# --- conflicts ----------------------------------------------------------------------------------


def test_an_address_held_twice_goes_to_the_newest_registration_whatever_the_input_order() -> None:
    stale_bbs = Ranked(container("old", ip="10.255.1.9"), (NATS_RECORD, 7))
    newer_bbs = Ranked(container("new", ip="10.255.1.9"), (NATS_RECORD, 9))
    cni = Ranked(container("cni", ip="10.255.1.9"), (CNI_REGISTRATION, 1))
    for order in ([stale_bbs, newer_bbs], [newer_bbs, stale_bbs]):
        kept, lost = resolve(order)
        assert [c.handle for c in kept] == ["new"]
        assert lost[0].unit == StateKey(Kind.CONTAINER, "old") and "held by new" in lost[0].reason
    kept, lost = resolve([newer_bbs, cni, stale_bbs])
    assert [c.handle for c in kept] == ["cni"], "the cell's own registration outranks any NATS record"
    assert {u.unit.id for u in lost if u.unit} == {"old", "new"}


def test_a_host_port_held_twice_costs_the_older_container_only_that_mapping() -> None:
    mapping = [{"host_port": 61001, "container_port": 8080}]
    older = Ranked(container("a", ip="10.255.1.2", port_mappings=mapping), (CNI_REGISTRATION, 1))
    newer = Ranked(container("b", ip="10.255.1.3", port_mappings=mapping), (CNI_REGISTRATION, 2))
    kept, lost = resolve([older, newer])
    assert {c.handle: len(c.port_mappings) for c in kept} == {"a": 0, "b": 1}
    assert "host port 61001 is mapped by b" in lost[0].reason


# --- units, isolation, planning -----------------------------------------------------------------


def state_with(*groups: SecurityGroup, containers=None) -> CellState:
    return CellState(cell_id="a", containers=containers or [container()], security_groups=list(groups))


def test_units_suspect_groups_before_containers_and_leaving_out_keeps_the_rest() -> None:
    state = state_with(group("g1"), group("g2"))
    assert units_of(state) == [
        StateKey(Kind.GROUP, "g1"),
        StateKey(Kind.GROUP, "g2"),
        StateKey(Kind.CONTAINER, "h1"),
    ]
    rest = without(state, {StateKey(Kind.GROUP, "g1")})
    assert [g.guid for g in rest.security_groups] == ["g2"] and rest.containers == state.containers


@pytest.mark.parametrize("bad", [set(), {3}, {0, 17}, {5, 6, 7}, set(range(0, 40, 9))])
async def test_find_culprits_finds_exactly_the_failing_units(bad: set[int]) -> None:
    units = [StateKey(Kind.GROUP, f"g{i:02}") for i in range(40)]
    culprits_wanted = {units[i] for i in bad}
    calls = 0

    async def passes(excluded: frozenset[StateKey]) -> bool:
        nonlocal calls
        calls += 1
        return culprits_wanted <= excluded

    found = await find_culprits(units, passes)
    assert set(found or []) == culprits_wanted
    assert calls <= 2 + len(bad) * 8, "about log2(40) checks per culprit"


async def test_find_culprits_gives_up_when_no_object_is_at_fault() -> None:
    async def never(excluded: frozenset[StateKey]) -> bool:
        return False

    assert await find_culprits([StateKey(Kind.APP, "a")], never) is None


def test_a_refused_object_stays_out_until_another_version_of_it_arrives() -> None:
    store = DesiredStore("a")
    admitted = AdmittedState(store, LIMITS)
    g1 = StateKey(Kind.GROUP, "g1")
    store.apply(SecurityGroupMessage(guid="g1", security_group=group("g1")), 1)
    admitted.changed(g1)
    assert admitted.quarantine([Unusable(g1, "the kernel refused it")]) == [g1]
    assert "g1" not in admitted.groups and [u.reason for u in admitted.left_out()] == ["the kernel refused it"]
    # The same content again (a replay keeps the very object) changes nothing; another version is tried.
    store.apply(SecurityGroupMessage(guid="g1", security_group=group("g1", dest="192.0.2.2")), 2)
    assert admitted.changed(g1) == [g1]
    assert "g1" in admitted.groups and admitted.left_out() == []


def test_the_admitted_view_shows_the_compiler_only_what_can_be_enforced() -> None:
    store = DesiredStore("a")
    admitted = AdmittedState(store, Limits(max_elements_per_group=10))
    changed: list[StateKey] = []
    for seq, (handle, ip) in enumerate((("old", "10.255.1.2"), ("new", "10.255.1.2"), ("far", "192.0.2.7")), 1):
        store.apply(ContainerMessage(cell_id="a", handle=handle, container=container(handle, ip=ip)), seq)
        changed += admitted.changed(StateKey(Kind.CONTAINER, handle))  # as the intake tells it every change
    assert set(admitted.containers) == {"new"} and StateKey(Kind.CONTAINER, "new") in changed
    store.apply(SecurityGroupMessage(guid="big", security_group=group("big", ports="1,3,5,7,9,11,13,15,17,19,21")), 4)
    admitted.changed(StateKey(Kind.GROUP, "big"))
    assert "big" not in admitted.groups
    reasons = {str(u.unit): u.reason for u in admitted.left_out()}
    assert reasons == {
        "container old": "address 10.255.1.2 is held by new, a newer registration",
        "container far": "address 192.0.2.7 is outside the overlay network 10.255.0.0/16",
        "asg big": "its rules need 11 set elements, over max_elements_per_group 10",
    }
    # The newer record goes: the older one holds its address again.
    store.apply(ContainerMessage(cell_id="a", handle="new", container=None), 5)
    assert admitted.changed(StateKey(Kind.CONTAINER, "new")) == [
        StateKey(Kind.CONTAINER, "new"),
        StateKey(Kind.CONTAINER, "old"),
    ]
    assert set(admitted.containers) == {"old"}


def test_planning_leaves_out_groups_over_the_caps_biggest_first() -> None:
    big = group("big", dest="192.0.2.0/24", ports="1,3,5,7,9,11,13,15")
    small = group("small", dest="198.51.100.0/24", ports="1,3")
    state = state_with(big, small)
    desired = Compiler().compile(state)
    total = desired.counts()[2]
    by_group = [u.unit for u in oversized(desired, Limits(max_elements_per_group=5))]
    assert by_group == [StateKey(Kind.GROUP, "big")]
    by_cell = oversized(desired, Limits(max_elements_per_cell=total - 1))
    assert [u.unit for u in by_cell] == [StateKey(Kind.GROUP, "big")]
    planned = plan(Compiler(), state, None, rebuild=False, limits=Limits(max_elements_per_cell=total - 1))
    assert [g.guid for g in planned.state.security_groups] == ["small"]


# --- the store ----------------------------------------------------------------------------------


def test_the_stream_sequence_decides_not_the_payload_version() -> None:
    store = DesiredStore("a")
    pinned = SecurityGroupMessage(version=2**62, guid="g1", security_group=group("g1"))
    assert store.apply(pinned, seq=5)
    # A publisher whose clock stepped back (a lower version) revokes it: its message came later.
    assert store.apply(SecurityGroupMessage(version=1, guid="g1", security_group=None), seq=6)
    assert "g1" not in store.groups
    # A re-delivery of an older message changes nothing.
    assert store.apply(SecurityGroupMessage(guid="g2", security_group=group("g2")), seq=10)
    assert not store.apply(SecurityGroupMessage(guid="g2", security_group=group("g2", dest="192.0.2.9")), seq=9)
    assert store.groups["g2"].group() == group("g2")


def test_deletions_and_other_cells_leave_nothing_behind() -> None:
    store = DesiredStore("a")
    for seq in range(1, 201):
        store.apply(SecurityGroupMessage(guid=f"g{seq}", security_group=group(f"g{seq}")), seq)
    for seq in range(201, 401):
        store.apply(SecurityGroupMessage(guid=f"g{seq - 200}", security_group=None), seq)
    store.apply(ContainerMessage(cell_id="b", handle="x", container=container("x")), 401)
    assert store.groups == {} and store.seqs == {}, "no tombstone or version outlives its object"


def test_a_replay_keeps_the_kinds_it_has_no_complete_view_of() -> None:
    before = DesiredStore("a")
    before.apply(SecurityGroupMessage(guid="g1", security_group=group("g1")), 1)
    before.apply(ContainerMessage(cell_id="a", handle="h1", container=container()), 2)
    replay = DesiredStore("a")
    plane = StatePlane("t1", {"bbs": EpochMessage(source="bbs", stream_created="t1", complete=["container", "app"])})
    assert plane.unestablished("a") == {"asg", "c2c", "egress", "config"}
    kept = replay.keep_from(before, plane.unestablished("a"))
    assert kept == {"asg"} and "g1" in replay.groups and replay.containers == {}
    stale = EpochMessage(source="policy", stream_created="t0", complete=["asg"])
    assert not StatePlane("t1", {"policy": stale}).established("a"), "a marker of an earlier stream says nothing"
    other_cell = EpochMessage(source="publish-b", stream_created="t1", complete=["container", "asg"], cell_id="b")
    assert StatePlane("t1", {"publish-b": other_cell}).established("a") == {"asg"}


# --- documents, saved state, secrets ------------------------------------------------------------


def test_render_refuses_what_the_transaction_would_and_lenient_drops_only_that() -> None:
    doc = {
        "cell_id": "a",
        "containers": [
            {"handle": "h1", "ip": "10.255.1.2", "app_guid": "bad:app", "space_guid": "s", "workload": "app"},
            {"handle": "h2", "ip": "10.255.1.3", "app_guid": "good", "space_guid": "s", "workload": "app"},
        ],
        "security_groups": [
            {
                "guid": "x",
                "name": "x",
                "globally_enabled": {"running": True},
                "rules": [{"protocol": "tcp", "destination": "192.0.2.1", "ports": "1", "log": True}],
            },  # noqa: E501
            {
                "guid": "x-log",
                "name": "y",
                "globally_enabled": {"running": True},
                "rules": [{"protocol": "tcp", "destination": "192.0.2.2", "ports": "1"}],
            },  # noqa: E501
        ],
    }
    with pytest.raises(StateError, match="bad:app"):
        ready_for_kernel(load_cell_state(doc), lenient=False)
    ready = ready_for_kernel(load_cell_state(doc), lenient=True)
    assert [c.handle for c in ready.state.containers] == ["h2"]
    # Two group names the compiler cannot keep apart: one group goes, the other is enforced.
    assert {str(u.unit) for u in ready.left_out} == {"container h1", "asg x"}
    assert [g.guid for g in ready.state.security_groups] == ["x-log"]


def test_one_bad_saved_registration_drops_only_itself_and_files_are_private(tmp_path) -> None:
    saved = SavedState(tmp_path / "state", "a")
    saved.save_registrations([container("h1"), container("h2", ip="10.255.1.3")])
    entries = json.loads(saved.registrations_file.read_text())
    entries[0]["app_guid"] = "bad:app"
    saved.registrations_file.write_text(json.dumps([entries[0], {"handle": 7}, entries[1]]))
    assert [c.handle for c in saved.load_registrations(LIMITS)] == ["h2"]
    saved.save_snapshot(state_with())
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for f in (saved.registrations_file, saved.snapshot_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


@pytest.mark.parametrize("seed", range(4))
def test_settling_around_a_changed_container_equals_settling_them_all(seed: int) -> None:
    """The admitted view settles a container change among the containers it shares an address or
    a host port with; after every change of a long random sequence, full of such clashes, it must
    show what a fresh view settling every local container from scratch shows."""
    import random

    rng = random.Random(seed)
    store = DesiredStore("a")
    admitted = AdmittedState(store, Limits())
    handles = [f"c{i}" for i in range(12)]
    for seq in range(1, 400):
        handle = rng.choice(handles)
        extra = {"port_mappings": [{"host_port": rng.choice([61001, 61002, 61003]), "container_port": 8080}]}
        c = container(handle, ip=f"10.255.1.{rng.randrange(2, 8)}", **(extra if rng.random() < 0.4 else {}))
        if rng.random() < 0.3:
            if store.registered.get(handle) == c:
                continue  # the intake takes an equal registration as nothing new (reconciler/intake.py)
            ok = store.register(c) if rng.random() < 0.7 else store.unregister(handle)
        else:
            gone = rng.random() < 0.2
            ok = store.apply(ContainerMessage(cell_id="a", handle=handle, container=None if gone else c), seq)
        if not ok:
            continue
        admitted.changed(StateKey(Kind.CONTAINER, handle))
        fresh = AdmittedState(store, Limits())
        fresh.everything_changed()
        assert dict(admitted.containers) == dict(fresh.containers), f"seed {seed}, step {seq}"
        assert dict(admitted.registered) == dict(fresh.registered), f"seed {seed}, step {seq}"
        assert sorted(map(str, admitted.left_out())) == sorted(map(str, fresh.left_out())), f"seed {seed}, step {seq}"
