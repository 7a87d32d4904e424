"""A webhook's TLS material: a CA of its own and the serving certificate it signs.

The apiserver trusts exactly the CA bundle in the webhook's configuration, so a webhook
needs no cluster CA: it can make its own. With several replicas the material lives in
one Secret, because every replica must present a certificate from the *same* CA.
The server reads the pair from files (`ServingCertificate.write`, then `server.py`'s
certificate directory), as it would from a mounted Secret.

Certificates are valid for ten years and are regenerated at start-up when they expire
within 30 days or do not name the hosts asked for; rotation while running would need
the replicas to agree on a new CA, which a restart does for free.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509

from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, Conflict, NotFound
from kaito.runtime.pki import CertificateAuthority, server_ssl_context
from kaito.runtime.resource import SECRETS

log = structlog.get_logger("kaito.runtime.webhook.certs")

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
        return server_ssl_context(self.cert_pem, self.key_pem)

    def write(
        self, directory: Path, *, cert_name: str = "tls.crt", key_name: str = "tls.key"
    ) -> None:
        """Write the pair (and ``ca.crt``) into ``directory``, the key readable by us only.

        Each file is replaced by a rename, so a `CertWatcher` never reads half a file.
        """
        directory.mkdir(parents=True, exist_ok=True)
        for name, data, mode in (
            ("ca.crt", self.ca_pem, 0o644),
            (cert_name, self.cert_pem, 0o644),
            (key_name, self.key_pem, 0o600),
        ):
            tmp = directory / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.touch(mode=mode)
            tmp.write_bytes(data)
            tmp.replace(directory / name)


def _host_key(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def generate_certificate(
    hosts: Sequence[str], *, ca_name: str = "kaito-webhook-ca"
) -> ServingCertificate:
    """A new CA (EC P-256) named ``ca_name`` and a serving certificate for ``hosts``
    (DNS names or IPs; the first is the common name)."""
    ca = CertificateAuthority.create(ca_name, validity=CERT_VALIDITY)
    cert_pem, key_pem = ca.issue_serving(hosts[0], hosts, validity=CERT_VALIDITY)
    return ServingCertificate(ca_pem=ca.cert_pem, cert_pem=cert_pem, key_pem=key_pem)


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
    ca_name: str = "kaito-webhook-ca",
) -> ServingCertificate:
    """The certificate in Secret ``namespace/secret_name``, created or renewed if needed.

    Replicas starting together race to create the Secret; the loser reads the winner's,
    so they all present certificates from one CA.
    """
    for _ in range(5):
        try:
            secret = await client.get(SECRETS, secret_name, namespace)
        except NotFound:
            cert = generate_certificate(hosts, ca_name=ca_name)
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
        cert = generate_certificate(hosts, ca_name=ca_name)
        secret["data"] = _secret_data(cert)
        try:
            await client.update(SECRETS, secret)
        except Conflict:
            continue
        log.info("webhook certificate renewed", secret=f"{namespace}/{secret_name}")
        return cert
    raise RuntimeError(f"could not settle the webhook certificate in {namespace}/{secret_name}")
