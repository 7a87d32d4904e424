"""deploy/gpu-provisioner against the real apiserver: the manifests are accepted, and the
ClusterRole is enough: a provisioner authenticated as the ServiceAccount (a token from
the TokenRequest API), with leader election in kaito-system, serves a Machine from
creation to Ready to deletion."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.provisioner.app import Provisioner
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import AlreadyExists, NotFound
from kaito.runtime.manager import ManagerOptions
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    LEASES,
    NAMESPACES,
    SERVICEACCOUNTS,
    Resource,
)

from .conftest import Rig, make_api

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "gpu-provisioner"
NAMESPACE = "kaito-system"
RBAC = "rbac.authorization.k8s.io"
KINDS = {
    "ServiceAccount": SERVICEACCOUNTS,
    "ConfigMap": CONFIGMAPS,
    "Deployment": DEPLOYMENTS,
    "ClusterRole": Resource(RBAC, "v1", "clusterroles", "ClusterRole", namespaced=False),
    "ClusterRoleBinding": Resource(
        RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
    ),
    "Role": Resource(RBAC, "v1", "roles", "Role"),
    "RoleBinding": Resource(RBAC, "v1", "rolebindings", "RoleBinding"),
}


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


@pytest.fixture
async def installed(client: Client) -> AsyncIterator[None]:
    # The namespace stays: other suites (the workspace webhook) use kaito-system too, and
    # deleting it would leave it Terminating under their feet.
    with contextlib.suppress(AlreadyExists):
        await client.create(NAMESPACES, {"metadata": {"name": NAMESPACE}})
    applied: list[tuple[Resource, dict[str, Any]]] = []
    try:
        for doc in manifests():
            res = KINDS[doc["kind"]]
            if doc["kind"] in ("Deployment", "ConfigMap"):
                # Validated by the apiserver, not run: there is no kubelet or image here.
                path = res.path(namespace=doc["metadata"]["namespace"])
                await client.request("POST", path, params={"dryRun": "All"}, body=doc)
                continue
            await client.create(res, doc)
            applied.append((res, doc))
        yield
    finally:
        for res, doc in reversed(applied):
            meta = doc["metadata"]
            with contextlib.suppress(NotFound):
                await client.delete(res, meta["name"], meta.get("namespace"))
        with contextlib.suppress(NotFound):
            await client.delete(LEASES, "gpu-provisioner", NAMESPACE)


async def service_account_client(client: Client, kubeconfig: str) -> Client:
    answer = await client.request(
        "POST",
        SERVICEACCOUNTS.path(namespace=NAMESPACE, name="gpu-provisioner", subresource="token"),
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    admin = await ClientConfig.from_kubeconfig(kubeconfig)
    return Client(
        ClientConfig(
            server=admin.server, ssl_context=admin.ssl_context, token=answer["status"]["token"]
        )
    )


async def test_the_provisioner_runs_with_only_its_deployed_rbac(
    rig: Rig, client: Client, kubeconfig: str, installed: None
) -> None:
    sa = await service_account_client(client, kubeconfig)
    api = make_api(rig.emulator, rig.tls)
    prov = Provisioner(
        sa,
        api,
        rig.config(),
        manager_options=ManagerOptions(
            component="gpu-provisioner",
            metrics_bind_address="0",
            health_probe_bind_address="0",
            leader_election=True,
            leader_election_id="gpu-provisioner",
            leader_election_namespace=NAMESPACE,
        ),
    )
    task = asyncio.create_task(prov.run())
    try:
        await rig.create_machine("rbac1")
        await rig.wait_ready("rbac1")
        await rig.delete_machine("rbac1")
        async with asyncio.timeout(10):  # Events were written with the ServiceAccount too
            while True:
                events = await client.list(
                    EVENTS, "default", field_selector="involvedObject.name=rbac1"
                )
                if {"Launched", "Ready"} <= {e["reason"] for e in events["items"]}:
                    break
                await asyncio.sleep(0.1)
        lease = await client.get(LEASES, "gpu-provisioner", NAMESPACE)
        assert lease["spec"]["holderIdentity"]
        # What it may not do: a Machine is the workspace controller's to create.
        with pytest.raises(Exception, match="403"):
            await sa.create(
                Resource("karpenter.sh", "v1alpha5", "machines", "Machine", namespaced=False),
                {"metadata": {"name": "forbidden1"}},
            )
    finally:
        prov.stop()
        async with asyncio.timeout(15):
            await task
        await api.close()
        await sa.close()
