"""cfnft-cni's plugin config: what the plugin's parser accepts and refuses, that every key it reads is
documented and checked, and that the example conflists are valid."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cni.config import OWN_KEYS, PluginConfig, parse_plugin_config
from cni.errors import CniError, Code

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "cni"
BASE = {"type": "cfnft-cni"}

ACCEPTED: list[tuple[dict[str, Any], PluginConfig]] = [
    ({}, PluginConfig()),
    ({"socket_path": "/run/r.sock", "timeout_seconds": 2.5, "dns_servers": ["169.254.0.2", "fd00::53"],
      "log_file": "/var/log/cni.log"},
     PluginConfig("/run/r.sock", 2.5, ("169.254.0.2", "fd00::53"), "/var/log/cni.log")),
    ({"timeout_seconds": 120}, PluginConfig(timeout_seconds=120.0)),
    # What the runtime and Garden add is not ours to refuse.
    ({"cniVersion": "1.0.0", "name": "cfnft", "prevResult": {}, "runtimeConfig": {}, "metadata": {}, "args": {},
      "cni.dev/valid-attachments": []}, PluginConfig()),
]  # fmt: skip

REFUSED: list[tuple[dict[str, Any], Code, str]] = [
    ({"socket": "/run/r.sock"}, Code.UNSUPPORTED_FIELD, "socket"),
    ({"ipam": {"type": "host-local"}}, Code.UNSUPPORTED_FIELD, "ipam"),
    ({"socket_path": "relative.sock"}, Code.INVALID_CONFIG, "socket_path"),
    ({"socket_path": "/" + "s" * 107}, Code.INVALID_CONFIG, "socket_path"),
    ({"timeout_seconds": 0}, Code.INVALID_CONFIG, "timeout_seconds"),
    ({"timeout_seconds": 121}, Code.INVALID_CONFIG, "timeout_seconds"),
    ({"timeout_seconds": "10"}, Code.INVALID_CONFIG, "timeout_seconds"),
    ({"timeout_seconds": True}, Code.INVALID_CONFIG, "timeout_seconds"),
    ({"dns_servers": "169.254.0.2"}, Code.INVALID_CONFIG, "dns_servers"),
    ({"dns_servers": ["dns.example"]}, Code.INVALID_CONFIG, "dns_servers"),
    ({"dns_servers": [1]}, Code.INVALID_CONFIG, "dns_servers"),
    ({"log_file": "cni.log"}, Code.INVALID_CONFIG, "log_file"),
]


@pytest.mark.parametrize("keys, expected", ACCEPTED)
def test_accepts(keys: dict[str, Any], expected: PluginConfig) -> None:
    assert parse_plugin_config(BASE | keys) == expected


@pytest.mark.parametrize("keys, code, key", REFUSED)
def test_refuses_naming_the_key(keys: dict[str, Any], code: Code, key: str) -> None:
    with pytest.raises(CniError) as e:
        parse_plugin_config(BASE | keys)
    assert e.value.code == code and key in str(e.value)


def test_the_keys_the_parser_accepts_are_exactly_the_settings() -> None:
    assert set(OWN_KEYS) == set(PluginConfig.__slots__)


@pytest.mark.parametrize("key", OWN_KEYS)
def test_every_key_is_checked_and_documented(key: str) -> None:
    assert any(refused == key for _, _, refused in REFUSED), f"no test shows a bad {key} refused"
    assert f"- `{key}`: " in (PluginConfig.__doc__ or ""), f"PluginConfig's docstring does not explain {key}"
    assert f"| `{key}` |" in (ROOT / "cni" / "README.md").read_text(), f"cni/README.md's table lacks {key}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.conflist")), ids=lambda p: p.name)
def test_example_conflists_end_with_a_valid_cfnft_cni(path: Path) -> None:
    conflist = json.loads(path.read_text())
    assert conflist["cniVersion"] in ("0.4.0", "1.0.0", "1.1.0") and conflist["name"]
    *connectivity, last = conflist["plugins"]
    assert connectivity, "cfnft-cni must be chained after a connectivity plugin"
    assert last["type"] == "cfnft-cni"
    parse_plugin_config(last)


def test_there_are_examples_for_ptp_and_silk() -> None:
    types = {p["type"] for path in EXAMPLES.glob("*.conflist") for p in json.loads(path.read_text())["plugins"]}
    assert {"ptp", "silk-cni", "cfnft-cni"} <= types


@pytest.mark.skipif(shutil.which("ruby") is None, reason="rendering BOSH templates needs ruby")
@pytest.mark.parametrize("example, connectivity", [("cfnft.conflist", "ptp"), ("cfnft-silk.conflist", "silk")])
def test_examples_are_what_the_bosh_job_renders_by_default(example: str, connectivity: str) -> None:
    spec = {"id": "cell-0", "index": 0, "name": "diego-cell", "deployment": "cf", "address": "10.0.16.5",
            "ip": "10.0.16.5", "az": "z1", "bootstrap": True, "networks": {}}  # fmt: skip
    request = {"render": {"job_dir": str(ROOT / "jobs" / "cni"), "properties": {"connectivity": connectivity},
                          "spec": spec}}  # fmt: skip
    # tests/bosh/render.rb (the BOSH template tests' renderer): one JSON request per line, one answer per line.
    proc = subprocess.run(["ruby", str(ROOT / "tests" / "bosh" / "render.rb")], input=json.dumps(request) + "\n",
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    answer: dict[str, Any] = json.loads(proc.stdout.splitlines()[0]) if proc.stdout.strip() else {"error": proc.stderr}
    assert "rendered" in answer, answer
    rendered = json.loads(answer["rendered"]["config/cni/cfnft.conflist"])
    assert rendered == json.loads((EXAMPLES / example).read_text())
