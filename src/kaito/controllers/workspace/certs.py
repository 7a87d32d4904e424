"""The webhook's TLS material: a CA of its own and the serving certificate it signs.

The apiserver trusts exactly the CA bundle in the ValidatingWebhookConfiguration, so the
webhook needs no cluster CA: it makes its own. With several replicas the material lives
in one Secret, because every replica must present a certificate from the *same* CA.

Certificates are valid for ten years and are regenerated at start-up when they expire
within 30 days or do not name the hosts asked for; rotation while running would need
the replicas to agree on a new CA, which a restart does for free.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, Conflict, NotFound
from kaito.runtime.resource import SECRETS

log = structlog.get_logger("kaito.controllers.workspace.certs")

CERT_VALIDITY = dt.timedelta(days=3650)
CERT_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class ServingCertificate:
    """A CA and the serving certificate it signed, all PEM."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def usable_for(self, hosts: Sequence[str], *, now: dt.datetime | None = None) -> bool:
        """Names every host and stays valid for longer than `CERT_RENEW_BEFORE`."""
        cert = self.certificate
        now = now or dt.datetime.now(dt.UTC)
        if cert.not_valid_after_utc - now < CERT_RENEW_BEFORE:
            return False
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        names = set(sans.get_values_for_type(x509.DNSName))
        names |= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        return all(_host_key(h) in names for h in hosts)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads keys only from files: a private temporary directory, gone at once.
        with tempfile.TemporaryDirectory(prefix="kaito-webhook-") as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(self.cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(self.key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx


def _host_key(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def generate_certificate(hosts: Sequence[str]) -> ServingCertificate:
    """A new CA (EC P-256) and a serving certificate for ``hosts`` (DNS names or IPs)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kaito-workspace-webhook-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServingCertificate(
        ca_pem=ca.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def _from_secret(secret: dict[str, Any]) -> ServingCertificate | None:
    data = secret.get("data") or {}
    try:
        return ServingCertificate(
            ca_pem=base64.b64decode(data["ca.crt"]),
            cert_pem=base64.b64decode(data["tls.crt"]),
            key_pem=base64.b64decode(data["tls.key"]),
        )
    except (KeyError, ValueError):
        return None


def _secret_data(cert: ServingCertificate) -> dict[str, str]:
    return {
        "ca.crt": base64.b64encode(cert.ca_pem).decode(),
        "tls.crt": base64.b64encode(cert.cert_pem).decode(),
        "tls.key": base64.b64encode(cert.key_pem).decode(),
    }


async def load_or_create_certificate(
    client: Client,
    *,
    namespace: str,
    secret_name: str,
    hosts: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> ServingCertificate:
    """The certificate in Secret ``namespace/secret_name``, created or renewed if needed.

    Replicas starting together race to create the Secret; the loser reads the winner's,
    so they all present certificates from one CA.
    """
    for _ in range(5):
        try:
            secret = await client.get(SECRETS, secret_name, namespace)
        except NotFound:
            cert = generate_certificate(hosts)
            body = {
                "metadata": {
                    "name": secret_name,
                    "namespace": namespace,
                    "labels": dict(labels or {}),
                },
                "type": "kubernetes.io/tls",
                "data": _secret_data(cert),
            }
            try:
                await client.create(SECRETS, body)
            except AlreadyExists:
                continue
            log.info("webhook certificate created", secret=f"{namespace}/{secret_name}")
            return cert
        cert_or_none = _from_secret(secret)
        if cert_or_none is not None and cert_or_none.usable_for(hosts):
            return cert_or_none
        cert = generate_certificate(hosts)
        secret["data"] = _secret_data(cert)
        try:
            await client.update(SECRETS, secret)
        except Conflict:
            continue
        log.info("webhook certificate renewed", secret=f"{namespace}/{secret_name}")
        return cert
    raise RuntimeError(f"could not settle the webhook certificate in {namespace}/{secret_name}")
