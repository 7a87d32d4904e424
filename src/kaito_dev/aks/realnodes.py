"""Agent-pool VMs as REAL nodes: each VM boots containerd + kubelet 1.20.2 + the GPU device
plugin on this host (`kaito_dev.realnode`), registered under its AKS node name.

The seam is `SimulatedKubelets`'s: ``register(pool, properties, ready_delay)`` -> node
names, ``remove(names)``. For instance ``i`` of pool ``p``:

- the node name, labels, taints and providerID are what `kaito_dev.aks.nodes.build_node`
  computes for it. The kubelet registers with the labels it may set itself
  (``--node-labels``: kubelet 1.20 refuses other ``kubernetes.io``/``k8s.io`` labels),
  the pool's taints (``--register-with-taints``) and ``--provider-id``; the rest
  (``kubernetes.io/role``, ``node-role.kubernetes.io/agent``) is patched onto the Node
  once it registered, as AKS does;
- ``nvidia.com/gpu`` = the SKU's GPU count, from the device plugin (the scheduler and
  kubelet admit GPU pods; the plugin tells each one ``KAITO_EMULATED_GPU=cpu``);
- a pod subnet ``10.244.<k>.0/24`` of its own, the stack's registry as mirror, its own
  disk under ``/var/lib/kaito`` (the model cache is per node) and, given
  ``cluster_dns``, the cluster's DNS server for its pods.

Booting runs in a thread (containerd, then the kubelet's start); readiness is waited
for in the background (`register` returns as soon as the processes run, as an AKS
create finishes before its kubelets post Ready). Deleting a pool stops its nodes
(`realnode.stop` + `realnode.check_torn_down`) and deletes their Node objects.

The nodes are VMs: they outlive the emulator process. A restarted emulator **re-adopts**
the nodes still running under ``base_dir`` (every process of the node alive) with their
pools (``pool.json`` beside each node's state), and stops and forgets the ones that died
half-way; `adopt` returns the pools for the emulator's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from kaito.presets.skus import get_sku
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.meta import Obj
from kaito.runtime.resource import NODES
from kaito_dev.aks.kubelet import Spawn
from kaito_dev.aks.nodes import build_node
from kaito_dev.controlplane import pid_alive

__all__ = ["RealKubelets", "kubelet_labels"]

log = structlog.get_logger("kaito_dev.aks")

# Labels in these namespaces a kubelet 1.20 may set on its own Node (--node-labels);
# other kubernetes.io / k8s.io labels make it refuse to start.
_KUBELET_PREFIXES = ("kubelet.kubernetes.io/", "node.kubernetes.io/")
_KUBELET_LABELS = {
    "kubernetes.io/hostname",
    "kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.kubernetes.io/zone",
    "failure-domain.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
}
POOL_FILE = "pool.json"


def _restricted(key: str) -> bool:
    domain = key.split("/", 1)[0] if "/" in key else ""
    return any(
        domain == ns or domain.endswith("." + ns) for ns in ("kubernetes.io", "k8s.io")
    ) and not (key in _KUBELET_LABELS or key.startswith(_KUBELET_PREFIXES))


def kubelet_labels(labels: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what ``--node-labels`` may carry, what must be patched on after registration)."""
    own = {k: v for k, v in labels.items() if not _restricted(k)}
    later = {k: v for k, v in labels.items() if _restricted(k)}
    return own, later


class RealKubelets:
    """Boots, adopts and stops the pools' real nodes (see the module docstring)."""

    def __init__(
        self,
        kube: Client,
        *,
        subscription_id: str,
        resource_group: str,
        cluster: str,
        location: str,
        spawn: Spawn,
        base_dir: Path,
        kubeconfig: str,
        registry: str | None = None,
        mirror_for: Sequence[str] = (),
        ready_timeout: float = 120.0,
        cluster_dns: str = "",
    ) -> None:
        self.kube = kube
        self._where = {
            "subscription_id": subscription_id,
            "resource_group": resource_group,
            "cluster": cluster,
            "location": location,
        }
        self._spawn = spawn
        self.base_dir = base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = kubeconfig
        self.registry = registry
        self.mirror_for = list(mirror_for)
        self.ready_timeout = ready_timeout
        self.cluster_dns = cluster_dns
        self._lock = asyncio.Lock()
        self.logs = self.base_dir / ".stopped"  # the logs of the nodes of deleted pools

    # -- pod subnets --------------------------------------------------------------------

    def _used_subnets(self) -> set[int]:
        used = set()
        for state in self.base_dir.glob("*/state.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                net = ipaddress.ip_network(json.loads(state.read_text())["pod_cidr"])
                used.add(int(str(net.network_address).split(".")[2]))
        return used

    def _pod_cidr(self, taken: set[int]) -> str:
        k = next(i for i in range(1, 255) if i not in taken)
        taken.add(k)
        return f"10.244.{k}.0/24"

    # -- the seam -------------------------------------------------------------------------

    async def register(self, pool: str, properties: Obj, *, ready_delay: float) -> list[str]:
        """Boot the pool's VMs as real nodes; returns their names once their kubelets run
        (``ready_delay`` does not apply: a real kubelet takes the time it takes)."""
        from kaito_dev.realnode import NodeBootError, boot

        vm_size = str(properties.get("vmSize", ""))
        sku = get_sku(vm_size)
        gpus = sku.gpus if sku is not None else 0
        names = []
        async with self._lock:  # subnets are handed out one node at a time
            taken = self._used_subnets()
            for index in range(int(properties.get("count", 1))):
                node = build_node(
                    **self._where,
                    pool=pool,
                    index=index,
                    properties=properties,
                    ip="0.0.0.0",
                    ready=False,
                )
                name = node["metadata"]["name"]
                names.append(name)
                if (self.base_dir / name / "state.json").exists():
                    log.info("real node already running", node=name, pool=pool)
                    continue
                own, later = kubelet_labels(node["metadata"]["labels"])
                own.pop("kubernetes.io/hostname", None)  # the kubelet sets it
                taints = [
                    {k: str(v) for k, v in t.items()} for t in node["spec"].get("taints") or ()
                ]
                try:
                    booted = await asyncio.to_thread(
                        boot,
                        name,
                        labels=own,
                        taints=taints,
                        pod_cidr=self._pod_cidr(taken),
                        gpus=gpus,
                        kubeconfig=self.kubeconfig,
                        base_dir=self.base_dir,
                        registry=self.registry,
                        mirror_for=self.mirror_for,
                        provider_id=node["spec"]["providerID"],
                        cluster_dns=self.cluster_dns,
                    )
                except NodeBootError as e:
                    # The VM never joins (the provisioner sees no Node and times out).
                    log.error("real node failed to boot", node=name, pool=pool, error=str(e))
                    continue
                meta = json.dumps({"pool": pool, "properties": properties, "labels": later})
                await asyncio.to_thread(Path(booted.dir, POOL_FILE).write_text, meta)
                log.info("real node booting", node=name, pool=pool, gpus=gpus, vm_size=vm_size)
                self._spawn(self._join(name, later), f"join {name}")
        return names

    async def remove(self, names: Iterable[str]) -> None:
        """Stop each node (pods, containerd, kubelet, state: all gone, checked), then
        delete its Node object (a kubelet still running would register it again)."""
        from kaito_dev.realnode import RealNode, check_torn_down, stop

        for name in names:
            node_dir = self.base_dir / name
            if (node_dir / "state.json").exists():
                node = RealNode.load(node_dir)
                await asyncio.to_thread(stop, node, keep_logs=self.logs / name)
                await asyncio.to_thread(check_torn_down, node)
                log.info("real node stopped", node=name)
            with contextlib.suppress(NotFound):
                await self.kube.delete(NODES, name)

    async def heartbeat_forever(self, interval: float, names: Callable[[], list[str]]) -> None:
        """Nothing to do: real kubelets post their own status."""

    async def turn_ready(self, name: str, delay: float) -> None:
        """Nothing to do: a real kubelet posts Ready itself and the node lifecycle
        controller lifts the not-ready taint."""

    # -- background ---------------------------------------------------------------------

    async def _join(self, name: str, labels: dict[str, str]) -> None:
        """Wait for the kubelet to register the Node, patch AKS's other labels on, wait
        for Ready (the node's ``state.json`` records how long boot -> Ready took)."""
        from kaito_dev.realnode import NodeBootError, RealNode, wait_ready

        deadline = asyncio.get_running_loop().time() + self.ready_timeout
        while labels:
            try:
                await self.kube.patch(NODES, name, {"metadata": {"labels": labels}})
                break
            except NotFound:
                if asyncio.get_running_loop().time() > deadline:
                    log.error("real node never registered", node=name)
                    return
                await asyncio.sleep(0.25)
            except Exception as e:  # the apiserver restarting: try again
                log.warning("labelling the real node failed, retrying", node=name, error=str(e))
                await asyncio.sleep(1)
        node_dir = self.base_dir / name
        if not (node_dir / "state.json").exists():
            return  # removed meanwhile
        try:
            node = RealNode.load(node_dir)
            await asyncio.to_thread(wait_ready, node, timeout=self.ready_timeout)
        except (NodeBootError, OSError) as e:
            log.error("real node not Ready", node=name, error=str(e)[-2000:])

    # -- restart --------------------------------------------------------------------------

    def adopt(self) -> dict[str, tuple[Obj, list[str]]]:
        """The nodes a previous emulator process booted: those whose processes all still
        run are kept, with their pools (``pool -> (properties, node names)``); a node
        with a dead part is stopped (and its Node deleted when its pool is deleted)."""
        from kaito_dev.realnode import RealNode, stop

        pools: dict[str, tuple[Obj, list[str]]] = {}
        for state in sorted(self.base_dir.glob("*/state.json")):
            node = RealNode.load(state.parent)
            meta = state.parent / POOL_FILE
            info: dict[str, Any] | None = json.loads(meta.read_text()) if meta.exists() else None
            alive = bool(node.pids) and all(pid_alive(pid) for pid in node.pids.values())
            if not alive or info is None:
                # A VM that crashed stays down: its pool keeps it (NotReady) until deleted.
                log.warning("real node found dead, stopping it", node=node.name)
                stop(node, keep_logs=self.logs / node.name)
            else:
                log.info("real node re-adopted", node=node.name, pool=info["pool"])
            if info is not None:
                pools.setdefault(info["pool"], (info["properties"], []))[1].append(node.name)
        return pools
