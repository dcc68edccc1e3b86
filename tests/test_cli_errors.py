"""Failures as a user meets them, through `cfnft.cli.main`: for every command family, one line on
stderr (`cfnft COMMAND: what failed and where`, or the documented list of a document's problems),
the exit code of its kind (2: bad input, nothing changed; 3: the operation failed), and never a
traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from cfnft import commands
from cfnft.cli import build_parser, main
from cfnft.errors import EXIT_FAILED, EXIT_USAGE
from events import subjects
from lab.natsserver import NatsServer, find_nats_server, free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cell-state.json"
NO_SUCH_NETNS = "cfnft-test-no-such-ns"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`main` sets up logging for a process; give the next test the root logger it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def cfnft(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Run the command line; its exit code and the lines on stderr that are not JSON log lines, nor
    the warning every --nats-insecure command gives (these tests use a NATS without TLS or users)."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if not line.startswith("{") and "NATS in insecure mode" not in line]


def one_line(lines: list[str], command: str) -> str:
    assert len(lines) == 1 and lines[0].startswith(f"cfnft {command}: "), lines
    return lines[0].removeprefix(f"cfnft {command}: ")


# ------------------------------------------------------------------ one-shot: render, apply, check


def test_an_invalid_document_lists_every_problem_as_the_readme_shows(tmp_path: Path, capsys) -> None:
    doc = json.loads(EXAMPLE.read_text())
    doc["security_groups"][0]["rules"][0]["ports"] = "90-80"
    doc["containers"][0]["colour"] = "blue"
    bad = tmp_path / "cell.json"
    bad.write_text(json.dumps(doc))
    # The namespace does not exist: had the document been accepted, the exit code would be 3.
    code, lines = cfnft(capsys, "apply", "--state", str(bad), "--netns", NO_SUCH_NETNS)
    assert code == EXIT_USAGE
    assert lines == [
        f"cfnft apply: {bad}: invalid cell state (2 problems):",
        "  containers[0].colour: unknown key",
        "  security_groups[0].rules[0].ports: '90-80': start after end",
    ]


def test_one_problem_is_one_line(tmp_path: Path, capsys) -> None:
    doc = json.loads(EXAMPLE.read_text())
    doc["containers"][0]["ip"] = "10.255.12.256"
    bad = tmp_path / "cell.json"
    bad.write_text(json.dumps(doc))
    code, lines = cfnft(capsys, "render", "--state", str(bad))
    assert code == EXIT_USAGE
    assert one_line(lines, "render").startswith(f"{bad}: containers[0].ip: '10.255.12.256': ")
    code, lines = cfnft(capsys, "check", "--state", str(tmp_path / "missing.json"), "--netns", NO_SUCH_NETNS)
    assert code == EXIT_USAGE
    assert one_line(lines, "check") == f"{tmp_path / 'missing.json'}: cannot read: No such file or directory"


@pytest.mark.parametrize("command", ["apply", "check"])
def test_nft_in_a_namespace_that_does_not_exist(command: str, capsys) -> None:
    code, lines = cfnft(capsys, command, "--state", str(EXAMPLE), "--netns", NO_SUCH_NETNS)
    assert code == EXIT_FAILED
    assert one_line(lines, command) == (
        f"network namespace '{NO_SUCH_NETNS}': cannot open /var/run/netns/{NO_SUCH_NETNS}: No such file or directory"
    )


def test_a_table_cfnft_cannot_read_back_is_named_and_left_alone(netns: str, capsys) -> None:
    """Someone gave one of our sets a memory policy, which cfnft never writes: apply refuses to guess."""
    c2c_set = "c2c-7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
    definition = "type ipv4_addr . inet_proto . inet_service; policy memory;"
    foreign = f"table inet cfnft {{\n set {c2c_set} {{ {definition} }}\n}}\n"
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=foreign, text=True, check=True)
    before = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"], capture_output=True, text=True)
    code, lines = cfnft(capsys, "apply", "--state", str(EXAMPLE), "--netns", netns)
    assert code == EXIT_FAILED
    assert one_line(lines, "apply") == f"cannot read back set '{c2c_set}': unexpected line '\\t\\tpolicy memory'"
    after = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"], capture_output=True, text=True)
    assert after.stdout == before.stdout


# ------------------------------------------------------------------ daemons: reconcile, watch


def test_a_bad_reconciler_config_names_the_file_and_key(tmp_path: Path, capsys) -> None:
    path = tmp_path / "reconciler.json"
    path.write_text(json.dumps({"cell_id": "a", "drift_probe_seconds": -1}))
    code, lines = cfnft(capsys, "reconcile", "--config", str(path))
    assert code == EXIT_USAGE
    assert one_line(lines, "reconcile") == f"{path}: drift_probe_seconds: -1: must be greater than 0.0"
    path.write_text(json.dumps({"cell_id": "a", "drift_probe_seconds": -1, "colour": "blue"}))
    code, lines = cfnft(capsys, "reconcile", "--config", str(path))
    assert code == EXIT_USAGE
    assert lines == [
        f"cfnft reconcile: {path}: invalid reconciler config (2 problems):",
        "  drift_probe_seconds: -1: must be greater than 0.0",
        "  colour: unknown key",
    ]
    code, lines = cfnft(capsys, "reconcile")
    assert code == EXIT_USAGE and one_line(lines, "reconcile") == "give --config FILE or at least --cell-id"


LISTEN = "must be HOST:PORT (an address or name, IPv6 without brackets; a port 1-65535), or empty for none"


@pytest.mark.parametrize("listen", ["x", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "[::1]:9301", "a b:80"])
def test_a_metrics_listener_that_is_not_host_port_is_refused_from_file_and_flag(
    listen: str, tmp_path: Path, capsys
) -> None:
    """Before, `x` reached int(port) as the daemon started: reported as a bug."""
    path = tmp_path / "reconciler.json"
    path.write_text(json.dumps({"cell_id": "a", "metrics_listen": listen}))
    code, lines = cfnft(capsys, "reconcile", "--config", str(path))
    assert code == EXIT_USAGE
    assert one_line(lines, "reconcile") == f"{path}: metrics_listen: {listen!r}: {LISTEN}"
    # The flag is checked as the key is, over a file whose own value is good.
    path.write_text(json.dumps({"cell_id": "a", "metrics_listen": "127.0.0.1:9301"}))
    code, lines = cfnft(capsys, "reconcile", "--config", str(path), "--metrics-listen", listen)
    assert code == EXIT_USAGE
    assert one_line(lines, "reconcile") == f"metrics_listen: {listen!r}: {LISTEN}"


@pytest.mark.parametrize(("flag", "key"), [("--cell-id", "cell_id"), ("--netns", "netns")])
def test_an_empty_flag_is_refused_naming_the_key(flag: str, key: str, capsys) -> None:
    code, lines = cfnft(capsys, "reconcile", "--cell-id", "a", flag, "")
    assert code == EXIT_USAGE
    assert one_line(lines, "reconcile") == f"{key}: must not be empty"


def test_flags_lay_over_the_file_and_an_empty_metrics_listen_turns_the_listener_off(tmp_path: Path) -> None:
    path = tmp_path / "reconciler.json"
    password = tmp_path / "password"
    password.write_text("p\n")
    nats = {"servers": ["nats://n1:4222"], "user": "u", "password_file": str(password), "insecure": True}
    path.write_text(json.dumps({"cell_id": "a", "nats": nats}))
    args = build_parser().parse_args(
        ["reconcile", "--config", str(path), "--metrics-listen", "", "--nats-url", "nats://n2:4222", "--netns", "c"]
    )
    cfg = commands._reconciler_config(args)
    assert cfg.metrics_listen == "" and cfg.netns == "c" and cfg.cell_id == "a"
    assert cfg.nats.servers == ["nats://n2:4222"] and cfg.nats.user == "u"  # the file's other NATS keys stay
    cfg = commands._reconciler_config(build_parser().parse_args(["reconcile", "--config", str(path)]))
    assert cfg.metrics_listen == "127.0.0.1:9301" and cfg.netns is None


def test_a_watcher_metrics_listener_that_is_not_host_port_names_the_file_and_key(tmp_path: Path, capsys) -> None:
    path = write_watch_config(tmp_path / "watcher.json", f"nats://127.0.0.1:{free_port()}")
    path.write_text(json.dumps({**json.loads(path.read_text()), "metrics_listen": "9302"}))
    code, lines = cfnft(capsys, "watch", "--config", str(path))
    assert code == EXIT_USAGE
    assert one_line(lines, "watch") == f"{path}: metrics_listen: '9302': {LISTEN}"


def test_a_socket_the_system_refuses_is_one_line_naming_it(netns: str, tmp_path: Path, capsys) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    argv = ["--cell-id", "a", "--netns", netns, "--state-dir", str(tmp_path), "--metrics-listen", "", "--nats-insecure"]
    code, lines = cfnft(capsys, "reconcile", *argv, "--socket", str(not_a_dir / "reconciler.sock"))
    assert code == EXIT_FAILED
    assert one_line(lines, "reconcile") == f"[Errno 17] File exists: '{not_a_dir}'"


def write_watch_config(path: Path, nats_url: str, **sections: object) -> Path:
    path.write_text(json.dumps({"nats": {"servers": [nats_url], "insecure": True}, "metrics_listen": "", **sections}))
    return path


def test_a_bad_watcher_config_is_refused_before_anything_starts(tmp_path: Path, capsys) -> None:
    unreachable = f"nats://127.0.0.1:{free_port()}"  # the daemon would wait for it forever
    tls = {"ca_file": "/x", "cert_file": "/x", "key_file": "/x"}
    cc = {"api_url": "https://api", "uaa_url": "https://uaa", "client_secret": "s"}
    path = write_watch_config(tmp_path / "watcher.json", unreachable, policy=tls, cc=cc)
    code, lines = cfnft(capsys, "watch", "--config", str(path))
    assert code == EXIT_USAGE
    assert one_line(lines, "watch").startswith(f"{path}: security groups would come from both the policy server")
    path = write_watch_config(tmp_path / "watcher.json", unreachable, bbs=tls)
    code, lines = cfnft(capsys, "watch", "--config", str(path), "cc")
    assert code == EXIT_USAGE and one_line(lines, "watch") == "the config file has no section for cc"


def test_unreadable_tls_files_of_a_watcher_name_the_file(nats_server: NatsServer, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "ca.pem"
    cc = {"api_url": "https://api", "uaa_url": "https://uaa", "client_secret": "s", "ca_file": str(missing)}
    # (cc, not bbs: a BBS watcher registers its metrics once per process, and this one is pytest's)
    path = write_watch_config(tmp_path / "watcher.json", nats_server.url, cc=cc)
    code, lines = cfnft(capsys, "watch", "--config", str(path))
    assert code == EXIT_USAGE
    assert one_line(lines, "watch") == f"TLS CA {missing}: No such file or directory"


# ------------------------------------------------------------------ NATS operations: publish, resync, status


@pytest.mark.parametrize(
    "argv",
    [["publish", "--state", str(EXAMPLE)], ["resync"], ["status", "--cell", "cell-a"]],
    ids=["publish", "resync", "status"],
)
def test_unreachable_nats_is_one_line_naming_the_server(argv: list[str], capsys) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    code, lines = cfnft(capsys, *argv, "--nats-url", url, "--nats-insecure")
    assert code == EXIT_FAILED
    assert one_line(lines, argv[0]).startswith(f"cannot connect to NATS {url}: [Errno 111] Connect call failed")


def test_an_unreadable_nats_ca_is_bad_input(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nats-ca.pem"
    code, lines = cfnft(capsys, "resync", "--nats-ca", str(missing), "--nats-insecure")
    assert code == EXIT_USAGE
    assert one_line(lines, "resync") == f"TLS CA {missing}: No such file or directory"


def test_status_of_a_cell_nobody_answers_for(nats_server: NatsServer, capsys) -> None:
    code, lines = cfnft(
        capsys, "status", "--cell", "cell-z", "--timeout", "0.2", "--nats-url", nats_server.url, "--nats-insecure"
    )
    assert code == EXIT_FAILED
    assert one_line(lines, "status") == "no reconciler for cell cell-z answered the status request within 0.2s"


@contextlib.contextmanager
def responder(url: str, subject: str, answer: bytes) -> Iterator[None]:
    """Something on NATS that answers every request on `subject` with `answer`, on a thread of its own
    (the command under test runs its own event loop on this one)."""
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        nc = await nats.connect(url)

        async def on_request(m) -> None:
            await m.respond(answer)

        await nc.subscribe(subject, cb=on_request)
        await nc.flush()
        ready.set()
        await stop.wait()
        await nc.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10), "the responder did not subscribe"
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


STATUS = {
    "cell_id": "cell-a",
    "in_sync": True,
    "nats_synced": True,
    "nats_connected": True,
    "generation": 3,
    "committed_generation": 3,
    "last_commit_at": None,
    "consecutive_failures": 0,
}
TO_CELL_A = ["--cell", "cell-a", "--timeout", "5"]
EXPLAIN = ["explain", *TO_CELL_A, "--from", "web0", "--to", "tcp:192.0.2.10:443"]


@pytest.mark.parametrize(
    ("argv", "subject", "answer", "said"),
    [
        (["status", *TO_CELL_A], subjects.status("cell-a"), b"<html>garbage", "not JSON: '<html>garbage'"),
        (["status", *TO_CELL_A], subjects.status("cell-a"), b"", "not JSON: ''"),
        (
            ["status", *TO_CELL_A],
            subjects.status("cell-a"),
            json.dumps({**STATUS, "in_sync": "yes", "generation": None}).encode(),
            "in_sync: 'yes': must be true or false; generation: null: must be an integer",
        ),
        (["status", *TO_CELL_A], subjects.status("cell-a"), b"[1, 2]", "[1,2]: must be an object"),
        (EXPLAIN, subjects.explain("cell-a"), b"\xff\xfe", "not JSON: '\ufffd\ufffd'"),
        (
            EXPLAIN,
            subjects.explain("cell-a"),
            b'{"allowed": true}',
            "source: required key is missing; source_ip: required key is missing; "
            "probe: required key is missing; … and 3 more",
        ),
        (EXPLAIN, subjects.explain("cell-a"), b'{"error": 5}', "error: 5: must be a string"),
        (["stats", *TO_CELL_A], subjects.stats("cell-a"), b"null", "null: must be an object"),
    ],
    ids=[
        "status-not-json",
        "status-empty",
        "status-wrong-types",
        "status-a-list",
        "explain-not-json",
        "explain-wrong-shape",
        "explain-bad-error",
        "stats-null",
    ],
)
def test_a_cell_that_answers_garbage_is_one_line_naming_it(
    nats_server: NatsServer, argv: list[str], subject: str, answer: bytes, said: str, capsys
) -> None:
    with responder(nats_server.url, subject, answer):
        code, lines = cfnft(capsys, *argv, "--nats-url", nats_server.url, "--nats-insecure")
    assert code == EXIT_FAILED
    what = {"status": "the status request", "explain": "the explain request", "stats": "the stats request"}[argv[0]]
    assert one_line(lines, argv[0]) == f"cell cell-a: bad answer to {what}: {said}"


@pytest.mark.parametrize(
    ("argv", "answer", "said"),
    [
        (
            ["--all"],
            b"garbage",
            "a responder that names no cell: bad answer to the fleet status request: not JSON: 'garbage'",
        ),
        (
            ["--all"],
            b'{"cell_id": 7}',
            "a responder that names no cell: bad answer to the fleet status request: "
            "cell_id: 7: must be a string; in_sync: required key is missing",
        ),
        (
            ["--object", "asg:public"],
            json.dumps(
                {**STATUS, "cell_id": "cell-b", "enforced": {"subject": "cfnft.state.asg.public", "version": "9"}}
            ).encode(),
            "cell cell-b: bad answer to the fleet status request: enforced.version: '9': must be an integer",
        ),
    ],
    ids=["all-not-json", "all-no-cell", "object-wrong-version"],
)
def test_a_fleet_answer_that_is_not_a_status_is_one_line(
    nats_server: NatsServer, argv: list[str], answer: bytes, said: str, capsys
) -> None:
    """Had the answer been ignored, the command would have waited out its timeout and exited 1 with no
    cell in sync; had it been believed, it could have counted a cell as enforcing what it does not."""
    with responder(nats_server.url, subjects.FLEET_STATUS, answer):
        code, lines = cfnft(capsys, "status", *argv, "--timeout", "5", "--nats-url", nats_server.url, "--nats-insecure")
    assert code == EXIT_FAILED
    assert one_line(lines, "status").startswith(said), lines


@pytest.fixture
def nats_without_jetstream() -> Iterator[str]:
    """A nats-server started bare (the lab's NatsServer always enables JetStream), once it greets clients."""
    binary = find_nats_server()
    assert binary is not None  # the `nats` marker skips (or, under CI, fails) the test without one
    port = free_port()
    process = subprocess.Popen([str(binary), "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not _greets(port):
            assert process.poll() is None and time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


@pytest.mark.nats
def test_publishing_to_a_nats_without_jetstream(nats_without_jetstream: str, capsys) -> None:
    code, lines = cfnft(
        capsys, "publish", "--state", str(EXAMPLE), "--nats-url", nats_without_jetstream, "--nats-insecure"
    )
    assert code == EXIT_FAILED
    assert one_line(lines, "publish").startswith(f"cannot publish to NATS {nats_without_jetstream}: ")


# ------------------------------------------------------------------ a bug


def test_a_bug_is_still_one_line_and_the_traceback_is_in_the_debug_log(capsys) -> None:
    """`run` is what `main` calls with a handler; the lab's commands reach it the same way."""

    def broken(args: argparse.Namespace) -> int:
        return {}["missing"]

    code = commands.run(argparse.Namespace(command="demo", handler=broken, log_level="info"))
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert err == "cfnft demo: unexpected KeyError: 'missing' (a bug; --log-level debug shows where)\n"
    commands.run(argparse.Namespace(command="demo", handler=broken, log_level="debug"))
    err = capsys.readouterr().err
    assert "Traceback" in err and 'return {}["missing"]' in err
