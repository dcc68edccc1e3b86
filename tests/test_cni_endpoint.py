"""cfnft-cni against the real reconciler endpoint, with the in-memory kernel (FakeNft) and no NATS.

The reconciler runs in a thread of this process (its own event loop) and serves its unix socket;
the plugin runs as a subprocess, as Garden would run it. A reconciler started with a saved state
is in sync without NATS; one started without is never in sync, which is how ADD timeouts and
STATUS 51 are produced. Packets and the real kernel are in test_cni_lab.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import pending
from cni.garden import UNOWNED
from events.models import CellConfig, CellState, SecurityGroup
from nft import FakeNft
from reconciler.compile import TABLE
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from reconciler.endpoint import start_endpoints
from tests.test_cni_spec import PREV_RESULT, env_for, run

CELL = "cell-e"
WEB = {
    "guid": "sg-web",
    "name": "web",
    "rules": [{"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "80,443"}],
    "globally_enabled": {"running": False, "staging": False},
    "relationships": {"running_spaces": {"data": [{"guid": "space-1"}]}, "staging_spaces": {"data": []}},
}
METADATA = {"app_id": "app-1", "space_id": "space-1", "org_id": "org-1", "policy_group_id": "app-1"}


class ReconcilerThread:
    """A Reconciler (FakeNft kernel, no NATS) serving its CNI socket from a background thread."""

    def __init__(self, state_dir: Path, socket_path: Path, *, saved: CellState | None) -> None:
        self.socket_path = socket_path
        self.config = ReconcilerConfig(cell_id=CELL, socket_path=socket_path, state_dir=state_dir, metrics_listen="")
        if saved is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            (state_dir / f"last-state-{CELL}.json").write_text(saved.model_dump_json())
        self.kernel = FakeNft()
        self.rec = Reconciler(self.config, self.kernel)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="reconciler", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            runners = await start_endpoints(self.rec, self.socket_path, None)
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._failure = e
            self._started.set()
            return
        self._started.set()
        try:
            await self.rec.run(with_nats=False)
        except asyncio.CancelledError:
            pass
        finally:
            for r in runners:
                await r.cleanup()

    def start(self) -> ReconcilerThread:
        self._thread.start()
        self._started.wait(10)
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self) -> None:
        def cancel() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(cancel)
        self._thread.join(10)

    def call(self, fn: Any) -> Any:
        """Run `fn()` on the reconciler's loop and return its result (the store is not thread-safe)."""
        return asyncio.run_coroutine_threadsafe(_call(fn), self._loop).result(10)


async def _call(fn: Any) -> Any:
    return fn()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def saved_state() -> CellState:
    return CellState(cell_id=CELL, containers=[], security_groups=[SecurityGroup.model_validate(WEB)],
                     config=CellConfig())  # fmt: skip


@pytest.fixture
def reconciler(tmp_path: Path) -> Iterator[ReconcilerThread]:
    """An in-sync reconciler (its last state was saved)."""
    thread = ReconcilerThread(tmp_path / "state", tmp_path / "r.sock", saved=saved_state()).start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def unsynced(tmp_path: Path) -> Iterator[ReconcilerThread]:
    """A reconciler that never gets in sync (no saved state, no NATS)."""
    thread = ReconcilerThread(tmp_path / "state", tmp_path / "r.sock", saved=None).start()
    try:
        yield thread
    finally:
        thread.stop()


def conf(r: ReconcilerThread, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "cfnft", "type": "cfnft-cni", "socket_path": str(r.socket_path),
            "timeout_seconds": 2, **extra}  # fmt: skip


def registered(r: ReconcilerThread) -> dict[str, Any]:
    return r.call(lambda: dict(r.rec.store.registered))


def kernel_text(r: ReconcilerThread) -> str:
    return r.kernel.dump()


def test_add_returns_the_result_once_the_rules_are_committed(reconciler: ReconcilerThread) -> None:
    stdin = conf(reconciler, metadata=METADATA, dns_servers=["169.254.0.2"], prevResult=PREV_RESULT,
                 runtimeConfig={"portMappings": [{"host_port": 61001, "container_port": 8080}]})  # fmt: skip
    rc, out, stderr = run(env_for("ADD", "c-1"), stdin)
    assert rc == 0, stderr
    assert out == PREV_RESULT | {"dns": {"nameservers": ["169.254.0.2"]}}
    # The answer came after the commit: the kernel already holds the container.
    dump = kernel_text(reconciler)
    assert "10.255.1.5" in dump and "61001" in dump and "c2c-app-1" in dump
    c = registered(reconciler)["c-1"]
    assert (str(c.ip), str(c.ipv6), c.app_guid, c.space_guid, c.workload.value) == (
        "10.255.1.5", "fd00:255:1::5", "app-1", "space-1", "app",
    )  # fmt: skip


def test_add_in_0_4_0_outputs_a_0_4_0_result(reconciler: ReconcilerThread) -> None:
    rc, out, stderr = run(env_for("ADD", "c-1"), conf(reconciler, "0.4.0", metadata=METADATA,
                                                      prevResult=PREV_RESULT))  # fmt: skip
    assert rc == 0, stderr
    assert out["cniVersion"] == "0.4.0" and [ip["version"] for ip in out["ips"]] == ["4", "6"]


def test_add_chained_without_prev_result_never_reaches_the_reconciler(reconciler: ReconcilerThread) -> None:
    rc, out, _ = run(env_for("ADD", "c-1"), conf(reconciler, metadata=METADATA))
    assert out["code"] == 7
    assert registered(reconciler) == {}


def test_add_refused_by_the_reconciler_is_error_7_and_registers_nothing(reconciler: ReconcilerThread) -> None:
    bad_rule = {
        "protocol": 1,
        "networks": [{"start": "192.0.2.9", "end": "192.0.2.1"}],
        "ports": [{"start": 80, "end": 80}],
    }
    stdin = conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT, runtimeConfig={"netOutRules": [bad_rule]})
    rc, out, _ = run(env_for("ADD", "c-1"), stdin)
    assert rc == 1 and out["code"] == 7 and "net_out_rules" in out["details"], out
    assert registered(reconciler) == {}
    assert "10.255.1.5" not in kernel_text(reconciler)


def test_add_not_committed_in_time_is_error_11_and_leaves_nothing(unsynced: ReconcilerThread) -> None:
    rc, out, _ = run(env_for("ADD", "c-1"), conf(unsynced, metadata=METADATA, prevResult=PREV_RESULT,
                                                 timeout_seconds=0.5))  # fmt: skip
    assert rc == 1 and out["code"] == 11 and "not committed within 0.5s" in out["msg"], out
    assert registered(unsynced) == {}
    saved = json.loads((unsynced.config.state_dir / f"registered-{CELL}.json").read_text())
    assert saved == []


def test_del_forgets_the_container_and_succeeds_twice(reconciler: ReconcilerThread) -> None:
    assert run(env_for("ADD", "c-1"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))[0] == 0
    before = kernel_text(reconciler)
    for _ in range(2):
        # Garden's DEL carries no metadata; prevResult comes from libcni's cache.
        assert run(env_for("DEL", "c-1"), conf(reconciler, prevResult=PREV_RESULT))[:2] == (0, None)
    assert registered(reconciler) == {}
    after = kernel_text(reconciler)
    assert "10.255.1.5" in before and "10.255.1.5" not in after and "c2c-app-1" not in after
    assert pending.pending_handles(reconciler.socket_path) == []


def test_check_passes_with_rules_in_place_and_fails_for_an_unknown_container(reconciler: ReconcilerThread) -> None:
    assert run(env_for("ADD", "c-1"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))[0] == 0
    assert run(env_for("CHECK", "c-1"), conf(reconciler, prevResult=PREV_RESULT))[:2] == (0, None)
    rc, out, _ = run(env_for("CHECK", "c-2"), conf(reconciler, prevResult=PREV_RESULT))
    assert rc == 1 and out["code"] == 100 and "not known to the reconciler" in out["details"]


def test_check_reports_a_registration_under_another_address(reconciler: ReconcilerThread) -> None:
    assert run(env_for("ADD", "c-1"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))[0] == 0
    moved = PREV_RESULT | {"ips": [{"address": "10.255.1.99/24", "interface": 1}]}
    rc, out, _ = run(env_for("CHECK", "c-1"), conf(reconciler, prevResult=moved))
    assert rc == 1 and out["code"] == 100 and "not 10.255.1.99" in out["details"]


def test_status_is_ok_in_sync_and_51_when_not(reconciler: ReconcilerThread, tmp_path: Path) -> None:
    assert run({"CNI_COMMAND": "STATUS"}, conf(reconciler, "1.1.0"))[:2] == (0, None)
    other = ReconcilerThread(tmp_path / "state2", tmp_path / "r2.sock", saved=None).start()
    try:
        rc, out, _ = run({"CNI_COMMAND": "STATUS"}, conf(other, "1.1.0"))
        assert rc == 1 and out["code"] == 51 and out["cniVersion"] == "1.1.0", out
    finally:
        other.stop()


def test_gc_forgets_containers_not_in_the_valid_list(reconciler: ReconcilerThread) -> None:
    second = PREV_RESULT | {"ips": [{"address": "10.255.1.6/24", "interface": 1}]}
    assert run(env_for("ADD", "c-1"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))[0] == 0
    assert run(env_for("ADD", "c-2"), conf(reconciler, metadata=METADATA, prevResult=second))[0] == 0
    valid = [{"containerID": "c-1", "ifname": "eth0"}]
    stdin = conf(reconciler, "1.1.0", **{"cni.dev/valid-attachments": valid, "cni.dev/attachments": valid})
    assert run({"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, stdin)[:2] == (0, None)
    assert set(registered(reconciler)) == {"c-1"}
    assert "10.255.1.6" not in kernel_text(reconciler)


def test_pending_deletions_are_drained_once_in_sync(reconciler: ReconcilerThread) -> None:
    assert run(env_for("ADD", "c-1"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))[0] == 0
    pending.record(reconciler.socket_path, "c-1")  # as a DEL does when the reconciler is away
    wait_until(lambda: registered(reconciler) == {}, "the pending deletion of c-1 is drained")
    assert pending.pending_handles(reconciler.socket_path) == []
    wait_until(lambda: "10.255.1.5" not in kernel_text(reconciler), "the rules of c-1 are removed")


def test_a_new_add_supersedes_a_pending_deletion_of_its_handle(reconciler: ReconcilerThread) -> None:
    pending.record(reconciler.socket_path, "c-1")
    assert run(env_for("ADD", "c-1"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))[0] == 0
    pending.record(reconciler.socket_path, "c-gone")  # its drain shows that a drain ran after the ADD
    wait_until(lambda: pending.pending_handles(reconciler.socket_path) == [], "a drain after the ADD")
    assert set(registered(reconciler)) == {"c-1"}


def test_an_address_handed_out_again_replaces_the_stale_registration(reconciler: ReconcilerThread) -> None:
    assert run(env_for("ADD", "c-old"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))[0] == 0
    # c-old's DEL was lost; IPAM gives its address to c-new.
    rc, _, stderr = run(env_for("ADD", "c-new"), conf(reconciler, metadata=METADATA, prevResult=PREV_RESULT))
    assert rc == 0, stderr
    assert set(registered(reconciler)) == {"c-new"}
    assert "c-old" not in kernel_text(reconciler)


def test_unowned_container_is_enforced_with_no_c2c_identity(reconciler: ReconcilerThread) -> None:
    rc, _, stderr = run(env_for("ADD", "executor-healthcheck-1"), conf(reconciler, prevResult=PREV_RESULT))
    assert rc == 0, stderr
    assert registered(reconciler)["executor-healthcheck-1"].app_guid == UNOWNED
    assert f"c2c-{UNOWNED}" in kernel_text(reconciler)
    assert TABLE.name == "cfnft"


def test_garden_net_out_rules_are_the_egress_rules_without_dynamic_asgs(tmp_path: Path) -> None:
    classic = saved_state().model_copy(update={"config": CellConfig(dynamic_asgs=False)})
    r = ReconcilerThread(tmp_path / "classic", tmp_path / "c.sock", saved=classic).start()
    try:
        rule = {"protocol": 1, "networks": [{"start": "198.51.100.0", "end": "198.51.100.255"}],
                "ports": [{"start": 8443, "end": 8443}]}  # fmt: skip
        stdin = conf(r, metadata=METADATA, prevResult=PREV_RESULT, runtimeConfig={"netOutRules": [rule]})
        rc, _, stderr = run(env_for("ADD", "c-1"), stdin)
        assert rc == 0, stderr
        dump = kernel_text(r)
        assert "198.51.100.0/24 . 6 . 8443" in dump
        assert "192.0.2.0/24" not in dump  # the space's security group is not used without dynamic ASGs
    finally:
        r.stop()


async def test_the_cni_socket_is_for_root_only(tmp_path):
    import stat

    from nft import FakeNft
    from reconciler.config import ReconcilerConfig
    from reconciler.daemon import Reconciler
    from reconciler.endpoint import start_endpoints

    rec = Reconciler(ReconcilerConfig(cell_id="a", state_dir=tmp_path / "s"), FakeNft())
    socket = tmp_path / "r.sock"
    runners = await start_endpoints(rec, socket, None)
    try:
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    finally:
        for r in runners:
            await r.cleanup()
