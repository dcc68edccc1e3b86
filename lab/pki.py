"""Certificates for the demo and tests: one CA, a server certificate, a client certificate.

ECDSA keys (trustme's default): RSA keys take seconds each on a small machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from events.tls import TlsFiles


@dataclass(frozen=True, slots=True)
class Pki:
    server: TlsFiles
    client: TlsFiles


def make_pki(directory: Path, *server_names: str) -> Pki:
    """Write the CA, a server certificate for `server_names` (and 127.0.0.1), and a client one."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    files = {}
    for role, identities in (("server", (*server_names, "127.0.0.1")), ("client", ("cfnft",))):
        issued = ca.issue_cert(*identities)
        cert, key = directory / f"{role}.pem", directory / f"{role}.key"
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(cert), append=cert.exists())
        issued.private_key_pem.write_to_path(str(key))
        files[role] = TlsFiles(ca_file, cert, key)
    return Pki(files["server"], files["client"])
