"""Wiring: the workspace controller's manager, informers, watches and metrics.

    ctrl = WorkspaceController(client)
    await ctrl.run()                     # until ctrl.stop(); the CLI adds the webhook

One controller, ``workspace``, on one manager (so it runs only on the leader):

- ``for_`` Workspaces, minus updates that only touch status (the controller writes the
  status itself; its own writes must not wake it);
- ``watches`` Machines, mapped to their Workspace by the ``kaito.sh/workspace`` and
  ``kaito.sh/workspacenamespace`` labels (every change: the Machines' status is what
  the Workspace mirrors);
- ``watches`` Nodes, mapped by the same labels (the provisioner copies a Machine's
  labels onto its Node), or, for nodes the operator did not provision, to the
  Workspaces they could serve; heartbeats are dropped.

``kaito_workspace_count{state}`` and ``kaito_workspace_preset_count{preset}`` are
counted from the Workspace cache at scrape time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from kaito.api.workspace import WORKSPACES, ConditionType, Workspace
from kaito.controllers.workspace.admission.webhook import WebhookOptions, run_with_manager
from kaito.controllers.workspace.nodes import machines as mach
from kaito.controllers.workspace.nodes import selection as nd
from kaito.controllers.workspace.nodes.provisioning import NODECLAIM_READY, Provisioning
from kaito.controllers.workspace.reconcile import WorkspaceReconciler
from kaito.controllers.workspace.workload.sync import WORKLOAD_SELECTOR, WorkloadCaches
from kaito.presets.catalog import Catalog, load_catalog
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.manager import Manager, ManagerOptions
from kaito.runtime.meta import Obj
from kaito.runtime.metrics import register_once
from kaito.runtime.nodes import node_ready
from kaito.runtime.predicate import Funcs, ResourceVersionChanged
from kaito.runtime.reconcile import Request
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    JOBS,
    NODES,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SERVICES,
    STATEFULSETS,
    Resource,
)

__all__ = [
    "STATE_COLLECTOR",
    "WORKSPACE_STATES",
    "WorkspaceController",
    "workspace_preset",
    "workspace_state",
]


_IGNORED_METADATA = frozenset({"resourceVersion", "managedFields"})


def _without_status(obj: Obj) -> Obj:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _IGNORED_METADATA}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


SPEC_OR_METADATA_CHANGED = Funcs(
    update=lambda old, new: _without_status(old) != _without_status(new)
)
"""Drops Workspace updates that only touch status (or only bump the resourceVersion)."""


def _node_view(node: Obj) -> tuple[Any, ...]:
    return (
        node["metadata"].get("labels"),
        node["metadata"].get("deletionTimestamp"),
        node_ready(node),
        nd.gpu_capacity(node),
    )


NODE_CHANGED = Funcs(update=lambda old, new: _node_view(old) != _node_view(new))
"""Drops Node updates that change nothing the reconciler reads (heartbeats)."""


def machine_to_workspace(obj: Obj) -> Iterable[Request]:
    """A Machine (or a workload pod) to the Workspace its labels name."""
    owner = mach.workspace_of(obj)
    return (Request(*owner),) if owner else ()


def node_to_workspaces(workspaces: Cache) -> Callable[[Obj], Iterable[Request]]:
    """A Node maps to the Workspace it is labelled for; an unlabelled one to every
    Workspace it could serve (preferred, a current worker, or matching its selector)."""

    def map_node(node: Obj) -> Iterable[Request]:
        owner = mach.workspace_of(node)
        if owner:
            return (Request(*owner),)
        name = node["metadata"]["name"]
        out = []
        for obj in workspaces.all():
            try:
                ws = Workspace.model_validate(obj)
            except ValueError:
                continue
            workers = ws.status.worker_nodes if ws.status else []
            if name in ws.resource.preferred_nodes or name in workers or nd.qualifies(ws, node):
                out.append(Request(ws.metadata.namespace, ws.metadata.name))
        return out

    return map_node


# -- metrics ------------------------------------------------------------------------------

WORKSPACE_STATES = ("provisioning", "ready", "failed", "deleting")


def workspace_state(obj: Obj) -> str:
    if obj.get("metadata", {}).get("deletionTimestamp"):
        return "deleting"
    conds = {c.get("type"): c.get("status") for c in obj.get("status", {}).get("conditions") or ()}
    if conds.get(ConditionType.RESOURCE_READY) == "True":
        return "ready"
    if "False" in (conds.get(ConditionType.MACHINE_READY), conds.get(NODECLAIM_READY)):
        return "failed"
    return "provisioning"


def workspace_preset(obj: Obj) -> str | None:
    """The preset a Workspace serves or tunes; None for a custom template."""
    for section in ("inference", "tuning"):
        preset = (obj.get(section) or {}).get("preset") or {}
        if preset.get("name"):
            return str(preset["name"])
    return None


class WorkspaceCountCollector:
    """``kaito_workspace_count{state}`` and ``kaito_workspace_preset_count{preset}``,
    from the running controller's Workspace cache at scrape time.

    One collector per process; a controller sets its source when it starts and clears
    it when it stops, so tests can run several in turn.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: Callable[[], Iterable[Obj]] | None = None

    def set_source(self, source: Callable[[], Iterable[Obj]] | None) -> None:
        with self._lock:
            self._source = source

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            source = self._source
        states = dict.fromkeys(WORKSPACE_STATES, 0)
        presets: dict[str, int] = {}
        for obj in source() if source is not None else ():
            state = workspace_state(obj)
            states[state] = states.get(state, 0) + 1
            preset = workspace_preset(obj)
            if preset:
                presets[preset] = presets.get(preset, 0) + 1
        by_state, by_preset = self._families()
        for state, n in states.items():
            by_state.add_metric([state], n)
        for preset, n in sorted(presets.items()):
            by_preset.add_metric([preset], n)
        return [by_state, by_preset]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "kaito_workspace_count", "Workspaces by provisioning state", labels=["state"]
            ),
            GaugeMetricFamily(
                "kaito_workspace_preset_count", "Workspaces by model preset", labels=["preset"]
            ),
        )


STATE_COLLECTOR = WorkspaceCountCollector()
"""Registered in the runtime's registry when a `WorkspaceController` is built."""


class WorkspaceController:
    def __init__(
        self,
        client: Client,
        *,
        manager_options: ManagerOptions | None = None,
        workers: int = 5,
        provisioning: Provisioning | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        """``catalog``: the presets and SKUs reconciles plan from (default: the packaged
        ``models.yaml`` and ``skus.yaml``)."""
        provisioning = provisioning or Provisioning()
        self.catalog = catalog or load_catalog()
        register_once(STATE_COLLECTOR)
        self.manager = Manager(
            client, manager_options or ManagerOptions(component="workspace-controller")
        )
        workspaces = self.manager.informer(WORKSPACES)
        claims = provisioning.resource
        machines = (
            self.manager.informer(claims, label_selector=WORKLOAD_SELECTOR).cache
            if claims is not None
            else Cache()  # byo: nothing is provisioned, nothing to watch
        )
        nodes = self.manager.informer(NODES)

        def owned(resource: Resource) -> Cache:
            return self.manager.informer(resource, label_selector=WORKLOAD_SELECTOR).cache

        self.reconciler = WorkspaceReconciler(
            client=client,
            catalog=self.catalog,
            workspaces=workspaces.cache,
            machines=machines,
            nodes=nodes.cache,
            recorder=self.manager.recorder,
            provisioning=provisioning,
            workload=WorkloadCaches(
                deployments=owned(DEPLOYMENTS),
                statefulsets=owned(STATEFULSETS),
                services=owned(SERVICES),
                configmaps=owned(CONFIGMAPS),
                jobs=owned(JOBS),
                pods=owned(PODS),
                serviceaccounts=owned(SERVICEACCOUNTS),
                roles=owned(ROLES),
                rolebindings=owned(ROLEBINDINGS),
            ),
        )
        changed = [ResourceVersionChanged()]
        builder = (
            self.manager.controller(
                "workspace", self.reconciler.reconcile, max_concurrent_reconciles=workers
            )
            .for_(WORKSPACES, predicates=[SPEC_OR_METADATA_CHANGED])
            .watches(NODES, node_to_workspaces(workspaces.cache), predicates=[NODE_CHANGED])
            .watches(
                PODS, machine_to_workspace, predicates=changed, label_selector=WORKLOAD_SELECTOR
            )
        )
        if claims is not None:
            builder.watches(
                claims, machine_to_workspace, predicates=changed, label_selector=WORKLOAD_SELECTOR
            )
        owned_kinds = (DEPLOYMENTS, STATEFULSETS, SERVICES, CONFIGMAPS, JOBS)
        for resource in (*owned_kinds, SERVICEACCOUNTS, ROLES, ROLEBINDINGS):
            builder.owns(resource, predicates=changed, label_selector=WORKLOAD_SELECTOR)
        self._workspaces = workspaces.cache

    def _workspaces_now(self) -> Iterable[Obj]:
        return self._workspaces.all()

    async def run(self, *, webhook: WebhookOptions | None = None) -> None:
        """Run until `stop` (graceful) or cancellation; with ``webhook``, serve the
        validating webhook beside the manager (on every replica, leader or not)."""
        STATE_COLLECTOR.set_source(self._workspaces_now)
        try:
            if webhook is not None:
                await run_with_manager(self.manager, webhook, catalog=self.catalog)
            else:
                await self.manager.run()
        finally:
            STATE_COLLECTOR.set_source(None)

    def stop(self) -> None:
        self.manager.stop()
