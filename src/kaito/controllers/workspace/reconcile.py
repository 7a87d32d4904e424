"""The Workspace reconciler: finalizer, revision hash, plan, nodes, workload, deletion.

One reconcile reads the Workspace, its Machines and the Nodes from the informer caches
and moves the world one step (WORKSPACE.md, "Reconcile flow"):

1. deleting: delete the Workspace's Machines (`NodeSync.release`), say so in a
   ``WorkspaceDeleting`` condition, and release the finalizer only once none is left.
   Each Machine's deletion event brings the Workspace back: nothing waits in a loop.
   Otherwise ensure the finalizer ``workspace.finalizer.kaito.sh``;
2. store the revision hash of (resource, inference, tuning) in the annotation
   ``workspace.kaito.io/hash``, and resolve the reconcile's plan (`plan.resolve_plan`:
   preset, SKU, engine, disk) from the catalog the reconciler was given; a preset the
   catalog lacks is ``ResourceReady=False PresetNotFound`` and a terminal error;
3-4. the GPU nodes (`nodes.sync.NodeSync`): count the qualifying nodes, create the
   missing Machines or NodeClaims, mirror their ``Ready`` in ``MachineReady``, and
   once ``count`` nodes are Ready with GPUs, ``ResourceReady=True``;
5-7. the workload (`workload.WorkloadSync`): an inference Workspace's ConfigMap,
   Services and Deployment/StatefulSet, or a tuning Workspace's Job, applied once
   ``ResourceReady`` is True and rolled when the revision changes; ``InferenceReady``,
   ``JobStarted`` and ``WorkspaceReady`` from the workload's and its pods' status;
8. the cold start (`status.coldstart`): when each phase from Machine to Ready ended,
   in ``status.coldStart``, recorded once per revision, with an Event per phase.

The status is written once per reconcile through the status subresource (a merge patch
guarded by resourceVersion), and only when it changed. Errors raise, so the controller
requeues with backoff; a Conflict (our cache behind our own write) requeues at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from kaito.api.workspace import (
    ANNOTATION_REVISION,
    FINALIZER,
    WORKSPACES,
    ConditionType,
    Workspace,
)
from kaito.controllers.workspace.nodes.provisioning import Provisioning
from kaito.controllers.workspace.nodes.sync import NodeSync
from kaito.controllers.workspace.plan import PresetNotFound, WorkspacePlan, resolve_plan
from kaito.controllers.workspace.status import coldstart
from kaito.controllers.workspace.status.coldstart import ColdStartView
from kaito.controllers.workspace.status.draft import WorkspaceStatusDraft
from kaito.controllers.workspace.workload.sync import WorkloadCaches, WorkloadSync
from kaito.presets.catalog import Catalog
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.errors import Conflict, NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.meta import Obj
from kaito.runtime.reconcile import Request, Result, TerminalError
from kaito.runtime.timestamps import now_rfc3339

__all__ = ["WorkspaceReconciler", "revision_hash"]

log = structlog.get_logger("kaito.controllers.workspace")


RESOURCE_READY = ConditionType.RESOURCE_READY
INFERENCE_READY = ConditionType.INFERENCE_READY
WORKSPACE_READY = ConditionType.WORKSPACE_READY
WORKSPACE_DELETING = ConditionType.WORKSPACE_DELETING


def revision_hash(obj: Obj) -> str:
    """sha256 of (resource, inference, tuning) as canonical JSON: what rolls the workload."""
    spec = {k: obj.get(k) for k in ("resource", "inference", "tuning")}
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class _Ctx:
    obj: Obj
    ws: Workspace
    status: WorkspaceStatusDraft
    log: Any
    cold_start_events: list[tuple[str, str]] = field(default_factory=list)
    """(reason, message) of the Events of the phases this status write records: sent
    only once it succeeded (a write refused for a stale read records nothing)."""

    @property
    def namespace(self) -> str:
        return self.ws.metadata.namespace

    @property
    def name(self) -> str:
        return self.ws.metadata.name


class WorkspaceReconciler:
    """``reconcile`` is what the controller calls; the caches are the manager's informers',
    ``catalog`` the presets and SKUs every reconcile's plan is resolved from."""

    def __init__(
        self,
        *,
        client: Client,
        catalog: Catalog,
        workspaces: Cache,
        machines: Cache,
        nodes: Cache,
        recorder: EventRecorder,
        workload: WorkloadCaches,
        provisioning: Provisioning | None = None,
        field_manager: str = "workspace-controller",
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.provisioning = provisioning or Provisioning()
        self.nodes = NodeSync(
            client=client,
            claims=machines,
            nodes=nodes,
            recorder=recorder,
            provisioning=self.provisioning,
            field_manager=field_manager,
        )
        self.workload = WorkloadSync(
            client=client, caches=workload, recorder=recorder, field_manager=field_manager
        )
        self.workspaces = workspaces
        self.recorder = recorder

    async def reconcile(self, req: Request) -> Result | None:
        try:
            return await self._reconcile(req)
        except Conflict as e:
            # Our cache lagged behind a write (often our own): read again shortly.
            log.debug("stale workspace, retrying", workspace=req.key, error=str(e))
            return Result(requeue=True)
        except NotFound as e:
            if (e.body.get("details") or {}).get("kind") != WORKSPACES.plural:
                raise
            # Deleted while we worked; its deletion event is on its way.
            log.debug("workspace gone mid-reconcile", workspace=req.key)
            return None

    async def _reconcile(self, req: Request) -> Result | None:
        obj = self.workspaces.get_by_name(req.name, req.namespace)
        if obj is None:
            return None
        ws = Workspace.model_validate(obj)
        ctx = _Ctx(
            obj,
            ws,
            WorkspaceStatusDraft(obj.get("status"), generation=ws.metadata.generation or None),
            log.bind(workspace=req.key),
        )
        if ws.metadata.deletion_timestamp is not None:
            return await self._finalize(ctx)
        await self._ensure_metadata(ctx)
        try:
            plan = self._plan(ctx)
            ready = await self.nodes.ensure(ws, ctx.obj, ctx.status, plan=plan)
            revision = ctx.obj["metadata"]["annotations"][ANNOTATION_REVISION]
            sync = self.workload.tuning if ws.tuning is not None else self.workload.inference
            await sync(ws, ctx.obj, ctx.status, plan=plan, revision=revision, resources_ready=ready)
            self._cold_start(ctx, revision)
        finally:
            await self._write_status(ctx)
        return None

    # -- step 1 and 2: finalizer, revision ----------------------------------------------------

    async def _ensure_metadata(self, ctx: _Ctx) -> None:
        meta = ctx.ws.metadata
        patch: Obj = {}
        if FINALIZER not in meta.finalizers:
            patch["finalizers"] = [*meta.finalizers, FINALIZER]
        revision = revision_hash(ctx.obj)
        if meta.annotations.get(ANNOTATION_REVISION) != revision:
            patch["annotations"] = {ANNOTATION_REVISION: revision}
        if not patch:
            return
        patch["resourceVersion"] = meta.resource_version
        updated = await self.client.patch(WORKSPACES, ctx.name, {"metadata": patch}, ctx.namespace)
        ctx.obj["metadata"] = updated["metadata"]
        ctx.log.info(
            "workspace metadata updated",
            finalizer=FINALIZER in updated["metadata"].get("finalizers", ()),
            revision=revision[:12],
        )

    def _plan(self, ctx: _Ctx) -> WorkspacePlan:
        """This reconcile's plan; a preset the catalog lacks stops here, terminally."""
        try:
            return resolve_plan(ctx.ws, self.catalog)
        except PresetNotFound as e:
            ctx.status.set(RESOURCE_READY, "False", "PresetNotFound", str(e))
            raise TerminalError(str(e)) from e

    # -- step 8: the cold start ----------------------------------------------------------------

    def _cold_start(self, ctx: _Ctx, revision: str) -> None:
        ws = ctx.ws
        tuning = ws.tuning is not None
        workers = (
            ctx.status.data.get("workerNodes") or () if ctx.status.is_true(RESOURCE_READY) else ()
        )
        nodes = [n for n in (self.nodes.nodes.get_by_name(w) for w in workers) if n is not None]
        ready_type = WORKSPACE_READY if tuning else INFERENCE_READY
        ready = ctx.status.get(ready_type)
        view = ColdStartView(
            revision=revision,
            machines=self.nodes.claims_of(ws),
            nodes=nodes if len(nodes) == len(workers) else (),
            pods=self.workload.pods(ws),
            wanted=1 if tuning else ws.resource.count,
            serves=not tuning,
            ready_at=ready.get("lastTransitionTime")
            if ready and ready.get("status") == "True"
            else None,
        )
        created = ctx.obj["metadata"].get("creationTimestamp") or now_rfc3339()
        record, added = coldstart.fold(
            ctx.status.data.get("coldStart"), view, created=created, now=now_rfc3339()
        )
        ctx.status.set_cold_start(record)
        for step in added:
            message = coldstart.step_message(record, step, created=created)
            ctx.cold_start_events.append((coldstart.EVENT_REASON, message))

    # -- status, deletion ---------------------------------------------------------------------

    async def _write_status(self, ctx: _Ctx) -> None:
        if not ctx.status.changed:
            return
        patch = ctx.status.patch(ctx.obj["metadata"].get("resourceVersion"))
        await self.client.patch(WORKSPACES, ctx.name, patch, ctx.namespace, subresource="status")
        ctx.log.debug("workspace status written")
        for reason, message in ctx.cold_start_events:
            self.recorder.event(ctx.obj, EventType.NORMAL, reason, message)
            ctx.log.info("cold start phase ended", message=message)
        ctx.cold_start_events.clear()

    async def _finalize(self, ctx: _Ctx) -> Result | None:
        if FINALIZER not in ctx.ws.metadata.finalizers:
            return None
        remaining = await self.nodes.release(ctx.ws)
        if remaining:
            names = sorted(m.metadata.name for m in remaining)
            ctx.status.set(
                WORKSPACE_DELETING,
                "True",
                f"Deleting{self.provisioning.kind}s",
                f"waiting for {self.provisioning.kind}(s) {', '.join(names)} to be deleted "
                "(the provisioner deletes their agent pools and nodes first)",
            )
            await self._write_status(ctx)
            return None
        finalizers = [f for f in ctx.ws.metadata.finalizers if f != FINALIZER]
        patch = {
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": ctx.ws.metadata.resource_version,
            }
        }
        try:
            await self.client.patch(WORKSPACES, ctx.name, patch, ctx.namespace)
        except NotFound:
            return None
        ctx.log.info("workspace finalized")
        return None
