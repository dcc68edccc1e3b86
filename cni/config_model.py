"""A pydantic mirror of cfnft-cni's plugin object, for tools and tests (the BOSH template tests load the
rendered conflist with it). The plugin itself never imports this module: it checks the same rules by
hand in cni/config.py, and tests/test_cni_config.py keeps the two in step.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from cni.config import (
    DEFAULT_SOCKET_PATH,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_SOCKET_PATH_BYTES,
    MAX_TIMEOUT_SECONDS,
    PROTOCOL_KEYS,
    RESERVED_PREFIX,
    PluginConfig,
)

AbsolutePath = Annotated[str, Field(pattern=r"^/")]


class PluginConfigModel(BaseModel):
    """cfnft-cni's object in a conflist. Keys the CNI runtime or Garden add (cniVersion, name, prevResult,
    runtimeConfig, metadata, cni.dev/...) are accepted and ignored, as the plugin does."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    type: Literal["cfnft-cni"]
    """The plugin's executable name."""
    socket_path: AbsolutePath = DEFAULT_SOCKET_PATH
    """Unix socket of the cell's cfnft reconciler; must equal the reconciler's `socket_path`."""
    timeout_seconds: Annotated[float, Strict(), Field(gt=0, le=MAX_TIMEOUT_SECONDS)] = DEFAULT_TIMEOUT_SECONDS
    """How long ADD (and DEL) wait for the reconciler's commit; ADD then fails with CNI error 11."""
    dns_servers: list[Annotated[str, Strict()]] = Field(default_factory=list)
    """Nameservers (IP addresses) put into the ADD result's dns.nameservers; Garden writes them to resolv.conf."""
    log_file: AbsolutePath | None = None
    """Where to append one JSON line per invocation; unset: no log."""

    @model_validator(mode="before")
    @classmethod
    def _ignore_protocol_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {
                k: v
                for k, v in data.items()
                if k == "type" or (k not in PROTOCOL_KEYS and not k.startswith(RESERVED_PREFIX))
            }
        return data

    @field_validator("socket_path")
    @classmethod
    def _fits_sockaddr(cls, value: str) -> str:
        if len(value.encode()) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(f"longer than a unix socket path may be ({MAX_SOCKET_PATH_BYTES} bytes)")
        return value

    @field_validator("dns_servers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for server in value:
            ip_address(server)  # its ValueError names the value
        return value

    def to_plugin_config(self) -> PluginConfig:
        """The same settings as the plugin reads them."""
        return PluginConfig(self.socket_path, float(self.timeout_seconds), tuple(self.dns_servers), self.log_file)
