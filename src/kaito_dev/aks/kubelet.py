"""The cluster side of the emulator: what kubelets and the node lifecycle controller do.

AKS VMs run a kubelet that registers its Node, posts Ready and heartbeats; the node
lifecycle controller lifts the ``node.kubernetes.io/not-ready`` taint that the
apiserver's TaintNodesByCondition admission puts on every new Node. The local control
plane has neither, so `SimulatedKubelets` does both for the emulator's pools.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import structlog

from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, ApiError, Conflict, NotFound
from kaito.runtime.meta import Obj
from kaito.runtime.resource import NODES
from kaito.runtime.timestamps import now_rfc3339
from kaito_dev.aks.nodes import (
    build_node,
    pressure_conditions,
    ready_condition,
)

__all__ = ["Kubelets", "SimulatedKubelets"]

log = structlog.get_logger("kaito_dev.aks")

Spawn = Callable[[Coroutine[Any, Any, None], str], Any]
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


class Kubelets(Protocol):
    """What the agent pools need of their VMs' kubelets: `SimulatedKubelets` (Node
    objects only) or `kaito_dev.aks.realnodes.RealKubelets` (real nodes)."""

    async def register(self, pool: str, properties: Obj, *, ready_delay: float) -> list[str]: ...

    async def remove(self, names: Iterable[str]) -> None: ...

    async def heartbeat_forever(self, interval: float, names: Callable[[], list[str]]) -> None: ...

    async def turn_ready(self, name: str, delay: float) -> None:
        """A registered Node Ready again after an emulator restart (its pending
        turn-Ready died with the old process)."""
        ...


class SimulatedKubelets:
    def __init__(
        self,
        kube: Client,
        *,
        subscription_id: str,
        resource_group: str,
        cluster: str,
        location: str,
        spawn: Spawn,
    ) -> None:
        self.kube = kube
        self._where = {
            "subscription_id": subscription_id,
            "resource_group": resource_group,
            "cluster": cluster,
            "location": location,
        }
        self._spawn = spawn
        self._next_ip = 4

    async def register(self, pool: str, properties: Obj, *, ready_delay: float) -> list[str]:
        """Register the pool's Nodes (Ready now, or after ``ready_delay`` seconds)."""
        names = []
        for index in range(int(properties.get("count", 1))):
            self._next_ip += 1
            node = build_node(
                **self._where,
                pool=pool,
                index=index,
                properties=properties,
                ip=f"10.224.{self._next_ip // 250}.{self._next_ip % 250 + 4}",
                ready=ready_delay <= 0,
            )
            name = node["metadata"]["name"]
            with contextlib.suppress(AlreadyExists):
                await self.kube.create(NODES, node)
            names.append(name)
            if ready_delay > 0:
                self._spawn(self.turn_ready(name, ready_delay), f"ready {name}")
            else:
                await self._untaint_not_ready(name)
        return names

    async def remove(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(NotFound):
                await self.kube.delete(NODES, name)

    async def heartbeat_forever(self, interval: float, names: Callable[[], list[str]]) -> None:
        """Keep Ready heartbeats fresh, as kubelet does (what is Ready stays Ready)."""
        while True:
            await asyncio.sleep(interval)
            now = now_rfc3339()
            for name in names():
                try:
                    node = await self.kube.get(NODES, name)
                except NotFound:
                    continue
                except (ApiError, OSError) as e:
                    log.warning("heartbeat failed", node=name, error=str(e))
                    continue
                conditions = node.get("status", {}).get("conditions") or []
                for cond in conditions:
                    cond["lastHeartbeatTime"] = now
                with contextlib.suppress(NotFound, ApiError):
                    await self.kube.patch(
                        NODES, name, {"status": {"conditions": conditions}}, subresource="status"
                    )

    async def turn_ready(self, name: str, delay: float) -> None:
        """Post Ready for ``name`` after ``delay`` seconds and lift its not-ready taint."""
        await asyncio.sleep(delay)
        with contextlib.suppress(NotFound):
            await self.kube.patch(
                NODES,
                name,
                {"status": {"conditions": [*pressure_conditions(), ready_condition(True)]}},
                subresource="status",
            )
        await self._untaint_not_ready(name)

    async def _untaint_not_ready(self, name: str) -> None:
        """Lift the not-ready taint of a Ready Node (the node lifecycle controller's job)."""
        for _ in range(10):
            try:
                node = await self.kube.get(NODES, name)
            except NotFound:
                return
            taints = node.get("spec", {}).get("taints") or []
            kept = [t for t in taints if t.get("key") != NOT_READY_TAINT]
            if kept == taints:
                return
            node["spec"]["taints"] = kept
            try:
                await self.kube.update(NODES, node)
                return
            except Conflict:
                continue  # someone (the provisioner registering it) wrote first: re-read
            except NotFound:
                return
