"""The Workspace reconciler: finalizer, revision hash, Machines, nodes, workload, deletion.

One reconcile reads the Workspace, its Machines and the Nodes from the informer caches
and moves the world one step (WORKSPACE.md, "Reconcile flow"):

1. deleting: delete the Workspace's Machines (label match, read live from the
   apiserver so that a Machine the cache has not seen yet is not missed), say so in a
   ``WorkspaceDeleting`` condition, and release the finalizer only once none is left.
   Each Machine's deletion event brings the Workspace back: nothing waits in a loop.
   Otherwise ensure the finalizer ``workspace.finalizer.kaito.sh``;
2. resolve the preset (for the Machines' disk) and store the revision hash of
   (resource, inference, tuning) in the annotation ``workspace.kaito.io/hash``;
3. count the existing qualifying nodes (`nodes.ordered_candidates`), then create every
   missing Machine at once; names are deterministic (`machines.machine_name`), so a
   Machine that exists already (a restart, a stale cache) answers AlreadyExists and
   nothing is duplicated. ``MachineReady`` mirrors the Machines' ``Ready``, a failed
   Machine's reason and message (the provisioner's, e.g. QuotaExceeded) included;
4. when ``count`` nodes are Ready with ``nvidia.com/gpu`` capacity: label them
   ``accelerator=nvidia``, set ``status.workerNodes`` and ``ResourceReady=True``.
5-7. the workload (`workload.WorkloadSync`): an inference Workspace's ConfigMap,
   Services and Deployment/StatefulSet, or a tuning Workspace's Job, applied once
   ``ResourceReady`` is True and rolled when the revision changes; ``InferenceReady``,
   ``JobStarted`` and ``WorkspaceReady`` from the workload's and its pods' status.

The status is written once per reconcile through the status subresource (a merge patch
guarded by resourceVersion), and only when it changed. Errors raise, so the controller
requeues with backoff; a Conflict (our cache behind our own write) requeues at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from kaito.api.workspace import (
    ANNOTATION_REVISION,
    FINALIZER,
    LABEL_WORKSPACE,
    LABEL_WORKSPACE_NAMESPACE,
    WORKSPACES,
    ConditionType,
    Workspace,
)
from kaito.controllers.workspace.nodes import machines as mach
from kaito.controllers.workspace.nodes import selection as nd
from kaito.controllers.workspace.nodes.provisioning import Provisioning
from kaito.controllers.workspace.status.draft import WorkspaceStatusDraft
from kaito.controllers.workspace.workload.sync import WorkloadCaches, WorkloadSync
from kaito.presets.catalog import get_preset
from kaito.presets.skus import get_sku
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, ApiError, Conflict, NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.meta import Obj
from kaito.runtime.nodes import node_ready
from kaito.runtime.reconcile import Request, Result, TerminalError
from kaito.runtime.resource import NODES, Resource

__all__ = ["DEFAULT_DISK", "WorkspaceReconciler", "revision_hash"]

log = structlog.get_logger("kaito.controllers.workspace")


DEFAULT_DISK = "100Gi"
"""The Machines' disk when the Workspace runs a custom template (no preset to ask)."""

RESOURCE_READY = ConditionType.RESOURCE_READY
WORKSPACE_DELETING = ConditionType.WORKSPACE_DELETING


def revision_hash(obj: Obj) -> str:
    """sha256 of (resource, inference, tuning) as canonical JSON: what rolls the workload."""
    spec = {k: obj.get(k) for k in ("resource", "inference", "tuning")}
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _selector_text(ws: Workspace) -> str:
    labels = ws.resource.label_selector.match_labels
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"


def machine_selector(namespace: str, name: str) -> str:
    return f"{LABEL_WORKSPACE}={name},{LABEL_WORKSPACE_NAMESPACE}={namespace}"


@dataclass
class _Ctx:
    obj: Obj
    ws: Workspace
    status: WorkspaceStatusDraft
    log: Any

    @property
    def namespace(self) -> str:
        return self.ws.metadata.namespace

    @property
    def name(self) -> str:
        return self.ws.metadata.name


class WorkspaceReconciler:
    """``reconcile`` is what the controller calls; the caches are the manager's informers'."""

    def __init__(
        self,
        *,
        client: Client,
        workspaces: Cache,
        machines: Cache,
        nodes: Cache,
        recorder: EventRecorder,
        workload: WorkloadCaches,
        provisioning: Provisioning | None = None,
        field_manager: str = "workspace-controller",
    ) -> None:
        self.client = client
        self.provisioning = provisioning or Provisioning()
        self.workload = WorkloadSync(
            client=client, caches=workload, recorder=recorder, field_manager=field_manager
        )
        self.workspaces = workspaces
        self.machines = machines
        self.nodes = nodes
        self.recorder = recorder
        self.field_manager = field_manager

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
            ready = await self._provision(ctx)
            revision = ctx.obj["metadata"]["annotations"][ANNOTATION_REVISION]
            if ws.tuning is not None:
                await self.workload.tuning(
                    ws, ctx.obj, ctx.status, revision=revision, resources_ready=ready
                )
            else:
                await self.workload.inference(
                    ws, ctx.obj, ctx.status, revision=revision, resources_ready=ready
                )
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

    # -- step 3 and 4: Machines and nodes -----------------------------------------------------

    def _storage(self, ctx: _Ctx) -> str:
        spec = ctx.ws.inference.preset if ctx.ws.inference else None
        if spec is None and ctx.ws.tuning is not None:
            spec = ctx.ws.tuning.preset
        if spec is None:
            return DEFAULT_DISK
        preset = get_preset(spec.name)
        if preset is None:
            msg = f"preset {spec.name} is not in the catalog; pick one the webhook accepts"
            ctx.status.set(RESOURCE_READY, "False", "PresetNotFound", msg)
            raise TerminalError(msg)
        return preset.disk

    async def _provision(self, ctx: _Ctx) -> bool:
        """Steps 3 and 4; True when ``count`` nodes are Ready with GPUs (ResourceReady)."""
        ws = ctx.ws
        storage = self._storage(ctx)
        count = ws.resource.count
        claims = self.provisioning.resource
        ours = (
            self.machines.list(label_selector=machine_selector(ctx.namespace, ctx.name))
            if claims is not None
            else []
        )
        our_nodes = {m.get("status", {}).get("nodeName") for m in ours} - {None}
        preferred = set(ws.resource.preferred_nodes)

        def free(node: Obj) -> bool:
            """Not provisioned for a Workspace (ours count through their Machines), or
            named in preferredNodes."""
            name = node["metadata"]["name"]
            if name in our_nodes:
                return False
            return name in preferred or mach.workspace_of(node) is None

        existing = [n for n in nd.ordered_candidates(ws, self.nodes.all()) if free(n)][:count]
        shortfall = count - len(existing) if claims is not None else 0
        wanted = [mach.machine_name(ctx.namespace, ctx.name, i) for i in range(shortfall)]
        have = {m["metadata"]["name"] for m in ours}
        missing = [i for i, name in enumerate(wanted) if name not in have]
        created = await self._create_machines(ctx, missing, storage)
        summary = mach.summarize([*ours, *created], wanted)
        if claims is not None:
            ctx.status.set(
                self.provisioning.condition, summary.status, summary.reason, summary.message
            )

        candidates = [*existing]
        for node_name in summary.ready_nodes:
            node = self.nodes.get_by_name(node_name)
            if node is not None and node_ready(node):
                candidates.append(node)
        with_gpu = [n for n in candidates if nd.gpu_capacity(n) > 0][:count]
        if len(with_gpu) >= count:
            for node in with_gpu:
                await self._label_accelerator(ctx, node)
            names = sorted(n["metadata"]["name"] for n in with_gpu)
            ctx.status.set_worker_nodes(names)
            ctx.status.set(
                RESOURCE_READY,
                "True",
                "NodesReady",
                f"{count} node(s) of instance type {ws.resource.instance_type} Ready with "
                f"{nd.GPU_RESOURCE}: {', '.join(names)}",
            )
            return True
        if summary.status == "False":
            ctx.status.set(RESOURCE_READY, "False", summary.reason, summary.message)
            return False
        without_gpu = [n["metadata"]["name"] for n in candidates if nd.gpu_capacity(n) <= 0]
        if without_gpu:
            sku = get_sku(ws.resource.instance_type)
            expect = f" (instance type has {sku.gpus})" if sku else ""
            ctx.status.set(
                RESOURCE_READY,
                "False",
                "NodesWithoutGPU",
                f"node(s) {', '.join(without_gpu)} are Ready but report no {nd.GPU_RESOURCE} "
                f"capacity{expect}; is the NVIDIA device plugin running on them?",
            )
            return False
        ctx.status.set(
            RESOURCE_READY,
            "False",
            "WaitingForNodes",
            f"{len(with_gpu)} of {count} node(s) of instance type {ws.resource.instance_type} "
            + (
                f"Ready; waiting for {self.provisioning.kind}(s) to provision"
                if claims is not None
                else "Ready; node provisioning is off (byo mode): add Ready nodes of that "
                f"instance type labelled to match resource.labelSelector "
                f"({_selector_text(ws)}), with {nd.GPU_RESOURCE} capacity"
            ),
        )
        return False

    async def _create_machines(self, ctx: _Ctx, indexes: list[int], storage: str) -> list[Obj]:
        """Create the Machines for ``indexes`` concurrently; the ones that now exist."""
        if not indexes:
            return []
        claims = self.provisioning.resource
        assert claims is not None
        kind = claims.kind
        bodies = [self.provisioning.body(ctx.ws, i, storage=storage) for i in indexes]
        results = await asyncio.gather(
            *(self.client.create(claims, b, field_manager=self.field_manager) for b in bodies),
            return_exceptions=True,
        )
        created: list[Obj] = []
        failures: list[str] = []
        for body, result in zip(bodies, results, strict=True):
            name = body["metadata"]["name"]
            if isinstance(result, AlreadyExists):
                ctx.log.debug("machine exists already", machine=name)
                continue
            if isinstance(result, BaseException):
                if not isinstance(result, ApiError | OSError | asyncio.TimeoutError):
                    raise result
                failures.append(f"{name}: {result}")
                self.recorder.event(
                    ctx.obj,
                    EventType.WARNING,
                    f"{kind}CreationFailed",
                    f"creating {kind} {name} failed: {result}",
                )
                ctx.log.warning("machine creation failed", machine=name, error=str(result))
                continue
            created.append(result)
            self.recorder.event(
                ctx.obj,
                EventType.NORMAL,
                f"{kind}Created",
                f"created {kind} {name} ({ctx.ws.resource.instance_type})",
            )
            ctx.log.info(
                "machine created", machine=name, instance_type=ctx.ws.resource.instance_type
            )
        if failures:
            msg = f"creating {kind}s failed: " + "; ".join(failures)
            ctx.status.set(self.provisioning.condition, "False", f"{kind}CreationFailed", msg)
            ctx.status.set(RESOURCE_READY, "False", f"{kind}CreationFailed", msg)
            raise RuntimeError(msg)
        return created

    async def _label_accelerator(self, ctx: _Ctx, node: Obj) -> None:
        if not nd.needs_accelerator_label(node):
            return
        name = node["metadata"]["name"]
        patch = {"metadata": {"labels": {nd.LABEL_ACCELERATOR: nd.ACCELERATOR_NVIDIA}}}
        await self.client.patch(NODES, name, patch)
        self.recorder.event(
            ctx.obj,
            EventType.NORMAL,
            "NodeLabelled",
            f"labelled node {name} {nd.LABEL_ACCELERATOR}={nd.ACCELERATOR_NVIDIA}",
        )
        ctx.log.info("node labelled", node=name, label=nd.LABEL_ACCELERATOR)

    async def _write_status(self, ctx: _Ctx) -> None:
        if not ctx.status.changed:
            return
        patch = ctx.status.patch(ctx.obj["metadata"].get("resourceVersion"))
        await self.client.patch(WORKSPACES, ctx.name, patch, ctx.namespace, subresource="status")
        ctx.log.debug("workspace status written")

    # -- step 1, deleting ---------------------------------------------------------------------

    async def _delete_claims(self, ctx: _Ctx, claims: Resource) -> list[Obj]:
        """Delete the Workspace's Machines/NodeClaims (read live, not from the cache, so
        that one the cache has not seen yet is not missed); those that still exist."""
        remaining = await self.client.list_all(
            claims, label_selector=machine_selector(ctx.namespace, ctx.name)
        )
        for claim in remaining:
            if claim["metadata"].get("deletionTimestamp"):
                continue
            name = claim["metadata"]["name"]
            with contextlib.suppress(NotFound):
                await self.client.delete(claims, name)
                ctx.log.info(f"{claims.kind.lower()} deleted", name=name)
        return remaining

    async def _finalize(self, ctx: _Ctx) -> Result | None:
        if FINALIZER not in ctx.ws.metadata.finalizers:
            return None
        claims = self.provisioning.resource
        remaining = await self._delete_claims(ctx, claims) if claims is not None else []
        if remaining:
            names = sorted(m["metadata"]["name"] for m in remaining)
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
