"""The Machines a Workspace asks for: deterministic names, their shape, their readiness.

A Machine's name is ``ws`` + 9 hex characters of sha256(namespace, name, index). It is
also the AKS agent pool's name (1-12 lowercase alphanumerics, starting with a letter),
and because it depends on nothing but the Workspace's identity and the node's index, a
controller that restarts after creating some of them computes the same names again and
creates only the ones that are missing: a restart never duplicates a node.

Pure functions over raw objects; the reconciler does the I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from kaito.api.machine import LABEL_INSTANCE_TYPE, MACHINES, ConditionType
from kaito.api.workspace import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Workspace
from kaito.runtime.meta import Obj

__all__ = [
    "LABEL_MACHINE_TYPE",
    "LABEL_PROVISIONER_NAME",
    "MachineSummary",
    "machine_body",
    "machine_name",
    "summarize",
    "workspace_of",
]


LABEL_PROVISIONER_NAME = "karpenter.sh/provisioner-name"
LABEL_MACHINE_TYPE = "kaito.sh/machine-type"
PROVISIONER_NAME = "default"
GPU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}


def machine_name(namespace: str, name: str, index: int) -> str:
    """``ws`` + 9 hex chars: the same (namespace, name, index) always gives the same name."""
    digest = hashlib.sha256(f"{namespace}/{name}/{index}".encode()).hexdigest()
    return f"ws{digest[:9]}"


def workspace_labels(ws: Workspace) -> dict[str, str]:
    """The labels tying an object to its Workspace."""
    return {LABEL_WORKSPACE: ws.metadata.name, LABEL_WORKSPACE_NAMESPACE: ws.metadata.namespace}


def workspace_of(obj: Obj) -> tuple[str, str] | None:
    """(namespace, name) of the Workspace an object is labelled for, or None."""
    labels = obj.get("metadata", {}).get("labels") or {}
    name, namespace = labels.get(LABEL_WORKSPACE), labels.get(LABEL_WORKSPACE_NAMESPACE)
    if not name or not namespace:
        return None
    return namespace, name


def machine_body(ws: Workspace, index: int, *, storage: str) -> Obj:
    """The Machine for node ``index`` of ``ws`` (WORKSPACE.md, reconcile step 3)."""
    name = machine_name(ws.metadata.namespace, ws.metadata.name, index)
    labels = {
        LABEL_PROVISIONER_NAME: PROVISIONER_NAME,
        **ws.resource.label_selector.match_labels,
        **workspace_labels(ws),
    }

    def req(key: str, value: str) -> Obj:
        return {"key": key, "operator": "In", "values": [value]}

    return {
        "apiVersion": MACHINES.api_version,
        "kind": MACHINES.kind,
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "machineTemplateRef": {"name": name},
            "requirements": [
                req(LABEL_INSTANCE_TYPE, ws.resource.instance_type),
                req(LABEL_PROVISIONER_NAME, PROVISIONER_NAME),
                req(LABEL_MACHINE_TYPE, "gpu"),
                req("kubernetes.io/arch", "amd64"),
                req("kubernetes.io/os", "linux"),
            ],
            "taints": [dict(GPU_TAINT)],
            "resources": {"requests": {"storage": storage}},
        },
    }


def _ready(machine: Obj) -> Obj | None:
    for cond in machine.get("status", {}).get("conditions") or ():
        if cond.get("type") == ConditionType.READY:
            return dict(cond)
    return None


@dataclass(frozen=True)
class MachineSummary:
    """What a Workspace's Machines say, folded into one ``MachineReady`` condition."""

    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    ready_nodes: tuple[str, ...]
    """Node names of Ready, not deleting Machines, in Machine-name order."""


def summarize(machines: Iterable[Obj], wanted: Sequence[str]) -> MachineSummary:
    """Fold the Machines' ``Ready`` conditions: any False -> False with the first failed
    Machine's reason and message (the provisioner's words, e.g. QuotaExceeded); all of
    ``wanted`` Ready -> True; otherwise Unknown (still provisioning)."""
    by_name = {m["metadata"]["name"]: m for m in machines}
    ready_nodes: list[str] = []
    failed: tuple[str, Obj] | None = None
    pending: list[str] = []
    for name in sorted(by_name):
        machine = by_name[name]
        cond = _ready(machine)
        node = machine.get("status", {}).get("nodeName")
        if machine["metadata"].get("deletionTimestamp"):
            pending.append(name)
        elif cond is not None and cond.get("status") == "True" and node:
            ready_nodes.append(node)
        elif cond is not None and cond.get("status") == "False":
            failed = failed or (name, cond)
            pending.append(name)
        else:
            pending.append(name)
    missing = [n for n in wanted if n not in by_name]
    if failed is not None:
        name, cond = failed
        reason = cond.get("reason") or "MachineNotReady"
        detail = cond.get("message") or "no message"
        return MachineSummary(
            "False", reason, f"Machine {name} is not ready: {detail}", tuple(ready_nodes)
        )
    if not pending and not missing:
        if not wanted and not by_name:
            msg = "no Machines needed: existing nodes cover the requested count"
            return MachineSummary("True", "NoMachinesNeeded", msg, ())
        n = len(by_name)
        return MachineSummary("True", "MachinesReady", f"{n} Machine(s) Ready", tuple(ready_nodes))
    waiting = sorted({*pending, *missing})
    return MachineSummary(
        "Unknown",
        "MachinesProvisioning",
        f"waiting for Machine(s) {', '.join(waiting)} to become Ready "
        f"({len(ready_nodes)} of {len(by_name) + len(missing)} Ready)",
        tuple(ready_nodes),
    )
