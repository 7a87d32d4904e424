"""The Workspace custom resource (``workspaces.kaito.sh``): models, constants, CRD.

A Workspace has no ``spec:`` wrapper: ``resource``, ``inference``, ``tuning`` and
``status`` sit beside ``metadata``, exactly as Kaito's quick start writes them, so the
manifests users already have keep working. ``v1alpha1`` (the quick start's) and
``v1beta1`` are both served with the same schema; ``v1beta1`` is stored, because alpha
versions are the first ones a cluster drops.

The models parse what the apiserver returns (unknown fields ignored, camelCase on the
wire, snake_case in Python) and generate the CRD's schema, so the two cannot drift.
Semantic rules (known preset, enough GPU memory, immutable fields) are not here: they
need the preset catalog and the SKU table, and live in the validating webhook
(``kaito.controllers.workspace.admission.validation``).

Regenerate the committed CRD with ``python -m kaito.api.crds`` (``--check``: exit 1
when a committed file is stale).
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import Field

from kaito.api._crd import (
    AGE_COLUMN,
    CrdSpec,
    PrinterColumn,
    condition_column,
)
from kaito.runtime.meta import ApiModel, Condition, ObjectMeta
from kaito.runtime.resource import Resource

GROUP = "kaito.sh"
KIND = "Workspace"
VERSIONS = ("v1alpha1", "v1beta1")
STORAGE_VERSION = "v1beta1"

WORKSPACES = Resource(GROUP, STORAGE_VERSION, "workspaces", KIND)
"""The resource the controller reads and writes (the storage version)."""
WORKSPACES_V1ALPHA1 = Resource(GROUP, "v1alpha1", "workspaces", KIND)
"""The quick start's version: same schema, served side by side."""

# -- annotations, labels, finalizer ---------------------------------------------------

ANNOTATION_RUNTIME = "kaito.sh/runtime"
"""``vllm`` | ``transformers``: overrides the engine the preset would run on."""
ANNOTATION_ENABLE_LB = "kaito.sh/enablelb"
"""``"True"``: the workspace's Service is of type LoadBalancer instead of ClusterIP."""
ANNOTATION_BYPASS_RESOURCE_CHECKS = "kaito.sh/bypass-resource-checks"
"""``"True"``: skip the GPU count/memory checks of the webhook (for SKUs that lie)."""
ANNOTATION_REVISION = "workspace.kaito.io/hash"
"""The hash of (resource, inference, tuning); a change rolls the workload."""

LABEL_WORKSPACE = "kaito.sh/workspace"
LABEL_WORKSPACE_NAMESPACE = "kaito.sh/workspacenamespace"
FINALIZER = "workspace.finalizer.kaito.sh"

MAX_ADAPTERS = 10


class ConditionType(enum.StrEnum):
    MACHINE_READY = "MachineReady"
    RESOURCE_READY = "ResourceReady"
    INFERENCE_READY = "InferenceReady"
    JOB_STARTED = "JobStarted"
    WORKSPACE_READY = "WorkspaceReady"
    WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"
    """Mirrors WorkspaceReady, for clients written against newer Kaito releases."""
    WORKSPACE_DELETING = "WorkspaceDeleting"


class Runtime(enum.StrEnum):
    """The inference engine a preset runs on (images/inference ``--engine``)."""

    VLLM = "vllm"
    TRANSFORMERS = "transformers"


class TuningMethod(enum.StrEnum):
    LORA = "lora"
    QLORA = "qlora"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


# -- models ---------------------------------------------------------------------------


class LabelSelectorRequirement(ApiModel):
    key: str = Field(description="The label key that the selector applies to.")
    operator: str = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] = Field(default_factory=list, description="The values for In/NotIn.")


class LabelSelector(ApiModel):
    """metav1.LabelSelector."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels a node must carry, all of them."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Label selector requirements, ANDed."
    )

    def node_labels(self) -> dict[str, str]:
        """The labels a provisioned node carries to match: ``matchLabels`` and every
        ``In`` expression with one value (the webhook admits no other expression)."""
        labels = dict(self.match_labels)
        for req in self.match_expressions:
            if req.operator == "In" and len(req.values) == 1:
                labels[req.key] = req.values[0]
        return labels


class ResourceSpec(ApiModel):
    """How many GPU nodes of which size; short ones are provisioned as Machines."""

    count: int = Field(default=1, ge=1, description="The number of GPU nodes. Defaults to 1.")
    instance_type: str = Field(
        default="Standard_NC24ads_A100_v4",
        description="The GPU node size (an Azure VM SKU). Defaults to Standard_NC24ads_A100_v4.",
    )
    label_selector: LabelSelector = Field(
        description="Labels the workspace's GPU nodes carry (and Machines are given)."
    )
    preferred_nodes: list[str] = Field(
        default_factory=list,
        description="Existing nodes to use first; nodes without the required labels are ignored.",
    )


MODEL_ACCESS_SECRET_KEY = "HF_TOKEN"
"""The key of ``presetOptions.modelAccessSecret`` that holds the Hugging Face token."""


class PresetOptions(ApiModel):
    image: str = Field(
        default="",
        description=(
            "A private preset's own image (server and weights baked in at /workspace/weights); "
            "with accessMode private, this or modelImage is required."
        ),
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets in the workspace's namespace to pull it."
    )
    model_access_secret: str = Field(
        default="",
        description=(
            "A Secret in the workspace's namespace whose key HF_TOKEN is the Hugging Face "
            "token that downloads the preset's weights; required for gated presets."
        ),
    )
    model_image: str = Field(
        default="",
        description=(
            "An OCI image holding the preset's weights under /data (kaito model package "
            "builds one), pulled into the node's model cache instead of the Hugging Face "
            "download; the project's inference image serves them. "
            "REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]."
        ),
    )
    model_image_pull_secrets: list[str] = Field(
        default_factory=list,
        description=(
            "kubernetes.io/dockerconfigjson Secrets in the workspace's namespace with "
            "credentials for modelImage's registry."
        ),
    )


class PresetSpec(ApiModel):
    """A model from the preset catalog, by name."""

    name: str = Field(description="The preset's name, e.g. phi-3-mini-4k-instruct.")
    access_mode: Literal["public", "private"] = Field(
        default="public",
        description=(
            "public: the catalog's weights; private: presetOptions.image (an image with the "
            "server and weights) or presetOptions.modelImage (the weights). Default public."
        ),
    )
    preset_options: PresetOptions | None = Field(
        default=None,
        description=(
            "Where the weights come from instead of the catalog's Hugging Face repo (image, "
            "modelImage), the token Secret for gated models."
        ),
    )

    @property
    def options(self) -> PresetOptions:
        return self.preset_options or PresetOptions()


class DataSource(ApiModel):
    """Where data comes from: exactly one of urls, image, volumeSource."""

    name: str = Field(
        default="", description="The data set's name (a DNS-1123 subdomain; also a container name)."
    )
    urls: list[str] = Field(default_factory=list, description="Public http(s) URLs to download.")
    volume_source: dict[str, Any] | None = Field(
        default=None,
        description="A volume (corev1.VolumeSource) holding the data.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    image: str = Field(default="", description="An image with the data under /data.")
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets in the workspace's namespace to pull it."
    )


class DataDestination(ApiModel):
    """Where tuning output goes: exactly one of image (with imagePushSecret), volumeSource."""

    volume_source: dict[str, Any] | None = Field(
        default=None,
        description="A volume (corev1.VolumeSource) the adapter is written to.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    image: str = Field(default="", description="The image the adapter is pushed to.")
    image_push_secret: str = Field(
        default="", description="Secret in the workspace's namespace with push credentials."
    )


class AdapterSpec(ApiModel):
    source: DataSource | None = Field(default=None, description="Where the adapter comes from.")
    strength: str | None = Field(
        default=None,
        description="Multiplier of the adapter weights, a float in [0, 1] as a string.",
    )


class InferenceSpec(ApiModel):
    """Serve a model: exactly one of preset and template."""

    preset: PresetSpec | None = Field(default=None, description="A catalog model, served by KAITO.")
    template: dict[str, Any] | None = Field(
        default=None,
        description="A PodTemplateSpec for a custom image (its container listens on 5000).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    config: str = Field(
        default="",
        description="A ConfigMap in the namespace with inference_config.yaml (overrides).",
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list, description="LoRA adapters served with the model (at most 10)."
    )


class TuningSpec(ApiModel):
    """Fine-tune a preset model and publish the adapter."""

    preset: PresetSpec | None = Field(default=None, description="The base model to tune.")
    method: str = Field(default="", description="lora or qlora.")
    config: str = Field(
        default="", description="A ConfigMap in the namespace with training_config.yaml."
    )
    input: DataSource | None = Field(default=None, description="The training data.")
    output: DataDestination | None = Field(default=None, description="Where the adapter goes.")


METAV1_CONDITION_REQUIRED = ("type", "status", "reason", "message", "lastTransitionTime")
"""What metav1.Condition requires; the shared `Condition` model also reads knative-style
conditions (the Machine's), which may omit the last three, so it requires only two."""


def _metav1_condition_list(schema: dict[str, Any]) -> None:
    """The conditions list's schema: a map keyed by type, of metav1-strict items."""
    schema["x-kubernetes-list-type"] = "map"
    schema["x-kubernetes-list-map-keys"] = ["type"]
    schema["items"]["required"] = list(METAV1_CONDITION_REQUIRED)


class ColdStartPhase(enum.StrEnum):
    """The steps from ``kubectl apply`` to a served model, in the order they end."""

    MACHINE_CREATED = "MachineCreated"
    NODE_READY = "NodeReady"
    POD_SCHEDULED = "PodScheduled"
    IMAGE_PULLED = "ImagePulled"
    WEIGHTS_FETCHED = "WeightsFetched"
    SERVER_LOADED = "ServerLoaded"
    READY = "Ready"


class ColdStartStep(ApiModel):
    phase: ColdStartPhase = Field(description="The cold-start phase that ended.")
    seconds: int = Field(
        ge=0, description="Seconds from the cold start's beginning (startedAt) to its end."
    )
    time: str = Field(
        description="When it ended (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class ColdStart(ApiModel):
    """When each phase of the current revision's cold start ended, recorded once."""

    revision: str = Field(
        description="The Workspace revision (workspace.kaito.io/hash, first 12) it is of."
    )
    started_at: str = Field(
        description=(
            "Its beginning: the Workspace's creation, or when the controller first saw a "
            "changed revision (a rollout reuses the nodes: only its pods' phases follow)."
        ),
        json_schema_extra={"format": "date-time"},
    )
    phases: list[ColdStartStep] = Field(
        default_factory=list, description="The phases that ended, in order."
    )


class WorkspaceStatus(ApiModel):
    worker_nodes: list[str] = Field(
        default_factory=list, description="The nodes the workload runs on."
    )
    cold_start: ColdStart | None = Field(
        default=None,
        description="Where the minutes from apply to ready went: when each phase ended.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="The workspace's conditions.",
        json_schema_extra=_metav1_condition_list,
    )


class Workspace(ApiModel):
    """A Workspace object as the apiserver stores it."""

    api_version: str = Field(default=f"{GROUP}/{STORAGE_VERSION}")
    kind: str = Field(default=KIND)
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    resource: ResourceSpec = Field(description="The GPU nodes the workload needs.")
    inference: InferenceSpec | None = Field(
        default=None, description="Serve a model (exclusive with tuning)."
    )
    tuning: TuningSpec | None = Field(
        default=None, description="Fine-tune a model (exclusive with inference)."
    )
    status: WorkspaceStatus | None = Field(
        default=None, description="What the controller observed."
    )

    @property
    def bypass_resource_checks(self) -> bool:
        return _truthy(self.metadata.annotations.get(ANNOTATION_BYPASS_RESOURCE_CHECKS))

    @property
    def enable_load_balancer(self) -> bool:
        return _truthy(self.metadata.annotations.get(ANNOTATION_ENABLE_LB))


# -- the CRD --------------------------------------------------------------------------

CRD_SPEC = CrdSpec(
    group=GROUP,
    kind=KIND,
    plural="workspaces",
    singular="workspace",
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    short_names=("wk", "wks"),
    categories=("workspace",),
    printer_columns=(
        PrinterColumn(name="Instance", json_path=".resource.instanceType"),
        condition_column("ResourceReady", ConditionType.RESOURCE_READY),
        condition_column("InferenceReady", ConditionType.INFERENCE_READY),
        condition_column("JobStarted", ConditionType.JOB_STARTED),
        condition_column("WorkspaceReady", ConditionType.WORKSPACE_READY),
        AGE_COLUMN,
    ),
)
