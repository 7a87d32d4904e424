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
what it looks like (a typed `Machine` or `NodeClaim`), how to read one from the cache,
and which condition mirrors it on the Workspace (``MachineReady`` or ``NodeClaimReady``).

In ``byo`` mode the controller never creates a node: qualifying nodes (Ready, the
instance type, matching ``labelSelector``; ``preferredNodes`` first) count, and while
fewer than ``count`` exist, ``ResourceReady`` says how many are missing and how to
label them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kaito.api.machine import (
    LABEL_INSTANCE_TYPE,
    MACHINES,
    Machine,
    ObjectMeta,
    ResourceRequirements,
)
from kaito.api.nodeclaim import (
    LABEL_NODEPOOL,
    NODECLAIMS,
    NodeClaim,
    NodeClaimSpec,
    NodeClassReference,
)
from kaito.api.workspace import ConditionType, Workspace
from kaito.controllers.workspace.nodes import machines as mach
from kaito.runtime.meta import Obj
from kaito.runtime.resource import Resource

__all__ = ["NODECLAIM_READY", "Mode", "Provisioning", "build_nodeclaim"]


NODEPOOL = "kaito"
NODE_CLASS_GROUP = "karpenter.azure.com"
NODE_CLASS_KIND = "AKSNodeClass"
NODE_CLASS = "image-family-ubuntu"
NODECLAIM_READY = "NodeClaimReady"


class Mode(enum.StrEnum):
    MACHINE = "machine"
    NODECLAIM = "nodeclaim"
    BYO = "byo"


def build_nodeclaim(ws: Workspace, index: int, *, storage: str) -> NodeClaim:
    """The NodeClaim for node ``index`` of ``ws`` (Karpenter v1's shape); ``storage`` is
    the plan's disk."""
    name = mach.machine_name(ws.metadata.namespace, ws.metadata.name, index)
    labels = {
        LABEL_NODEPOOL: NODEPOOL,
        mach.LABEL_MACHINE_TYPE: "gpu",
        **ws.resource.label_selector.node_labels(),
        **mach.workspace_labels(ws),
    }
    return NodeClaim(
        api_version=NODECLAIMS.api_version,
        kind=NODECLAIMS.kind,
        metadata=ObjectMeta(name=name, labels=labels),
        spec=NodeClaimSpec(
            node_class_ref=NodeClassReference(
                group=NODE_CLASS_GROUP, kind=NODE_CLASS_KIND, name=NODE_CLASS
            ),
            requirements=[
                mach.in_requirement(LABEL_INSTANCE_TYPE, ws.resource.instance_type),
                mach.in_requirement(LABEL_NODEPOOL, NODEPOOL),
                mach.in_requirement("kubernetes.io/os", "linux"),
            ],
            taints=[mach.gpu_taint()],
            resources=ResourceRequirements(requests={"storage": storage}),
        ),
    )


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

    def build(self, ws: Workspace, index: int, *, storage: str) -> mach.Claim:
        """The Machine or NodeClaim for node ``index`` of ``ws``."""
        if self.mode is Mode.NODECLAIM:
            return build_nodeclaim(ws, index, storage=storage)
        return mach.build_machine(ws, index, storage=storage)

    def parse(self, obj: Obj) -> mach.Claim:
        """A claim as read from the cache or the apiserver, as its model."""
        if self.mode is Mode.NODECLAIM:
            return NodeClaim.model_validate(obj)
        return Machine.model_validate(obj)
