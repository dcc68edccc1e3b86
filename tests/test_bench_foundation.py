"""The foundation generator of `cfnft bench --scenario foundation`, on a small shape: a valid cell
state of the promised size, deterministic, and an honest list of the apps that do not concern the cell.
(The benchmark itself is not a test: it runs as `cfnft bench`.)"""

from __future__ import annotations

from events.models import load_cell_state
from lab.bench.generate import FOUNDATION_OVERLAY, FoundationShape, foundation, irrelevant_apps

SMALL = FoundationShape(apps=300, spaces=30, groups=40, c2c_policies=200, containers=25)


def test_the_foundation_is_a_valid_cell_state_of_the_shape_asked_for() -> None:
    doc = foundation(SMALL)
    state = load_cell_state(doc)  # strict: raises on any problem
    assert len(state.containers) == SMALL.containers
    assert len(state.app_instances) == SMALL.apps
    assert {len(a) for a in state.app_instances.values()} == {SMALL.addresses_per_app}
    assert len(state.security_groups) == SMALL.groups
    assert sum(g.globally_enabled.running for g in state.security_groups) == SMALL.global_groups
    assert len(state.c2c_policies) == SMALL.c2c_policies
    assert state.config.overlay_network == FOUNDATION_OVERLAY
    every_address = [a for addrs in state.app_instances.values() for a in addrs]
    assert all(a in FOUNDATION_OVERLAY for a in every_address)
    for c in state.containers:  # a local container is one of its app's instances
        assert c.ip in state.app_instances[c.app_guid]


def test_the_same_seed_gives_the_same_foundation() -> None:
    assert foundation(SMALL) == foundation(SMALL)
    assert foundation(SMALL) != foundation(FoundationShape(**{**SMALL.__dict__, "seed": 8}))


def test_irrelevant_apps_are_neither_local_nor_sources_towards_local_apps() -> None:
    doc = foundation(SMALL)
    irrelevant = set(irrelevant_apps(doc))
    local = {c["app_guid"] for c in doc["containers"]}
    sources = {p["source"]["id"] for p in doc["c2c_policies"] if p["destination"]["id"] in local}
    assert sources, "the shape puts some policies towards local apps"
    assert irrelevant == set(doc["app_instances"]) - local - sources
