"""The Machines a Workspace asks for: deterministic names, their shape, their readiness.

A Machine's name is ``ws`` + 9 hex characters of sha256(namespace, name, index). It is
also the AKS agent pool's name (1-12 lowercase alphanumerics, starting with a letter),
and because it depends on nothing but the Workspace's identity and the node's index, a
controller that restarts after creating some of them computes the same names again and
creates only the ones that are missing: a restart never duplicates a node.

The Machines are built as `kaito.api.machine.Machine` models and dumped once, by
`manifest`, when they are created; what comes back from the cache is read as models
too (`summarize`). Pure functions; the reconciler does the I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from kaito.api.machine import (
    LABEL_INSTANCE_TYPE,
    MACHINES,
    Condition,
    ConditionType,
    Machine,
    MachineSpec,
    MachineTemplateRef,
    NodeSelectorRequirement,
    ObjectMeta,
    ResourceRequirements,
    Taint,
)
from kaito.api.nodeclaim import NodeClaim
from kaito.api.workspace import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Workspace
from kaito.runtime.meta import Obj

__all__ = [
    "LABEL_MACHINE_TYPE",
    "LABEL_PROVISIONER_NAME",
    "Claim",
    "MachineSummary",
    "build_machine",
    "gpu_taint",
    "in_requirement",
    "machine_name",
    "manifest",
    "summarize",
    "workspace_of",
]

Claim = Machine | NodeClaim
"""A request for one node: a Machine, or a Karpenter NodeClaim (`provisioning`)."""


LABEL_PROVISIONER_NAME = "karpenter.sh/provisioner-name"
LABEL_MACHINE_TYPE = "kaito.sh/machine-type"
PROVISIONER_NAME = "default"


def gpu_taint() -> Taint:
    """``sku=gpu:NoSchedule``: only the Workspace's pods (which tolerate it) land there."""
    return Taint(key="sku", value="gpu", effect="NoSchedule")


def in_requirement(key: str, value: str) -> NodeSelectorRequirement:
    return NodeSelectorRequirement(key=key, operator="In", values=[value])


def manifest(claim: Claim) -> Obj:
    """The body to create: exactly the fields the builder set (not the model's empty
    defaults, such as a status, which are the provisioner's to write)."""
    return claim.to_dict(only_set=True)


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


def build_machine(ws: Workspace, index: int, *, storage: str) -> Machine:
    """The Machine for node ``index`` of ``ws`` (WORKSPACE.md, reconcile step 3);
    ``storage`` is the plan's disk."""
    name = machine_name(ws.metadata.namespace, ws.metadata.name, index)
    labels = {
        LABEL_PROVISIONER_NAME: PROVISIONER_NAME,
        **ws.resource.label_selector.node_labels(),
        **workspace_labels(ws),
    }
    return Machine(
        api_version=MACHINES.api_version,
        kind=MACHINES.kind,
        metadata=ObjectMeta(name=name, labels=labels),
        spec=MachineSpec(
            machine_template_ref=MachineTemplateRef(name=name),
            requirements=[
                in_requirement(LABEL_INSTANCE_TYPE, ws.resource.instance_type),
                in_requirement(LABEL_PROVISIONER_NAME, PROVISIONER_NAME),
                in_requirement(LABEL_MACHINE_TYPE, "gpu"),
                in_requirement("kubernetes.io/arch", "amd64"),
                in_requirement("kubernetes.io/os", "linux"),
            ],
            taints=[gpu_taint()],
            resources=ResourceRequirements(requests={"storage": storage}),
        ),
    )


@dataclass(frozen=True)
class MachineSummary:
    """What a Workspace's Machines say, folded into one ``MachineReady`` condition."""

    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    ready_nodes: tuple[str, ...]
    """Node names of Ready, not deleting Machines, in Machine-name order."""


def summarize(claims: Iterable[Claim], wanted: Sequence[str]) -> MachineSummary:
    """Fold the Machines' (or NodeClaims') ``Ready`` conditions: any False -> False with
    the first failed one's reason and message (the provisioner's words, e.g.
    QuotaExceeded); all of ``wanted`` Ready -> True; otherwise Unknown (provisioning)."""
    by_name = {m.metadata.name: m for m in claims}
    ready_nodes: list[str] = []
    failed: tuple[str, Condition] | None = None
    pending: list[str] = []
    for name in sorted(by_name):
        claim = by_name[name]
        cond = claim.condition(ConditionType.READY)
        node = claim.status.node_name
        if claim.metadata.deletion_timestamp is not None:
            pending.append(name)
        elif cond is not None and cond.status == "True" and node:
            ready_nodes.append(node)
        elif cond is not None and cond.status == "False":
            failed = failed or (name, cond)
            pending.append(name)
        else:
            pending.append(name)
    missing = [n for n in wanted if n not in by_name]
    if failed is not None:
        name, cond = failed
        reason = cond.reason or "MachineNotReady"
        detail = cond.message or "no message"
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
