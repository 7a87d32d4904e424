"""Bring a Workspace's GPU nodes into being and fold their state into conditions (steps 3-4).

    sync = NodeSync(client=..., claims=..., nodes=..., recorder=..., provisioning=...)
    ready = await sync.ensure(ws, obj, status, plan=plan)    # True: ResourceReady
    remaining = await sync.release(ws)                       # deleting: claims still there

``ensure`` counts the existing qualifying nodes (`selection.ordered_candidates`), then
creates every missing Machine (or NodeClaim) at once. Names are deterministic
(`machines.machine_name`), so a claim that exists already (a restart, a stale cache)
answers AlreadyExists and nothing is duplicated. ``MachineReady`` (``NodeClaimReady``)
mirrors the claims' ``Ready``, a failed claim's reason and message (the provisioner's,
e.g. QuotaExceeded) included. When ``count`` nodes are Ready with ``nvidia.com/gpu``
capacity, they are labelled ``accelerator=nvidia``, ``status.workerNodes`` lists them
and ``ResourceReady`` is True.

Claims are read as models (`Provisioning.parse`) and written once, as their manifest.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from kaito.api.workspace import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, ConditionType, Workspace
from kaito.controllers.workspace.nodes import machines as mach
from kaito.controllers.workspace.nodes import selection as nd
from kaito.controllers.workspace.nodes.provisioning import Provisioning
from kaito.controllers.workspace.plan import WorkspacePlan
from kaito.controllers.workspace.status.draft import WorkspaceStatusDraft
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, ApiError, NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.meta import Obj
from kaito.runtime.nodes import node_ready
from kaito.runtime.resource import NODES

__all__ = ["NodeSync", "claim_selector"]

log = structlog.get_logger("kaito.controllers.workspace")

RESOURCE_READY = ConditionType.RESOURCE_READY


def claim_selector(namespace: str, name: str) -> str:
    """The label selector of a Workspace's Machines/NodeClaims."""
    return f"{LABEL_WORKSPACE}={name},{LABEL_WORKSPACE_NAMESPACE}={namespace}"


GPU_SIZES_PREFIX = "Standard_N"
"""Azure's GPU families (NC, ND, NV, NCC): their nodes must report nvidia.com/gpu."""


def needs_gpu(ws: Workspace) -> bool:
    """Whether the workspace's nodes must report GPUs: always, except a custom template
    on a size outside Azure's GPU families (a CPU workload; the webhook admits any size
    for templates, as upstream does)."""
    template = ws.inference is not None and ws.inference.template is not None
    return not template or ws.resource.instance_type.startswith(GPU_SIZES_PREFIX)


def _selector_text(ws: Workspace) -> str:
    labels = ws.resource.label_selector.node_labels()
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"


def _key(ws: Workspace) -> str:
    return f"{ws.metadata.namespace}/{ws.metadata.name}"


class NodeSync:
    def __init__(
        self,
        *,
        client: Client,
        claims: Cache,
        nodes: Cache,
        recorder: EventRecorder,
        provisioning: Provisioning,
        field_manager: str,
    ) -> None:
        self.client = client
        self.claims = claims
        self.nodes = nodes
        self.recorder = recorder
        self.provisioning = provisioning
        self.field_manager = field_manager

    async def ensure(
        self, ws: Workspace, obj: Obj, status: WorkspaceStatusDraft, *, plan: WorkspacePlan
    ) -> bool:
        """Steps 3 and 4; True when ``count`` nodes are Ready with GPUs (ResourceReady)."""
        namespace, name, count = ws.metadata.namespace, ws.metadata.name, ws.resource.count
        provisioning = self.provisioning
        claims = provisioning.resource
        ours = (
            [
                provisioning.parse(o)
                for o in self.claims.list(label_selector=claim_selector(namespace, name))
            ]
            if claims is not None
            else []
        )
        our_nodes = {m.status.node_name for m in ours} - {None}
        preferred = set(ws.resource.preferred_nodes)

        def free(node: Obj) -> bool:
            """Not provisioned for a Workspace (ours count through their Machines), or
            named in preferredNodes."""
            node_name = node["metadata"]["name"]
            if node_name in our_nodes:
                return False
            return node_name in preferred or mach.workspace_of(node) is None

        existing = [n for n in nd.ordered_candidates(ws, self.nodes.all()) if free(n)][:count]
        shortfall = count - len(existing) if claims is not None else 0
        wanted = [
            mach.machine_name(ws.metadata.namespace, ws.metadata.name, i) for i in range(shortfall)
        ]
        have = {m.metadata.name for m in ours}
        missing = [i for i, claim in enumerate(wanted) if claim not in have]
        created = await self._create(ws, obj, status, missing, storage=plan.disk)
        summary = mach.summarize([*ours, *created], wanted)
        if claims is not None:
            status.set(provisioning.condition, summary.status, summary.reason, summary.message)

        candidates = [*existing]
        for node_name in summary.ready_nodes:
            node = self.nodes.get_by_name(node_name)
            if node is not None and node_ready(node):
                candidates.append(node)
        if not needs_gpu(ws):
            # A custom template on a CPU size (admitted as upstream does): Ready is enough.
            cpu_nodes = candidates[:count]
            if len(cpu_nodes) >= count:
                names = sorted(n["metadata"]["name"] for n in cpu_nodes)
                status.set_worker_nodes(names)
                status.set(
                    RESOURCE_READY,
                    "True",
                    "NodesReady",
                    f"{count} node(s) of instance type {ws.resource.instance_type} Ready: "
                    f"{', '.join(names)}",
                )
                return True
        with_gpu = [n for n in candidates if nd.gpu_capacity(n) > 0][:count]
        if len(with_gpu) >= count:
            for node in with_gpu:
                await self._label_accelerator(ws, obj, node)
            names = sorted(n["metadata"]["name"] for n in with_gpu)
            status.set_worker_nodes(names)
            status.set(
                RESOURCE_READY,
                "True",
                "NodesReady",
                f"{count} node(s) of instance type {ws.resource.instance_type} Ready with "
                f"{nd.GPU_RESOURCE}: {', '.join(names)}",
            )
            return True
        if summary.status == "False":
            status.set(RESOURCE_READY, "False", summary.reason, summary.message)
            return False
        without_gpu = [n["metadata"]["name"] for n in candidates if nd.gpu_capacity(n) <= 0]
        if without_gpu:
            expect = f" (instance type has {plan.sku.gpus})" if plan.sku else ""
            status.set(
                RESOURCE_READY,
                "False",
                "NodesWithoutGPU",
                f"node(s) {', '.join(without_gpu)} are Ready but report no {nd.GPU_RESOURCE} "
                f"capacity{expect}; is the NVIDIA device plugin running on them?",
            )
            return False
        status.set(
            RESOURCE_READY,
            "False",
            "WaitingForNodes",
            f"{len(with_gpu)} of {count} node(s) of instance type {ws.resource.instance_type} "
            + (
                f"Ready; waiting for {provisioning.kind}(s) to provision"
                if claims is not None
                else "Ready; node provisioning is off (byo mode): add Ready nodes of that "
                f"instance type labelled to match resource.labelSelector "
                f"({_selector_text(ws)}), with {nd.GPU_RESOURCE} capacity"
            ),
        )
        return False

    async def _create(
        self,
        ws: Workspace,
        obj: Obj,
        status: WorkspaceStatusDraft,
        indexes: list[int],
        *,
        storage: str,
    ) -> list[mach.Claim]:
        """Create the claims for ``indexes`` concurrently; the ones that now exist."""
        if not indexes:
            return []
        claims = self.provisioning.resource
        assert claims is not None
        kind = claims.kind
        wanted = [self.provisioning.build(ws, i, storage=storage) for i in indexes]
        results = await asyncio.gather(
            *(
                self.client.create(claims, mach.manifest(c), field_manager=self.field_manager)
                for c in wanted
            ),
            return_exceptions=True,
        )
        created: list[mach.Claim] = []
        failures: list[str] = []
        for claim, result in zip(wanted, results, strict=True):
            name = claim.metadata.name
            if isinstance(result, AlreadyExists):
                log.debug("machine exists already", workspace=_key(ws), machine=name)
                continue
            if isinstance(result, BaseException):
                if not isinstance(result, ApiError | OSError | asyncio.TimeoutError):
                    raise result
                failures.append(f"{name}: {result}")
                self.recorder.event(
                    obj,
                    EventType.WARNING,
                    f"{kind}CreationFailed",
                    f"creating {kind} {name} failed: {result}",
                )
                log.warning(
                    "machine creation failed", workspace=_key(ws), machine=name, error=str(result)
                )
                continue
            created.append(self.provisioning.parse(result))
            self.recorder.event(
                obj,
                EventType.NORMAL,
                f"{kind}Created",
                f"created {kind} {name} ({ws.resource.instance_type})",
            )
            log.info(
                "machine created",
                workspace=_key(ws),
                machine=name,
                instance_type=ws.resource.instance_type,
            )
        if failures:
            msg = f"creating {kind}s failed: " + "; ".join(failures)
            status.set(self.provisioning.condition, "False", f"{kind}CreationFailed", msg)
            status.set(RESOURCE_READY, "False", f"{kind}CreationFailed", msg)
            raise RuntimeError(msg)
        return created

    async def _label_accelerator(self, ws: Workspace, obj: Obj, node: Obj) -> None:
        if not nd.needs_accelerator_label(node):
            return
        name = node["metadata"]["name"]
        patch = {"metadata": {"labels": {nd.LABEL_ACCELERATOR: nd.ACCELERATOR_NVIDIA}}}
        await self.client.patch(NODES, name, patch)
        self.recorder.event(
            obj,
            EventType.NORMAL,
            "NodeLabelled",
            f"labelled node {name} {nd.LABEL_ACCELERATOR}={nd.ACCELERATOR_NVIDIA}",
        )
        log.info("node labelled", workspace=_key(ws), node=name, label=nd.LABEL_ACCELERATOR)

    def claims_of(self, ws: Workspace) -> list[Obj]:
        """The Workspace's Machines/NodeClaims, from the cache (none in byo mode)."""
        if self.provisioning.resource is None:
            return []
        return self.claims.list(
            label_selector=claim_selector(ws.metadata.namespace, ws.metadata.name)
        )

    async def release(self, ws: Workspace) -> list[mach.Claim]:
        """Delete the Workspace's Machines/NodeClaims (read live, not from the cache, so
        that one the cache has not seen yet is not missed); those that still exist.
        Each one's deletion event brings the Workspace back: nothing waits in a loop."""
        claims = self.provisioning.resource
        if claims is None:
            return []
        remaining = [
            self.provisioning.parse(o)
            for o in await self.client.list_all(
                claims, label_selector=claim_selector(ws.metadata.namespace, ws.metadata.name)
            )
        ]
        for claim in remaining:
            if claim.metadata.deletion_timestamp is not None:
                continue
            with contextlib.suppress(NotFound):
                await self.client.delete(claims, claim.metadata.name)
                log.info(
                    f"{claims.kind.lower()} deleted", workspace=_key(ws), name=claim.metadata.name
                )
        return remaining
