"""The controllers' identities on the local cluster: deploy/'s ServiceAccounts and RBAC.

In a real cluster each controller authenticates as its ServiceAccount and may do only
what deploy/'s (Cluster)Roles allow. The local stack does the same, so RBAC is tested
for real every time the demo runs: it applies the namespace, ServiceAccounts and RBAC
from deploy/ (not the Deployments: the controllers run as local processes), asks the
TokenRequest API for a token of each ServiceAccount, and writes a kubeconfig per
controller whose only user is that token.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from kaito.runtime.client import Client
from kaito.runtime.resource import SERVICEACCOUNTS
from kaito_dev.controlplane import REPO_ROOT, ControlPlaneError

__all__ = [
    "CONTROLLERS",
    "Identity",
    "apply_identities",
    "service_account_kubeconfig",
    "write_token_kubeconfig",
]

DEPLOY = REPO_ROOT / "deploy"
NAMESPACE = "kaito-system"


@dataclass(frozen=True)
class Identity:
    component: str
    service_account: str
    namespace: str = NAMESPACE

    @property
    def files(self) -> list[Path]:
        return [
            DEPLOY / self.component / "serviceaccount.yaml",
            DEPLOY / self.component / "rbac.yaml",
        ]


CONTROLLERS = (
    Identity("gpu-provisioner", "gpu-provisioner"),
    Identity("workspace-controller", "kaito-workspace-controller"),
)


def apply_identities(admin_kubeconfig: str, identities: tuple[Identity, ...] = CONTROLLERS) -> None:
    """``kubectl apply`` deploy/'s namespace, ServiceAccounts and RBAC."""
    files = [DEPLOY / "namespace.yaml"] + [f for ident in identities for f in ident.files]
    argv = ["kubectl", f"--kubeconfig={admin_kubeconfig}", "apply"]
    for path in files:
        argv += ["-f", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"kubectl apply of deploy/ RBAC failed: {proc.stderr.strip()}")


def write_token_kubeconfig(admin_kubeconfig: str, token: str, path: Path) -> str:
    """The admin kubeconfig's cluster with ``token`` as the only user; returns the path."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == current["context"]["cluster"])
    ca = cluster["cluster"].get("certificate-authority")
    if ca and not os.path.isabs(ca):  # relative paths resolve against the original
        cluster["cluster"]["certificate-authority"] = str(Path(admin_kubeconfig).parent / ca)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


async def service_account_kubeconfig(
    client: Client,
    admin_kubeconfig: str,
    identity: Identity,
    path: Path,
    *,
    expiration_seconds: int = 24 * 3600,
) -> str:
    """A kubeconfig authenticating as ``identity``'s ServiceAccount (a TokenRequest token)."""
    answer = await client.request(
        "POST",
        SERVICEACCOUNTS.path(
            namespace=identity.namespace, name=identity.service_account, subresource="token"
        ),
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        },
    )
    return write_token_kubeconfig(admin_kubeconfig, answer["status"]["token"], path)
