"""``--node-provisioning-mode nodeclaim`` and ``byo`` against the real control plane.

Karpenter is not available on these machines, so in the nodeclaim test the test plays
it: it installs a NodeClaim CRD (karpenter.sh/v1, status subresource, schema left
open), and when the controller's NodeClaim appears it registers a Node for it and marks
the NodeClaim Ready with the node's name, the two things Karpenter does that the
controller reads. Everything else (the controller, the scheduler placing the pod on
that node) is real.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kaito.api.nodeclaim import NODECLAIMS
from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.nodes.machines import machine_name
from kaito.controllers.workspace.nodes.provisioning import Mode, Provisioning
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import CUSTOMRESOURCEDEFINITIONS, NODES
from kaito.runtime.timestamps import now_rfc3339
from tests.integration.polling import poll_until

from .conftest import WsRig, condition, is_true, ready_node, register
from .test_workload import scheduled_pod

Obj = dict[str, Any]

NODECLAIM_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "nodeclaims.karpenter.sh"},
    "spec": {
        "group": "karpenter.sh",
        "scope": "Cluster",
        "names": {
            "plural": "nodeclaims",
            "singular": "nodeclaim",
            "kind": "NodeClaim",
            "listKind": "NodeClaimList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


async def install_nodeclaim_crd(client: Client) -> None:
    with contextlib.suppress(Exception):
        await client.create(CUSTOMRESOURCEDEFINITIONS, NODECLAIM_CRD)

    async def listable() -> bool:
        try:
            await client.list(NODECLAIMS)
            return True
        except NotFound:
            return False

    await poll_until(listable, bool, timeout=30, what="the NodeClaim API")


async def test_nodeclaim_mode_creates_karpenter_nodeclaims_and_follows_them(
    wsrig: WsRig, client: Client
) -> None:
    await install_nodeclaim_crd(client)
    wsrig.start(Provisioning(Mode.NODECLAIM))
    name = "claimed"
    await wsrig.create(name)
    claim_name = machine_name(wsrig.namespace, name, 0)

    async def get_claim() -> Obj | None:
        try:
            return await client.get(NODECLAIMS, claim_name)
        except NotFound:
            return None

    claim = await poll_until(get_claim, lambda c: c is not None, timeout=30, what="NodeClaim")
    assert claim is not None
    labels = claim["metadata"]["labels"]
    assert labels["karpenter.sh/nodepool"] == "kaito"
    assert labels["kaito.sh/workspace"] == name
    assert claim["spec"]["nodeClassRef"]["kind"] == "AKSNodeClass"
    assert {
        "key": "node.kubernetes.io/instance-type",
        "operator": "In",
        "values": ["Standard_NC6s_v3"],
    } in claim["spec"]["requirements"]
    assert claim["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert await wsrig.machines() == []  # no Machine in this mode

    # Karpenter's part: a node for the claim, and the claim Ready with its name.
    node_name = f"aks-kaito-{wsrig.test_id}"
    node, node_status = ready_node(
        node_name,
        {
            **{k: v for k, v in labels.items()},
            "node.kubernetes.io/instance-type": "Standard_NC6s_v3",
        },
    )
    await register(client, node, node_status)
    try:
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "Ready",
            "message": "",
            "lastTransitionTime": now_rfc3339(),
        }
        await client.patch(
            NODECLAIMS,
            claim_name,
            {"status": {"nodeName": node_name, "conditions": [ready]}},
            subresource="status",
        )
        ws = await wsrig.wait_resource_ready(name)
        assert is_true(ws, "NodeClaimReady")
        assert condition(ws, "MachineReady") is None
        assert ws["status"]["workerNodes"] == [node_name]
        pod = await scheduled_pod(client, wsrig, name)
        assert pod["spec"]["nodeName"] == node_name
        await wsrig.wait_event(name, "NodeClaimCreated")

        await wsrig.delete(name)
        assert await client.list_all(NODECLAIMS, label_selector=f"kaito.sh/workspace={name}") == []
    finally:
        await client.delete(NODES, node_name)


async def test_byo_mode_waits_for_labelled_nodes_and_never_provisions(
    wsrig: WsRig, client: Client
) -> None:
    wsrig.start(Provisioning(Mode.BYO))
    name = "byo"
    await wsrig.create(name)
    ws = await wsrig.wait(
        name, lambda w: (condition(w, "ResourceReady") or {}).get("reason") == "WaitingForNodes"
    )
    cond = condition(ws, "ResourceReady")
    assert cond is not None and "byo mode" in cond["message"], cond
    assert f"kaito-test={wsrig.test_id}" in cond["message"]
    assert await wsrig.machines() == []

    node_name = f"byo-{wsrig.test_id}"
    node, status = ready_node(
        node_name,
        {
            "apps": name,
            "kaito-test": wsrig.test_id,
            "node.kubernetes.io/instance-type": "Standard_NC6s_v3",
        },
    )
    await register(client, node, status)
    try:
        ws = await wsrig.wait_resource_ready(name)
        assert ws["status"]["workerNodes"] == [node_name]
        pod = await scheduled_pod(client, wsrig, name)
        assert pod["spec"]["nodeName"] == node_name
        await wsrig.delete(name)
        assert await wsrig.machines() == []
        # The user's node stays: the controller only ever deletes what it provisioned.
        await client.get(NODES, node_name)
    finally:
        await client.delete(NODES, node_name)


async def test_machine_mode_is_the_default(wsrig: WsRig, client: Client) -> None:
    wsrig.start()
    await client.create(WORKSPACES_V1ALPHA1, wsrig.body("default-mode"))
    await wsrig.wait_resource_ready("default-mode")
    assert [m["metadata"]["name"] for m in await wsrig.machines()] == [
        machine_name(wsrig.namespace, "default-mode", 0)
    ]
    await wsrig.delete("default-mode")
