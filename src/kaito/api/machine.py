"""The Machine custom resource (``machines.karpenter.sh``, ``v1alpha5``, cluster-scoped).

A Machine asks for one node of a VM size. The workspace controller creates Machines;
the gpu-provisioner serves them (PROVISIONER.md). This module is their shared contract:
the pydantic model both sides read, the names both sides use, and the CRD manifest,
generated from the model so the two can never disagree:

    python -m kaito.api.machine            # rewrite deploy/crds/karpenter.sh_machines.yaml
    python -m kaito.api.machine --check    # exit 1 when the committed file is stale

The CRD schema is deliberately permissive about the things the provisioner validates
itself (a bad name, a missing instance type, zero storage): those Machines must be
admitted so that they can carry a condition that says what is wrong with them.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from kaito.api._crd import write_or_check
from kaito.runtime.resource import Resource

__all__ = [
    "ANNOTATION_NODE_IMAGE_FAMILY",
    "CRD_PATH",
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
    "crd",
    "crd_yaml",
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

CRD_PATH = Path(__file__).resolve().parents[3] / "deploy" / "crds" / "karpenter.sh_machines.yaml"


class ConditionType(enum.StrEnum):
    LAUNCHED = "MachineLaunched"
    REGISTERED = "MachineRegistered"
    INITIALIZED = "MachineInitialized"
    READY = "Ready"
    """True when the three above are True."""


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


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


class NodeSelectorRequirement(_Model):
    """A node selector requirement: a key, an operator and values."""

    key: str
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """How the key relates to the values."""
    values: list[str] = Field(default_factory=list)
    """The values; for ``node.kubernetes.io/instance-type`` the first is the VM size."""


class Taint(_Model):
    """A taint to put on the Node."""

    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    time_added: datetime | None = None


class ResourceRequirements(_Model):
    """Resources the node must offer."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Requested resources; ``storage`` is the OS disk size of the node."""


class KubeletConfiguration(_Model):
    """Kubelet settings for the node (optional; passed through)."""

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


class MachineTemplateRef(_Model):
    """The provider-specific template the Machine was made from."""

    api_version: str | None = None
    kind: str | None = None
    name: str


class MachineSpec(_Model):
    """The node the Machine asks for."""

    requirements: list[NodeSelectorRequirement] = Field(default_factory=list)
    """Node selector requirements; the VM size is the first value of
    ``node.kubernetes.io/instance-type``."""
    taints: list[Taint] = Field(default_factory=list)
    """Taints the Node keeps."""
    startup_taints: list[Taint] = Field(default_factory=list)
    """Taints put on the Node at registration that something else removes; the Machine
    is not initialized until they are gone."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    kubelet: KubeletConfiguration | None = None
    machine_template_ref: MachineTemplateRef | None = None


class Condition(_Model):
    """One observation of the Machine's state."""

    type: str
    status: Literal["True", "False", "Unknown"]
    severity: str | None = None
    """Error or Warning for failures; empty for True."""
    last_transition_time: datetime | None = None
    reason: str | None = None
    """One UpperCamelCase word (``QuotaExceeded``)."""
    message: str | None = None
    """For humans: what happened, quoting Azure where Azure said it."""


class MachineStatus(_Model):
    """What the provisioner observed; written only by the provisioner."""

    provider_id: str | None = Field(default=None, alias="providerID")
    """The Node's spec.providerID."""
    node_name: str | None = None
    """The Node serving this Machine."""
    capacity: dict[str, Quantity] = Field(default_factory=dict)
    allocatable: dict[str, Quantity] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)


class ObjectMeta(_Model):
    """The part of metadata the operator reads (the CRD leaves metadata to the apiserver)."""

    name: str
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class Machine(_Model):
    """Machine is the Schema for the Machines API: one node of a given VM size."""

    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = "Machine"
    metadata: ObjectMeta
    spec: MachineSpec = Field(default_factory=MachineSpec)
    status: MachineStatus = Field(default_factory=MachineStatus)

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


# -- CRD generation --------------------------------------------------------------------

_DROP = frozenset({"title", "default", "examples"})
_ROOT_FIELDS: dict[str, Any] = {
    "apiVersion": {
        "description": "APIVersion defines the versioned schema of this representation of "
        "an object.",
        "type": "string",
    },
    "kind": {
        "description": "Kind is a string value representing the REST resource this object "
        "represents.",
        "type": "string",
    },
    "metadata": {"type": "object"},
}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema node as a Kubernetes structural schema node.

    Inlines ``$ref``, turns ``X | None`` into ``X`` (absent means None), drops titles and
    defaults (the apiserver must not default what the controllers treat as "unset").
    """
    if "$ref" in node:
        out = _structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        if "description" in node:
            out["description"] = " ".join(node["description"].split()).replace("``", "")
        return out
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a CRD schema cannot express this union: {node['anyOf']}")
        out = _structural(options[0], defs)
        if "description" in node:
            out["description"] = " ".join(node["description"].split()).replace("``", "")
        return out
    out = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "description":
            out[key] = " ".join(value.split()).replace("``", "")
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    return out


def openapi_schema() -> dict[str, Any]:
    """The Machine's openAPIV3Schema, generated from the model."""
    schema = Machine.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    root = _structural(schema, defs)
    root["properties"] = {**root["properties"], **_ROOT_FIELDS}
    root["properties"] = {
        k: root["properties"][k] for k in ("apiVersion", "kind", "metadata", "spec", "status")
    }
    root.pop("required", None)
    return root


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition for Machines."""
    instance_type = f'.spec.requirements[?(@.key=="{LABEL_INSTANCE_TYPE}")].values[0]'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"machines.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "categories": ["karpenter"],
                "kind": "Machine",
                "listKind": "MachineList",
                "plural": "machines",
                "singular": "machine",
            },
            "scope": "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Type", "type": "string", "jsonPath": instance_type},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {"name": "Node", "type": "string", "jsonPath": ".status.nodeName"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {
                            "name": "Reason",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                        },
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


_HEADER = (
    "# Generated from kaito.api.machine by `python -m kaito.api.machine`; do not edit.\n"
    "# `python -m kaito.api.machine --check` (a unit test) fails when this file is stale.\n"
)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared sub-schemas out in full: a CRD is read by people, not parsers only."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_yaml() -> str:
    return _HEADER + yaml.dump(crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    return write_or_check(
        crd_yaml, default_path=CRD_PATH, prog="python -m kaito.api.machine", argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
