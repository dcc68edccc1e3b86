"""nats-server configurations for the lab: JetStream, TLS, a cluster on loopback, and cfnft's role
identities with the permissions of events/permissions.py.

The configuration is JSON, which nats-server reads as its own format, so the same dict is written for
the server, compared in tests and committed as examples/nats/ (`example_config`). Passwords live in
files, one per identity, as `NatsConfig.password_file` expects them; the server's copy holds them in
clear (a lab; the BOSH job renders its own, see jobs/cfnft-nats).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.connect import NatsConfig
from events.permissions import (
    Permissions,
    Role,
    cell_permissions,
    identity_name,
    operator_permissions,
    watcher_permissions,
)
from events.tls import TlsFiles

CLUSTER_NAME = "cfnft"


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One user of the server's authorization block."""

    name: str
    password: str
    permissions: Permissions


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """This node's place in a cluster of nodes on 127.0.0.1."""

    port: int
    route_ports: tuple[int, ...]
    name: str = CLUSTER_NAME


@dataclass(frozen=True, slots=True)
class LameDuck:
    """How a server leaves in lame duck mode (what the cfnft-nats drain script starts): it hands its
    stream leaderships over, waits `grace_seconds`, then closes its clients spread over the rest of
    `duration_seconds` (nats-server's minimum: 30) and exits."""

    duration_seconds: float
    grace_seconds: float


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What a lab server looks like beyond its ports and store: name, who may connect, TLS, cluster."""

    name: str | None = None
    users: tuple[NatsUser, ...] = ()
    tls: TlsFiles | None = None
    cluster: ClusterSettings | None = None
    lame_duck: LameDuck | None = None


def permissions_config(p: Permissions) -> dict[str, Any]:
    out: dict[str, Any] = {"publish": {"allow": list(p.publish)}, "subscribe": {"allow": list(p.subscribe)}}
    if p.allow_responses:
        out["allow_responses"] = True
    return out


def tls_config(tls: TlsFiles) -> dict[str, Any]:
    out: dict[str, Any] = {"ca_file": str(tls.ca), "cert_file": str(tls.cert), "key_file": str(tls.key)}
    # cfnft's clients start TLS first (no cleartext greeting to strip); others still get the classic
    # greeting after the fallback delay.
    out["handshake_first"] = "auto"
    out["timeout"] = 2
    return out


def server_config(settings: ServerSettings, *, port: int, http_port: int, store_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "http": f"127.0.0.1:{http_port}",
        "jetstream": {"store_dir": str(store_dir), "max_memory_store": 256 << 20, "max_file_store": 1 << 30},
    }
    if settings.name:
        config["server_name"] = settings.name
    if settings.tls is not None:
        config["tls"] = tls_config(settings.tls)
    if settings.users:
        config["authorization"] = {
            "users": [
                {"user": u.name, "password": u.password, "permissions": permissions_config(u.permissions)}
                for u in settings.users
            ]
        }
    if settings.lame_duck is not None:
        config["lame_duck_duration"] = f"{settings.lame_duck.duration_seconds}s"
        config["lame_duck_grace_period"] = f"{settings.lame_duck.grace_seconds}s"
    if settings.cluster is not None:
        c = settings.cluster
        config["cluster"] = {
            "name": c.name,
            "host": "127.0.0.1",
            "port": c.port,
            "routes": [f"nats-route://127.0.0.1:{p}" for p in c.route_ports],
        }
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)  # it holds every identity's password
    return path


@dataclass(frozen=True, slots=True)
class Identity:
    """A client identity: its user name, its password file, and what the server lets it do."""

    user: str
    password_file: Path
    permissions: Permissions

    def client(self, servers: list[str], tls: TlsFiles | None = None, **settings: Any) -> NatsConfig:
        """How a cfnft process connects as this identity."""
        return NatsConfig(
            servers=servers,
            ca_file=tls.ca if tls is not None else None,
            user=self.user,
            password_file=self.password_file,
            insecure=tls is None,
            **settings,
        )


@dataclass
class Identities:
    """The watcher, the operator and one identity per cell, each with a random password in a file
    under `directory`."""

    directory: Path
    cells: Iterable[str]
    watcher: Identity = field(init=False)
    operator: Identity = field(init=False)
    _cells: dict[str, Identity] = field(init=False, default_factory=dict)
    _passwords: dict[str, str] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.watcher = self._identity(identity_name(Role.WATCHER), watcher_permissions())
        self.operator = self._identity(identity_name(Role.OPERATOR), operator_permissions())
        for cell_id in self.cells:
            self._cells[cell_id] = self._identity(identity_name(Role.CELL, cell_id), cell_permissions(cell_id))

    def _identity(self, user: str, permissions: Permissions) -> Identity:
        password = secrets.token_urlsafe(24)
        path = self.directory / f"{user}.password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        self._passwords[user] = password
        return Identity(user, path, permissions)

    def cell(self, cell_id: str) -> Identity:
        return self._cells[cell_id]

    def users(self) -> tuple[NatsUser, ...]:
        everyone = [self.watcher, self.operator, *self._cells.values()]
        return tuple(NatsUser(i.user, self._passwords[i.user], i.permissions) for i in everyone)


EXAMPLE_CELLS = ("cell-a", "cell-b")


def example_config() -> dict[str, Any]:
    """examples/nats/nats-server.json: one server with JetStream, TLS and the role identities for two cells."""
    users = [
        NatsUser(identity_name(Role.WATCHER), "CHANGE-ME-watcher", watcher_permissions()),
        NatsUser(identity_name(Role.OPERATOR), "CHANGE-ME-operator", operator_permissions()),
        *(
            NatsUser(identity_name(Role.CELL, cell), f"CHANGE-ME-{cell}", cell_permissions(cell))
            for cell in EXAMPLE_CELLS
        ),
    ]
    settings = ServerSettings(
        name="cfnft-lab",
        users=tuple(users),
        tls=TlsFiles(Path("certs/ca.pem"), Path("certs/server.pem"), Path("certs/server.key")),
    )
    config = server_config(settings, port=4222, http_port=8222, store_dir=Path("jetstream"))
    return config


def example_text() -> str:
    return json.dumps(example_config(), indent=2) + "\n"


if __name__ == "__main__":  # python -m lab.natsconf > examples/nats/nats-server.json
    print(example_text(), end="")
