"""A Machine's status as a working copy: set conditions, derive Ready, know what changed.

Conditions follow karpenter's (knative's) rules, which the runtime's `StatusDraft` knows
(a condition keeps its ``lastTransitionTime`` while its status stays the same; failures
carry severity ``Error``; empty reasons are omitted). A Machine adds the derived
``Ready``: True when MachineLaunched, MachineRegistered and MachineInitialized all are,
False (with the failing one's reason and message) when one of them is False, Unknown
otherwise.

`MachineStatusDraft.of` is where a Machine model's status becomes the working copy: the
draft edits the status as the apiserver sent it, not as the model's defaults would fill
it in (a ``reason: ""`` the server never had would be a change no one made, and a
status write on every reconcile).
"""

from __future__ import annotations

from typing import Self

from kaito.api.machine import ConditionType, Machine
from kaito.runtime.conditions import ConditionStatus, StatusDraft

__all__ = ["MachineStatusDraft"]

_PARTS = (ConditionType.LAUNCHED, ConditionType.REGISTERED, ConditionType.INITIALIZED)


class MachineStatusDraft(StatusDraft):
    """Knative-style conditions in karpenter's order, with ``Ready`` re-derived on each set."""

    omit_empty = True
    default_false_severity = "Error"
    condition_order = (*_PARTS, ConditionType.READY)

    @classmethod
    def of(cls, machine: Machine) -> Self:
        """A draft of ``machine``'s status: the fields the apiserver sent, by alias."""
        return cls(machine.status.to_dict(only_set=True))

    def set(
        self,
        type_: str,
        status: ConditionStatus,
        reason: str = "",
        message: str = "",
        *,
        severity: str | None = None,
    ) -> bool:
        """Set one condition (and re-derive Ready); True if anything changed."""
        changed = super().set(type_, status, reason, message, severity=severity)
        if type_ != ConditionType.READY:
            changed = self._derive_ready() or changed
        return changed

    def _derive_ready(self) -> bool:
        parts = [self.get(t) for t in _PARTS]
        ready = super().set
        if all(c is not None and c.get("status") == "True" for c in parts):
            return ready(ConditionType.READY, "True")
        failed = next((c for c in parts if c is not None and c.get("status") == "False"), None)
        if failed is not None:
            return ready(
                ConditionType.READY,
                "False",
                failed.get("reason", ""),
                failed.get("message", ""),
                severity=failed.get("severity"),
            )
        pending = next((c for c in parts if c is not None and c.get("status") != "True"), None)
        reason = pending.get("reason", "") if pending else "Launching"
        message = pending.get("message", "") if pending else ""
        return ready(ConditionType.READY, "Unknown", reason, message)
