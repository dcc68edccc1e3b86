"""What Garden's external networker injects into every plugin's stdin on ADD, turned into a Container.

garden-external-networker adds two top-level keys (docs/cf-facts.md §4.2), bypassing CNI capabilities:

    "metadata":      {"app_id", "space_id", "org_id", "policy_group_id", "container_workload",
                      "ports": "8080,2222", "log_config": "<JSON string>", ...any other network.* property}
    "runtimeConfig": {"portMappings": [{"host_port": 61001, "container_port": 8080}],
                      "netOutRules": [<Garden NetOutRule>, ...]}

Each is present only when non-empty. The Container JSON built here is validated again (with
pydantic) by the reconciler; the checks here exist to give the runtime a clear error naming the
key. Unknown `metadata` keys are ignored: Garden passes every `network.*` property of the LRP.

Decisions (see cni/README.md):
- `app_guid` is `policy_group_id`, else `app_id`. A container with neither (Garden's own
  health-check containers, anything created outside Diego) is registered under the app guid
  `none`, and one without `space_id` under the space guid `none`: no c2c policy names them and no
  space-bound security group applies, but globally enabled groups (or, without dynamic ASGs, the
  container's netOutRules) still do, and every overlay packet to them is rejected unless it came
  through a port mapping. Unowned containers still must not run without rules.
- `netOutRules` are sent to the reconciler as they are (`net_out_rules`), which converts them with
  the NetOutRule model of events/rules.py: one conversion, one set of semantics (255 = any ICMP
  type/code, a missing protocol = all), no pydantic here.
"""

from __future__ import annotations

import json

from cni.errors import CniError, Code

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~5 ms of every start)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from cni.result import ContainerAddresses

UNOWNED = "none"
WORKLOADS = ("app", "task", "staging")
_MAPPING_KEYS = ("host_port", "container_port")


def _bad(where: str, value: object, why: str) -> CniError:
    text = json.dumps(value)
    return CniError(
        Code.INVALID_CONFIG,
        f"invalid {where} from the runtime",
        f"{where}={text if len(text) <= 200 else text[:197] + '...'}: {why}",
    )


def _object(conf: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = conf.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(key, value, "must be a JSON object")
    return value


def _text(metadata: Mapping[str, Any], key: str) -> str:
    value = metadata.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"metadata.{key}", value, "must be a string (Garden network properties are strings)")
    return value.strip()


def _port(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _bad(where, value, "must be a port number 1-65535")
    return value


def _ports(text: str) -> list[int]:
    if not text:
        return []
    ports = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit():
            raise _bad("metadata.ports", text, "must be a comma-separated list of port numbers")
        ports.append(_port("metadata.ports", int(piece)))
    return ports


def _port_mappings(runtime_config: Mapping[str, Any]) -> list[dict[str, int]]:
    mappings = runtime_config.get("portMappings") or []
    if not isinstance(mappings, list):
        raise _bad("runtimeConfig.portMappings", mappings, "must be a list")
    out = []
    for n, m in enumerate(mappings):
        where = f"runtimeConfig.portMappings[{n}]"
        if not isinstance(m, dict):
            raise _bad(where, m, 'must be an object {"host_port": N, "container_port": M}')
        for key in m:
            if key not in _MAPPING_KEYS:
                raise CniError(
                    Code.UNSUPPORTED_FIELD,
                    f"unsupported field in {where}: {key}",
                    f"{key}={json.dumps(m[key])}; Garden's port mappings have host_port and container_port",
                )
        if "host_port" not in m or "container_port" not in m:
            raise _bad(where, m, "needs host_port and container_port")
        # Garden allocates host port 0 before calling CNI; a 0 here means it did not (silk refuses it too).
        out.append(
            {
                "host_port": _port(f"{where}.host_port", m["host_port"]),
                "container_port": _port(f"{where}.container_port", m["container_port"]),
            }
        )
    return out


def registration(handle: str, conf: Mapping[str, Any], addresses: ContainerAddresses) -> dict[str, Any]:
    """The body of the reconciler's POST /v1/containers, without the timeout."""
    metadata = _object(conf, "metadata")
    runtime_config = _object(conf, "runtimeConfig")

    workload = _text(metadata, "container_workload") or "app"
    if workload not in WORKLOADS:
        raise _bad("metadata.container_workload", workload, f"must be one of {', '.join(WORKLOADS)}")
    log_config = metadata.get("log_config")
    if log_config is not None and not isinstance(log_config, str):
        raise _bad("metadata.log_config", log_config, "must be a string (Garden passes it as JSON text)")
    net_out_rules = runtime_config.get("netOutRules") or []
    if not isinstance(net_out_rules, list) or not all(isinstance(r, dict) for r in net_out_rules):
        raise _bad("runtimeConfig.netOutRules", net_out_rules, "must be a list of Garden NetOutRule objects")

    container: dict[str, Any] = {
        "handle": handle,
        "ip": addresses.ipv4,
        "app_guid": _text(metadata, "policy_group_id") or _text(metadata, "app_id") or UNOWNED,
        "space_guid": _text(metadata, "space_id") or UNOWNED,
        "org_guid": _text(metadata, "org_id"),
        "workload": workload,
        "ports": _ports(_text(metadata, "ports")),
        "port_mappings": _port_mappings(runtime_config),
    }
    if addresses.ipv6 is not None:
        container["ipv6"] = addresses.ipv6
    if log_config:
        container["log_config"] = log_config
    body: dict[str, Any] = {"container": container}
    if net_out_rules:
        body["net_out_rules"] = net_out_rules
    return body
