"""Conditions as a working copy of an object's status, with metav1.Condition semantics.

A reconcile builds the status it wants on a `StatusDraft` and writes it once, through the
status subresource, only when `changed` says it differs from what it read: a steady-state
reconcile writes nothing, and its own write does not wake it again.

Transition semantics as metav1.Condition (and knative/karpenter's) document them:
``lastTransitionTime`` changes only when a condition's *status* changes; a new reason
or message keeps the time, so ``kubectl describe`` says how long something has been
true, not when its message last changed.

Two styles of condition are written in this project, and the class attributes choose:

- metav1.Condition (Workspace): ``reason`` and ``message`` always present,
  ``observedGeneration`` when the draft was given the object's generation;
- knative/karpenter (Machine): empty ``reason``/``message`` omitted, a ``severity``
  (``Error`` for a False condition unless said otherwise), and conditions kept in a
  fixed order (`condition_order`), as karpenter prints them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import ClassVar

from kaito.runtime.meta import ConditionStatus, Obj
from kaito.runtime.timestamps import now_rfc3339, parse_rfc3339

__all__ = ["ConditionStatus", "StatusDraft"]


class StatusDraft:
    """The status a reconcile is building; ``changed`` says whether it needs writing."""

    omit_empty: ClassVar[bool] = False
    """Leave out empty ``reason``/``message`` (knative style); metav1 always writes both."""
    default_false_severity: ClassVar[str | None] = None
    """The ``severity`` a False condition gets when none is given (knative: ``Error``)."""
    condition_order: ClassVar[tuple[str, ...]] = ()
    """Types in the order to keep them; others follow. Empty: insertion order."""
    fixed_fields: ClassVar[Mapping[str, object]] = {}
    """Fields every condition carries as they are (pods: ``lastProbeTime: null``, as
    kubelet writes it). Empty by default."""

    def __init__(self, status: Obj | None, *, generation: int | None = None) -> None:
        self._original = copy.deepcopy(status or {})
        self.data: Obj = copy.deepcopy(status or {})
        self.data.setdefault("conditions", [])
        self.generation = generation

    @property
    def changed(self) -> bool:
        original = {**self._original, "conditions": self._original.get("conditions") or []}
        return self.data != original

    @property
    def conditions(self) -> list[Obj]:
        return list(self.data["conditions"])

    def get(self, type_: str) -> Obj | None:
        return next((c for c in self.data["conditions"] if c.get("type") == type_), None)

    def is_true(self, type_: str) -> bool:
        cond = self.get(type_)
        return cond is not None and cond.get("status") == "True"

    def transition_time(self, type_: str) -> float | None:
        """Epoch seconds of the condition's last status change, or None."""
        cond = self.get(type_)
        return parse_rfc3339(cond.get("lastTransitionTime")) if cond else None

    def set(
        self,
        type_: str,
        status: ConditionStatus,
        reason: str = "",
        message: str = "",
        *,
        severity: str | None = None,
    ) -> bool:
        """Set one condition; True if that changed anything."""
        if severity is None and status == "False":
            severity = self.default_false_severity
        new: Obj = {"type": type_, "status": status, **self.fixed_fields}
        if severity:
            new["severity"] = severity
        if reason or not self.omit_empty:
            new["reason"] = reason
        if message or not self.omit_empty:
            new["message"] = message
        if self.generation is not None:
            new["observedGeneration"] = self.generation
        old = self.get(type_)
        if old is not None and {k: v for k, v in old.items() if k != "lastTransitionTime"} == new:
            return False
        kept = old.get("lastTransitionTime") if old and old.get("status") == status else None
        new["lastTransitionTime"] = kept or now_rfc3339()
        conditions = self.data["conditions"]
        index = next((i for i, c in enumerate(conditions) if c.get("type") == type_), None)
        if index is None:
            conditions.append(new)
        else:
            conditions[index] = new
        if self.condition_order:
            rank = {t: i for i, t in enumerate(self.condition_order)}
            conditions.sort(key=lambda c: rank.get(c.get("type", ""), len(rank)))
        return True

    def remove(self, type_: str) -> bool:
        """Drop one condition; True if it was there."""
        before = len(self.data["conditions"])
        self.data["conditions"] = [c for c in self.data["conditions"] if c.get("type") != type_]
        return len(self.data["conditions"]) != before
