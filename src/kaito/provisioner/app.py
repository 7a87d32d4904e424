"""Wiring: the provisioner's manager, informers, controllers and metrics source.

    api = AzureAgentPoolAPI(...)                  # or any AgentPoolAPI
    prov = Provisioner(client, api, config)
    await prov.run()                              # until prov.stop()

Two controllers on one manager (so both run only on the leader):

- ``machine-lifecycle``: ``for_`` Machines labelled ``kaito.sh/workspace`` (updates that
  only touch status are dropped: the provisioner writes status itself), ``watches``
  Nodes mapped to the Machine named by their agent-pool label (heartbeats dropped);
  ``workers`` concurrent reconciles.
- ``agent-pool-gc``: one self-requeueing request (see `gc`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kaito.api.machine import MACHINES, Machine
from kaito.provisioner.azure import AgentPoolAPI
from kaito.provisioner.config import ProvisionerConfig
from kaito.provisioner.context import TOKEN_ANNOTATION
from kaito.provisioner.gc import GC_REQUEST, GarbageCollector
from kaito.provisioner.lifecycle import MachineLifecycle, machine_state
from kaito.provisioner.metrics import STATE_COLLECTOR, register_metrics
from kaito.provisioner.nodes import AGENTPOOL_INDEX
from kaito.provisioner.pool import agentpool_of
from kaito.runtime.client import Client
from kaito.runtime.manager import Manager, ManagerOptions
from kaito.runtime.meta import Obj
from kaito.runtime.nodes import node_ready
from kaito.runtime.predicate import Funcs
from kaito.runtime.reconcile import Request
from kaito.runtime.resource import NODES

__all__ = ["Provisioner"]


def _machine_changed(old: Obj, new: Obj) -> bool:
    """Anything but status (and our own token annotation) changed."""
    om, nm = old["metadata"], new["metadata"]

    def annotations(meta: Obj) -> Obj:
        return {k: v for k, v in (meta.get("annotations") or {}).items() if k != TOKEN_ANNOTATION}

    return (
        om.get("generation") != nm.get("generation")
        or om.get("labels") != nm.get("labels")
        or om.get("finalizers") != nm.get("finalizers")
        or om.get("deletionTimestamp") != nm.get("deletionTimestamp")
        or annotations(om) != annotations(nm)
    )


def managed_machines(is_managed: Callable[[Obj], bool]) -> Funcs:
    """Managed Machines' events, minus updates that only touch status."""
    return Funcs(
        create=is_managed,
        update=lambda old, new: (is_managed(old) or is_managed(new)) and _machine_changed(old, new),
        delete=is_managed,
    )


def _node_view(node: Obj) -> tuple[Any, ...]:
    return (
        node["metadata"].get("labels"),
        node.get("spec", {}).get("taints"),
        node.get("spec", {}).get("providerID"),
        node.get("status", {}).get("allocatable"),
        node_ready(node),
        node["metadata"].get("deletionTimestamp"),
    )


AGENTPOOL_NODES = Funcs(
    create=lambda n: agentpool_of(n) is not None,
    update=lambda old, new: agentpool_of(new) is not None and _node_view(old) != _node_view(new),
    delete=lambda n: agentpool_of(n) is not None,
)


def index_by_agentpool(node: Obj) -> Iterable[str]:
    pool = agentpool_of(node)
    return (pool,) if pool else ()


def node_to_machine(node: Obj) -> Iterable[Request]:
    pool = agentpool_of(node)
    return (Request("", pool),) if pool else ()


class Provisioner:
    def __init__(
        self,
        client: Client,
        api: AgentPoolAPI,
        config: ProvisionerConfig,
        *,
        manager_options: ManagerOptions | None = None,
    ) -> None:
        self.config = config
        self.api = api
        register_metrics()
        self.manager = Manager(
            client, manager_options or ManagerOptions(component="gpu-provisioner")
        )
        machines = self.manager.informer(MACHINES)
        nodes = self.manager.informer(NODES, indexers={AGENTPOOL_INDEX: index_by_agentpool})
        self.lifecycle = MachineLifecycle(
            client=client,
            machines=machines.cache,
            nodes=nodes.cache,
            api=api,
            recorder=self.manager.recorder,
            config=config,
        )
        machines.add_handler(self.lifecycle.deletions)
        (
            self.manager.controller(
                "machine-lifecycle",
                self.lifecycle.reconcile,
                max_concurrent_reconciles=config.workers,
            )
            .for_(MACHINES, predicates=[managed_machines(self.lifecycle.is_managed)])
            .watches(NODES, node_to_machine, predicates=[AGENTPOOL_NODES])
        )
        self.gc = GarbageCollector(
            client=client,
            machines=machines.cache,
            nodes=nodes.cache,
            api=api,
            recorder=self.manager.recorder,
            interval=config.gc_interval,
            min_age=config.gc_min_age,
            is_managed=self.lifecycle.is_managed,
        )
        self._gc = self.manager.controller("agent-pool-gc", self.gc.reconcile).controller
        self._machines = machines.cache

    def _states(self) -> Iterable[str]:
        managed = self.lifecycle.is_managed
        return [
            machine_state(Machine.model_validate(m)) for m in self._machines.all() if managed(m)
        ]

    async def run(self) -> None:
        """Run until `stop` (graceful) or cancellation."""
        STATE_COLLECTOR.set_source(self._states)
        self._gc.queue.add(GC_REQUEST)
        try:
            await self.manager.run()
        finally:
            STATE_COLLECTOR.set_source(None)

    def stop(self) -> None:
        self.manager.stop()
