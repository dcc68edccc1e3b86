"""cfnft-cni's plugin config: the hand-written checks of the plugin and the pydantic mirror agree; the
example conflists are valid."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cni.config import PluginConfig, parse_plugin_config
from cni.config_model import PluginConfigModel
from cni.errors import CniError, Code

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "cni"
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
def test_both_accept(keys: dict[str, Any], expected: PluginConfig) -> None:
    assert parse_plugin_config(BASE | keys) == expected
    assert PluginConfigModel.model_validate(BASE | keys).to_plugin_config() == expected


@pytest.mark.parametrize("keys, code, key", REFUSED)
def test_both_refuse_naming_the_key(keys: dict[str, Any], code: Code, key: str) -> None:
    with pytest.raises(CniError) as e:
        parse_plugin_config(BASE | keys)
    assert e.value.code == code and key in str(e.value)
    with pytest.raises(ValidationError) as v:
        PluginConfigModel.model_validate(BASE | keys)
    assert v.value.errors()[0]["loc"][0] == key


def test_the_model_documents_exactly_the_plugins_keys() -> None:
    assert set(PluginConfigModel.model_fields) - {"type"} == set(PluginConfig.__slots__)
    assert all(f.description for name, f in PluginConfigModel.model_fields.items())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.conflist")), ids=lambda p: p.name)
def test_example_conflists_end_with_a_valid_cfnft_cni(path: Path) -> None:
    conflist = json.loads(path.read_text())
    assert conflist["cniVersion"] in ("0.4.0", "1.0.0", "1.1.0") and conflist["name"]
    *connectivity, last = conflist["plugins"]
    assert connectivity, "cfnft-cni must be chained after a connectivity plugin"
    assert parse_plugin_config(last) == PluginConfigModel.model_validate(last).to_plugin_config()


def test_there_are_examples_for_ptp_and_silk() -> None:
    types = {p["type"] for path in EXAMPLES.glob("*.conflist") for p in json.loads(path.read_text())["plugins"]}
    assert {"ptp", "silk-cni", "cfnft-cni"} <= types


@pytest.mark.skipif(shutil.which("ruby") is None, reason="rendering BOSH templates needs ruby")
@pytest.mark.parametrize("example, connectivity", [("cfnft.conflist", "ptp"), ("cfnft-silk.conflist", "silk")])
def test_examples_are_what_the_bosh_job_renders_by_default(example: str, connectivity: str) -> None:
    root = EXAMPLES.parent.parent
    spec = {"id": "cell-0", "index": 0, "name": "diego-cell", "deployment": "cf", "address": "10.0.16.5",
            "ip": "10.0.16.5", "az": "z1", "bootstrap": True, "networks": {}}  # fmt: skip
    request = {"render": {"job_dir": str(root / "jobs" / "cni"), "properties": {"connectivity": connectivity},
                          "spec": spec}}  # fmt: skip
    # tests/bosh/render.rb (the BOSH template tests' renderer): one JSON request per line, one answer per line.
    proc = subprocess.run(["ruby", str(root / "tests" / "bosh" / "render.rb")], input=json.dumps(request) + "\n",
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    answer: dict[str, Any] = json.loads(proc.stdout.splitlines()[0]) if proc.stdout.strip() else {"error": proc.stderr}
    assert "rendered" in answer, answer
    rendered = json.loads(answer["rendered"]["config/cni/cfnft.conflist"])
    assert rendered == json.loads((EXAMPLES / example).read_text())
