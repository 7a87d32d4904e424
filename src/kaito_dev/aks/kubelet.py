"""The cluster side of the emulator: what kubelets and the node lifecycle controller do.

AKS VMs run a kubelet that registers its Node, posts Ready and heartbeats; the node
lifecycle controller lifts the ``node.kubernetes.io/not-ready`` taint that the
apiserver's TaintNodesByCondition admission puts on every new Node. The local control
plane has neither, so `SimulatedKubelets` does both for the emulator's pools.

Level-based, as a kubelet is: a Node it has turned Ready is posted Ready (and untainted)
again by every heartbeat when something wrote it back, and turning Ready retries (logged,
with backoff) through update conflicts and apiserver outages until it holds. Every write
carries the resourceVersion it was computed from, so a stale read never overwrites a
newer Node. Before, a Node could stay NotReady for good in three ways (chaos seed 1,
cycle 8 was one of them): a heartbeat that read the Node just before it turned Ready
wrote its NotReady conditions back over the turn; a turn that met an apiserver error or
timeout died with its task, unlogged; the untaint gave up after ten update conflicts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import aiohttp
import structlog

from kaito.runtime.backoff import Backoff
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
TRANSIENT = (ApiError, OSError, aiohttp.ClientError, TimeoutError)
"""What a busy, restarting or unavailable apiserver raises (a `Conflict` is an `ApiError`)."""


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
        self._ready: set[str] = set()
        """The Nodes this kubelet has turned Ready (the heartbeat keeps them so)."""

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
                await self.turn_ready(name, 0.0)
        return names

    async def remove(self, names: Iterable[str]) -> None:
        for name in names:
            self._ready.discard(name)
            with contextlib.suppress(NotFound):
                await self.kube.delete(NODES, name)

    async def heartbeat_forever(self, interval: float, names: Callable[[], list[str]]) -> None:
        """Keep Ready heartbeats fresh, as kubelet does; a Node this kubelet turned Ready
        that is found NotReady or not-ready tainted (a stale write) is made Ready again."""
        while True:
            await asyncio.sleep(interval)
            for name in names():
                try:
                    await self._heartbeat(name)
                except NotFound:
                    continue
                except Conflict:
                    continue  # written meanwhile: the next beat reads it again
                except TRANSIENT as e:
                    log.warning("heartbeat failed", node=name, error=str(e) or type(e).__name__)

    async def _heartbeat(self, name: str) -> None:
        node = await self.kube.get(NODES, name)
        if name in self._ready and _needs_ready(node):
            log.warning(
                "node turned ready lost its Ready state; posting it again",
                node=name,
                ready=_ready_status(node),
                taints=[t.get("key") for t in node.get("spec", {}).get("taints") or ()],
            )
            await self._post_ready(node)
            return
        now = now_rfc3339()
        conditions = node.get("status", {}).get("conditions") or []
        for cond in conditions:
            cond["lastHeartbeatTime"] = now
        await self.kube.patch(
            NODES,
            name,
            {
                "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                "status": {"conditions": conditions},
            },
            subresource="status",
        )

    async def turn_ready(self, name: str, delay: float) -> None:
        """Post Ready for ``name`` after ``delay`` seconds and lift its not-ready taint;
        retried (and logged) until it holds or the Node is gone."""
        await asyncio.sleep(delay)
        self._ready.add(name)
        backoff = Backoff(initial=0.05, cap=2.0)
        tries = 0
        while name in self._ready:
            tries += 1
            try:
                node = await self.kube.get(NODES, name)
                if _needs_ready(node):
                    await self._post_ready(node)
            except NotFound:
                self._ready.discard(name)
                return
            except TRANSIENT as e:
                retry_in = backoff.next()
                say = log.warning if tries >= 5 else log.info  # warning once it keeps failing
                say(
                    "turning node ready failed, retrying",
                    node=name,
                    tries=tries,
                    retry_in=round(retry_in, 3),
                    error=str(e) or type(e).__name__,
                )
                await asyncio.sleep(retry_in)
                continue
            if tries > 1:
                log.info("node turned ready", node=name, tries=tries)
            return

    async def _post_ready(self, node: Obj) -> None:
        """Ready=True and no not-ready taint, each write preconditioned on what was read
        (`Conflict` when the Node changed meanwhile: the caller reads it again)."""
        name = node["metadata"]["name"]
        if _ready_status(node) != "True":
            node = await self.kube.patch(
                NODES,
                name,
                {
                    "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                    "status": {"conditions": [*pressure_conditions(), ready_condition(True)]},
                },
                subresource="status",
            )
        taints = node.get("spec", {}).get("taints") or []
        kept = [t for t in taints if t.get("key") != NOT_READY_TAINT]
        if kept != taints:
            node["spec"]["taints"] = kept
            await self.kube.update(NODES, node)


def _ready_status(node: Obj) -> str | None:
    for cond in node.get("status", {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


def _needs_ready(node: Obj) -> bool:
    taints = node.get("spec", {}).get("taints") or ()
    return _ready_status(node) != "True" or any(t.get("key") == NOT_READY_TAINT for t in taints)
