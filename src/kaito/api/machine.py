"""The Machine custom resource (``machines.karpenter.sh``, ``v1alpha5``, cluster-scoped).

A Machine asks for one node of a VM size. The workspace controller creates Machines;
the gpu-provisioner serves them (PROVISIONER.md). This module is their shared contract:
the pydantic model both sides read, the names both sides use, and the CRD manifest,
generated from the model so the two can never disagree:

    python -m kaito.api.crds            # rewrite deploy/crds/ (this CRD among them)
    python -m kaito.api.crds --check    # exit 1 when a committed file is stale

The CRD schema is deliberately permissive about the things the provisioner validates
itself (a bad name, a missing instance type, zero storage): those Machines must be
admitted so that they can carry a condition that says what is wrong with them.

``ObjectMeta`` and ``Condition`` are the runtime's (`kaito.runtime.meta`), shared with
the Workspace; they are part of this contract and importable from here.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema

from kaito.api._crd import (
    AGE_COLUMN,
    CrdSpec,
    PrinterColumn,
    condition_column,
)
from kaito.runtime.meta import ApiModel, Condition, ObjectMeta
from kaito.runtime.resource import Resource

__all__ = [
    "ANNOTATION_NODE_IMAGE_FAMILY",
    "CRD_SPEC",
    "GROUP",
    "LABEL_INITIALIZED",
    "LABEL_INSTANCE_TYPE",
    "LABEL_REGISTERED",
    "LABEL_WORKSPACE",
    "MACHINES",
    "TERMINATION_FINALIZER",
    "VERSION",
    "Condition",
    "ConditionType",
    "Machine",
    "MachineSpec",
    "MachineStatus",
    "NodeSelectorRequirement",
    "ObjectMeta",
    "Quantity",
    "ResourceRequirements",
    "Taint",
]

GROUP = "karpenter.sh"
VERSION = "v1alpha5"
MACHINES = Resource(GROUP, VERSION, "machines", "Machine", namespaced=False)

TERMINATION_FINALIZER = "karpenter.sh/termination"
"""The provisioner's finalizer: the Machine stays until its Node and agent pool are gone."""
LABEL_WORKSPACE = "kaito.sh/workspace"
"""Machines carrying this label are served by the gpu-provisioner; others are ignored."""
LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
"""The requirement key whose first value is the VM size."""
LABEL_REGISTERED = "karpenter.sh/registered"
LABEL_INITIALIZED = "karpenter.sh/initialized"
ANNOTATION_NODE_IMAGE_FAMILY = "kaito.sh/node-image-family"
"""``ubuntu`` (default) or ``azurelinux``: the agent pool's OS SKU."""


class ConditionType(enum.StrEnum):
    LAUNCHED = "MachineLaunched"
    REGISTERED = "MachineRegistered"
    INITIALIZED = "MachineInitialized"
    READY = "Ready"
    """True when the three above are True."""
    TERMINATING = "MachineTerminating"
    """Set only while a deletion is stalled (False, reason ``AgentPoolDeleteStalled``)."""


# -- quantities ------------------------------------------------------------------------

_QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": _QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity: ``120Gi``, ``4``, ``500m``."""

# -- the model -------------------------------------------------------------------------


class NodeSelectorRequirement(ApiModel):
    """A node selector requirement: a key, an operator and values."""

    key: str
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """How the key relates to the values."""
    values: list[str] = Field(default_factory=list)
    """The values; for ``node.kubernetes.io/instance-type`` the first is the VM size."""


class Taint(ApiModel):
    """A taint to put on the Node."""

    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    time_added: datetime | None = None


class ResourceRequirements(ApiModel):
    """corev1.ResourceRequirements, requests only: limits mean nothing for a node."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Requested resources; ``storage`` is the OS disk size of the node."""


class KubeletConfiguration(ApiModel):
    """karpenter's kubelet settings; parsed so that they survive, not acted on here."""

    cluster_dns: list[str] | None = Field(default=None, alias="clusterDNS")
    max_pods: int | None = None
    pods_per_core: int | None = None
    system_reserved: dict[str, str] | None = None
    kube_reserved: dict[str, str] | None = None
    eviction_hard: dict[str, str] | None = None
    eviction_soft: dict[str, str] | None = None
    image_gc_high_threshold_percent: int | None = Field(
        default=None, alias="imageGCHighThresholdPercent"
    )
    image_gc_low_threshold_percent: int | None = Field(
        default=None, alias="imageGCLowThresholdPercent"
    )
    cpu_cfs_quota: bool | None = Field(default=None, alias="cpuCFSQuota")


class MachineTemplateRef(ApiModel):
    """karpenter's reference to a provider template (Kaito names it after the Machine)."""

    api_version: str | None = None
    kind: str | None = None
    name: str


class MachineSpec(ApiModel):
    """Written by the workspace controller, read by the provisioner."""

    requirements: list[NodeSelectorRequirement] = Field(default_factory=list)
    """Node selector requirements; the VM size is the first value of
    ``node.kubernetes.io/instance-type``."""
    taints: list[Taint] = Field(default_factory=list)
    """Taints the Node keeps."""
    startup_taints: list[Taint] = Field(default_factory=list)
    """Taints put on the Node at registration that something else removes; the Machine
    is not initialized until they are gone."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """Resources the node must offer."""
    kubelet: KubeletConfiguration | None = None
    """Kubelet settings for the node (optional; passed through)."""
    machine_template_ref: MachineTemplateRef | None = None
    """The provider-specific template the Machine was made from."""


class MachineStatus(ApiModel):
    """Written by the provisioner only, through the status subresource."""

    provider_id: str | None = Field(default=None, alias="providerID")
    """The Node's spec.providerID."""
    node_name: str | None = None
    """The Node serving this Machine."""
    capacity: dict[str, Quantity] = Field(default_factory=dict)
    allocatable: dict[str, Quantity] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)
    """Launched, Registered, Initialized and the Ready they add up to (knative style)."""


class Machine(ApiModel):
    """A Machine as the apiserver stores it (`CRD_SPEC` says what ``kubectl explain`` does)."""

    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = "Machine"
    metadata: ObjectMeta
    spec: MachineSpec = Field(default_factory=MachineSpec)
    """The node the Machine asks for."""
    status: MachineStatus = Field(default_factory=MachineStatus)
    """What the provisioner observed; written only by the provisioner."""

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def instance_type(self) -> str | None:
        """The first value of the ``In`` requirement on the instance-type label, if any."""
        for req in self.spec.requirements:
            if req.key == LABEL_INSTANCE_TYPE and req.operator == "In" and req.values:
                return req.values[0]
        return None

    def condition(self, type_: str) -> Condition | None:
        for cond in self.status.conditions:
            if cond.type == type_:
                return cond
        return None

    def is_true(self, type_: str) -> bool:
        cond = self.condition(type_)
        return cond is not None and cond.status == "True"


# -- the CRD --------------------------------------------------------------------------

CRD_SPEC = CrdSpec(
    group=GROUP,
    kind="Machine",
    plural="machines",
    singular="machine",
    versions=(VERSION,),
    storage_version=VERSION,
    scope="Cluster",
    categories=("karpenter",),
    description="Machine is the Schema for the Machines API: one node of a given VM size.",
    printer_columns=(
        PrinterColumn(
            name="Type",
            json_path=f'.spec.requirements[?(@.key=="{LABEL_INSTANCE_TYPE}")].values[0]',
        ),
        condition_column("Ready", ConditionType.READY),
        PrinterColumn(name="Node", json_path=".status.nodeName"),
        AGE_COLUMN,
        PrinterColumn(
            name="Reason",
            json_path=f'.status.conditions[?(@.type=="{ConditionType.READY}")].reason',
            priority=1,
        ),
    ),
)
