"""cfnft-cni as a runtime sees it, with no reconciler behind its socket: the CNI spec's answers and errors.

Each test runs the installed `cfnft-cni` executable as a subprocess with a CNI environment and stdin,
and checks the exit status and the JSON on stdout. Nothing here needs root, a kernel or NATS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni import pending

PLUGIN = Path(sys.executable).with_name("cfnft-cni")

PREV_RESULT: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "veth0a1b2c3d", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/ctr"},
    ],
    "ips": [
        {"address": "10.255.1.5/24", "gateway": "10.255.1.1", "interface": 1},
        {"address": "fd00:255:1::5/64", "gateway": "fd00:255:1::1", "interface": 1},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def run(env: dict[str, str], stdin: bytes | dict[str, Any] | None = None) -> tuple[int, Any, str]:
    """Run the plugin; returns (exit status, decoded stdout or None, stderr)."""
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode() if stdin is not None else b""
    proc = subprocess.run(
        [str(PLUGIN)], input=data, env={"PATH": os.environ["PATH"], **env}, capture_output=True, timeout=30, check=False
    )
    out = proc.stdout.decode()
    return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    """A socket path nobody listens on."""
    return str(tmp_path / "reconciler.sock")


def conf(socket_path: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "cfnft",
        "type": "cfnft-cni",
        "socket_path": socket_path,
        "timeout_seconds": 1,
        **extra,
    }


def env_for(command: str, handle: str = "c-1") -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": handle,
        "CNI_NETNS": "/run/netns/ctr",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
        "CNI_ARGS": "",
    }


def assert_error(result: tuple[int, Any, str], code: int, *needles: str) -> dict[str, Any]:
    rc, out, stderr = result
    assert rc != 0, f"expected failure, got exit 0 and {out}"
    assert isinstance(out, dict) and set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["code"] == code, out
    text = out["msg"] + " " + out["details"]
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert "Traceback" not in stderr
    return out


# -- VERSION ------------------------------------------------------------------------------------------


def test_version_reports_the_supported_versions_in_the_version_asked_for() -> None:
    rc, out, _ = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
    assert rc == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_version_without_stdin_answers_in_the_newest_version() -> None:
    rc, out, _ = run({"CNI_COMMAND": "VERSION"})
    assert rc == 0 and out == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


# -- environment --------------------------------------------------------------------------------------


def test_missing_cni_command_is_error_4(socket_path: str) -> None:
    assert_error(run({}, conf(socket_path)), 4, "CNI_COMMAND")


def test_unknown_cni_command_is_error_4(socket_path: str) -> None:
    assert_error(run(env_for("ATTACH"), conf(socket_path)), 4, "ATTACH")


def test_missing_variables_are_named_in_error_4(socket_path: str) -> None:
    env = env_for("ADD")
    del env["CNI_NETNS"], env["CNI_IFNAME"]
    assert_error(run(env, conf(socket_path, prevResult=PREV_RESULT)), 4, "CNI_NETNS", "CNI_IFNAME")


def test_del_does_not_need_a_netns(socket_path: str) -> None:
    env = env_for("DEL")
    del env["CNI_NETNS"]
    rc, out, _ = run(env, conf(socket_path))
    assert (rc, out) == (0, None)


@pytest.mark.parametrize("handle", ["-leading-dash", "has space", "a/b"])
def test_bad_container_id_is_error_4(socket_path: str, handle: str) -> None:
    assert_error(run(env_for("ADD", handle), conf(socket_path, prevResult=PREV_RESULT)), 4, "CNI_CONTAINERID")


def test_bad_interface_name_is_error_4(socket_path: str) -> None:
    env = env_for("ADD") | {"CNI_IFNAME": "much-too-long-ifname"}
    assert_error(run(env, conf(socket_path, prevResult=PREV_RESULT)), 4, "CNI_IFNAME")


# -- stdin and versions -------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_undecodable_stdin_is_error_6(stdin: bytes) -> None:
    assert_error(run(env_for("ADD"), stdin), 6, "network configuration")


@pytest.mark.parametrize("version", ["0.3.1", "2.0.0", "banana"])
def test_unknown_cni_version_is_error_1_in_that_version(socket_path: str, version: str) -> None:
    out = assert_error(
        run(env_for("ADD"), conf(socket_path, version, prevResult=PREV_RESULT)), 1, version, "0.4.0, 1.0.0, 1.1.0"
    )
    assert out["cniVersion"] == version


def test_missing_cni_version_is_error_1(socket_path: str) -> None:
    stdin = {k: v for k, v in conf(socket_path, prevResult=PREV_RESULT).items() if k != "cniVersion"}
    assert_error(run(env_for("ADD"), stdin), 1, "no cniVersion")


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_need_1_1_0(socket_path: str, command: str) -> None:
    assert_error(run({"CNI_COMMAND": command}, conf(socket_path, "1.0.0")), 1, command, "1.1.0")


def test_missing_network_name_is_error_7(socket_path: str) -> None:
    stdin = {k: v for k, v in conf(socket_path, prevResult=PREV_RESULT).items() if k != "name"}
    assert_error(run(env_for("ADD"), stdin), 7, "name")


def test_unknown_key_is_error_2_naming_key_and_value(socket_path: str) -> None:
    out = assert_error(run(env_for("ADD"), conf(socket_path, prevResult=PREV_RESULT, socket="/x")), 2, "socket", '"/x"')
    assert out["cniVersion"] == "1.0.0"


def test_bad_own_value_is_error_7_naming_the_key(socket_path: str) -> None:
    assert_error(
        run(env_for("ADD"), conf(socket_path, prevResult=PREV_RESULT) | {"timeout_seconds": 0}), 7, "timeout_seconds"
    )


def test_add_without_prev_result_is_error_7(socket_path: str) -> None:
    assert_error(run(env_for("ADD"), conf(socket_path)), 7, "prevResult")


def test_add_without_an_ipv4_address_is_error_7(socket_path: str) -> None:
    prev = PREV_RESULT | {"ips": [PREV_RESULT["ips"][1]]}
    assert_error(run(env_for("ADD"), conf(socket_path, prevResult=prev)), 7, "IPv4")


def test_bad_garden_metadata_is_error_7_naming_the_key(socket_path: str) -> None:
    stdin = conf(socket_path, prevResult=PREV_RESULT, metadata={"ports": "8080,http"})
    assert_error(run(env_for("ADD"), stdin), 7, "metadata.ports", "8080,http")


def test_cni_convention_port_mapping_keys_are_error_2(socket_path: str) -> None:
    stdin = conf(
        socket_path,
        prevResult=PREV_RESULT,
        runtimeConfig={"portMappings": [{"hostPort": 61000, "containerPort": 8080, "protocol": "tcp"}]},
    )
    assert_error(run(env_for("ADD"), stdin), 2, "hostPort")


# -- the reconciler is not there ----------------------------------------------------------------------


def test_add_without_reconciler_is_error_11_and_leaves_a_pending_deletion(socket_path: str) -> None:
    assert_error(
        run(env_for("ADD", "c-add"), conf(socket_path, prevResult=PREV_RESULT)), 11, "unreachable", socket_path
    )
    # Should the registration have reached a reconciler that then went silent, it is taken back.
    assert pending.pending_handles(socket_path) == ["c-add"]


def test_del_without_reconciler_succeeds_twice_and_is_recorded(socket_path: str) -> None:
    for _ in range(2):
        rc, out, stderr = run(env_for("DEL", "c-del"), conf(socket_path, prevResult=PREV_RESULT))
        assert (rc, out) == (0, None), stderr
    assert pending.pending_handles(socket_path) == ["c-del"]


def test_del_that_can_neither_reach_nor_record_is_error_11(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    # The pending directory would be <socket>.pending-del under a regular file: cannot be created.
    assert_error(run(env_for("DEL"), conf(str(blocker / "reconciler.sock"))), 11, "pending deletion")


def test_check_without_reconciler_is_error_11(socket_path: str) -> None:
    assert_error(run(env_for("CHECK"), conf(socket_path, prevResult=PREV_RESULT)), 11, "unreachable")


def test_check_without_prev_result_is_error_7(socket_path: str) -> None:
    assert_error(run(env_for("CHECK"), conf(socket_path)), 7, "prevResult")


def test_status_without_reconciler_is_error_50(socket_path: str) -> None:
    assert_error(
        run({"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"}, conf(socket_path, "1.1.0")), 50, "unreachable"
    )


def test_gc_without_reconciler_is_error_11(socket_path: str) -> None:
    stdin = conf(socket_path, "1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert_error(run({"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, stdin), 11, "unreachable")


def test_gc_without_an_attachment_list_is_error_7_not_remove_all(socket_path: str) -> None:
    assert_error(run({"CNI_COMMAND": "GC"}, conf(socket_path, "1.1.0")), 7, "valid-attachments")


def test_log_file_gets_one_line_per_invocation(socket_path: str, tmp_path: Path) -> None:
    log = tmp_path / "cni.log"
    run(env_for("DEL", "c-log"), conf(socket_path, log_file=str(log)))
    run(env_for("ADD", "c-log"), conf(socket_path, log_file=str(log), prevResult=PREV_RESULT))
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["command"], e["container_id"], e.get("code")) for e in entries] == [
        ("DEL", "c-log", None),
        ("ADD", "c-log", 11),
    ]
    assert all(isinstance(e["ms"], float) for e in entries)


def test_the_plugin_imports_nothing_heavy() -> None:
    """Start-up budget: the modules ADD/DEL load must not pull in pydantic, aiohttp, nats, the reconciler,
    http.client/email/ssl (~30 ms) or dataclasses/inspect (~10 ms)."""
    probe = (
        "import sys; before = set(sys.modules); "
        "import cni.main, cni.commands, cni.client, cni.garden, cni.result, cni.pending; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    loaded = proc.stdout.split()
    heavy = ("pydantic", "aiohttp", "nats", "reconciler", "events", "nft", "http", "email", "ssl", "dataclasses",
             "inspect", "asyncio", "cfnft")  # fmt: skip
    assert [m for m in loaded if m.split(".")[0] in heavy] == []
    assert "cni.main" in loaded
