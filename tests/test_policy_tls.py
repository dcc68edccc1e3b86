"""events/tls.py (SSL contexts for CF's mutual TLS) and events/httpsource.py (every failure of a call
as one SourceError that says why), against the policy server simulator over real TLS."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

from events.httpsource import Reason, SourceError, decode_json, get_json, request_text
from events.tls import TlsConfigError, TlsFiles, client_context, server_context
from lab.pki import Pki
from lab.sim.policy import PolicyRoute, PolicyServerSimulator

PATH = "/networking/v1/internal/policies"


async def fail(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext, timeout: float = 5) -> SourceError:
    with pytest.raises(SourceError) as raised:
        await get_json(session, url, ssl_context=ctx, timeout=timeout)
    return raised.value


def test_file_problems_name_the_role_and_path(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match=rf"^TLS CA {tmp_path}/missing.pem: No such file or directory$"):
        client_context(TlsFiles(tmp_path / "missing.pem"))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(TlsConfigError, match=rf"^TLS certificate/key {not_pem}: not a readable PEM certificate"):
        client_context(TlsFiles(pki.client.ca, not_pem, not_pem))
    with pytest.raises(TlsConfigError, match="cert and key go together"):
        client_context(TlsFiles(pki.client.ca, pki.client.cert, None))
    with pytest.raises(TlsConfigError, match="a server needs both cert and key"):
        server_context(TlsFiles(pki.client.ca))


def test_contexts_want_tls12_and_verify_peers(pki: Pki) -> None:
    server = server_context(pki.server)
    client = client_context(pki.client)
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert server_context(pki.server, require_client_cert=False).verify_mode == ssl.CERT_NONE


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_a_client_below_tls12_is_refused(pki: Pki, session: aiohttp.ClientSession) -> None:
    async with PolicyServerSimulator(pki.server, tls12_ciphers=None) as sim:
        old = client_context(pki.client)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        error = await fail(session, sim.url + PATH, old)
        assert error.reason is Reason.TLS and "protocol version" in error.detail
        tls12 = client_context(pki.client)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await get_json(session, sim.url + PATH, ssl_context=tls12, timeout=5) == {
            "total_policies": 0,
            "policies": [],
        }


async def test_client_certificate_of_another_ca(
    sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    error = await fail(session, sim.url + PATH, client_context(pki.client_of_other_ca))
    assert error.reason is Reason.TLS
    assert str(error) == (
        f"{sim.url}{PATH}: server refused our client certificate (tlsv1 alert unknown ca): "
        "check cert_file/key_file and that they are signed by the CA the server trusts"
    )


async def test_no_client_certificate(sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession) -> None:
    error = await fail(session, sim.url + PATH, client_context(TlsFiles(pki.client.ca)))
    assert error.reason is Reason.TLS and "(tlsv13 alert certificate required)" in error.detail


async def test_server_certificate_not_trusted(
    sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    error = await fail(session, sim.url + PATH, client_context(pki.trusting_other_ca))
    assert error.reason is Reason.TLS
    assert error.detail == (
        "server certificate rejected (check ca_file and the URL's host): self-signed certificate in certificate chain"
    )


async def test_server_certificate_for_another_name(
    sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    wrong_name = sim.url.replace("127.0.0.1", "localhost") + PATH  # the certificate names 127.0.0.1 only
    error = await fail(session, wrong_name, client_context(pki.client))
    assert error.reason is Reason.TLS
    assert error.detail.endswith("Hostname mismatch, certificate is not valid for 'localhost'.")


async def test_nothing_listening(pki: Pki, session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        error = await fail(session, f"https://127.0.0.1:{port}{PATH}", client_context(pki.client))
    assert error.reason is Reason.CONNECT and "cannot connect: Connect call failed" in error.detail


async def test_timeout(sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession) -> None:
    sim.delay(PolicyRoute.POLICIES, 1.0)
    error = await fail(session, sim.url + PATH, client_context(pki.client), timeout=0.1)
    assert error.reason is Reason.TIMEOUT and error.detail == "no complete answer within 0.1 s"


async def test_http_error_keeps_status_and_body(
    sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    sim.fail(PolicyRoute.POLICIES, status=503)
    error = await fail(session, sim.url + PATH, client_context(pki.client))
    assert (error.reason, error.status) == (Reason.HTTP, 503)
    assert error.detail == 'HTTP 503: {"error": "database read failed"}'


async def test_accepted_statuses_are_returned(
    sim: PolicyServerSimulator, pki: Pki, session: aiohttp.ClientSession
) -> None:
    status, _ = await request_text(
        session, "GET", sim.url + "/nowhere", ssl_context=client_context(pki.client), timeout=5, ok=(404,)
    )
    assert status == 404


def test_a_body_that_is_not_json() -> None:
    with pytest.raises(SourceError, match=r"^https://x/y: body is not JSON \(Expecting value at 0\): <html> oops"):
        decode_json("https://x/y", "<html> oops")
