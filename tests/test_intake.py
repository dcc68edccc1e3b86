"""The state intake while a pass compiles (reconciler/intake.py `held`): the live store waits, a replay's
own store does not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from events.connect import NatsConfig
from events.messages import SecurityGroupMessage
from events.models import Container, SecurityGroup
from reconciler.config import ReconcilerConfig
from reconciler.intake import StateIntake
from reconciler.metrics import ReconcilerMetrics
from reconciler.saved import SavedState


def intake(tmp_path: Path) -> StateIntake:
    config = ReconcilerConfig(
        cell_id="a", nats=NatsConfig(servers=["nats://127.0.0.1:1"], insecure=True), state_dir=tmp_path
    )
    return StateIntake(config, ReconcilerMetrics(), SavedState(tmp_path, "a"))


def group_message(guid: str) -> SecurityGroupMessage:
    group = SecurityGroup.model_validate({"guid": guid, "name": guid, "globally_enabled": {"running": True}})
    return SecurityGroupMessage(guid=guid, security_group=group)


def test_a_replay_is_taken_in_during_a_compile_and_the_live_store_only_after_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        i = intake(tmp_path)
        with i.held():  # the replay starts during a compile: it and what follows wait, in order
            i.replay_started()
            i.message(group_message("g1"), 1, [])
            assert "g1" not in i.store.groups
        i.message(group_message("g2"), 2, [])
        container = Container.model_validate(
            {"handle": "h1", "ip": "10.255.1.2", "app_guid": "app", "space_guid": "space", "workload": "app"}
        )
        with i.held():  # a replay under way meets a compile: its own store takes messages at once
            i.message(group_message("g3"), 3, [])
            i.register(container)
            i.message(group_message("g4"), 4, [])  # after a change that waits: it waits too, in order
            assert i.store.registered == {} and i.store.groups == {}
            replay = i._replay_store
            assert replay is not None and set(replay.groups) == {"g1", "g2", "g3"}, "g3 at once, g4 after h1"
        i.replay_done("t1")
        assert set(i.store.groups) == {"g1", "g2", "g3", "g4"} and set(i.store.registered) == {"h1"}
        assert i.store.position("cfnft.state.asg.g4") == 4

    asyncio.run(scenario())


def test_a_good_message_replaces_the_problems_of_the_one_before_on_its_subject(tmp_path: Path) -> None:
    i = intake(tmp_path)
    i.message(group_message("g1"), 1, [])
    assert len(i.board) == 0
    i.message(group_message("g1"), 2, ["rules[1].destination: '192.0.2.300': not an IP address"])
    i.message(group_message("g2"), 3, [])
    assert [e["what"] for e in i.board.entries()] == ["cfnft.state.asg.g1"]
    i.message(group_message("g1"), 4, [])
    assert len(i.board) == 0 and i.board.entries() == []
