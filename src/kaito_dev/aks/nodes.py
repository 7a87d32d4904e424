"""The Nodes an AKS agent pool brings into the cluster, built the way AKS builds them.

Names ``aks-<pool>-<8 digits>-vmss<index>``, AKS's labels (``agentpool``,
``kubernetes.azure.com/agentpool``, instance type, OS, region/zone) plus the pool's
``nodeLabels``, taints from ``nodeTaints``, an Azure providerID that points at the VM
scale set instance, and capacity from the SKU table (``nvidia.com/gpu`` for GPU sizes).
"""

from __future__ import annotations

import hashlib
import re

from kaito.presets.skus import get_sku
from kaito.runtime.meta import Obj
from kaito.runtime.timestamps import now_rfc3339

KUBELET_VERSION = "v1.29.7"
NODE_IMAGE = "AKSUbuntu-2204gen2containerd-202407.29.0"
_CPU_SIZE = re.compile(r"^Standard_[A-Za-z]+(\d+)", re.IGNORECASE)


def vmss_name(cluster: str, pool: str) -> str:
    """``aks-<pool>-<8 digits>-vmss``: the digits are a stable hash, as AKS's are."""
    digits = int(hashlib.sha256(f"{cluster}/{pool}".encode()).hexdigest(), 16) % 10**8
    return f"aks-{pool}-{digits:08d}-vmss"


def node_name(cluster: str, pool: str, index: int) -> str:
    return f"{vmss_name(cluster, pool)}{index:06d}"


def node_resource_group(resource_group: str, cluster: str, location: str) -> str:
    return f"MC_{resource_group}_{cluster}_{location}"


def parse_taint(text: str) -> Obj:
    """``key=value:Effect`` or ``key:Effect`` -> a core/v1 Taint."""
    left, _, effect = text.rpartition(":")
    key, eq, value = left.partition("=")
    taint: Obj = {"key": key, "effect": effect}
    if eq:
        taint["value"] = value
    return taint


def capacity_for(vm_size: str, os_disk_gb: int) -> tuple[Obj, Obj]:
    """(capacity, allocatable) of one VM of ``vm_size``; unknown sizes are CPU-only."""
    sku = get_sku(vm_size)
    if sku is not None:
        vcpus, memory_gib, gpus = sku.vcpus, sku.memory_gib, sku.gpus
    else:
        m = _CPU_SIZE.match(vm_size)
        vcpus = int(m.group(1)) if m else 2
        memory_gib, gpus = 4 * vcpus, 0
    mem_ki = memory_gib * 1024 * 1024
    disk_ki = os_disk_gb * 1024 * 1024
    capacity: Obj = {
        "cpu": str(vcpus),
        "memory": f"{mem_ki}Ki",
        "ephemeral-storage": f"{disk_ki}Ki",
        "pods": "110",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    }
    # What kubelet reserves on AKS, roughly: some CPU, ~10 % of memory and disk.
    allocatable: Obj = {
        **capacity,
        "cpu": f"{vcpus * 1000 - 100 - 20 * vcpus}m",
        "memory": f"{int(mem_ki * 0.9)}Ki",
        "ephemeral-storage": f"{int(disk_ki * 0.9)}Ki",
    }
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        allocatable["nvidia.com/gpu"] = str(gpus)
    return capacity, allocatable


def ready_condition(ready: bool) -> Obj:
    now = now_rfc3339()
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "kubelet is posting ready status"
        if ready
        else "container runtime network not ready: NetworkReady=false",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def pressure_conditions() -> list[Obj]:
    now = now_rfc3339()
    return [
        {
            "type": kind,
            "status": "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for kind, reason, message in (
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        )
    ]


def build_node(
    *,
    subscription_id: str,
    resource_group: str,
    cluster: str,
    location: str,
    pool: str,
    index: int,
    properties: Obj,
    ip: str,
    ready: bool,
) -> Obj:
    """The Node that instance ``index`` of agent pool ``pool`` registers."""
    name = node_name(cluster, pool, index)
    vm_size = str(properties.get("vmSize", ""))
    os_sku = str(properties.get("osSKU") or "Ubuntu")
    mc_rg = node_resource_group(resource_group, cluster, location)
    labels = {
        "agentpool": pool,
        "kubernetes.azure.com/agentpool": pool,
        "kubernetes.azure.com/cluster": mc_rg,
        "kubernetes.azure.com/mode": str(properties.get("mode") or "User").lower(),
        "kubernetes.azure.com/os-sku": os_sku,
        "kubernetes.azure.com/role": "agent",
        "kubernetes.azure.com/node-image-version": NODE_IMAGE,
        "node.kubernetes.io/instance-type": vm_size,
        "beta.kubernetes.io/instance-type": vm_size,
        "kubernetes.io/os": "linux",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/role": "agent",
        "node-role.kubernetes.io/agent": "",
        "topology.kubernetes.io/region": location,
        "topology.kubernetes.io/zone": "0",
        "failure-domain.beta.kubernetes.io/region": location,
        "failure-domain.beta.kubernetes.io/zone": "0",
    }
    capacity, allocatable = capacity_for(vm_size, int(properties.get("osDiskSizeGB") or 128))
    if "nvidia.com/gpu" in capacity:
        labels["kubernetes.azure.com/accelerator"] = "nvidia"
    labels.update({str(k): str(v) for k, v in (properties.get("nodeLabels") or {}).items()})
    provider_id = (
        f"azure:///subscriptions/{subscription_id}/resourceGroups/{mc_rg.lower()}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss_name(cluster, pool)}"
        f"/virtualMachines/{index}"
    )
    spec: Obj = {"providerID": provider_id}
    taints = [parse_taint(t) for t in properties.get("nodeTaints") or ()]
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [*pressure_conditions(), ready_condition(ready)],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": hashlib.md5(name.encode()).hexdigest(),
                "containerRuntimeVersion": "containerd://1.7.20-1",
                "kernelVersion": "5.15.0-1068-azure",
                "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "machineID": hashlib.sha1(name.encode()).hexdigest()[:32],
                "operatingSystem": "linux",
                "osImage": "Ubuntu 22.04.4 LTS",
                "systemUUID": hashlib.sha256(name.encode()).hexdigest()[:32],
            },
        },
    }
