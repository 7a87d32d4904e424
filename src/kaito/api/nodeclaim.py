"""Karpenter's NodeClaim (``nodeclaims.karpenter.sh``, ``v1``, cluster-scoped): KAITO's part.

In ``--node-provisioning-mode nodeclaim`` the workspace controller asks Karpenter (e.g.
AKS node auto-provisioning) for its GPU nodes with NodeClaims instead of Machines.
Karpenter owns the CRD and its schema, so this module generates no CRD: the model types
only what the controller writes (labels, the node class, requirements, the GPU taint,
the storage request) and what it reads back (the ``Ready`` condition and
``status.nodeName``), and ignores every other field, so a newer Karpenter's additions
pass through.

The pieces a NodeClaim shares with a Machine (metadata, requirements, taints, resource
requests, conditions) are the Machine's models, so the controller reads both alike.
"""

from __future__ import annotations

from pydantic import Field

from kaito.api.machine import (
    Condition,
    NodeSelectorRequirement,
    ObjectMeta,
    ResourceRequirements,
    Taint,
)
from kaito.runtime.meta import ApiModel
from kaito.runtime.resource import Resource

__all__ = [
    "GROUP",
    "LABEL_NODEPOOL",
    "NODECLAIMS",
    "VERSION",
    "NodeClaim",
    "NodeClaimSpec",
    "NodeClaimStatus",
    "NodeClassReference",
]

GROUP = "karpenter.sh"
VERSION = "v1"
NODECLAIMS = Resource(GROUP, VERSION, "nodeclaims", "NodeClaim", namespaced=False)
LABEL_NODEPOOL = "karpenter.sh/nodepool"
"""The NodePool a NodeClaim belongs to (a label, and a requirement, in Karpenter v1)."""


class NodeClassReference(ApiModel):
    """The provider's node class the node is made from (``AKSNodeClass`` on Azure)."""

    group: str
    kind: str
    name: str


class NodeClaimSpec(ApiModel):
    """The node the NodeClaim asks for."""

    node_class_ref: NodeClassReference | None = None
    requirements: list[NodeSelectorRequirement] = Field(default_factory=list)
    taints: list[Taint] = Field(default_factory=list)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class NodeClaimStatus(ApiModel):
    """What Karpenter observed; the controller reads the Node's name and ``Ready``."""

    node_name: str | None = None
    provider_id: str | None = Field(default=None, alias="providerID")
    conditions: list[Condition] = Field(default_factory=list)


class NodeClaim(ApiModel):
    """One node Karpenter launches for the claim's requirements."""

    api_version: str = NODECLAIMS.api_version
    kind: str = NODECLAIMS.kind
    metadata: ObjectMeta
    spec: NodeClaimSpec = Field(default_factory=NodeClaimSpec)
    status: NodeClaimStatus = Field(default_factory=NodeClaimStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    def condition(self, type_: str) -> Condition | None:
        for cond in self.status.conditions:
            if cond.type == type_:
                return cond
        return None
