"""The BOSH release's job templates, rendered as the director renders them and loaded with the
project's own config models, so that a template drifting from a model fails here and not on a cell.

Rendering goes through tests/bosh/render.rb: Ruby's stdlib ERB with a stand-in for bosh-template's
evaluation context (`p`, `if_p`, `spec`). As in the director, a template sees only the properties
its job spec declares, with the spec's defaults, and an unset one fails with the director's message.
Each job is rendered with its minimal required properties (the defaults) and with every property
set (tests/bosh/fixtures/<job>.yml), and the ops file's own settings are rendered too. The jobs
meet over links as in a deployment: cfnft-reconciler and cfnft-watcher consume cfnft-nats (three
nodes), which consumes its own nodes and the cells. The NATS server's configuration is checked by
the nats-server binary itself, and served to the identities the client jobs render.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from functools import cache
from ipaddress import ip_network
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from nats.js.api import ConsumerConfig

from cfnft.cli import build_parser
from cfnft.watch import WatchConfig, load_watch_config
from cni.config import DEFAULT_SOCKET_PATH, DEFAULT_TIMEOUT_SECONDS, PluginConfig, parse_plugin_config
from cni.errors import CniError
from cni.invocation import SUPPORTED_VERSIONS
from events.bbs.watcher import BbsWatcherConfig
from events.cc.stamp import AsgTriggerConfig
from events.cc.watcher import CcWatcherConfig
from events.connect import NatsConfig
from events.messages import ContainerMessage
from events.models import CellConfig
from events.permissions import (
    Role,
    cell_permissions,
    identity_name,
    operator_permissions,
    watcher_permissions,
)
from events.policy.watcher import PolicyWatcherConfig
from events.problems import StateError
from lab.natsconf import permissions_config
from lab.pki import Pki, make_pki
from reconciler.admission import Limits
from reconciler.config import FlowLogConfig, ReconcilerConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
RENDERER = ROOT / "tests" / "bosh" / "render.rb"
FIXTURES = ROOT / "tests" / "bosh" / "fixtures"
OPS_FILE = ROOT / "ops-files" / "use-cfnft.yml"
JOBS = ("cni", "cfnft-reconciler", "cfnft-watcher", "cfnft-nats")
# Packages a job may use without this release defining them: `bosh vendor-package python-3.12
# <bosh-package-python-release>` adds it (packages/python-3.12/spec.lock).
VENDORED_PACKAGES = {"python-3.12"}
# garden-cni's defaults (docs/cf-facts.md §4.2): why the package and the job are both called `cni`.
GARDEN_CNI_PLUGIN_DIR = "/var/vcap/packages/cni/bin"
GARDEN_CNI_CONFIG_DIR = "/var/vcap/jobs/cni/config/cni"

INSTANCE_ID = "5b0c8a2e-7d1f-4c3b-9e6a-2f4d8c1b0a97"
NATS_SERVERS = ["tls://nats.example.internal:4222"]
PEM = "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----"
MTLS = {"ca_cert": PEM, "client_cert": PEM, "client_key": PEM}
CERTIFICATE = {"ca": PEM, "certificate": PEM, "private_key": PEM}
# The fewest properties each job renders with: everything else is the spec's default or comes
# over a link.
MINIMAL: dict[str, dict[str, Any]] = {
    "cni": {},
    "cfnft-reconciler": {},
    "cfnft-watcher": {"bbs": MTLS, "policy_server": MTLS},
    "cfnft-nats": {
        "tls": CERTIFICATE,
        "cluster": {"tls": CERTIFICATE},
        "users": {"watcher": {"password": "watcher-password"}, "operator": {"password": "operator-password"}},
        "cell_password_secret": "cell-secret",
    },
}


def instances(group: str, count: int) -> list[dict[str, Any]]:
    """A link's instances as the director gives them (BOSH DNS addresses)."""
    return [
        {
            "id": f"{group}-{i}-2f4d8c1b0a97",
            "index": i,
            "name": group,
            "az": f"z{i % 3 + 1}",
            "address": f"{group}-{i}-2f4d8c1b0a97.{group}.default.cf.bosh",
            "bootstrap": i == 0,
        }
        for i in range(count)
    ]


NATS_NODES = instances("cfnft-nats", 3)
CELLS = instances("diego-cell", 2)


def link(provider: str, provider_properties: Mapping[str, Any], members: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "provider": {"job_dir": str(ROOT / "jobs" / provider), "properties": provider_properties},
        "instances": members,
    }


def default_links(job: str, properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The links each job consumes in ops-files/use-cfnft.yml's deployment (cfnft-nats's own
    cluster link carries the `properties` it is rendered with, as the director's would)."""
    nats = link("cfnft-nats", MINIMAL["cfnft-nats"], NATS_NODES)
    return {
        "cni": {},
        "cfnft-reconciler": {"cfnft-nats": nats},
        "cfnft-watcher": {"cfnft-nats": nats},
        "cfnft-nats": {
            "cfnft-nats-cluster": link("cfnft-nats", properties or MINIMAL["cfnft-nats"], NATS_NODES),
            "cfnft-reconciler": link("cfnft-reconciler", {}, CELLS),
        },
    }[job]


# --- rendering ---------------------------------------------------------------------------------


class RenderError(Exception):
    """The renderer refused, with the director's kind of message."""


class Ruby:
    """tests/bosh/render.rb as one long-lived process: a JSON request per line in, a JSON answer per line out."""

    def __init__(self) -> None:
        ruby = shutil.which("ruby")
        if ruby is None:
            reason = "rendering BOSH templates needs ruby (apt-get install ruby; setup.sh installs it)"
            if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
                pytest.fail(f"{reason} (CI=true: missing prerequisites fail instead of skipping)", pytrace=False)
            pytest.skip(reason)
        self._process = subprocess.Popen(
            [ruby, str(RENDERER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=10)
            raise AssertionError(f"render.rb died: {self._process.stderr.read() if self._process.stderr else ''}")
        return json.loads(line)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


_ruby: list[Ruby] = []


@pytest.fixture(scope="module", autouse=True)
def ruby() -> Iterator[Ruby]:
    """One renderer for the module, stopped at its end (also when tests fail)."""
    process = Ruby()
    _ruby.append(process)
    try:
        yield process
    finally:
        _ruby.remove(process)
        process.close()


def ask(request: Mapping[str, Any]) -> dict[str, Any]:
    return _ruby[-1].ask(request)


@cache
def _yaml(path: Path) -> str:
    answer = ask({"yaml": str(path)})
    if "error" in answer:
        raise AssertionError(f"{path}: {answer['error']}")
    return json.dumps(answer["value"])


def load_yaml(path: Path) -> Any:
    """YAML through Ruby's stdlib (the tests depend on nothing the venv lacks); a fresh copy each time."""
    return json.loads(_yaml(path))


def job_spec(job: str) -> dict[str, Any]:
    return load_yaml(ROOT / "jobs" / job / "spec")


def declared(job: str) -> dict[str, dict[str, Any]]:
    return {name: definition or {} for name, definition in (job_spec(job).get("properties") or {}).items()}


def instance_spec(index: int = 0) -> dict[str, Any]:
    address = f"10.0.16.{20 + index}"
    return {
        "id": INSTANCE_ID,
        "index": index,
        "name": "diego-cell",
        "deployment": "cf",
        "az": "z1",
        "bootstrap": index == 0,
        "address": address,
        "ip": address,
        "networks": {"default": {"ip": address, "netmask": "255.255.240.0", "default": ["dns", "gateway"]}},
    }


def render(
    job: str, properties: Mapping[str, Any], *, index: int = 0, links: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Every template of `job` (destination path -> text, plus "monit"), or RenderError. `links`:
    the links it consumes (default: those of the ops file's deployment)."""
    request = {
        "job_dir": str(ROOT / "jobs" / job),
        "properties": properties,
        "spec": instance_spec(index),
        "links": default_links(job, properties) if links is None else links,
    }
    answer = ask({"render": request})
    if "error" in answer:
        raise RenderError(answer["error"])
    return answer["rendered"]


def full(job: str) -> dict[str, Any]:
    return load_yaml(FIXTURES / f"{job}.yml")


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def set_property_names(properties: Mapping[str, Any], names: set[str], prefix: str = "") -> Iterator[str]:
    """The dotted names of `properties` (a manifest's nested form), stopping at names in `names`;
    a leaf that is not a declared name is yielded as it is, to be reported."""
    for key, value in properties.items():
        name = f"{prefix}{key}"
        if name in names or not isinstance(value, Mapping):
            yield name
        else:
            yield from set_property_names(value, names, f"{name}.")


# --- what templates read -------------------------------------------------------------------------

_P_CALL = re.compile(r"""(?<![\w.])p\(\s*(\[[^\]]*\]|'[^']*'|"[^"]*")""")
_IF_P_CALL = re.compile(r"""(?<![\w.])(?:else_)?if_p\(((?:\s*(?:'[^']*'|"[^"]*")\s*,?)+)\)""")
_QUOTED = re.compile(r"""'([^']*)'|"([^"]*)\"""")


def template_sources(job: str) -> dict[str, str]:
    job_dir = ROOT / "jobs" / job
    sources = {name: (job_dir / "templates" / name).read_text() for name in job_spec(job)["templates"]}
    sources["monit"] = (job_dir / "monit").read_text()
    return sources


def properties_read(job: str) -> dict[str, set[str]]:
    """Property name -> the templates that read it with p() or if_p()."""
    reads: dict[str, set[str]] = {}
    for template, text in template_sources(job).items():
        for match in [*_P_CALL.finditer(text), *_IF_P_CALL.finditer(text)]:
            for single, double in _QUOTED.findall(match.group(1)):
                reads.setdefault(single or double, set()).add(template)
    return reads


# --- loading what was rendered with the project's models -------------------------------------------


def conflist(rendered: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(rendered["config/cni/cfnft.conflist"])


def cfnft_plugin(rendered: Mapping[str, str]) -> PluginConfig:
    """cfnft-cni's object, as the plugin itself parses it (a key or value it refuses raises)."""
    plugin = conflist(rendered)["plugins"][-1]
    assert plugin["type"] == "cfnft-cni"
    return parse_plugin_config(plugin)


def reconciler_config(rendered: Mapping[str, str], tmp_path: Path) -> ReconcilerConfig:
    """Through the loader `cfnft reconcile --config` uses."""
    path = tmp_path / "reconciler.json"
    path.write_text(rendered["config/reconciler.json"])
    return load_config(path)


def watcher_config(rendered: Mapping[str, str], tmp_path: Path) -> WatchConfig:
    """Through the loader `cfnft watch --config` uses."""
    path = tmp_path / "watcher.json"
    path.write_text(rendered["config/watcher.json"])
    return load_watch_config(path)


def nats_server_config(rendered: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(rendered["config/nats-server.json"])


def load_all(job: str, rendered: Mapping[str, str], tmp_path: Path) -> object:
    if job == "cni":
        return cfnft_plugin(rendered)
    if job == "cfnft-reconciler":
        return reconciler_config(rendered, tmp_path)
    if job == "cfnft-nats":
        return nats_server_config(rendered)
    return watcher_config(rendered, tmp_path)


# --- the release's layout ----------------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_every_property_a_template_reads_is_declared_and_every_declared_one_is_read(job: str) -> None:
    """The director passes only declared properties; an undeclared read fails every deploy, an unread one lies."""
    reads = properties_read(job)
    names = set(declared(job))
    assert reads, f"no p()/if_p() found in {job}'s templates: the scan is broken"
    undeclared = {name: sorted(templates) for name, templates in reads.items() if name not in names}
    assert not undeclared, f"{job}: read but not declared in jobs/{job}/spec: {undeclared}"
    assert not names - set(reads), f"{job}: declared but read by no template: {sorted(names - set(reads))}"


@pytest.mark.parametrize("job", JOBS)
def test_every_property_is_documented_with_a_default_or_says_why_not(job: str) -> None:
    """A property without a default is either required (and says so) or optional (read only with a fallback)."""
    sources = "\n".join(template_sources(job).values())
    for name, definition in declared(job).items():
        description = str(definition.get("description", "")).strip()
        assert description, f"{job}: property {name} has no description"
        if "default" in definition:
            continue
        optional = re.search(rf"""if_p\([^)]*['"]{re.escape(name)}['"]|p\(\s*['"]{re.escape(name)}['"]\s*,""", sources)
        assert optional or description.startswith("Required"), (
            f"{job}: {name} has no default, is read without a fallback, and its description does not say 'Required'"
        )


@pytest.mark.parametrize("job", JOBS)
def test_jobs_use_packages_this_release_builds_or_vendors(job: str) -> None:
    packages = {p.name for p in (ROOT / "packages").iterdir() if (p / "spec").is_file()}
    for package in packages:
        spec = load_yaml(ROOT / "packages" / package / "spec")
        assert spec["name"] == package, f"packages/{package}/spec names itself {spec['name']}"
        assert (ROOT / "packages" / package / "packaging").is_file(), f"packages/{package} has no packaging script"
        assert set(spec.get("dependencies") or []) <= packages | VENDORED_PACKAGES, f"{package}: unknown dependency"
    assert job_spec(job)["name"] == job
    assert set(job_spec(job)["packages"]) <= packages | VENDORED_PACKAGES


def test_package_and_job_are_named_for_garden_cnis_defaults() -> None:
    """garden-cni finds the plugins and the conflist without any property set (docs/cf-facts.md §4.2)."""
    destinations = job_spec("cni")["templates"].values()
    conflists = [d for d in destinations if d.endswith(".conflist")]
    assert len(conflists) == 1, "garden-external-networker runs the first conflist it finds: render exactly one"
    assert f"/var/vcap/jobs/cni/{PurePosixPath(conflists[0]).parent}" == GARDEN_CNI_CONFIG_DIR
    # The package named cni installs into /var/vcap/packages/cni: its plugins go to bin/ there.
    assert load_yaml(ROOT / "packages" / "cni" / "spec")["name"] == PurePosixPath(GARDEN_CNI_PLUGIN_DIR).parent.name
    assert 'bin="${BOSH_INSTALL_TARGET}/bin"' in (ROOT / "packages" / "cni" / "packaging").read_text()
    assert load_yaml(ROOT / "config" / "final.yml")["name"] == "cni"


def test_socket_path_defaults_agree_across_jobs_and_models() -> None:
    """The plugin and the reconciler meet on this socket; nothing but the defaults makes them agree."""
    cni_default = declared("cni")["socket_path"]["default"]
    reconciler_default = declared("cfnft-reconciler")["socket_path"]["default"]
    assert cni_default == reconciler_default == DEFAULT_SOCKET_PATH
    assert str(ReconcilerConfig.model_fields["socket_path"].default) == DEFAULT_SOCKET_PATH


# --- defaults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_renders_with_only_the_required_properties_and_the_models_accept_it(job: str, tmp_path: Path) -> None:
    rendered = render(job, MINIMAL[job])
    assert set(rendered) == {*job_spec(job)["templates"].values(), "monit"}
    assert load_all(job, rendered, tmp_path)


def link_servers() -> list[str]:
    return [f"tls://{node['address']}:4222" for node in NATS_NODES]


def test_reconciler_spec_defaults_are_the_models_defaults(tmp_path: Path) -> None:
    """Only cell_id (BOSH's instance id, as the rep uses) and NATS differ from the model: the
    cfnft-nats link gives the servers, their CA and the cell's own identity."""
    cfg = reconciler_config(render("cfnft-reconciler", MINIMAL["cfnft-reconciler"]), tmp_path)
    certs = Path("/var/vcap/jobs/cfnft-reconciler/config/certs/nats")
    nats = NatsConfig(
        servers=link_servers(),
        ca_file=certs / "ca.crt",
        user=identity_name(Role.CELL, INSTANCE_ID),
        password_file=certs / "password",
    )
    assert cfg == ReconcilerConfig(cell_id=INSTANCE_ID, nats=nats)


def test_watcher_spec_defaults_are_the_models_defaults(tmp_path: Path) -> None:
    """BBS and the policy server are watched by default, Cloud Controller is not; NATS comes over
    the link, as the watcher identity; the stream gets three replicas."""
    cfg = watcher_config(render("cfnft-watcher", MINIMAL["cfnft-watcher"]), tmp_path)
    certs = Path("/var/vcap/jobs/cfnft-watcher/config/certs")
    assert cfg == WatchConfig(
        nats=NatsConfig(
            servers=link_servers(),
            ca_file=certs / "nats/ca.crt",
            user=identity_name(Role.WATCHER),
            password_file=certs / "nats/password",
        ),
        stream_replicas=3,
        bbs=BbsWatcherConfig(
            ca_file=certs / "bbs/ca.crt", cert_file=certs / "bbs/client.crt", key_file=certs / "bbs/client.key"
        ),
        policy=PolicyWatcherConfig(
            ca_file=certs / "policy_server/ca.crt",
            cert_file=certs / "policy_server/client.crt",
            key_file=certs / "policy_server/client.key",
        ),
    )


def test_cni_spec_defaults_are_the_plugins_defaults_and_silk_comes_first() -> None:
    rendered = render("cni", {})
    plugin = cfnft_plugin(rendered)
    assert (plugin.socket_path, plugin.timeout_seconds, plugin.dns_servers) == (
        DEFAULT_SOCKET_PATH,
        DEFAULT_TIMEOUT_SECONDS,
        (),
    )
    assert plugin.log_file == "/var/vcap/sys/log/cni/cfnft-cni.log"
    doc = conflist(rendered)
    assert [p["type"] for p in doc["plugins"]] == ["silk-cni", "cfnft-cni"]
    assert doc["plugins"][0] == {
        "type": "silk-cni",
        "daemonPort": 23954,
        "dataDir": "/var/vcap/data/host-local",
        "datastore": "/var/vcap/data/silk/store.json",
        "mtu": 0,
    }


# --- every property set ------------------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_the_full_fixture_sets_every_declared_property(job: str) -> None:
    """Otherwise 'full' would not exercise the template paths of the properties it leaves out."""
    names = set(declared(job))
    given = set(set_property_names(full(job), names))
    assert given == names, f"missing: {sorted(names - given)}, not declared: {sorted(given - names)}"


@pytest.mark.parametrize("job", JOBS)
def test_renders_with_every_property_set_and_the_models_accept_it(job: str, tmp_path: Path) -> None:
    rendered = render(job, full(job))
    assert load_all(job, rendered, tmp_path)


@pytest.mark.parametrize("job", ["cfnft-reconciler", "cfnft-watcher", "cfnft-nats"])
def test_every_job_path_a_rendered_file_names_is_a_file_the_job_renders(job: str) -> None:
    """A config pointing at /var/vcap/jobs/<job>/config/certs/x.crt needs a template rendering it."""
    rendered = render(job, full(job))
    named = {
        path for text in rendered.values() for path in re.findall(rf"/var/vcap/jobs/{re.escape(job)}/([\w./-]+)", text)
    }
    assert named, f"{job}'s files name none of its own files: the check is broken"
    assert named <= set(rendered), f"{job}: named but not rendered: {sorted(named - set(rendered))}"


def test_reconciler_exposes_every_field_of_its_config_model() -> None:
    """A field added to ReconcilerConfig or CellConfig needs a property (or a reason not to have one)."""
    rendered = json.loads(render("cfnft-reconciler", full("cfnft-reconciler"))["config/reconciler.json"])
    tests_only = {"netns"}  # cells enforce in the host's network namespace
    assert set(rendered) == set(ReconcilerConfig.model_fields) - tests_only
    assert set(rendered["nats"]) == set(NatsConfig.model_fields)
    # The cell's policy settings are flat properties named as CellConfig's fields, as silk-cni's are.
    names = set(declared("cfnft-reconciler"))
    missing = {f for f in CellConfig.model_fields if f not in names and not any(n.startswith(f"{f}.") for n in names)}
    assert not missing, f"CellConfig fields without a cfnft-reconciler property: {sorted(missing)}"
    assert set(rendered["policy"]) == set(CellConfig.model_fields)


def test_reconciler_carries_every_property_into_its_config(tmp_path: Path) -> None:
    props = full("cfnft-reconciler")
    rendered = render("cfnft-reconciler", props)
    certs = Path("/var/vcap/jobs/cfnft-reconciler/config/certs/nats")
    nats = props["nats"]
    policy_keys = CellConfig.model_fields.keys()
    expected = ReconcilerConfig(
        cell_id=props["cell_id"],
        nats=NatsConfig(
            servers=nats["servers"],
            ca_file=certs / "ca.crt",
            cert_file=certs / "client.crt",
            key_file=certs / "client.key",
            creds_file=certs / "nats.creds",
            user=nats["user"],
            password_file=certs / "password",
            tls_handshake_first=nats["tls_handshake_first"],
            insecure=nats["insecure"],
            connect_timeout_seconds=nats["connect_timeout_seconds"],
        ),
        policy=CellConfig.model_validate({key: props[key] for key in policy_keys}),
        socket_path=props["socket_path"],
        state_dir=props["state_dir"],
        metrics_listen=f"{props['metrics']['address']}:{props['metrics']['port']}",
        drift_probe_seconds=props["drift_probe_seconds"],
        full_check_seconds=props["full_check_seconds"],
        retry_max_seconds=props["retry_max_seconds"],
        rebuild_after_failures=props["rebuild_after_failures"],
        give_up_after_failures=props["give_up_after_failures"],
        rule_metrics_seconds=props["rule_metrics_seconds"],
        flow_log=FlowLogConfig(file=props["flow_log"]["file"], host_ip="10.0.16.20", host_guid=INSTANCE_ID),
        consumer_heartbeat_seconds=props["consumer_heartbeat_seconds"],
        replay_jitter_seconds=props["replay_jitter_seconds"],
        state_check_seconds=props["state_check_seconds"],
        limits=Limits.model_validate(props["limits"]),
    )
    assert reconciler_config(rendered, tmp_path) == expected
    for destination, key in (("ca.crt", "ca_cert"), ("client.crt", "client_cert"), ("client.key", "client_key")):
        assert rendered[f"config/certs/nats/{destination}"].strip() == nats["tls"][key]
    assert rendered["config/certs/nats/nats.creds"].strip() == nats["creds"]
    assert rendered["config/certs/nats/password"].strip() == nats["password"]


def test_watcher_exposes_every_field_of_its_config_model() -> None:
    rendered = json.loads(render("cfnft-watcher", full("cfnft-watcher"))["config/watcher.json"])
    assert set(rendered) == set(WatchConfig.model_fields)
    assert set(rendered["nats"]) == set(NatsConfig.model_fields)


def test_watcher_carries_every_property_into_its_config(tmp_path: Path) -> None:
    props = full("cfnft-watcher")
    rendered = render("cfnft-watcher", props)
    cfg = watcher_config(rendered, tmp_path)
    assert cfg.metrics_listen == f"{props['metrics']['address']}:{props['metrics']['port']}"
    assert (cfg.lease_seconds, cfg.state_check_seconds) == (props["lease_seconds"], props["state_check_seconds"])
    assert cfg.nats.user == props["nats"]["user"] and cfg.nats.creds_file is not None
    assert rendered["config/certs/nats/password"].strip() == props["nats"]["password"]
    assert (cfg.nats.insecure, cfg.nats.tls_handshake_first) == (props["nats"]["insecure"], False)
    assert cfg.stream_replicas == props["stream_replicas"]
    certs = Path("/var/vcap/jobs/cfnft-watcher/config/certs")
    bbs, policy, cc = props["bbs"], props["policy_server"], props["cloud_controller"]
    assert cfg.bbs == BbsWatcherConfig(
        url=f"https://{bbs['api_location']}",
        ca_file=certs / "bbs/ca.crt",
        cert_file=certs / "bbs/client.crt",
        key_file=certs / "bbs/client.key",
        server_name=bbs["server_name"],
        request_timeout=bbs["request_timeout_seconds"],
        relist_interval=bbs["relist_interval_seconds"],
    )
    assert cfg.policy == PolicyWatcherConfig(
        url=f"https://{policy['hostname']}:{policy['internal_listen_port']}",
        ca_file=certs / "policy_server/ca.crt",
        cert_file=certs / "policy_server/client.crt",
        key_file=certs / "policy_server/client.key",
        poll_interval=policy["poll_interval_seconds"],
        asgs=False,
        asg_poll_interval=policy["asg_poll_interval_seconds"],
        request_timeout=policy["request_timeout_seconds"],
    )
    assert cfg.cc == CcWatcherConfig(
        api_url=cc["api_url"],
        uaa_url=cc["uaa_url"],
        client_id=cc["client_id"],
        client_secret=cc["client_secret"],
        ca_file=certs / "cloud_controller/ca.crt",
        internal_url=cc["internal_url"],
        internal_ca_file=certs / "cloud_controller/internal_ca.crt",
        internal_cert_file=certs / "cloud_controller/internal_client.crt",
        internal_key_file=certs / "cloud_controller/internal_client.key",
        poll_interval=cc["poll_interval_seconds"],
        request_timeout=cc["request_timeout_seconds"],
    )
    assert rendered["config/certs/cloud_controller/internal_client.key"].strip() == cc["internal_client_key"]
    assert rendered["config/certs/bbs/ca.crt"].strip() == bbs["ca_cert"]


def test_ccs_stamp_triggers_the_policy_servers_asg_listings_when_cc_is_not_the_source(tmp_path: Path) -> None:
    """cloud_controller.internal_url without cloud_controller.enabled: the policy watcher reads CC's
    asg_latest_update (with the UAA client) to decide when to list the policy server's groups."""
    cc = full("cfnft-watcher")["cloud_controller"] | {"enabled": False}
    cfg = watcher_config(render("cfnft-watcher", merged(MINIMAL["cfnft-watcher"], {"cloud_controller": cc})), tmp_path)
    certs = Path("/var/vcap/jobs/cfnft-watcher/config/certs/cloud_controller")
    assert cfg.cc is None and cfg.policy is not None and cfg.policy.asgs
    assert cfg.policy.asg_trigger == AsgTriggerConfig(
        internal_url=cc["internal_url"],
        internal_ca_file=certs / "internal_ca.crt",
        internal_cert_file=certs / "internal_client.crt",
        internal_key_file=certs / "internal_client.key",
        uaa_url=cc["uaa_url"],
        client_id=cc["client_id"],
        client_secret=cc["client_secret"],
        ca_file=certs / "ca.crt",
    )
    unset = watcher_config(render("cfnft-watcher", MINIMAL["cfnft-watcher"]), tmp_path)
    assert unset.policy is not None and unset.policy.asg_trigger is None


# --- the conflist --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connectivity", "first"),
    [("silk", ["silk-cni"]), ("ptp", ["ptp"]), ("custom", ["macvlan"])],
)
def test_conflist_runs_connectivity_then_bandwidth_then_cfnft_cni_last(connectivity: str, first: list[str]) -> None:
    props = merged(full("cni"), {"connectivity": connectivity})
    doc = conflist(render("cni", props))
    assert doc["cniVersion"] in SUPPORTED_VERSIONS
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", doc["name"]), "CNI network name grammar"
    assert [p["type"] for p in doc["plugins"]] == [*first, "bandwidth", "cfnft-cni"]
    assert doc["disableCheck"] is (connectivity == "silk"), "only silk-cni lacks CHECK"
    assert cfnft_plugin(render("cni", props)) == PluginConfig(
        socket_path=props["socket_path"],
        timeout_seconds=props["timeout_seconds"],
        dns_servers=tuple(props["dns_servers"]),
        log_file=props["log_file"],
    )
    rate, burst = props["bandwidth"]["rate"] * 1024, props["bandwidth"]["burst"] * 1024
    assert doc["plugins"][-2] == {
        "type": "bandwidth",
        "ingressRate": rate,
        "ingressBurst": burst,
        "egressRate": rate,
        "egressBurst": burst,
    }


def test_silk_mtu_leaves_room_for_the_vxlan_header_as_silk_cni_does() -> None:
    doc = conflist(render("cni", {"silk": {"mtu": 1500}}))
    assert doc["plugins"][0]["mtu"] == 1450


@pytest.mark.parametrize(("index", "subnet"), [(0, "10.255.1.0/24"), (5, "10.255.6.0/24"), (254, "10.255.255.0/24")])
def test_ptp_gives_each_instance_its_own_subnet(index: int, subnet: str) -> None:
    doc = conflist(render("cni", {"connectivity": "ptp"}, index=index))
    ptp = doc["plugins"][0]
    assert ptp["ipMasq"] is False, "cfnft-cni masquerades in its own table"
    assert ptp["ipam"]["ranges"] == [[{"subnet": subnet}]]
    assert ip_network(subnet).subnet_of(ip_network(declared("cni")["ptp.network"]["default"]))


def test_ptp_subnet_property_overrides_the_computed_one() -> None:
    doc = conflist(render("cni", {"connectivity": "ptp", "ptp": {"subnet": "10.255.200.0/24", "mtu": 1400}}, index=7))
    assert doc["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.255.200.0/24"}]]
    assert doc["plugins"][0]["mtu"] == 1400


def test_ptp_refuses_an_instance_beyond_the_network() -> None:
    with pytest.raises(RenderError, match=r"has 256 /24 subnets; instance 255 would need subnet 256"):
        render("cni", {"connectivity": "ptp"}, index=255)


def test_empty_log_file_means_no_log() -> None:
    rendered = render("cni", {"log_file": ""})
    assert cfnft_plugin(rendered).log_file is None
    assert "mkdir" not in rendered["bin/pre-start"]


def test_cni_pre_start_checks_the_plugins_the_conflist_names() -> None:
    silk = render("cni", {})["bin/pre-start"]
    assert '"${plugin_dir}/silk-cni"' in silk
    custom = render("cni", merged(full("cni"), {"connectivity": "custom"}))["bin/pre-start"]
    assert '"${plugin_dir}/macvlan"' in custom and "silk-cni" not in custom


# --- processes -----------------------------------------------------------------------------------


def bpm_process(job: str, rendered: Mapping[str, str], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "bpm.yml"
    path.write_text(rendered["config/bpm.yml"])
    processes = load_yaml(path)["processes"]
    assert [p["name"] for p in processes] == [job]
    return processes[0]


def test_reconciler_runs_cfnft_reconcile_as_root_with_its_config_and_data_dirs(tmp_path: Path) -> None:
    props = full("cfnft-reconciler")
    rendered = render("cfnft-reconciler", props)
    process = bpm_process("cfnft-reconciler", rendered, tmp_path)
    assert process["executable"] == "/var/vcap/packages/cfnft/bin/python"
    assert process["args"][:2] == ["-m", "cfnft.cli"]
    args = build_parser().parse_args(process["args"][2:])
    assert (args.command, args.log_level) == ("reconcile", props["log_level"])
    assert args.config == Path("/var/vcap/jobs/cfnft-reconciler/config/reconciler.json")
    assert "config/reconciler.json" in rendered
    assert process["unsafe"] == {"privileged": True} and "NET_ADMIN" in process["capabilities"]
    assert "/var/vcap/packages/nftables/lib" in process["env"]["LD_LIBRARY_PATH"].split(":")
    volumes = {v["path"] for v in process["additional_volumes"] if v["writable"]}
    assert volumes == {str(PurePosixPath(props["socket_path"]).parent), props["state_dir"]}


def test_watcher_runs_every_configured_watcher_unprivileged(tmp_path: Path) -> None:
    props = full("cfnft-watcher")
    rendered = render("cfnft-watcher", props)
    process = bpm_process("cfnft-watcher", rendered, tmp_path)
    assert "unsafe" not in process and "capabilities" not in process, "the watcher needs no privileges"
    assert process["executable"] == "/var/vcap/packages/cfnft/bin/python"
    assert process["args"][:2] == ["-m", "cfnft.cli"]
    args = build_parser().parse_args(process["args"][2:])
    assert (args.command, args.log_level, args.only) == ("watch", props["log_level"], [])
    assert args.config == Path("/var/vcap/jobs/cfnft-watcher/config/watcher.json")
    assert "config/watcher.json" in rendered


@pytest.mark.parametrize("job", ["cni", "cfnft-reconciler", "cfnft-nats"])
@pytest.mark.parametrize("properties", ["minimal", "full"])
def test_rendered_scripts_are_valid_bash(job: str, properties: str) -> None:
    rendered = render(job, MINIMAL[job] if properties == "minimal" else full(job))
    scripts = {path: text for path, text in rendered.items() if path.startswith("bin/")}
    assert scripts, f"{job} renders no bin/ scripts"
    for path, text in scripts.items():
        assert text.startswith("#!/bin/bash\n"), f"{job} {path}: BOSH runs it directly; it needs its shebang first"
        checked = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, f"{job} {path}: {checked.stderr}"


@pytest.mark.parametrize("job", ["cfnft-reconciler", "cfnft-watcher", "cfnft-nats"])
def test_monit_starts_the_bpm_process_it_watches(job: str) -> None:
    monit = render(job, MINIMAL[job])["monit"]
    assert f"check process {job}\n" in monit
    assert f"with pidfile /var/vcap/sys/run/bpm/{job}/{job}.pid" in monit
    assert f'start program "/var/vcap/jobs/bpm/bin/bpm start {job}"' in monit


def test_monit_probes_the_watchers_health_listener(tmp_path: Path) -> None:
    rendered = render("cfnft-watcher", full("cfnft-watcher"))
    host, port = watcher_config(rendered, tmp_path).metrics_listen.rsplit(":", 1)
    assert f"host {host}\n" in rendered["monit"] and f"port {port}\n" in rendered["monit"]
    assert 'request "/healthz"' in rendered["monit"]


def test_monit_and_post_start_probe_the_reconcilers_metrics_listener(tmp_path: Path) -> None:
    props = full("cfnft-reconciler")
    rendered = render("cfnft-reconciler", props)
    listen = reconciler_config(rendered, tmp_path).metrics_listen
    host, port = listen.rsplit(":", 1)
    assert f"host {host}\n" in rendered["monit"] and f"port {port}\n" in rendered["monit"]
    assert f'url="http://{listen}/readyz"' in rendered["bin/post-start"]
    assert f"timeout={props['post_start_timeout_seconds']}\n" in rendered["bin/post-start"]


# --- refusals ------------------------------------------------------------------------------------


def test_a_missing_required_property_fails_with_the_directors_message() -> None:
    with pytest.raises(RenderError) as failure:
        render("cfnft-watcher", {})
    expected = (
        r"""Error filling in template 'watcher\.json\.erb' \(line \d+: Can't find property '\["bbs\.ca_cert"\]'\)"""
    )
    assert re.fullmatch(expected, str(failure.value))


_NATS = {"servers": NATS_SERVERS}
_WATCHER = MINIMAL["cfnft-watcher"]
_CC = {"enabled": True, "api_url": "https://api", "uaa_url": "https://uaa", "client_secret": "s"}
REFUSALS = [
    pytest.param("cfnft-reconciler", {"nats": {"servers": []}}, "nats.servers must be a non-empty list", id="servers"),
    pytest.param(
        "cfnft-reconciler",
        {"nats": _NATS | {"tls": {"ca_cert": PEM, "client_cert": PEM}}},
        "nats.tls.client_cert is set without nats.tls.client_key",
        id="cert-without-key",
    ),
    pytest.param(
        "cfnft-reconciler",
        {"nats": _NATS | {"tls": {"client_cert": PEM, "client_key": PEM}}},
        "nats.tls.client_cert needs nats.tls.ca_cert",
        id="cert-without-ca",
    ),
    pytest.param(
        "cfnft-reconciler", {"nats": _NATS | {"user": "u"}}, "nats.user is set without nats.password", id="user"
    ),
    pytest.param("cfnft-reconciler", {"nats": _NATS, "log_level": "trace"}, "log_level must be one of", id="log-level"),
    pytest.param("cfnft-watcher", {}, "Can't find property '[\"bbs.ca_cert\"]'", id="bbs-certs"),
    pytest.param(
        "cfnft-watcher",
        merged(_WATCHER, {"bbs": {"enabled": False}, "policy_server": {"enabled": False}}),
        "nothing to watch",
        id="no-source",
    ),
    pytest.param(
        "cfnft-watcher",
        merged(_WATCHER, {"cloud_controller": _CC}),
        "cloud_controller.enabled needs policy_server.publish_asgs: false",
        id="two-asg-sources",
    ),
    pytest.param(
        "cfnft-watcher",
        merged(
            _WATCHER,
            {"policy_server": {"publish_asgs": False}, "cloud_controller": _CC | {"internal_url": "https://cc"}},
        ),
        "Can't find property '[\"cloud_controller.internal_ca_cert\"]'",
        id="cc-internal-certs",
    ),
    pytest.param("cni", {"connectivity": "flannel"}, "connectivity must be silk, ptp or custom", id="connectivity"),
    pytest.param("cni", {"connectivity": "custom"}, "connectivity custom needs custom_plugins", id="custom-empty"),
    pytest.param(
        "cni", {"connectivity": "custom", "custom_plugins": [{"master": "eth1"}]}, "each with a type", id="custom-type"
    ),
    pytest.param("cni", {"bandwidth": {"rate": 100}}, "bandwidth.rate and bandwidth.burst must be set", id="bandwidth"),
    pytest.param(
        "cni",
        {"connectivity": "ptp", "ptp": {"subnet_prefix_length": 8}},
        "ptp.subnet_prefix_length must be",
        id="ptp-prefix",
    ),
]


@pytest.mark.parametrize(("job", "properties", "message"), REFUSALS)
def test_bad_property_combinations_fail_rendering_with_the_reason(job: str, properties: Any, message: str) -> None:
    with pytest.raises(RenderError) as failure:
        render(job, properties)
    assert message in str(failure.value)
    assert str(failure.value).startswith("Error filling in template '")


def test_a_value_the_model_refuses_fails_the_build_naming_the_key(tmp_path: Path) -> None:
    """Templates pass values through; the project's model is what catches a bad one, here, not on a cell."""
    rendered = render("cfnft-reconciler", merged(MINIMAL["cfnft-reconciler"], {"overlay_network": "10.255.0.0/33"}))
    with pytest.raises(StateError, match=r"reconciler\.json: policy\.overlay_network: "):
        reconciler_config(rendered, tmp_path)


def test_a_value_the_plugin_refuses_fails_the_build_naming_the_key() -> None:
    """The same for the conflist: the plugin's own parser is what catches a bad value."""
    rendered = render("cni", {"timeout_seconds": 0})
    with pytest.raises(CniError, match=r"timeout_seconds=0: must be a number of seconds"):
        cfnft_plugin(rendered)


# --- the example ops file ----------------------------------------------------------------------

# Test values for the variables the ops file uses (CredHub's certificate type has ca/certificate/private_key).
OPS_VARS: dict[str, Any] = {
    **{f"{cred}.{key}": PEM for cred in ("diego_bbs_client", "network_policy_client") for key in CERTIFICATE},
    "cfnft_nats_tls": CERTIFICATE,
    "cfnft_nats_cluster_tls": CERTIFICATE,
    **{
        name: f"{name}-value"
        for name in ("cfnft_nats_watcher_password", "cfnft_nats_operator_password", "cfnft_nats_cell_secret")
    },
}


def interpolated(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: interpolated(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolated(v) for v in value]
    if isinstance(value, str) and (m := re.fullmatch(r"\(\(([\w.]+)\)\)", value)):
        assert m.group(1) in OPS_VARS, f"ops file uses an unexpected variable {value}"
        return OPS_VARS[m.group(1)]
    return value


def ops() -> list[dict[str, Any]]:
    return load_yaml(OPS_FILE)


def ops_value(path: str) -> Any:
    matches = [op["value"] for op in ops() if op["path"] == path]
    assert len(matches) == 1, f"expected one operation on {path}, found {len(matches)}"
    return matches[0]


def added_jobs() -> dict[str, tuple[str, dict[str, Any]]]:
    """job name -> (instance group, properties) of the jobs the ops file adds from this release,
    to existing instance groups or with instance groups of their own."""
    out = {}
    for op in ops():
        if m := re.fullmatch(r"/instance_groups/name=([\w-]+)/jobs/-", op["path"]):
            assert op["value"]["release"] == "cni"
            out[op["value"]["name"]] = (m.group(1), op["value"].get("properties") or {})
        elif re.fullmatch(r"/instance_groups/name=[\w-]+:(before|after)|/instance_groups/-", op["path"]):
            for job in op["value"]["jobs"]:
                assert job["release"] == "cni"
                out[job["name"]] = (op["value"]["name"], job.get("properties") or {})
    return out


def test_ops_file_adds_every_job_of_the_release_where_it_belongs() -> None:
    placement = {job: group for job, (group, _) in added_jobs().items()}
    assert placement == {
        "cni": "diego-cell",
        "cfnft-reconciler": "diego-cell",
        "cfnft-watcher": "diego-api",
        "cfnft-nats": "cfnft-nats",
    }
    assert ops_value("/releases/name=cni?")["name"] == load_yaml(ROOT / "config" / "final.yml")["name"]


@pytest.mark.parametrize("job", JOBS)
def test_ops_file_properties_are_declared_and_render_into_valid_configs(job: str, tmp_path: Path) -> None:
    _, properties = added_jobs()[job]
    names = set(declared(job))
    undeclared = set(set_property_names(interpolated(properties), names)) - names
    assert not undeclared, f"the ops file sets properties {job} does not declare (BOSH ignores them): {undeclared}"
    assert load_all(job, render(job, interpolated(properties)), tmp_path)


def test_ops_file_points_garden_at_this_release_and_disables_silks_enforcement() -> None:
    garden = "/instance_groups/name=diego-cell/jobs/name=garden-cni/properties"
    assert ops_value(f"{garden}/cni_plugin_dir") == GARDEN_CNI_PLUGIN_DIR
    assert ops_value(f"{garden}/cni_config_dir") == GARDEN_CNI_CONFIG_DIR
    for silk_job in ("vxlan-policy-agent", "silk-cni"):
        assert ops_value(f"/instance_groups/name=diego-cell/jobs/name={silk_job}/properties/disable?") is True
    removed = [op["path"] for op in ops() if op["type"] == "remove"]
    assert not any("silk-daemon" in path for path in removed), "silk-daemon is the overlay: connectivity stays"


def test_ops_file_agrees_on_what_containers_may_resolve() -> None:
    """The DNS servers containers are told about must be ones their cell lets them reach."""
    jobs = added_jobs()
    assert jobs["cni"][1]["dns_servers"] == jobs["cfnft-reconciler"][1]["dns_servers"]


# --- cfnft-nats ----------------------------------------------------------------------------------


def nats_users(rendered: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    return {u["user"]: u for u in nats_server_config(rendered)["authorization"]["users"]}


def test_nats_users_are_the_roles_of_events_permissions_one_per_cell() -> None:
    """The ERB mirrors events/permissions.py; this is where the two must agree."""
    props = merged(MINIMAL["cfnft-nats"], {"cells": ["cell-z1-0"]})
    users = nats_users(render("cfnft-nats", props))
    cells = [c["id"] for c in CELLS] + ["cell-z1-0"]
    expected = {
        identity_name(Role.WATCHER): watcher_permissions(),
        identity_name(Role.OPERATOR): operator_permissions(),
        **{identity_name(Role.CELL, cell): cell_permissions(cell) for cell in cells},
    }
    assert {name: u["permissions"] for name, u in users.items()} == {
        name: permissions_config(p) for name, p in expected.items()
    }
    passwords = [u["password"] for u in users.values()]
    assert len(set(passwords)) == len(passwords), "every identity has a password of its own"


def test_a_reconciler_with_its_own_cell_id_is_the_one_cell_of_its_link() -> None:
    links = default_links("cfnft-nats") | {
        "cfnft-reconciler": link("cfnft-reconciler", {"cell_id": "cell-z1-0"}, CELLS[:1])
    }
    assert set(nats_users(render("cfnft-nats", MINIMAL["cfnft-nats"], links=links))) == {
        "watcher",
        "operator",
        "cell-cell-z1-0",
    }


def test_every_group_of_cells_linked_gets_its_identities_without_listing_instance_ids() -> None:
    """An isolation segment's cells are another instance group, whose instance ids BOSH chooses when
    it creates them: linked under a second name, its cells have identities as the shared cells do."""
    segment = instances("isolated-diego-cell", 3)
    links = default_links("cfnft-nats") | {
        "cfnft-reconciler-2": link("cfnft-reconciler", {}, segment),
        "cfnft-reconciler-4": link("cfnft-reconciler", {"cell_id": "cell-pinned"}, instances("pinned-cell", 1)),
    }
    users = nats_users(render("cfnft-nats", MINIMAL["cfnft-nats"], links=links))
    cells = [c["id"] for c in CELLS + segment] + ["cell-pinned"]
    assert set(users) == {"watcher", "operator", *(identity_name(Role.CELL, c) for c in cells)}
    for cell in cells:
        assert users[identity_name(Role.CELL, cell)]["permissions"] == permissions_config(cell_permissions(cell))


def test_each_cell_renders_the_password_the_server_holds_for_it_and_never_the_secret() -> None:
    nats_props = merged(MINIMAL["cfnft-nats"], {"cells": [INSTANCE_ID]})
    server = nats_users(render("cfnft-nats", nats_props))
    nats_link = {"cfnft-nats": link("cfnft-nats", nats_props, NATS_NODES)}
    cell = render("cfnft-reconciler", {}, links=nats_link)
    assert cell["config/certs/nats/password"].strip() == server[identity_name(Role.CELL, INSTANCE_ID)]["password"]
    assert cell["config/certs/nats/ca.crt"].strip() == PEM
    assert not any(nats_props["cell_password_secret"] in text for text in cell.values())
    watcher = render("cfnft-watcher", MINIMAL["cfnft-watcher"], links=nats_link)
    assert watcher["config/certs/nats/password"].strip() == server["watcher"]["password"]
    assert not any(nats_props["cell_password_secret"] in text for text in watcher.values())


def test_nats_nodes_route_to_each_other_over_mutual_tls_and_keep_jetstream_on_the_persistent_disk(
    tmp_path: Path,
) -> None:
    props = full("cfnft-nats")
    rendered = render("cfnft-nats", props)
    config = nats_server_config(rendered)
    assert config["server_name"] == f"cfnft-nats-{INSTANCE_ID}"
    assert config["port"] == props["port"] and config["http"] == f"127.0.0.1:{props['monitor']['port']}"
    assert config["cluster"]["routes"] == [
        f"nats-route://{n['address']}:{props['cluster']['port']}" for n in NATS_NODES
    ]
    assert config["cluster"]["tls"]["verify"] is True
    assert config["jetstream"]["store_dir"] == "/var/vcap/store/cfnft-nats"
    assert config["lame_duck_duration"] == f"{props['lame_duck']['duration_seconds']}s"
    assert config["lame_duck_grace_period"] == f"{props['lame_duck']['grace_period_seconds']}s"
    process = bpm_process("cfnft-nats", rendered, tmp_path)
    assert process["persistent_disk"] is True and "unsafe" not in process
    assert process["args"] == ["-c", "/var/vcap/jobs/cfnft-nats/config/nats-server.json"]
    single = nats_server_config(
        render(
            "cfnft-nats",
            MINIMAL["cfnft-nats"],
            links=default_links("cfnft-nats")
            | {"cfnft-nats-cluster": link("cfnft-nats", MINIMAL["cfnft-nats"], NATS_NODES[:1])},
        )
    )
    assert "cluster" not in single, "one node: no cluster, streams have one replica"


def test_nats_post_start_waits_for_healthz_and_monit_only_for_liveness() -> None:
    props = full("cfnft-nats")
    rendered = render("cfnft-nats", props)
    assert f'url="http://127.0.0.1:{props["monitor"]["port"]}/healthz"' in rendered["bin/post-start"]
    assert 'request "/healthz?js-server-only=true"' in rendered["monit"]


def test_the_release_vendors_the_nats_server_the_tests_run() -> None:
    from lab.natsserver import find_nats_server

    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server in the venv")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.split()[-1]
    spec = load_yaml(ROOT / "packages" / "nats-server" / "spec")
    assert spec["files"] == [f"nats-server/nats-server-{version}-linux-amd64.tar.gz"]
    assert f"version={version.lstrip('v')}\n" in (ROOT / "packages" / "nats-server" / "prepare").read_text()


NATS_REFUSALS = [
    pytest.param(
        "cfnft-reconciler", {}, {}, "nats.servers must be a non-empty list of NATS URLs (or consume a cfnft-nats link)"
    ),
    pytest.param("cfnft-reconciler", {"nats": _NATS}, {}, "NATS without TLS", id="reconciler-no-tls"),
    pytest.param(
        "cfnft-reconciler",
        {"nats": _NATS | {"tls": {"ca_cert": PEM}}},
        {},
        "NATS without credentials",
        id="reconciler-no-credentials",
    ),
    pytest.param("cfnft-watcher", merged(_WATCHER, {"nats": _NATS}), {}, "NATS without TLS", id="watcher-no-tls"),
    pytest.param(
        "cfnft-nats",
        merged(MINIMAL["cfnft-nats"], {"cells": ["cell.a"]}),
        None,
        "cell ids cannot be used in NATS subjects and consumer names: cell.a",
        id="cell-id",
    ),
    pytest.param(
        "cfnft-nats",
        merged(MINIMAL["cfnft-nats"], {"lame_duck": {"duration_seconds": 20}}),
        None,
        "lame_duck.duration_seconds must be at least 30 (nats-server's minimum): 20",
        id="lame-duck-duration",
    ),
    pytest.param(
        "cfnft-nats",
        merged(MINIMAL["cfnft-nats"], {"lame_duck": {"grace_period_seconds": 30}}),
        None,
        "lame_duck.grace_period_seconds must be at least 0 and less than lame_duck.duration_seconds: 30",
        id="lame-duck-grace",
    ),
    pytest.param(
        "cfnft-nats",
        {k: v for k, v in MINIMAL["cfnft-nats"].items() if k != "cluster"},
        None,
        "Can't find property '[\"cluster.tls.ca\"]'",
        id="cluster-tls",
    ),
]


@pytest.mark.parametrize(("job", "properties", "links", "message"), NATS_REFUSALS)
def test_nats_settings_that_could_not_work_fail_rendering(job: str, properties: Any, links: Any, message: str) -> None:
    with pytest.raises(RenderError) as failure:
        render(job, properties, links=links)
    assert message in str(failure.value)


def test_nats_insecure_renders_for_a_lab(tmp_path: Path) -> None:
    cfg = reconciler_config(render("cfnft-reconciler", {"nats": _NATS | {"insecure": True}}, links={}), tmp_path)
    assert cfg.nats.insecure and cfg.nats.ca_file is None and cfg.nats.user is None


def tls_properties(pki: Pki) -> dict[str, str]:
    """The job's tls.* (and cluster.tls.*) properties holding a lab PKI's server certificate."""
    return {
        "ca": pki.server.ca.read_text(),
        "certificate": pki.server.cert.read_text(),
        "private_key": pki.server.key.read_text(),
    }


def moved(tmp_path: Path, rendered: Mapping[str, str], job: str, where: str | None = None) -> Path:
    """Write every rendered file under tmp_path/`where` (default: job) and point the job's paths
    (its job directory, the store, bpm's run directory, the log directory) under tmp_path."""
    root = tmp_path / (where or job)
    moves = {
        f"/var/vcap/jobs/{job}": root,
        "/var/vcap/store": tmp_path / "store",
        "/var/vcap/sys/run": tmp_path / "run",
        "/var/vcap/sys/log": tmp_path / "log",
    }
    for destination, text in rendered.items():
        path = root / destination
        path.parent.mkdir(parents=True, exist_ok=True)
        for old, new in moves.items():
            text = text.replace(old, str(new))
        path.write_text(text)
    return root


@pytest.mark.nats
async def test_nats_server_runs_the_rendered_config_and_the_rendered_identities_work(tmp_path: Path) -> None:
    """The real nats-server with what the director would render (real certificates, paths moved
    under tmp_path), and the reconciler's and watcher's rendered settings connecting to it."""
    from events.connect import connect
    from events.permissions import cell_consumers, inbox_prefix
    from events.publisher import StatePublisher
    from lab.natsserver import find_nats_server, free_port

    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server in the venv")
    tls = tls_properties(make_pki(tmp_path / "pki"))
    port, monitor = free_port(), free_port()
    props = merged(
        MINIMAL["cfnft-nats"], {"tls": tls, "port": port, "monitor": {"port": monitor}, "cells": [INSTANCE_ID]}
    )
    one_node = default_links("cfnft-nats") | {"cfnft-nats-cluster": link("cfnft-nats", props, NATS_NODES[:1])}
    server = render("cfnft-nats", props, links=one_node)

    # A node of the three-node cluster (routes over mutual TLS) is a configuration nats-server accepts.
    node = render("cfnft-nats", merged(props, {"cluster": {"tls": tls}}))
    checked = subprocess.run(
        [str(binary), "-c", str(moved(tmp_path, node, "cfnft-nats", "node") / "config/nats-server.json"), "-t"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    server_dir = moved(tmp_path, server, "cfnft-nats")
    process = subprocess.Popen(
        [str(binary), "-c", str(server_dir / "config/nats-server.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        nats_link = {"cfnft-nats": link("cfnft-nats", props, NATS_NODES[:1])}
        localhost = {"nats": {"servers": [f"tls://127.0.0.1:{port}"]}}

        async def client(job: str, properties: Mapping[str, Any], role: Role, cell_id: str | None = None):
            # Servers named by property (here: where the test's server listens) come without the
            # link's CA, so the CA is given too; the credentials still come from the link.
            here = merged(localhost, {"nats": {"tls": {"ca_cert": tls["ca"]}}})
            rendered = render(job, merged(properties, here), links=nats_link)
            directory = moved(tmp_path, rendered, job)
            name = "config/reconciler.json" if job == "cfnft-reconciler" else "config/watcher.json"
            cfg = NatsConfig.model_validate(json.loads((directory / name).read_text())["nats"])
            return await connect(cfg, job, inbox_prefix(role, cell_id), forever=False)

        deadline = time.monotonic() + 10
        while True:
            try:
                watcher = await client("cfnft-watcher", MINIMAL["cfnft-watcher"], Role.WATCHER)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await StatePublisher(watcher, "bbs", replicas=1).publish(
            ContainerMessage(version=1, cell_id=INSTANCE_ID, handle="h", container=None)
        )
        cell = await client("cfnft-reconciler", {}, Role.CELL, INSTANCE_ID)
        own = cell_consumers(INSTANCE_ID)[0]
        info = await cell.jetstream(timeout=2).add_consumer(
            "CFNFT_STATE",
            ConsumerConfig(name=own.names[0], filter_subject=own.filter_subject, deliver_subject=cell.new_inbox()),
        )
        assert info.num_pending == 1
        await cell.close()
        await watcher.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def one_node_links() -> dict[str, Any]:
    return default_links("cfnft-nats") | {
        "cfnft-nats-cluster": link("cfnft-nats", MINIMAL["cfnft-nats"], NATS_NODES[:1])
    }


def run_drain(directory: Path, tmp_path: Path, server: subprocess.Popen[str] | None = None) -> tuple[str, str]:
    """Run a moved bin/drain as BOSH does; its stdout (what BOSH reads) and its log. A `server`
    started by this test is reaped as soon as it exits (bpm does that on a VM), or the drain would
    see its zombie as still running."""
    drain = subprocess.Popen(
        ["bash", str(directory / "bin/drain")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while drain.poll() is None:
        assert time.monotonic() < deadline, "the drain script never finished"
        if server is not None:
            server.poll()
        time.sleep(0.1)
    stdout, stderr = drain.communicate()
    assert drain.returncode == 0 and stderr == "", stderr
    return stdout, (tmp_path / "log/cfnft-nats/drain.log").read_text()


def test_nats_drain_of_a_single_node_stops_at_once(tmp_path: Path) -> None:
    directory = moved(tmp_path, render("cfnft-nats", MINIMAL["cfnft-nats"], links=one_node_links()), "cfnft-nats")
    stdout, log = run_drain(directory, tmp_path)
    assert stdout == "0\n"
    assert "a single node" in log


def test_nats_drain_of_a_node_that_is_not_running_is_done(tmp_path: Path) -> None:
    directory = moved(tmp_path, render("cfnft-nats", MINIMAL["cfnft-nats"]), "cfnft-nats")
    stdout, log = run_drain(directory, tmp_path)
    assert stdout == "0\n"
    assert "not running" in log


@pytest.mark.nats
def test_nats_drain_puts_the_running_server_in_lame_duck_mode_and_waits_for_it_to_exit(tmp_path: Path) -> None:
    """The rendered drain against a real nats-server run from the rendered configuration, its pid
    where bpm writes it: BOSH reads 0 only once the server has gone through lame duck mode and exited."""
    from lab.natsserver import find_nats_server, free_port, healthz

    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server in the venv")
    tls = tls_properties(make_pki(tmp_path / "pki"))
    props = merged(
        MINIMAL["cfnft-nats"],
        {
            "tls": tls,
            "port": free_port(),
            "monitor": {"port": free_port()},
            "lame_duck": {"duration_seconds": 30, "grace_period_seconds": 1},
        },
    )
    # The server runs alone (no routes to nodes that are not there); the drain is rendered for a
    # node of three, as in production.
    server = moved(tmp_path, render("cfnft-nats", props, links=one_node_links()), "cfnft-nats", "server")
    drain = moved(tmp_path, render("cfnft-nats", merged(props, {"cluster": {"tls": tls}})), "cfnft-nats")
    process = subprocess.Popen(
        [str(binary), "-c", str(server / "config/nats-server.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pidfile = tmp_path / "run/bpm/cfnft-nats/cfnft-nats.pid"
        pidfile.parent.mkdir(parents=True)
        pidfile.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + 20
        while not healthz(props["monitor"]["port"]):  # BOSH drains a node that runs, not one still starting
            assert process.poll() is None and time.monotonic() < deadline, "the rendered server did not start"
            time.sleep(0.1)
        stdout, log = run_drain(drain, tmp_path, process)
        assert stdout == "0\n"
        assert process.poll() is not None, "BOSH was told the node drained while it still ran"
        assert f"(pid {process.pid}) enters lame duck mode" in log and "exited" in log
        assert process.stderr is not None
        assert "Entering lame duck mode" in process.stderr.read()
    finally:
        process.kill()
        process.wait(timeout=10)
