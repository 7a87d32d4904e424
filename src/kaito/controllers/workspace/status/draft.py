"""A Workspace's status as a working copy: metav1.Conditions, worker nodes, cold start.

The condition semantics are the runtime's (`kaito.runtime.conditions`); a Workspace adds
``status.workerNodes`` and ``status.coldStart`` and writes them through one merge patch
of the status subresource.
"""

from __future__ import annotations

from kaito.runtime.conditions import StatusDraft
from kaito.runtime.meta import Obj

__all__ = ["WorkspaceStatusDraft"]


class WorkspaceStatusDraft(StatusDraft):
    """metav1.Conditions plus ``workerNodes`` and ``coldStart``; `patch` is what the
    reconcile writes."""

    def set_cold_start(self, record: Obj) -> None:
        self.data["coldStart"] = record

    def set_worker_nodes(self, nodes: list[str]) -> None:
        if nodes or "workerNodes" in self.data:
            self.data["workerNodes"] = list(nodes)

    def patch(self, resource_version: str | None) -> Obj:
        """The merge patch for the status subresource (lists are replaced whole)."""
        body: Obj = {"status": {"conditions": self.data["conditions"]}}
        if "workerNodes" in self.data:
            body["status"]["workerNodes"] = self.data["workerNodes"]
        if "coldStart" in self.data:
            body["status"]["coldStart"] = self.data["coldStart"]
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return body
