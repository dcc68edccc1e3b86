"""cfnft-cni's pure parts: prevResult in and out across CNI versions, and Garden's injection as a Container."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cni.errors import CniError, Code
from cni.garden import UNOWNED, registration
from cni.result import ContainerAddresses, container_addresses, convert_result, with_nameservers
from events.models import Container, NetOutRule
from reconciler.endpoint import RegisterRequest

RESULT_100: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "veth1", "mac": "aa:aa:aa:aa:aa:01"},
        {"name": "eth0", "mac": "aa:aa:aa:aa:aa:02", "sandbox": "/run/netns/c"},
    ],
    "ips": [
        {"address": "10.255.1.1/32", "interface": 0},
        {"address": "10.255.1.7/24", "gateway": "10.255.1.1", "interface": 1},
        {"address": "fd00:255:1::7/64", "gateway": "fd00:255:1::1", "interface": 1},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.255.1.1"}],
    "dns": {"search": ["example.org"]},
}


def test_addresses_come_from_the_container_interface_not_the_host_side() -> None:
    assert container_addresses(RESULT_100) == ContainerAddresses("10.255.1.7", "fd00:255:1::7")


def test_addresses_of_an_ipam_style_result_without_interfaces() -> None:
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.255.3.9/24"}]}
    assert container_addresses(prev) == ContainerAddresses("10.255.3.9", None)


@pytest.mark.parametrize(
    "ips, needle",
    [
        ([{"address": "fd00::1/64"}], "no IPv4"),
        ([{"address": "10.0.0.1/32", "interface": 0}], "no IPv4"),  # host side only
        ([{"address": "10.0.0.300/24"}], "CIDR"),
        ([{"address": "10.0.0.1/24", "interface": 7}], "index"),
        (["10.0.0.1/24"], "address"),
    ],
)
def test_unusable_prev_results_are_error_7(ips: list[Any], needle: str) -> None:
    with pytest.raises(CniError) as e:
        container_addresses({"interfaces": RESULT_100["interfaces"], "ips": ips})
    assert e.value.code == Code.INVALID_CONFIG and needle in str(e.value)


def test_1_0_0_result_as_0_4_0_gains_ip_versions() -> None:
    out = convert_result(RESULT_100, "0.4.0", "0.4.0")
    assert out["cniVersion"] == "0.4.0"
    assert [ip["version"] for ip in out["ips"]] == ["4", "4", "6"]
    assert out["interfaces"] == RESULT_100["interfaces"] and out["dns"] == RESULT_100["dns"]


def test_0_4_0_result_as_1_0_0_loses_ip_versions_and_input_is_untouched() -> None:
    legacy = convert_result(RESULT_100, "0.4.0", "0.4.0")
    before = copy.deepcopy(legacy)
    out = convert_result(legacy, "1.0.0", "1.0.0")
    assert out == RESULT_100
    assert legacy == before


def test_1_1_0_keys_are_dropped_for_0_4_0_and_kept_for_1_0_0() -> None:
    newer = copy.deepcopy(RESULT_100) | {"cniVersion": "1.1.0"}
    newer["interfaces"][1] |= {"mtu": 1450, "socketPath": "/x", "pciID": "0000:00:01.0"}
    newer["routes"][0] |= {"mtu": 1400, "advmss": 1360, "priority": 5, "table": 100, "scope": 0}
    legacy = convert_result(newer, "0.4.0", "0.4.0")
    assert legacy["interfaces"][1] == RESULT_100["interfaces"][1]
    assert legacy["routes"] == RESULT_100["routes"]
    assert convert_result(newer, "1.0.0", "1.0.0")["interfaces"][1]["mtu"] == 1450


def test_prev_result_without_version_is_taken_as_the_config_version() -> None:
    unversioned = {k: v for k, v in RESULT_100.items() if k != "cniVersion"}
    assert convert_result(unversioned, "1.1.0", "1.0.0")["cniVersion"] == "1.1.0"


def test_pre_0_3_results_cannot_be_chained() -> None:
    with pytest.raises(CniError) as e:
        convert_result({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/24"}}, "1.0.0", "1.0.0")
    assert e.value.code == Code.INCOMPATIBLE_VERSION


def test_dns_servers_replace_nameservers_and_keep_the_rest() -> None:
    out = with_nameservers(copy.deepcopy(RESULT_100), ("169.254.0.2",))
    assert out["dns"] == {"search": ["example.org"], "nameservers": ["169.254.0.2"]}
    assert with_nameservers(copy.deepcopy(RESULT_100), ())["dns"] == RESULT_100["dns"]


# -- Garden's injection -------------------------------------------------------------------------------

ADDRESSES = ContainerAddresses("10.255.1.7", "fd00:255:1::7")
LOG_CONFIG = '{"guid":"app-1","index":0,"source_name":"CELL","tags":{}}'
METADATA = {
    "app_id": "app-1",
    "space_id": "space-1",
    "org_id": "org-1",
    "policy_group_id": "app-1",
    "container_workload": "task",
    "ports": "8080, 2222",
    "log_config": LOG_CONFIG,
    "some_other_network_property": "ignored",
}
NET_OUT_RULES = [
    {"protocol": 1, "networks": [{"start": "192.0.2.1", "end": "192.0.2.9"}], "ports": [{"start": 80, "end": 443}]},
    {"protocol": 3, "networks": [{"start": "198.51.100.1", "end": "198.51.100.1"}], "icmps": {"type": 255}},
    {"networks": [{"start": "203.0.113.0", "end": "203.0.113.255"}], "log": True},
]


def test_registration_maps_every_garden_key_and_validates_as_a_container() -> None:
    conf = {
        "metadata": METADATA,
        "runtimeConfig": {"portMappings": [{"host_port": 61001, "container_port": 8080}], "netOutRules": NET_OUT_RULES},
    }
    body = registration("h-1", conf, ADDRESSES)
    assert body["container"] == {
        "handle": "h-1", "ip": "10.255.1.7", "ipv6": "fd00:255:1::7", "app_guid": "app-1", "space_guid": "space-1",
        "org_guid": "org-1", "workload": "task", "ports": [8080, 2222], "log_config": LOG_CONFIG,
        "port_mappings": [{"host_port": 61001, "container_port": 8080}],
    }  # fmt: skip
    assert body["net_out_rules"] == NET_OUT_RULES
    Container.model_validate(body["container"])


def test_net_out_rules_reach_the_container_as_the_reconciler_converts_them() -> None:
    body = registration("h-1", {"metadata": METADATA, "runtimeConfig": {"netOutRules": NET_OUT_RULES}}, ADDRESSES)
    container = RegisterRequest.model_validate(body | {"timeout_seconds": 1}).full_container()
    assert container.net_out_rules == [NetOutRule.model_validate(n) for n in NET_OUT_RULES]
    assert container.egress_rules == []
    icmp = next(r for r in container.creation_rules() if r.protocol == "icmp")
    assert (icmp.icmp_type, icmp.icmp_code) == (-1, -1)  # Garden's 255 and a missing code: any


def test_policy_group_id_wins_over_app_id() -> None:
    body = registration("h", {"metadata": METADATA | {"policy_group_id": "pg", "app_id": "app"}}, ADDRESSES)
    assert body["container"]["app_guid"] == "pg"
    body = registration("h", {"metadata": METADATA | {"policy_group_id": "", "app_id": "app"}}, ADDRESSES)
    assert body["container"]["app_guid"] == "app"


def test_container_without_metadata_is_registered_unowned_as_an_app() -> None:
    body = registration("executor-healthcheck-1", {}, ContainerAddresses("10.255.1.9", None))
    assert body == {
        "container": {
            "handle": "executor-healthcheck-1",
            "ip": "10.255.1.9",
            "app_guid": UNOWNED,
            "space_guid": UNOWNED,
            "org_guid": "",
            "workload": "app",
            "ports": [],
            "port_mappings": [],
        }
    }
    Container.model_validate(body["container"])


@pytest.mark.parametrize(
    "conf, code, needle",
    [
        ({"metadata": "app_id=x"}, Code.INVALID_CONFIG, "metadata"),
        ({"metadata": {"app_id": 7}}, Code.INVALID_CONFIG, "metadata.app_id"),
        ({"metadata": {"container_workload": "daemon"}}, Code.INVALID_CONFIG, "container_workload"),
        ({"metadata": {"ports": "0"}}, Code.INVALID_CONFIG, "metadata.ports"),
        ({"metadata": {"ports": "70000"}}, Code.INVALID_CONFIG, "metadata.ports"),
        ({"metadata": {"log_config": {"guid": "x"}}}, Code.INVALID_CONFIG, "log_config"),
        ({"runtimeConfig": {"portMappings": {"host_port": 1}}}, Code.INVALID_CONFIG, "portMappings"),
        (
            {"runtimeConfig": {"portMappings": [{"host_port": 0, "container_port": 8080}]}},
            Code.INVALID_CONFIG,
            "host_port",
        ),
        (
            {"runtimeConfig": {"portMappings": [{"host_port": True, "container_port": 8080}]}},
            Code.INVALID_CONFIG,
            "host_port",
        ),
        ({"runtimeConfig": {"portMappings": [{"host_port": 61000}]}}, Code.INVALID_CONFIG, "container_port"),
        (
            {"runtimeConfig": {"portMappings": [{"host_port": 1, "container_port": 2, "protocol": "udp"}]}},
            Code.UNSUPPORTED_FIELD,
            "protocol",
        ),
        ({"runtimeConfig": {"netOutRules": [1]}}, Code.INVALID_CONFIG, "netOutRules"),
    ],
)
def test_bad_injection_names_the_key(conf: dict[str, Any], code: Code, needle: str) -> None:
    with pytest.raises(CniError) as e:
        registration("h", conf, ADDRESSES)
    assert e.value.code == code and needle in str(e.value)
