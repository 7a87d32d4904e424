"""Which Nodes serve a Workspace. Pure functions over raw Node objects.

A Node qualifies when it is Ready, not being deleted, carries the Workspace's instance
type and matches its labelSelector. Existing qualifying nodes count before any Machine
is created: ``preferredNodes`` first, then the nodes already in ``status.workerNodes``,
then the rest by name (a stable order, so repeated reconciles pick the same nodes).
A node serves the workload only with ``nvidia.com/gpu`` capacity > 0.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable

from kaito.api.machine import LABEL_INSTANCE_TYPE
from kaito.api.workspace import Workspace
from kaito.runtime.labels import selector_from_label_selector
from kaito.runtime.meta import Obj
from kaito.runtime.nodes import node_ready
from kaito.runtime.quantity import parse_quantity

__all__ = [
    "ACCELERATOR_NVIDIA",
    "GPU_RESOURCE",
    "LABEL_ACCELERATOR",
    "gpu_capacity",
    "needs_accelerator_label",
    "ordered_candidates",
    "qualifies",
]


GPU_RESOURCE = "nvidia.com/gpu"
LABEL_ACCELERATOR = "accelerator"
ACCELERATOR_NVIDIA = "nvidia"


def gpu_capacity(node: Obj) -> int:
    value = (node.get("status", {}).get("capacity") or {}).get(GPU_RESOURCE)
    if value is None:
        return 0
    try:
        return int(parse_quantity(value))
    except (ValueError, decimal.InvalidOperation):
        return 0


def qualifies(ws: Workspace, node: Obj) -> bool:
    """Ready, not deleting, the right instance type, matching the labelSelector."""
    meta = node.get("metadata", {})
    labels = meta.get("labels") or {}
    if meta.get("deletionTimestamp") or not node_ready(node):
        return False
    if labels.get(LABEL_INSTANCE_TYPE, "").lower() != ws.resource.instance_type.lower():
        return False
    selector = selector_from_label_selector(ws.resource.label_selector.to_dict())
    return selector.matches(labels)


def ordered_candidates(ws: Workspace, nodes: Iterable[Obj]) -> list[Obj]:
    """Qualifying nodes, preferredNodes first, then current worker nodes, then by name."""
    preferred = {n: i for i, n in enumerate(ws.resource.preferred_nodes)}
    workers = set(ws.status.worker_nodes if ws.status else ())

    def rank(node: Obj) -> tuple[int, int, str]:
        name = node["metadata"]["name"]
        if name in preferred:
            return (0, preferred[name], name)
        return (1 if name in workers else 2, 0, name)

    return sorted((n for n in nodes if qualifies(ws, n)), key=rank)


def needs_accelerator_label(node: Obj) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    return labels.get(LABEL_ACCELERATOR) != ACCELERATOR_NVIDIA
