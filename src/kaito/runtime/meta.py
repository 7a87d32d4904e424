"""Object shapes: the raw JSON dict every object travels as, and the typed metadata.

Informers, the cache and the client keep objects as the dicts ``json.loads`` returns
(RUNTIME.md, "Watch with raw JSON"); typed models are built from them at the edge of a
reconcile. One alias for that dict, so that modules do not each declare their own.

The project's own resources (Workspace, Machine) are pydantic models, and every one of
them has the same ``metadata`` and the same kind of ``status.conditions``. Those two
shapes live here, once, as apimachinery's ``metav1.ObjectMeta`` and ``metav1.Condition``
do, so that two API modules cannot disagree on what a ``uid`` or a ``lastTransitionTime``
is. `ApiModel` is their base and the API modules': camelCase on the wire, snake_case in
Python, unknown fields ignored (the apiserver prunes what a CRD does not declare anyway),
attribute docstrings as the field descriptions ``kubectl explain`` shows.

Field types follow Go's: a Go ``string`` is a ``str`` defaulting to ``""``; what Go
keeps as a pointer or a ``metav1.Time`` (absent is not the zero value) is ``X | None``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["ApiModel", "Condition", "ConditionStatus", "Obj", "ObjectMeta"]

Obj = dict[str, Any]
"""A Kubernetes object (or any JSON object within one) as decoded from the API."""

ConditionStatus = Literal["True", "False", "Unknown"]


class ApiModel(BaseModel):
    """Base of the custom resources' models: camelCase on the wire, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )

    def to_dict(self, *, only_set: bool = False) -> Obj:
        """The model as a JSON object for the API: by alias, unset optionals left out.

        The one dump for building a write from a model, so that every write spells
        fields (and timestamps, as RFC 3339) the same way. ``only_set`` keeps just the
        fields that were given (built or read), so model defaults never look like
        changes and a write carries exactly what its builder set.
        """
        if only_set:
            return self.model_dump(by_alias=True, exclude_unset=True, mode="json")
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the operator reads (a CRD leaves metadata's schema
    to the apiserver, so this model never reaches a CRD)."""

    name: str = ""
    namespace: str = ""
    """Empty for cluster-scoped objects."""
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    """Set when deletion was requested; the object stays while finalizers remain."""


class Condition(ApiModel):
    """metav1.Condition, with knative's optional ``severity`` (karpenter's Machines carry it).

    metav1 requires ``reason``, ``message`` and ``lastTransitionTime``; knative omits an
    empty reason or message. The model accepts both; a CRD that wants metav1's strictness
    says so on its conditions list (`kaito.api.workspace`).
    """

    type: str
    """The condition's type, e.g. Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = ""
    """One UpperCamelCase word for the last transition, e.g. QuotaExceeded."""
    message: str = ""
    """For humans: what happened and what to do about it."""
    last_transition_time: datetime | None = None
    """When the status last changed (a new reason or message keeps the time)."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was set for (metav1 style only)."""
    severity: str | None = None
    """Error or Warning for a failure (knative style only); absent for True."""
