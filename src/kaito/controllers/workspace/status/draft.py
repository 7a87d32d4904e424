"""A Workspace's status as a working copy: metav1.Conditions and worker nodes.

``lastTransitionTime`` changes only when a condition's status changes (a new reason or
message keeps the time), as metav1.Condition documents. The reconciler builds the
status it wants here and writes it once, through the status subresource, only when it
differs from what the apiserver has.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Literal

from kaito.runtime.meta import Obj

__all__ = ["StatusDraft", "now_rfc3339"]

Status = Literal["True", "False", "Unknown"]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusDraft:
    """The status a reconcile is building; ``changed`` says whether it needs writing."""

    def __init__(self, status: Obj | None, *, generation: int | None = None) -> None:
        self._original = copy.deepcopy(status or {})
        self.data: Obj = copy.deepcopy(status or {})
        self.data.setdefault("conditions", [])
        self.generation = generation

    @property
    def changed(self) -> bool:
        original = {**self._original, "conditions": self._original.get("conditions") or []}
        return self.data != original

    def get(self, type_: str) -> Obj | None:
        return next((c for c in self.data["conditions"] if c.get("type") == type_), None)

    def is_true(self, type_: str) -> bool:
        cond = self.get(type_)
        return cond is not None and cond.get("status") == "True"

    def set(self, type_: str, status: Status, reason: str, message: str) -> bool:
        """Set one condition; True if that changed anything."""
        old = self.get(type_)
        new: Obj = {"type": type_, "status": status, "reason": reason, "message": message}
        if self.generation is not None:
            new["observedGeneration"] = self.generation
        if old is not None and {k: v for k, v in old.items() if k != "lastTransitionTime"} == new:
            return False
        same_status = old is not None and old.get("status") == status
        new["lastTransitionTime"] = (
            old["lastTransitionTime"]
            if old is not None and same_status and old.get("lastTransitionTime")
            else now_rfc3339()
        )
        conditions = self.data["conditions"]
        index = next((i for i, c in enumerate(conditions) if c.get("type") == type_), None)
        if index is None:
            conditions.append(new)
        else:
            conditions[index] = new
        return True

    def remove(self, type_: str) -> bool:
        before = len(self.data["conditions"])
        self.data["conditions"] = [c for c in self.data["conditions"] if c.get("type") != type_]
        return len(self.data["conditions"]) != before

    def set_worker_nodes(self, nodes: list[str]) -> None:
        if nodes or "workerNodes" in self.data:
            self.data["workerNodes"] = list(nodes)

    def patch(self, resource_version: str | None) -> Obj:
        """The merge patch for the status subresource (lists are replaced whole)."""
        body: Obj = {"status": {"conditions": self.data["conditions"]}}
        if "workerNodes" in self.data:
            body["status"]["workerNodes"] = self.data["workerNodes"]
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return body
