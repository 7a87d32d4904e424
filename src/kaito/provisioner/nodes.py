"""What the provisioner reads from and writes to a Machine's Node. Pure functions.

Registration adds the Machine's labels and taints to the Node (startup taints only
once, before the Node is marked registered: removing them is someone else's job) and
labels it ``karpenter.sh/registered=true``. Initialization needs the Node Ready, its
startup taints and Kubernetes' own not-ready taints gone, and every requested resource
except storage allocatable (for GPU sizes: ``nvidia.com/gpu`` > 0); then it is labelled
``karpenter.sh/initialized=true``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kaito.api.machine import LABEL_INITIALIZED, LABEL_REGISTERED, Machine, Taint
from kaito.provisioner.pool import is_gpu, taint_string
from kaito.runtime.meta import Obj
from kaito.runtime.nodes import node_ready
from kaito.runtime.quantity import parse_quantity

__all__ = ["AGENTPOOL_INDEX", "NodeChange", "initialization_gaps", "plan_registration"]

AGENTPOOL_INDEX = "agentpool"
"""The Node cache index on the agent-pool label (a Machine's Node is its pool's)."""
GPU = "nvidia.com/gpu"
_NOT_NODE_RESOURCES = frozenset({"storage", "ephemeral-storage"})
EPHEMERAL_TAINTS = frozenset(
    {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.cloudprovider.kubernetes.io/uninitialized",
    }
)
"""Taints Kubernetes itself puts on a Node until it is up (karpenter waits for them too)."""


def _same_taint(a: Obj, b: Taint) -> bool:
    return bool(a.get("key") == b.key and a.get("effect") == b.effect)


def _has_taint(taints: list[Obj], taint: Taint) -> bool:
    return any(_same_taint(t, taint) for t in taints)


@dataclass
class NodeChange:
    """The merge patch that registers (and maybe initializes) a Node; empty: nothing to do."""

    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Obj] | None = None
    """The Node's whole new taint list, when it changes (a merge patch replaces lists)."""

    def __bool__(self) -> bool:
        return bool(self.labels) or self.taints is not None

    def patch(self, resource_version: str) -> Obj:
        meta: Obj = {"resourceVersion": resource_version}
        if self.labels:
            meta["labels"] = self.labels
        body: Obj = {"metadata": meta}
        if self.taints is not None:
            body["spec"] = {"taints": self.taints}
        return body

    def apply(self, node: Obj) -> Obj:
        """``node`` as it will be after the patch (to judge initialization before writing)."""
        out = copy.deepcopy(node)
        out.setdefault("metadata", {}).setdefault("labels", {}).update(self.labels)
        if self.taints is not None:
            out.setdefault("spec", {})["taints"] = self.taints
        return out


def plan_registration(machine: Machine, node: Obj) -> NodeChange:
    """Labels and taints the Node lacks: the Machine's, plus the registered mark."""
    labels = node.get("metadata", {}).get("labels") or {}
    change = NodeChange()
    for key, value in {**machine.metadata.labels, LABEL_REGISTERED: "true"}.items():
        if labels.get(key) != value:
            change.labels[key] = value
    taints = list(node.get("spec", {}).get("taints") or [])
    wanted = list(machine.spec.taints)
    if labels.get(LABEL_REGISTERED) != "true":
        wanted += machine.spec.startup_taints  # once: after registration they are not ours
    added = False
    for taint in wanted:
        if not _has_taint(taints, taint):
            t: Obj = {"key": taint.key, "effect": taint.effect}
            if taint.value:
                t["value"] = taint.value
            taints.append(t)
            added = True
    if added:
        change.taints = taints
    return change


def initialization_gaps(machine: Machine, node: Obj) -> tuple[str, str] | None:
    """(reason, message) of what keeps ``node`` from initialized; None when nothing does."""
    name = node.get("metadata", {}).get("name", "")
    if not node_ready(node):
        return "NodeNotReady", f"Node {name} is not Ready"
    taints = node.get("spec", {}).get("taints") or []
    ephemeral = [t["key"] for t in taints if t.get("key") in EPHEMERAL_TAINTS]
    if ephemeral:
        return "NodeNotReady", f"Node {name} still has taints {', '.join(ephemeral)}"
    pending = [taint_string(t) for t in machine.spec.startup_taints if _has_taint(taints, t)]
    if pending:
        return "StartupTaintsExist", f"Node {name} still has startup taints {', '.join(pending)}"
    allocatable = node.get("status", {}).get("allocatable") or {}
    wanted = [r for r in machine.spec.resources.requests if r not in _NOT_NODE_RESOURCES]
    if machine.instance_type and is_gpu(machine.instance_type) and GPU not in wanted:
        wanted.append(GPU)
    missing = [r for r in wanted if _quantity(allocatable.get(r)) <= 0]
    if missing:
        return (
            "ResourceNotRegistered",
            f"Node {name} has no allocatable {', '.join(missing)} yet",
        )
    return None


def initialized_change(node: Obj) -> NodeChange:
    labels = node.get("metadata", {}).get("labels") or {}
    change = NodeChange()
    if labels.get(LABEL_INITIALIZED) != "true":
        change.labels[LABEL_INITIALIZED] = "true"
    return change


def _quantity(value: Any) -> float:
    if value is None:
        return 0.0
    try:
        return float(parse_quantity(value))
    except ValueError:
        return 0.0
