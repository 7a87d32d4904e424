"""Register and initialize: from a launched agent pool to a Machine whose Node is ready.

Its own module because this side of the lifecycle talks to Kubernetes only (the Node
cache and Node patches), never to Azure. The pure decisions (what to patch on the Node,
what still keeps it from initialized) are `kaito.provisioner.nodes`; here they are
applied:

- register: find the Node by its agent-pool label, sync labels and taints, copy
  providerID and nodeName into the status; no Node within the registration timeout
  (15 min by default) -> the Machine is deleted so that its owner creates a fresh one;
- initialize: Node Ready, startup taints gone, requested resources allocatable ->
  ``MachineInitialized`` (and so ``Ready``).
"""

from __future__ import annotations

import time

from kaito.api.machine import ConditionType, Machine
from kaito.provisioner import metrics
from kaito.provisioner.config import ProvisionerConfig
from kaito.provisioner.context import MachineContext, MachineWriter
from kaito.provisioner.nodes import (
    AGENTPOOL_INDEX,
    initialization_gaps,
    initialized_change,
    plan_registration,
)
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.events import EventType
from kaito.runtime.meta import Obj
from kaito.runtime.reconcile import Result
from kaito.runtime.resource import NODES

__all__ = ["Registrar"]

LAUNCHED, REGISTERED, INITIALIZED = (
    ConditionType.LAUNCHED,
    ConditionType.REGISTERED,
    ConditionType.INITIALIZED,
)


class Registrar:
    """Moves a launched Machine to ``MachineRegistered`` and ``MachineInitialized``."""

    def __init__(
        self, *, client: Client, nodes: Cache, writer: MachineWriter, config: ProvisionerConfig
    ) -> None:
        self.client = client
        self.nodes = nodes
        self.writer = writer
        self.config = config

    def find_node(self, machine: Machine) -> Obj | None:
        """The Machine's Node: of its agent pool, not deleting, its providerID if known."""
        nodes = [
            n
            for n in self.nodes.by_index(AGENTPOOL_INDEX, machine.name)
            if not n["metadata"].get("deletionTimestamp")
        ]
        provider_id = machine.status.provider_id
        if provider_id:
            exact = [n for n in nodes if n.get("spec", {}).get("providerID") == provider_id]
            nodes = exact or nodes
        return min(nodes, key=lambda n: n["metadata"]["name"]) if nodes else None

    async def register_and_initialize(self, ctx: MachineContext) -> Result | None:
        node = self.find_node(ctx.machine)
        if node is None:
            return await self._await_node(ctx)
        node_name = node["metadata"]["name"]
        change = plan_registration(ctx.machine, node)
        after = change.apply(node)
        gaps = initialization_gaps(ctx.machine, after)
        if gaps is None:
            change.labels.update(initialized_change(after).labels)
        if change:
            node = await self.client.patch(
                NODES, node_name, change.patch(node["metadata"]["resourceVersion"])
            )
        was_registered = ctx.status.is_true(REGISTERED)
        ctx.status.data["providerID"] = node.get("spec", {}).get("providerID")
        ctx.status.data["nodeName"] = node_name
        if ctx.status.set(REGISTERED, "True", "Registered", f"Node {node_name} registered"):
            launched = ctx.status.transition_time(LAUNCHED)
            if launched is not None and not was_registered:
                metrics.REGISTRATION_DURATION.observe(max(0.0, time.time() - launched))
            self.writer.event(ctx.machine, EventType.NORMAL, "Registered", f"Node {node_name}")
            ctx.log.info("node registered", node=node_name)
        if gaps is not None:
            ctx.status.set(INITIALIZED, "Unknown", *gaps)
            return None
        status = node.get("status", {})
        ctx.status.data["capacity"] = dict(status.get("capacity") or {})
        ctx.status.data["allocatable"] = dict(status.get("allocatable") or {})
        if ctx.status.set(INITIALIZED, "True", "Initialized", f"Node {node_name} is ready"):
            created = ctx.machine.metadata.creation_timestamp
            self.writer.event(ctx.machine, EventType.NORMAL, "Ready", f"Node {node_name} is ready")
            ctx.log.info(
                "machine ready",
                node=node_name,
                seconds=round(time.time() - created.timestamp(), 3) if created else None,
            )
        return None

    async def _await_node(self, ctx: MachineContext) -> Result | None:
        """No Node yet: wait for one (the Node watch wakes us), up to the registration timeout."""
        was_registered = bool(ctx.status.data.get("nodeName"))
        if ctx.status.is_true(REGISTERED):
            ctx.log.warning("node vanished", node=ctx.status.data.get("nodeName"))
            ctx.status.set(REGISTERED, "Unknown", "NodeNotFound", "the Node is gone")
        now = time.time()
        since = (
            (ctx.status.transition_time(REGISTERED) if was_registered else None)
            or ctx.status.transition_time(LAUNCHED)
            or now
        )
        timeout = self.config.registration_timeout
        elapsed = now - since
        if elapsed >= timeout:
            message = (
                f"no Node of agent pool {ctx.name} registered within {timeout:g}s; deleting the "
                f"Machine so that it is replaced"
            )
            ctx.status.set(REGISTERED, "False", "RegistrationTimeout", message)
            await self.writer.write_status(ctx)
            self.writer.event(ctx.machine, EventType.WARNING, "RegistrationTimeout", message)
            ctx.log.warning("registration timed out", seconds=round(elapsed, 3))
            await self.writer.delete(ctx.machine)
            return None
        ctx.status.set(
            REGISTERED, "Unknown", "NodeNotFound", f"waiting for a Node of agent pool {ctx.name}"
        )
        return Result(requeue_after=max(0.01, timeout - elapsed))
