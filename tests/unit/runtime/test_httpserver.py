"""The runtime's HTTP server and certificate watcher, with real sockets and TLS handshakes."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from kaito.runtime.certwatcher import CertWatcher
from kaito.runtime.httpserver import HttpServer, parse_bind
from kaito.runtime.pki import CertificateAuthority, server_ssl_context

HOSTS = ["127.0.0.1", "localhost"]


def hello_app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def issue(directory: Path, common_name: str) -> CertificateAuthority:
    """A new CA; its serving certificate for HOSTS written as tls.crt/tls.key."""
    ca = CertificateAuthority.create(f"{common_name}-ca")
    cert_pem, key_pem = ca.issue_serving(common_name, HOSTS)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (("tls.crt", cert_pem), ("tls.key", key_pem)):
        tmp = directory / f".{name}"
        tmp.write_bytes(data)
        tmp.replace(directory / name)  # atomically, as the kubelet swaps a Secret volume
    return ca


async def handshake(port: int, ca: CertificateAuthority, server_hostname: str) -> str:
    """A verified TLS handshake; the common name of the certificate the server sent."""
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_bind_addresses_parse_as_controller_runtime_flags() -> None:
    assert parse_bind(":8080") == ("0.0.0.0", 8080)
    assert parse_bind("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_bind("0") is None and parse_bind("") is None


async def test_port_zero_binds_a_free_port_reported_by_the_server() -> None:
    async with HttpServer(hello_app(), host="127.0.0.1", port=0) as server:
        assert server.started and server.port and server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as s, s.get(server.url + "/") as r:
            assert await r.text() == "hello"
    assert not server.started
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_a_fixed_tls_context_is_served(tmp_path: Path) -> None:
    ca = issue(tmp_path, "fixed")
    ctx = server_ssl_context(
        (tmp_path / "tls.crt").read_bytes(), (tmp_path / "tls.key").read_bytes()
    )
    async with HttpServer(hello_app(), host="127.0.0.1", tls=ctx) as server:
        assert server.url.startswith("https://")
        assert server.port is not None
        assert await handshake(server.port, ca, "127.0.0.1") == "fixed"


@pytest.mark.parametrize("server_hostname", ["127.0.0.1", "localhost"], ids=["no-sni", "sni"])
async def test_a_rotated_certificate_is_served_from_the_next_handshake(
    tmp_path: Path, server_hostname: str
) -> None:
    first = issue(tmp_path, "first")
    watcher = CertWatcher(tmp_path / "tls.crt", tmp_path / "tls.key", poll_interval=0.02)
    async with HttpServer(hello_app(), host="127.0.0.1", tls=watcher) as server:
        assert server.port is not None
        assert await handshake(server.port, first, server_hostname) == "first"
        # A connection made before the rotation keeps the certificate it negotiated.
        ctx = ssl.create_default_context(cadata=first.cert_pem.decode())
        _, before = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=ctx, server_hostname=server_hostname
        )

        second = issue(tmp_path, "second")
        async with asyncio.timeout(5):
            while watcher.reloads == 0:
                await asyncio.sleep(0.01)

        assert await handshake(server.port, second, server_hostname) == "second"
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(server.port, first, server_hostname)
        der = before.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert "first" in x509.load_der_x509_certificate(der).subject.rfc4514_string()
        before.close()
        await before.wait_closed()


async def test_a_pair_that_does_not_load_keeps_the_previous_certificate(tmp_path: Path) -> None:
    first = issue(tmp_path, "first")
    watcher = CertWatcher(tmp_path / "tls.crt", tmp_path / "tls.key", poll_interval=3600)
    async with HttpServer(hello_app(), host="127.0.0.1", tls=watcher) as server:
        assert server.port is not None
        (tmp_path / "tls.key").write_bytes(b"not a key")  # cert and key no longer match
        with pytest.raises(ssl.SSLError):
            watcher.read_certificate()
        assert await handshake(server.port, first, "127.0.0.1") == "first"

        second = issue(tmp_path, "second")  # the rotation completes
        assert watcher.read_certificate() is True
        assert watcher.read_certificate() is False  # unchanged files: nothing to do
        assert await handshake(server.port, second, "127.0.0.1") == "second"
        assert watcher.reloads == 1


def test_a_missing_pair_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CertWatcher(tmp_path / "tls.crt", tmp_path / "tls.key")
