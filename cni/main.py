"""`cfnft-cni`: the CNI plugin entry point (CNI spec 0.4.0, 1.0.0, 1.1.0).

It runs once per container start, chained after the plugin that creates the container's interface,
so it must start fast: everything it imports is the standard library and small modules of this
package; pydantic, aiohttp and the reconciler are never imported here (the reconciler validates
what it receives). Success: the result (ADD) or nothing on stdout, exit 0. Failure: the spec's
error object on stdout, a one-line reason on stderr, exit 1 (as the reference plugins do).
"""

from __future__ import annotations

import json
import os
import sys
import time

from cni.config import PluginConfig, parse_plugin_config
from cni.errors import CniError, Code
from cni.invocation import LATEST_VERSION, decode_stdin, parse_invocation, read_command, stated_version, version_result

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~5 ms of every start)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[dict[str, Any] | None, PluginConfig | None]:
    """Do what CNI_COMMAND says; return what to print and the plugin config (once known). Raises CniError."""
    command = read_command(environ)
    if command == "VERSION":
        return version_result(decode_stdin(stdin) if stdin.strip() else None), None
    conf = decode_stdin(stdin)
    invocation = parse_invocation(command, environ, conf)
    cfg = parse_plugin_config(conf)
    from cni.client import ReconcilerClient  # after validation: VERSION and bad input load less
    from cni.commands import COMMANDS

    return COMMANDS[command](invocation, cfg, ReconcilerClient(cfg.socket_path)), cfg


def _log(cfg: PluginConfig | None, entry: dict[str, Any]) -> None:
    if cfg is None or cfg.log_file is None:
        return
    try:
        fd = os.open(cfg.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # logging must never fail a container start


def main() -> None:
    started = time.monotonic()
    environ = os.environ
    command = environ.get("CNI_COMMAND", "")
    container_id = environ.get("CNI_CONTAINERID", "")
    cfg: PluginConfig | None = None
    cni_version = LATEST_VERSION
    entry: dict[str, Any] = {"ts": round(time.time(), 3), "command": command, "container_id": container_id}
    stdin = b""
    try:
        try:
            stdin = sys.stdin.buffer.read()
        except OSError as e:
            raise CniError(Code.IO_FAILURE, "error reading the network configuration from stdin", str(e)) from None
        try:
            cni_version = stated_version(json.loads(stdin)) or LATEST_VERSION
        except (ValueError, AttributeError):
            pass  # run() reports the decode failure
        output, cfg = run(environ, stdin)
    except CniError as e:
        _fail(e, cni_version, command, container_id)
        cfg = cfg or _config_for_log(stdin)
        _log(cfg, entry | {"ms": _ms(started), "code": int(e.code), "msg": e.msg, "details": e.details})
        sys.exit(1)
    except Exception as e:  # a bug: still an error object, never a traceback on stdout
        error = CniError(Code.INTERNAL, "internal error in cfnft-cni", f"{type(e).__name__}: {e}")
        _fail(error, cni_version, command, container_id)
        sys.exit(1)
    if output is not None:
        sys.stdout.write(json.dumps(output))
        sys.stdout.flush()
    _log(cfg, entry | {"ms": _ms(started)})


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _fail(error: CniError, cni_version: str, command: str, container_id: str) -> None:
    sys.stdout.write(json.dumps(error.result(cni_version)))
    sys.stdout.flush()
    print(f"cfnft-cni: {command or '(no CNI_COMMAND)'} {container_id}: {error}", file=sys.stderr)


def _config_for_log(stdin: bytes) -> PluginConfig | None:
    """The plugin config, if the failure came after it could be read (so the failure gets logged)."""
    try:
        return parse_plugin_config(json.loads(stdin))
    except (CniError, ValueError, AttributeError, TypeError):
        return None


if __name__ == "__main__":
    main()
