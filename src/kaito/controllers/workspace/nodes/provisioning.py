"""How a Workspace's missing GPU nodes come to exist: the controller's provisioning mode.

    --node-provisioning-mode machine     (default) karpenter.sh/v1alpha5 Machines, served
                                         by KAITO's gpu-provisioner (AKS agent pools)
    --node-provisioning-mode nodeclaim   karpenter.sh/v1 NodeClaims, served by Karpenter
                                         (e.g. AKS node auto-provisioning)
    --node-provisioning-mode byo         no provisioning: the user brings the nodes

Machines and NodeClaims share everything that matters here: a deterministic
``ws<9 hex>`` name from (namespace, name, index), the Workspace's labels, the
instance-type requirement, the ``sku=gpu:NoSchedule`` taint, a storage request, and a
``Ready`` condition plus ``status.nodeName`` filled in by their provisioner. So the
reconciler handles "claims" of either kind the same way; this module says which kind,
what its body looks like, and which condition mirrors it on the Workspace
(``MachineReady`` or ``NodeClaimReady``).

In ``byo`` mode the controller never creates a node: qualifying nodes (Ready, the
instance type, matching ``labelSelector``; ``preferredNodes`` first) count, and while
fewer than ``count`` exist, ``ResourceReady`` says how many are missing and how to
label them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kaito.api.machine import LABEL_INSTANCE_TYPE, MACHINES
from kaito.api.workspace import ConditionType, Workspace
from kaito.controllers.workspace.nodes import machines as mach
from kaito.runtime.meta import Obj
from kaito.runtime.resource import Resource

__all__ = ["NODECLAIMS", "Mode", "Provisioning", "nodeclaim_body"]


NODECLAIMS = Resource("karpenter.sh", "v1", "nodeclaims", "NodeClaim", namespaced=False)
NODEPOOL_LABEL = "karpenter.sh/nodepool"
NODEPOOL = "kaito"
NODE_CLASS_REF = {
    "group": "karpenter.azure.com",
    "kind": "AKSNodeClass",
    "name": "image-family-ubuntu",
}
NODECLAIM_READY = "NodeClaimReady"


class Mode(enum.StrEnum):
    MACHINE = "machine"
    NODECLAIM = "nodeclaim"
    BYO = "byo"


def nodeclaim_body(ws: Workspace, index: int, *, storage: str) -> Obj:
    """The NodeClaim for node ``index`` of ``ws`` (Karpenter v1's shape)."""
    name = mach.machine_name(ws.metadata.namespace, ws.metadata.name, index)
    labels = {
        NODEPOOL_LABEL: NODEPOOL,
        mach.LABEL_MACHINE_TYPE: "gpu",
        **ws.resource.label_selector.match_labels,
        **mach.workspace_labels(ws),
    }

    def req(key: str, value: str) -> Obj:
        return {"key": key, "operator": "In", "values": [value]}

    return {
        "apiVersion": NODECLAIMS.api_version,
        "kind": NODECLAIMS.kind,
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeClassRef": dict(NODE_CLASS_REF),
            "requirements": [
                req(LABEL_INSTANCE_TYPE, ws.resource.instance_type),
                req(NODEPOOL_LABEL, NODEPOOL),
                req("kubernetes.io/os", "linux"),
            ],
            "taints": [dict(mach.GPU_TAINT)],
            "resources": {"requests": {"storage": storage}},
        },
    }


@dataclass(frozen=True)
class Provisioning:
    mode: Mode = Mode.MACHINE

    @property
    def resource(self) -> Resource | None:
        """The claim kind the controller creates; None in byo mode."""
        if self.mode is Mode.MACHINE:
            return MACHINES
        if self.mode is Mode.NODECLAIM:
            return NODECLAIMS
        return None

    @property
    def condition(self) -> str:
        """The Workspace condition that mirrors the claims' ``Ready``."""
        return NODECLAIM_READY if self.mode is Mode.NODECLAIM else ConditionType.MACHINE_READY

    @property
    def kind(self) -> str:
        return self.resource.kind if self.resource is not None else "node"

    def body(self, ws: Workspace, index: int, *, storage: str) -> Obj:
        if self.mode is Mode.NODECLAIM:
            return nodeclaim_body(ws, index, storage=storage)
        return mach.machine_body(ws, index, storage=storage)
