"""Garbage collection: agent pools without a Machine, Machines without an agent pool.

Runs as a controller with one request that requeues itself every ``gc_interval``
(default 2 min), so it runs only on the leader and stops with the manager.

- An agent pool carrying kaito's labels whose Machine does not exist, older than
  ``gc_min_age`` (default 30 s, by its ``kaito.sh/creation-timestamp`` label), is
  deleted together with its Nodes (a Machine deleted without its finalizer, or a
  provisioner that died between PUT and recording it).
- A managed Machine that is launched and not being deleted, whose pool no longer
  exists, gets ``MachineLaunched=False`` (AgentPoolNotFound) and is deleted, so its
  owner creates a fresh one.

Races with the lifecycle are avoided by order, not locks: Machines are read before
the pool list for the second rule (a launched Machine's pool existed before we listed)
and after it for the first (a pool's Machine existed before the pool).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import structlog

from kaito.api.machine import ConditionType, Machine
from kaito.provisioner.azure import AgentPoolAPI, AzureError
from kaito.provisioner.context import MachineContext, MachineWriter
from kaito.provisioner.nodes import AGENTPOOL_INDEX
from kaito.provisioner.pool import LABEL_CREATION_TIMESTAMP, is_kaito_pool, parse_creation_timestamp
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.errors import ApiError, NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.meta import Obj
from kaito.runtime.reconcile import Request, Result
from kaito.runtime.resource import NODES

__all__ = ["GC_REQUEST", "GarbageCollector"]

log = structlog.get_logger("kaito.provisioner.gc")

GC_REQUEST = Request("", "agent-pool-gc")


class GarbageCollector:
    def __init__(
        self,
        *,
        client: Client,
        machines: Cache,
        nodes: Cache,
        api: AgentPoolAPI,
        recorder: EventRecorder,
        interval: float,
        min_age: float,
        is_managed: Callable[[Obj], bool],
    ) -> None:
        self.client = client
        self.machines = machines
        self.nodes = nodes
        self.api = api
        self.writer = MachineWriter(client=client, recorder=recorder)
        self.interval = interval
        self.min_age = min_age
        self.is_managed = is_managed
        self.runs = 0

    async def reconcile(self, req: Request) -> Result:
        try:
            await self.collect()
        except AzureError as e:
            log.warning("garbage collection failed", reason=str(e.reason), error=str(e))
        self.runs += 1
        return Result(requeue_after=self.interval)

    async def collect(self) -> tuple[list[str], list[str]]:
        """One sweep; returns (pools deleted, Machines deleted)."""
        managed = [Machine.model_validate(m) for m in self.machines.all() if self.is_managed(m)]
        launched_before = {
            m.name: m
            for m in managed
            if m.metadata.deletion_timestamp is None and m.is_true(ConditionType.LAUNCHED)
        }
        pools = {p.name: p for p in await self.api.list()}
        machines_after = set(self.machines.keys())
        now = time.time()
        deleted_pools: list[str] = []
        for pool in pools.values():
            if not is_kaito_pool(pool) or pool.name in machines_after:
                continue
            if pool.provisioning_state == "Deleting":
                continue
            created = parse_creation_timestamp(pool.node_labels.get(LABEL_CREATION_TIMESTAMP, ""))
            if created is None or now - created < self.min_age:
                continue
            for node in self.nodes.by_index(AGENTPOOL_INDEX, pool.name):
                with contextlib.suppress(NotFound):
                    await self.client.delete(NODES, node["metadata"]["name"])
            await self.api.delete(pool.name, wait=False)
            deleted_pools.append(pool.name)
            log.info("orphan agent pool deleted", pool=pool.name, age=round(now - created, 1))
        deleted_machines: list[str] = []
        for name, machine in launched_before.items():
            if name in pools:
                continue
            await self._retire(machine)
            deleted_machines.append(name)
        return deleted_pools, deleted_machines

    async def _retire(self, machine: Machine) -> None:
        name = machine.name
        ctx = MachineContext.read(machine, log=log.bind(machine=name, pool=name))
        message = f"agent pool {name} no longer exists; deleting the Machine so that it is replaced"
        ctx.status.set(ConditionType.LAUNCHED, "False", "AgentPoolNotFound", message)
        try:
            await self.writer.write_status(ctx)
            self.writer.event(ctx.machine, EventType.WARNING, "AgentPoolNotFound", message)
            await self.writer.delete(ctx.machine)
        except NotFound:
            return
        except ApiError as e:  # changed under us: the next sweep decides again
            ctx.log.info("machine changed during garbage collection", error=str(e))
            return
        ctx.log.warning("machine deleted: its agent pool vanished")
