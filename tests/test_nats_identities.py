"""Who may do what on NATS, enforced by a real nats-server with TLS and the role identities of
events/permissions.py (rendered by lab/natsconf.py, as examples/nats/ and the BOSH job render them).

Each refusal is checked twice: the server reports a permissions violation to the client, and the
stream shows that nothing happened.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events import subjects
from events.connect import NatsConfig, NatsUnavailable, ServerErrors, connect
from events.lease import LEASE_BUCKET, Lease
from events.messages import ContainerMessage
from events.models import Container
from events.permissions import Role, cell_consumers, inbox_prefix
from events.publisher import StatePublisher, state_stream_config
from lab.natsconf import Identities, Identity, ServerSettings
from lab.natsserver import NatsServer
from lab.pki import Pki, make_pki

pytestmark = pytest.mark.nats

# Short API timeouts: a refused JetStream request is simply never answered.
API_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def identities(tmp_path: Path) -> Identities:
    return Identities(tmp_path / "identities", ["a", "b"])


@pytest.fixture
def secure_server(tmp_path: Path, pki: Pki, identities: Identities) -> Iterator[NatsServer]:
    settings = ServerSettings(users=identities.users(), tls=pki.server)
    with NatsServer(tmp_path / "nats", settings=settings) as server:
        yield server


class Client:
    """A connection as one identity, with what the server refused it."""

    def __init__(self, nc: NATS, errors: ServerErrors) -> None:
        self.nc = nc
        self.errors = errors
        self.js = nc.jetstream(timeout=API_TIMEOUT)

    async def refused(self, subject: str) -> bool:
        """The server told this client it may not publish (or subscribe) on `subject`."""
        for _ in range(50):
            if self.errors.refused and subject.lower() in self.errors.refused.lower():
                return True
            await asyncio.sleep(0.02)
        return False


@pytest.fixture
async def connect_as(secure_server: NatsServer, pki: Pki) -> AsyncIterator:
    clients: list[NATS] = []

    async def make(identity: Identity, role: Role, cell_id: str | None = None) -> Client:
        errors = ServerErrors(identity.user)
        cfg = identity.client([secure_server.url], pki.client)
        nc = await connect(cfg, identity.user, inbox_prefix(role, cell_id), forever=False, errors=errors)
        clients.append(nc)
        return Client(nc, errors)

    yield make
    for nc in clients:
        await nc.close()


def container_message(cell_id: str, handle: str) -> ContainerMessage:
    container = Container(
        handle=handle, ip=f"10.255.{ord(cell_id[0]) % 200}.2", app_guid="app", space_guid="space", workload="app"
    )
    return ContainerMessage(version=1, cell_id=cell_id, handle=handle, container=container)


@pytest.fixture
async def watcher(connect_as, identities: Identities) -> Client:
    client = await connect_as(identities.watcher, Role.WATCHER)
    publisher = StatePublisher(client.nc, "bbs")
    for cell in ("a", "b"):
        assert await publisher.publish(container_message(cell, f"{cell}-1"))
    return client


async def stream_subjects(client: Client) -> dict[str, int]:
    info = await client.js.stream_info(subjects.STATE_STREAM, subjects_filter=subjects.STATE_WILDCARD)
    return dict(info.state.subjects or {})


def cell_consumer_config(name: str, filter_subject: str, deliver: str) -> ConsumerConfig:
    return ConsumerConfig(
        name=name,
        filter_subject=filter_subject,
        deliver_subject=deliver,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        mem_storage=True,
        num_replicas=1,
    )


async def test_without_credentials_or_with_a_wrong_password_the_server_refuses(
    secure_server: NatsServer, pki: Pki, identities: Identities, tmp_path: Path
) -> None:
    anonymous = NatsConfig(servers=[secure_server.url], ca_file=pki.client.ca, insecure=True)
    with pytest.raises(NatsUnavailable, match="(?i)authorization"):
        await connect(anonymous, "anonymous", "_INBOX.anonymous", forever=False)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    impostor = NatsConfig(servers=[secure_server.url], ca_file=pki.client.ca, user="watcher", password_file=wrong)
    with pytest.raises(NatsUnavailable, match="(?i)authorization"):
        await connect(impostor, "impostor", inbox_prefix(Role.WATCHER), forever=False)


async def test_a_cell_can_neither_write_state_nor_create_or_change_the_stream(
    connect_as, identities: Identities, watcher: Client
) -> None:
    cell = await connect_as(identities.cell("a"), Role.CELL, "a")
    forged = container_message("a", "forged")

    await cell.nc.publish(forged.subject(), forged.model_dump_json().encode())
    assert await cell.refused(forged.subject())
    with pytest.raises(nats.errors.TimeoutError):
        await cell.js.publish(forged.subject(), forged.model_dump_json().encode())
    with pytest.raises(nats.errors.TimeoutError):
        await cell.js.add_stream(state_stream_config(1).evolve(name="CFNFT_OTHER", subjects=["cfnft.other.>"]))
    assert await cell.refused("$JS.API.STREAM.CREATE.CFNFT_OTHER")
    for request in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE"):
        await cell.nc.publish(f"$JS.API.{request}.{subjects.STATE_STREAM}", b"{}", reply=cell.nc.new_inbox())
        assert await cell.refused(f"$JS.API.{request}.{subjects.STATE_STREAM}")

    assert set(await stream_subjects(watcher)) == {subjects.container("a", "a-1"), subjects.container("b", "b-1")}


async def test_a_cell_cannot_read_another_cells_containers(connect_as, identities: Identities, watcher: Client) -> None:
    cell = await connect_as(identities.cell("a"), Role.CELL, "a")
    own, other = cell_consumers("a")[0], cell_consumers("b")[0]
    deliver = cell.nc.new_inbox()
    attempts = {
        # b's filter under a's own consumer name, and b's consumer as it is
        own.names[0]: other.filter_subject,
        other.names[0]: other.filter_subject,
        # the whole stream, under a's name
        f"{own.names[0]}-all": subjects.STATE_WILDCARD,
    }
    for name, filter_subject in attempts.items():
        with pytest.raises(nats.errors.TimeoutError):
            await cell.js.add_consumer(subjects.STATE_STREAM, cell_consumer_config(name, filter_subject, deliver))
        assert await cell.refused(f"$JS.API.CONSUMER.CREATE.{subjects.STATE_STREAM}.{name}")
    # The forms without a filter in the subject, and reading a message directly.
    for request in (
        f"CONSUMER.CREATE.{subjects.STATE_STREAM}",
        f"CONSUMER.DURABLE.CREATE.{subjects.STATE_STREAM}.{own.names[0]}",
        f"STREAM.MSG.GET.{subjects.STATE_STREAM}",
        f"DIRECT.GET.{subjects.STATE_STREAM}",
        f"DIRECT.GET.{subjects.STATE_STREAM}.{subjects.container('b', 'b-1')}",
        f"CONSUMER.INFO.{subjects.STATE_STREAM}.{other.names[0]}",
    ):
        payload = json.dumps({"last_by_subj": subjects.container("b", "b-1")}).encode()
        await cell.nc.publish(f"$JS.API.{request}", payload, reply=cell.nc.new_inbox())
        assert await cell.refused(f"$JS.API.{request}")
    # Live traffic and other clients' deliveries are not to be had by subscribing either.
    for subject in ("cfnft.state.>", subjects.containers_of_cell("b"), "_INBOX.>", f"{inbox_prefix(Role.CELL, 'b')}.>"):
        await cell.nc.subscribe(subject)
        assert await cell.refused(subject)


async def test_a_cell_reads_its_own_containers_and_the_foundation_through_its_named_consumers(
    connect_as, identities: Identities, watcher: Client
) -> None:
    cell = await connect_as(identities.cell("a"), Role.CELL, "a")
    received: list[str] = []

    async def on_message(msg) -> None:
        if msg.data:
            received.append(msg.subject)

    for consumer in cell_consumers("a"):
        for name in consumer.names:
            deliver = cell.nc.new_inbox()
            await cell.nc.subscribe(deliver, cb=on_message)
            await cell.js.add_consumer(
                subjects.STATE_STREAM, cell_consumer_config(name, consumer.filter_subject, deliver)
            )
            # A cell replaces a consumer it lost.
            await cell.js.delete_consumer(subjects.STATE_STREAM, name)
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.02)
    assert received == [subjects.container("a", "a-1")] * 2
    # It sees where the stream stands (to resume from where it was).
    assert (await cell.js.stream_info(subjects.STATE_STREAM)).state.last_seq == 2
    assert cell.errors.refused is None


async def test_the_status_reply_goes_back_to_the_operator_and_only_there(
    connect_as, identities: Identities, watcher: Client
) -> None:
    cell = await connect_as(identities.cell("a"), Role.CELL, "a")

    async def answer(msg) -> None:
        await cell.nc.publish(msg.reply, b'{"in_sync": true}')

    await cell.nc.subscribe(subjects.status("a"), cb=answer)
    await cell.nc.flush()
    operator = await connect_as(identities.operator, Role.OPERATOR)
    reply = await operator.nc.request(subjects.status("a"), b"", timeout=2)
    assert json.loads(reply.data) == {"in_sync": True}
    # The cell answers requests; it cannot send to the operator's inbox of its own accord.
    inbox = f"{inbox_prefix(Role.OPERATOR)}.stolen"
    await cell.nc.publish(inbox, b"{}")
    assert await cell.refused(inbox)
    # And it may not ask another cell.
    await cell.nc.publish(subjects.status("b"), b"")
    assert await cell.refused(subjects.status("b"))


async def test_the_watcher_writes_state_but_sends_no_resync_or_status_requests(
    connect_as, identities: Identities, watcher: Client
) -> None:
    for subject in (subjects.RESYNC_ALL, subjects.status("a")):
        await watcher.nc.publish(subject, b"{}")
        assert await watcher.refused(subject)
    assert len(await stream_subjects(watcher)) == 2


async def test_the_watcher_holds_its_lease_marks_its_publication_and_reads_back_a_subject(
    connect_as, identities: Identities, watcher: Client
) -> None:
    """What a watcher replica does besides publishing (cfnft/watch.py): take and renew its kind's
    lease, write its epoch marker, and read back a subject it is unsure of. A cell may do none of it."""
    lease = Lease(watcher.nc, "watch-bbs", ttl=3.0)
    await asyncio.wait_for(lease.acquire(), 5)
    holding = asyncio.create_task(lease.hold())
    await asyncio.sleep(1.5)  # a renewal every ttl/3
    assert lease.held and not holding.done()
    holding.cancel()
    await lease.release()

    publisher = StatePublisher(watcher.nc, "bbs")
    await publisher.mark_complete(["container"])
    assert subjects.epoch("bbs") in await stream_subjects(watcher)
    stored = await watcher.js.get_last_msg(subjects.STATE_STREAM, subjects.container("a", "a-1"))
    assert stored.data is not None and b'"a-1"' in stored.data

    cell = await connect_as(identities.cell("a"), Role.CELL, "a")
    intruder = Lease(cell.nc, "watch-bbs", ttl=3.0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(intruder.acquire(), 1.5)
    assert await cell.refused(f"$JS.API.STREAM.INFO.KV_{LEASE_BUCKET}")


def cfnft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnft.cli", *args], capture_output=True, text=True, timeout=60)


def as_identity(server: NatsServer, pki: Pki, identity: Identity) -> tuple[str, ...]:
    """The command line's NATS flags for `identity` on `server`."""
    return (
        "--nats-url",
        server.url,
        "--nats-ca",
        str(pki.client.ca),
        "--nats-user",
        identity.user,
        "--nats-password-file",
        str(identity.password_file),
    )


def test_nats_commands_refuse_to_start_without_tls_and_credentials(tmp_path: Path) -> None:
    """Nothing connects: the refusal comes first, exit 2, and names what is missing and the way out."""
    state = tmp_path / "cell.json"
    state.write_text(json.dumps({"cell_id": "a", "containers": []}))
    config = tmp_path / "reconciler.json"
    config.write_text(json.dumps({"cell_id": "a", "nats": {"servers": ["nats://127.0.0.1:1"]}}))
    # One one-shot command and the daemon: every command goes through the same check.
    for args in (("publish", "--state", str(state)), ("reconcile", "--config", str(config))):
        result = cfnft(*args, "--nats-url", "nats://127.0.0.1:1")
        assert result.returncode == 2, (args, result.stderr)
        assert "NATS needs TLS (ca_file) and credentials" in result.stderr
        assert "--nats-insecure" in result.stderr
        assert "Traceback" not in result.stderr


def test_the_operator_cli_works_as_the_operator_never_logs_its_password_and_a_cell_identity_is_refused(
    secure_server: NatsServer, pki: Pki, identities: Identities, tmp_path: Path
) -> None:
    state = tmp_path / "cell.json"
    state.write_text(json.dumps({"cell_id": "a", "containers": []}))

    def as_(identity: Identity, *args: str) -> subprocess.CompletedProcess[str]:
        return cfnft("--log-level", "debug", *args, *as_identity(secure_server, pki, identity))

    published = as_(identities.operator, "publish", "--state", str(state))
    assert published.returncode == 0, published.stderr
    resync = as_(identities.operator, "resync")
    assert resync.returncode == 0, resync.stderr
    refused = as_(identities.cell("a"), "resync")
    assert refused.returncode == 3
    assert "permissions violation" in refused.stderr and "operator role" in refused.stderr
    for result in (published, resync, refused):
        for identity in (identities.operator, identities.cell("a")):
            assert identity.password_file.read_text().strip() not in result.stderr + result.stdout


def test_stream_replicas_beyond_the_cluster_is_a_clear_error(
    secure_server: NatsServer, pki: Pki, identities: Identities, tmp_path: Path
) -> None:
    state = tmp_path / "cell.json"
    state.write_text(json.dumps({"cell_id": "a", "containers": []}))
    result = cfnft(
        "publish",
        "--state",
        str(state),
        "--stream-replicas",
        "3",
        *as_identity(secure_server, pki, identities.operator),
    )
    assert result.returncode == 3, result.stderr
    assert "replicas" in result.stderr and "Traceback" not in result.stderr


def test_examples_nats_is_what_the_lab_generates_and_nats_server_accepts_it(tmp_path: Path, pki: Pki) -> None:
    from lab.natsconf import example_text
    from lab.natsserver import find_nats_server

    committed = Path(__file__).resolve().parent.parent / "examples" / "nats" / "nats-server.json"
    assert committed.read_text() == example_text(), "run: python -m lab.natsconf > examples/nats/nats-server.json"
    certs = tmp_path / "certs"
    certs.mkdir()
    for source, name in ((pki.server.ca, "ca.pem"), (pki.server.cert, "server.pem"), (pki.server.key, "server.key")):
        (certs / name).write_bytes(Path(source).read_bytes())
    (tmp_path / "nats-server.json").write_text(committed.read_text())
    binary = find_nats_server()
    assert binary is not None
    result = subprocess.run(
        [str(binary), "-c", "nats-server.json", "-t"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_cells_as_their_own_identities_answer_the_operators_fleet_status(
    secure_server: NatsServer, pki: Pki, identities: Identities, watcher: Client, tmp_path: Path
) -> None:
    """The reconciler itself reads through its named consumers and answers as its identity; the
    operator's `cfnft status --all` reaches every cell and `status --cell` one."""
    from nft import FakeNft
    from reconciler.config import ReconcilerConfig
    from reconciler.daemon import Reconciler
    from tests.running import running, until

    def reconciler(cell: str) -> Reconciler:
        cfg = ReconcilerConfig(
            cell_id=cell,
            nats=identities.cell(cell).client([secure_server.url], pki.client),
            socket_path=tmp_path / f"{cell}.sock",
            state_dir=tmp_path / f"state-{cell}",
        )
        return Reconciler(cfg, FakeNft())

    operator = as_identity(secure_server, pki, identities.operator)
    async with running(reconciler("a")) as a, running(reconciler("b")) as b:
        await until(lambda: a.ready and b.ready, "both cells in sync")
        assert set(a.store.containers) == {"a-1"} and set(b.store.containers) == {"b-1"}
        fleet = await asyncio.to_thread(cfnft, "status", "--all", "--expect", "a", "--expect", "b", *operator)
        assert fleet.returncode == 0, fleet.stdout + fleet.stderr
        assert "2 of 2 cells in sync" in fleet.stdout
        one = await asyncio.to_thread(cfnft, "status", "--cell", "b", *operator)
        assert one.returncode == 0 and json.loads(one.stdout)["cell_id"] == "b", one.stderr
