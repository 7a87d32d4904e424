"""TLS for the emulator when run alone (``kaito dev aks-emulator``) with no CA handed in.

The SDK sends bearer tokens over HTTPS only, so the emulator always serves TLS. Tests
and the dev cluster give it a certificate from their own CA; run alone, it makes a CA
of its own (``ca.crt``, the bundle clients verify against: ``ARM_CA_BUNDLE``) and a
serving certificate from it. The emulator serves the files through a `CertWatcher`, so
replacing them changes the certificate without a restart.
"""

from __future__ import annotations

from pathlib import Path

from kaito.runtime.pki import CertificateAuthority


def write_self_signed(directory: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` for ``hosts``; return (ca, cert, key)."""
    ca = CertificateAuthority.create("kaito-aks-emulator-ca")
    ca_crt, _ = ca.write(directory)
    cert_pem, key_pem = ca.issue_serving("kaito-aks-emulator", hosts)
    crt, key = directory / "tls.crt", directory / "tls.key"
    crt.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    return ca_crt, crt, key
