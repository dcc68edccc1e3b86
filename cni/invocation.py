"""One plugin invocation: the CNI_* environment and the network configuration on stdin, checked as the spec says.

Which variables each command needs is the spec's list (ADD/CHECK: CONTAINERID, NETNS, IFNAME; DEL:
CONTAINERID, IFNAME; STATUS, GC, VERSION: only CNI_COMMAND). CNI_PATH is never required: this plugin
delegates to nothing. Every problem is a `CniError` with the spec's code, naming the variable or key.
"""

from __future__ import annotations

import json
import re

from cni.errors import CniError, Code
from cni.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~5 ms of every start)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}
# Commands that only exist from a spec version on.
_SINCE = {"STATUS": "1.1.0", "GC": "1.1.0"}

# The spec's grammar for container ids and network names.
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class Invocation(Record):
    """What the runtime asked for. `conf` is the decoded stdin, a JSON object."""

    __slots__ = ("command", "container_id", "netns", "ifname", "cni_version", "conf")

    def __init__(
        self, command: str, container_id: str, netns: str, ifname: str, cni_version: str, conf: dict[str, Any]
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.cni_version = cni_version
        self.conf = conf


def read_command(environ: Mapping[str, str]) -> str:
    """CNI_COMMAND, checked."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(Code.INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CniError(Code.INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}", f"known: {', '.join(COMMANDS)}")
    return command


def decode_stdin(data: bytes) -> dict[str, Any]:
    """The network configuration: a JSON object (code 6 if it is not)."""
    try:
        conf = json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise CniError(Code.DECODE_FAILURE, "error decoding the network configuration on stdin", str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(
            Code.DECODE_FAILURE,
            "the network configuration on stdin must be a JSON object",
            f"got {type(conf).__name__}",
        )
    return conf


def stated_version(conf: Mapping[str, Any]) -> str | None:
    """The cniVersion the configuration states, when it is a string (for the version of error results)."""
    version = conf.get("cniVersion")
    return version if isinstance(version, str) and version else None


def parse_invocation(command: str, environ: Mapping[str, str], conf: dict[str, Any]) -> Invocation:
    """Check the environment and the protocol keys of `conf` for `command` (anything but VERSION)."""
    missing = [name for name in _REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(
            Code.INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing", f"CNI_COMMAND={command}"
        )
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not _IDENTIFIER.fullmatch(container_id):
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            "invalid characters in CNI_CONTAINERID",
            f"{container_id!r}: must start with a letter or digit, then letters, digits, '_', '.', '-'",
        )
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and (
        len(ifname) > 15 or ifname in (".", "..") or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname)
    ):
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            "invalid CNI_IFNAME",
            f"{ifname!r}: at most 15 characters, not '.' or '..', no '/', ':' or whitespace",
        )

    version = conf.get("cniVersion")
    if version is None:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"the network configuration has no cniVersion; supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if not isinstance(version, str):
        raise CniError(Code.DECODE_FAILURE, "cniVersion must be a string", f"got {json.dumps(version)}")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    since = _SINCE.get(command)
    if since is not None and version_key(version) < version_key(since):
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f"{command} needs cniVersion {since} or later, config is {version}",
        )

    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(Code.INVALID_CONFIG, "missing network name", "the configuration needs a string 'name'")
    if not _IDENTIFIER.fullmatch(name):
        raise CniError(
            Code.INVALID_CONFIG,
            "invalid network name",
            f"{name!r}: must start with a letter or digit, then letters, digits, '_', '.', '-'",
        )
    return Invocation(command, container_id, environ.get("CNI_NETNS", ""), ifname, version, conf)


def version_result(conf: Mapping[str, Any] | None) -> dict[str, object]:
    """The VERSION answer: the version asked for (the latest we know if none), and what we support."""
    asked = stated_version(conf) if conf is not None else None
    return {"cniVersion": asked or LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
