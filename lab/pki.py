"""Certificates for the demo and the tests: one CA, a server certificate, client certificates, impostors.

ECDSA keys (trustme's default): RSA keys take seconds each on a small machine. Clients negotiate
TLS 1.3, where CF's TLS 1.2 cipher restriction (ECDHE-RSA only) does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from events.tls import TlsFiles


@dataclass(frozen=True, slots=True)
class Pki:
    """PEM files for one run: the simulators' server side, our client, and two impostors."""

    server: TlsFiles
    """The servers' certificate and key; `ca` verifies client certificates."""
    client: TlsFiles
    """Our client certificate and key; `ca` verifies the servers."""
    client_of_other_ca: TlsFiles
    """A client certificate the servers' CA never signed."""
    trusting_other_ca: TlsFiles
    """Our client certificate, but trusting a CA that did not sign the servers."""


def make_pki(directory: Path, *server_names: str) -> Pki:
    """Write a CA, a server certificate for `server_names` and 127.0.0.1, a client certificate, and
    the same from an unrelated CA, as PEM files under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, other_ca = trustme.CA(), trustme.CA()

    def write(name: str, blob: trustme.Blob) -> Path:
        path = directory / name
        blob.write_to_path(str(path))
        return path

    def issue(issuer: trustme.CA, name: str, *identities: str) -> tuple[Path, Path]:
        issued = issuer.issue_cert(*identities)
        cert = directory / f"{name}.pem"
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(cert), append=cert.exists())
        return cert, write(f"{name}.key", issued.private_key_pem)

    ca_file, other_ca_file = write("ca.pem", ca.cert_pem), write("other-ca.pem", other_ca.cert_pem)
    client = issue(ca, "client", "cfnft-watcher")
    return Pki(
        server=TlsFiles(ca_file, *issue(ca, "server", *server_names, "127.0.0.1")),
        client=TlsFiles(ca_file, *client),
        client_of_other_ca=TlsFiles(ca_file, *issue(other_ca, "other-client", "cfnft-watcher")),
        trusting_other_ca=TlsFiles(other_ca_file, *client),
    )
