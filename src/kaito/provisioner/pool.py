"""From a Machine to an agent pool: validation and the PUT body. Pure functions.

A Machine that cannot become an agent pool is never sent to Azure: `validate` names
the field and the reason, and the lifecycle puts that on the Machine's condition.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kaito.api.machine import (
    ANNOTATION_NODE_IMAGE_FAMILY,
    LABEL_INSTANCE_TYPE,
    LABEL_WORKSPACE,
    Machine,
    Taint,
)
from kaito.presets.skus import get_sku
from kaito.provisioner.azure import AgentPool, AgentPoolSpec
from kaito.runtime.quantity import parse_quantity

__all__ = [
    "AGENTPOOL_LABELS",
    "LABEL_CREATION_TIMESTAMP",
    "LABEL_MACHINE_TYPE",
    "NAME_PATTERN",
    "Problem",
    "agentpool_of",
    "creation_timestamp_label",
    "is_gpu",
    "is_kaito_pool",
    "parse_creation_timestamp",
    "pool_spec",
    "taint_string",
    "validate",
]

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,11}$")
"""AKS Linux agent pool names: 1-12 lowercase letters and digits, starting with a letter."""
LABEL_MACHINE_TYPE = "kaito.sh/machine-type"
LABEL_CREATION_TIMESTAMP = "kaito.sh/creation-timestamp"
AGENTPOOL_LABELS = ("kubernetes.azure.com/agentpool", "agentpool")
"""Labels AKS puts on a Node naming its agent pool."""
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H-%M-%SZ"  # a label value cannot hold ':'
_OS_SKUS = {"ubuntu": "Ubuntu", "azurelinux": "AzureLinux"}
_MIN_DISK_GB, _MAX_DISK_GB = 30, 2048  # AKS's osDiskSizeGB range


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a Machine cannot be launched: a condition reason and a message naming the field."""

    reason: str
    message: str


def is_gpu(vm_size: str) -> bool:
    """GPU sizes: those in the SKU table, and Azure's N-series (``Standard_N...``)."""
    return get_sku(vm_size) is not None or vm_size.lower().startswith("standard_n")


def validate(machine: Machine) -> list[Problem]:
    """Everything wrong with ``machine`` as an agent-pool request (empty: launchable)."""
    problems: list[Problem] = []
    name = machine.name
    if not NAME_PATTERN.match(name):
        problems.append(
            Problem(
                "InvalidMachineName",
                f'metadata.name "{name}" cannot name an AKS agent pool: it must match '
                f"{NAME_PATTERN.pattern} (1-12 lowercase letters and digits, starting with a "
                f"letter)",
            )
        )
    vm_size = machine.instance_type
    if vm_size is None:
        problems.append(
            Problem(
                "InstanceTypeMissing",
                f'spec.requirements has no "{LABEL_INSTANCE_TYPE}" requirement with operator In '
                f"and a value: the VM size of the agent pool",
            )
        )
    elif not vm_size.startswith("Standard_"):
        problems.append(
            Problem(
                "InvalidInstanceType",
                f'spec.requirements {LABEL_INSTANCE_TYPE} "{vm_size}" is not an Azure VM size '
                f"(Standard_...)",
            )
        )
    storage = machine.spec.resources.requests.get("storage")
    problem = _storage_problem(storage)
    if problem is not None:
        problems.append(problem)
    family = machine.metadata.annotations.get(ANNOTATION_NODE_IMAGE_FAMILY)
    if family is not None and family.lower() not in _OS_SKUS:
        problems.append(
            Problem(
                "InvalidNodeImageFamily",
                f'metadata.annotations["{ANNOTATION_NODE_IMAGE_FAMILY}"] "{family}" must be one '
                f"of {', '.join(sorted(_OS_SKUS))}",
            )
        )
    return problems


def _storage_problem(storage: int | str | None) -> Problem | None:
    field = "spec.resources.requests.storage"
    if storage is None:
        return Problem("InvalidStorage", f"{field} is required: the OS disk size of the node")
    try:
        size = parse_quantity(storage)
    except ValueError:
        return Problem("InvalidStorage", f'{field} "{storage}" is not a quantity')
    if size <= 0:
        return Problem("InvalidStorage", f'{field} must be greater than 0, got "{storage}"')
    gib = _gib(storage)
    if not (_MIN_DISK_GB <= gib <= _MAX_DISK_GB):
        return Problem(
            "InvalidStorage",
            f'{field} "{storage}" is {gib} GiB; an AKS OS disk is {_MIN_DISK_GB} to '
            f"{_MAX_DISK_GB} GiB",
        )
    return None


def _gib(storage: int | str) -> int:
    return math.ceil(parse_quantity(storage) / (2**30))


def taint_string(taint: Taint) -> str:
    """A taint as AKS's ``nodeTaints`` spell it: ``key=value:Effect`` (or ``key:Effect``)."""
    return (
        f"{taint.key}={taint.value}:{taint.effect}"
        if taint.value
        else f"{taint.key}:{taint.effect}"
    )


def creation_timestamp_label(machine: Machine) -> str:
    ts = machine.metadata.creation_timestamp
    return ts.strftime(_TIMESTAMP_FORMAT) if ts is not None else ""


def parse_creation_timestamp(value: str) -> float | None:
    """Epoch seconds of a ``kaito.sh/creation-timestamp`` label, or None."""
    try:
        return datetime.strptime(value, _TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def pool_spec(machine: Machine) -> AgentPoolSpec:
    """The agent pool for a valid Machine (call `validate` first)."""
    vm_size = machine.instance_type
    storage = machine.spec.resources.requests.get("storage")
    assert vm_size is not None, "validate() first"
    assert storage is not None, "validate() first"
    gpu = is_gpu(vm_size)
    labels = {
        **machine.metadata.labels,
        LABEL_MACHINE_TYPE: "gpu" if gpu else "cpu",
        LABEL_CREATION_TIMESTAMP: creation_timestamp_label(machine),
    }
    taints = [taint_string(t) for t in machine.spec.taints]
    if gpu and not any(t.startswith("sku=gpu:") for t in taints):
        taints.insert(0, "sku=gpu:NoSchedule")
    family = machine.metadata.annotations.get(ANNOTATION_NODE_IMAGE_FAMILY, "ubuntu")
    return AgentPoolSpec(
        name=machine.name,
        vm_size=vm_size,
        os_disk_size_gb=_gib(storage),
        os_sku=_OS_SKUS[family.lower()],
        node_labels=labels,
        node_taints=tuple(taints),
    )


def is_kaito_pool(pool: AgentPool) -> bool:
    """Pools this provisioner made: their node labels carry kaito's marks."""
    return LABEL_MACHINE_TYPE in pool.node_labels or LABEL_WORKSPACE in pool.node_labels


def agentpool_of(node: dict[str, Any]) -> str | None:
    labels = node.get("metadata", {}).get("labels") or {}
    for key in AGENTPOOL_LABELS:
        if key in labels:
            return str(labels[key])
    return None
