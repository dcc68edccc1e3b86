"""Configuration of `cfnft reconcile`, validated by pydantic.

The file is JSON (the BOSH job renders it); flags override single keys, and are checked as the
file is (cfnft/commands.py). A bad file is refused with every problem named by file and key
(`events.problems.StateError`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from events.connect import NatsConfig
from events.listen import ListenAddress
from events.models import CellConfig
from events.problems import load_model_file
from reconciler.admission import Limits


class FlowLogConfig(BaseModel):
    """Where the flow log goes (reconciler/flowlog.py), and what it says about the cell."""

    model_config = ConfigDict(extra="forbid")

    file: Path = Field(description="JSON lines are appended here; SIGHUP reopens it")
    host_ip: str = Field("", description="the cell's address, as iptables-logger reports it")
    host_guid: str = Field("", description="the cell's BOSH instance id, as iptables-logger reports it")


class ReconcilerConfig(BaseModel):
    """`cfnft reconcile` settings."""

    model_config = ConfigDict(extra="forbid")

    cell_id: str = Field(min_length=1, description="this cell's id, as BBS knows it (ActualLRPInstanceKey.cell_id)")
    nats: NatsConfig = Field(default_factory=NatsConfig)
    netns: str | None = Field(
        None, min_length=1, description="apply rules inside this named network namespace (tests, demo)"
    )
    policy: CellConfig = Field(
        default_factory=CellConfig,
        description="operator policy config of the cell; a cfnft.state.config.<cell_id> message overrides it",
    )
    socket_path: Path = Field(Path("/var/vcap/data/cfnft/reconciler.sock"), description="CNI plugin endpoint")
    state_dir: Path = Field(Path("/var/vcap/data/cfnft"), description="where the last known state is kept")
    metrics_listen: ListenAddress = Field(
        "127.0.0.1:9301", description="host:port of /metrics, /healthz, /readyz; empty: no listener"
    )
    drift_probe_seconds: float = Field(1.0, gt=0, description="cheap check that our chains are intact")
    full_check_seconds: float = Field(30.0, gt=0, description="full read-back of the table, set elements included")
    retry_max_seconds: float = Field(10.0, gt=0, description="cap of the apply retry backoff")
    rebuild_after_failures: int = Field(3, ge=1, description="failed applies before the table is rebuilt whole")
    give_up_after_failures: int = Field(20, ge=1, description="failed applies before the process exits for monit")
    flow_log: FlowLogConfig | None = Field(
        None, description="write the packets the table logs as JSON lines (iptables-logger's shape); none: off"
    )
    rule_metrics_seconds: float = Field(
        30.0, gt=0, description="how often the per-group and per-policy totals on /metrics are read from the kernel"
    )
    consumer_heartbeat_seconds: float = Field(
        1.0,
        ge=0.1,
        description="idle heartbeat of the cell's JetStream consumers: three missed (the server holding one "
        "went away) and it resumes from where it was",
    )
    replay_jitter_seconds: float = Field(
        10.0,
        ge=0,
        description="a full replay other than the first (the stream was lost) waits a random part of this, "
        "so that the cells do not all read the stream at once",
    )
    state_check_seconds: float = Field(
        30.0,
        gt=0,
        description="how often the cell asks which epoch markers the state stream holds: one it read that is "
        "gone means a purge, and the stream is replayed",
    )
    limits: Limits = Field(default_factory=Limits, description="host ports and ruleset sizes this cell accepts")


def load_config(path: Path) -> ReconcilerConfig:
    """The reconciler's config file; StateError (every problem, naming file and key) if unusable."""
    return load_model_file(ReconcilerConfig, path, what="reconciler config")
