"""A Machine's status as a working copy: set conditions, derive Ready, know what changed.

Conditions follow karpenter's (knative's) rules: a condition keeps its
``lastTransitionTime`` while its status stays the same; failures carry severity
``Error``; ``Ready`` is True when MachineLaunched, MachineRegistered and
MachineInitialized all are, False (with the failing one's reason and message) when one
of them is False, Unknown otherwise.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Literal

from kaito.api.machine import ConditionType
from kaito.runtime.meta import Obj

__all__ = ["StatusDraft", "now_rfc3339", "parse_time"]

Status = Literal["True", "False", "Unknown"]
_ORDER = (
    ConditionType.LAUNCHED,
    ConditionType.REGISTERED,
    ConditionType.INITIALIZED,
    ConditionType.READY,
)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time, or None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class StatusDraft:
    """The status a reconcile is building; ``changed`` says whether it needs writing."""

    def __init__(self, status: Obj | None) -> None:
        self._original = copy.deepcopy(status or {})
        self.data: Obj = copy.deepcopy(status or {})
        self.data.setdefault("conditions", [])

    @property
    def changed(self) -> bool:
        return self.data != {**self._original, "conditions": self._original.get("conditions", [])}

    @property
    def conditions(self) -> list[Obj]:
        return list(self.data["conditions"])

    def get(self, type_: str) -> Obj | None:
        return next((c for c in self.data["conditions"] if c.get("type") == type_), None)

    def is_true(self, type_: str) -> bool:
        cond = self.get(type_)
        return cond is not None and cond.get("status") == "True"

    def transition_time(self, type_: str) -> float | None:
        cond = self.get(type_)
        return parse_time(cond.get("lastTransitionTime")) if cond else None

    def set(
        self,
        type_: str,
        status: Status,
        reason: str = "",
        message: str = "",
        *,
        severity: str | None = None,
    ) -> bool:
        """Set one condition (and re-derive Ready); True if anything changed."""
        changed = self._set(type_, status, reason, message, severity)
        if type_ != ConditionType.READY:
            changed = self._derive_ready() or changed
        return changed

    def _set(
        self, type_: str, status: Status, reason: str, message: str, severity: str | None
    ) -> bool:
        if severity is None and status == "False":
            severity = "Error"
        old = self.get(type_)
        new: Obj = {"type": type_, "status": status}
        if severity:
            new["severity"] = severity
        if reason:
            new["reason"] = reason
        if message:
            new["message"] = message
        if old is not None and {k: v for k, v in old.items() if k != "lastTransitionTime"} == new:
            return False
        keep_time = (
            old is not None and old.get("status") == status and old.get("lastTransitionTime")
        )
        new["lastTransitionTime"] = old["lastTransitionTime"] if keep_time else now_rfc3339()  # type: ignore[index]
        others = [c for c in self.data["conditions"] if c.get("type") != type_]
        rank = {t: i for i, t in enumerate(_ORDER)}
        self.data["conditions"] = sorted(
            [*others, new], key=lambda c: rank.get(c.get("type", ""), len(_ORDER))
        )
        return True

    def _derive_ready(self) -> bool:
        parts = [self.get(t) for t in _ORDER[:3]]
        if all(c is not None and c.get("status") == "True" for c in parts):
            return self._set(ConditionType.READY, "True", "", "", None)
        failed = next((c for c in parts if c is not None and c.get("status") == "False"), None)
        if failed is not None:
            return self._set(
                ConditionType.READY,
                "False",
                failed.get("reason", ""),
                failed.get("message", ""),
                failed.get("severity"),
            )
        pending = next((c for c in parts if c is not None and c.get("status") != "True"), None)
        reason = pending.get("reason", "") if pending else "Launching"
        message = pending.get("message", "") if pending else ""
        return self._set(ConditionType.READY, "Unknown", reason, message, None)
