"""A CNI runtime for tests that runs a conflist the way Garden's external networker drives libcni.

What it reproduces (docs/cf-facts.md §4.2, §5.2; libcni's AddNetworkList/DelNetworkList/CheckNetworkList/
GCNetworkList/GetStatusNetworkList):

* Environment: CNI_COMMAND, CNI_CONTAINERID=<handle>, CNI_NETNS=<netns path>, CNI_IFNAME (eth0),
  CNI_PATH=<plugin dirs joined with ':'>, CNI_ARGS="" on top of the caller's environment; GC and
  STATUS get only CNI_COMMAND and CNI_PATH.
* Stdin per plugin: the plugin object with `capabilities` removed, plus the list's `name` and
  `cniVersion`, plus `prevResult` (ADD: the previous plugin's result, none for the first; DEL and
  CHECK: the cached final ADD result, if there is one).
* Garden's injection on ADD only: top-level `metadata` (when non-empty) and `runtimeConfig`
  `{"portMappings": [...], "netOutRules": [...]}` (each only when non-empty) into every plugin.
  DEL gets neither, exactly as garden-external-networker's down.
* Order: ADD in list order stopping at the first error (no DEL on failure: the runtime's caller does
  that); DEL in reverse order; the final ADD result cached per (container id, ifname) and removed
  after a successful DEL. `disableCheck` skips CHECK; GC and STATUS only for cniVersion >= 1.1.0,
  and GC first DELs cached attachments that are not valid, as libcni does.
* Plugins run in `host_netns` (the cell namespace of a lab: the runtime's "root" namespace), via
  `ip netns exec`, found by `type` in the CNI_PATH directories.

No pytest in here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfnft.errors import OperationError

PLUGIN_TIMEOUT = 60.0


class CniRunError(OperationError):
    """The runtime itself could not proceed (no such plugin, an undecodable answer)."""


class PluginFailed(OperationError):
    """A plugin exited non-zero; `error` is its CNI error object (None if it printed none)."""

    def __init__(self, plugin: str, command: str, run: PluginRun) -> None:
        self.plugin = plugin
        self.command = command
        self.run = run
        self.error: dict[str, Any] | None = run.json if isinstance(run.json, dict) else None
        detail = json.dumps(self.error) if self.error else (run.stdout.strip() or run.stderr.strip())
        super().__init__(f"{plugin} {command} failed (exit {run.returncode}): {detail}")

    @property
    def code(self) -> int | None:
        """The CNI error code, if the plugin printed an error object."""
        return self.error.get("code") if self.error else None


@dataclass(frozen=True)
class PluginRun:
    """One execution of one plugin: what went in and what came out, and how long it took."""

    plugin: str
    env: dict[str, str]
    stdin: dict[str, Any] | None
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> Any:
        """stdout decoded, or None when it is empty or not JSON."""
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except json.JSONDecodeError:
            return None


def garden_injection(
    properties: Mapping[str, str] | None = None,
    port_mappings: Sequence[Mapping[str, int]] = (),
    net_out_rules: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The keys garden-external-networker's up adds to every plugin object (each only when non-empty)."""
    keys: dict[str, Any] = {}
    if properties:
        keys["metadata"] = dict(properties)
    runtime_config: dict[str, Any] = {}
    if port_mappings:
        runtime_config["portMappings"] = [dict(m) for m in port_mappings]
    if net_out_rules:
        runtime_config["netOutRules"] = [dict(r) for r in net_out_rules]
    if runtime_config:
        keys["runtimeConfig"] = runtime_config
    return keys


class CniRuntime:
    """Runs one network configuration list (a conflist as a dict) like libcni does."""

    def __init__(
        self,
        conflist: Mapping[str, Any],
        *,
        cni_path: Sequence[str | Path],
        cache_dir: Path,
        host_netns: str | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.conflist = dict(conflist)
        self.name: str = conflist["name"]
        self.cni_version: str = conflist["cniVersion"]
        self.plugins: list[dict[str, Any]] = [dict(p) for p in conflist["plugins"]]
        self.cni_path = [str(p) for p in cni_path]
        self.cache_dir = cache_dir
        self.host_netns = host_netns
        self.base_env = dict(base_env if base_env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.runs: list[PluginRun] = []
        """Every plugin execution so far, for assertions on what the runtime sent."""

    # -- the libcni operations ------------------------------------------------------------------

    def add(
        self, container_id: str, netns: str, *, ifname: str = "eth0", inject: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """AddNetworkList with Garden's injected keys; returns (and caches) the final result."""
        env = self._env("ADD", container_id, netns, ifname)
        prev: dict[str, Any] | None = None
        for plugin in self.plugins:
            conf = self._plugin_conf(plugin, prev) | dict(inject or {})
            result = self._exec(plugin["type"], "ADD", env, conf)
            if not isinstance(result, dict):
                raise CniRunError(f"{plugin['type']} ADD printed no result object")
            prev = result
        assert prev is not None
        self._cache_path(container_id, ifname).parent.mkdir(parents=True, exist_ok=True)
        self._cache_path(container_id, ifname).write_text(
            json.dumps({"containerId": container_id, "ifName": ifname, "networkName": self.name, "result": prev})
        )
        return prev

    def delete(self, container_id: str, netns: str = "", *, ifname: str = "eth0") -> None:
        """DelNetworkList: reverse order, prevResult from the cache, no Garden injection."""
        env = self._env("DEL", container_id, netns, ifname)
        prev = self.cached_result(container_id, ifname)
        for plugin in reversed(self.plugins):
            self._exec(plugin["type"], "DEL", env, self._plugin_conf(plugin, prev))
        self._cache_path(container_id, ifname).unlink(missing_ok=True)

    def check(self, container_id: str, netns: str, *, ifname: str = "eth0") -> None:
        """CheckNetworkList: list order, prevResult from the cache."""
        if self.conflist.get("disableCheck"):
            return
        prev = self.cached_result(container_id, ifname)
        if prev is None:
            raise CniRunError(f"CHECK of {container_id}/{ifname}: no cached ADD result (the runtime must not CHECK)")
        env = self._env("CHECK", container_id, netns, ifname)
        for plugin in self.plugins:
            self._exec(plugin["type"], "CHECK", env, self._plugin_conf(plugin, prev))

    def gc(self, valid: Iterable[tuple[str, str]]) -> list[PluginFailed]:
        """GCNetworkList: DEL cached attachments not in `valid`, then GC every plugin; returns the failures."""
        if not self._at_least("1.1.0") or self.conflist.get("disableGC"):
            return []
        valid = sorted(set(valid))
        failures: list[PluginFailed] = []
        for cid, ifname in self.cached_attachments():
            if (cid, ifname) not in valid:
                try:
                    self.delete(cid, ifname=ifname)
                except PluginFailed as e:
                    failures.append(e)
        attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
        env = self._env("GC")
        for plugin in self.plugins:
            conf = self._plugin_conf(plugin, None) | {
                "cni.dev/valid-attachments": attachments,
                "cni.dev/attachments": attachments,
            }
            try:
                self._exec(plugin["type"], "GC", env, conf)
            except PluginFailed as e:
                failures.append(e)
        return failures

    def status(self) -> None:
        """GetStatusNetworkList: STATUS every plugin (cniVersion >= 1.1.0 only); raises the first failure."""
        if not self._at_least("1.1.0"):
            return
        env = self._env("STATUS")
        for plugin in self.plugins:
            self._exec(plugin["type"], "STATUS", env, self._plugin_conf(plugin, None))

    def version(self, plugin_type: str, asked: str = "1.1.0") -> dict[str, Any]:
        """GetVersionInfo of one plugin, as libcni asks: stdin {"cniVersion": <its newest version>}."""
        return self._exec(plugin_type, "VERSION", self._env("VERSION"), {"cniVersion": asked})

    # -- cache ----------------------------------------------------------------------------------

    def cached_result(self, container_id: str, ifname: str = "eth0") -> dict[str, Any] | None:
        path = self._cache_path(container_id, ifname)
        return json.loads(path.read_text())["result"] if path.exists() else None

    def cached_attachments(self) -> list[tuple[str, str]]:
        directory = self.cache_dir / "results"
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob(f"{self.name}-*")):
            entry = json.loads(path.read_text())
            found.append((entry["containerId"], entry["ifName"]))
        return found

    def _cache_path(self, container_id: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{self.name}-{container_id}-{ifname}"

    # -- execution ------------------------------------------------------------------------------

    def _at_least(self, version: str) -> bool:
        return tuple(map(int, self.cni_version.split("."))) >= tuple(map(int, version.split(".")))

    def _env(self, command: str, container_id: str = "", netns: str = "", ifname: str = "") -> dict[str, str]:
        env = dict(self.base_env) | {"CNI_COMMAND": command, "CNI_PATH": os.pathsep.join(self.cni_path)}
        if command in ("ADD", "DEL", "CHECK"):
            env |= {"CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": ""}
        return env

    def _plugin_conf(self, plugin: Mapping[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf |= {"name": self.name, "cniVersion": self.cni_version}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def find(self, plugin_type: str) -> str:
        for directory in self.cni_path:
            candidate = Path(directory) / plugin_type
            if os.access(candidate, os.X_OK) and candidate.is_file():
                return str(candidate)
        raise CniRunError(f"failed to find plugin {plugin_type!r} in path {self.cni_path}")

    def exec_raw(self, plugin_type: str, env: Mapping[str, str], stdin: bytes) -> PluginRun:
        """Run one plugin with exactly this environment and stdin (for malformed-input tests)."""
        argv = [self.find(plugin_type)]
        if self.host_netns:
            argv = ["ip", "netns", "exec", self.host_netns, *argv]
        started = time.perf_counter()
        proc = subprocess.run(
            argv, input=stdin, env=dict(env), capture_output=True, timeout=PLUGIN_TIMEOUT, check=False
        )
        run = PluginRun(
            plugin_type,
            dict(env),
            None,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
            time.perf_counter() - started,
        )
        self.runs.append(run)
        return run

    def _exec(self, plugin_type: str, command: str, env: Mapping[str, str], conf: dict[str, Any]) -> Any:
        run = self.exec_raw(plugin_type, env, json.dumps(conf).encode())
        run = PluginRun(run.plugin, run.env, conf, run.returncode, run.stdout, run.stderr, run.seconds)
        self.runs[-1] = run
        if run.returncode != 0:
            raise PluginFailed(plugin_type, command, run)
        return run.json
