"""Keep a Workspace's workload as wanted and fold its state into conditions (steps 5-7).

    sync = WorkloadSync(client=..., caches=WorkloadCaches(...), recorder=..., field_manager=...)
    await sync.inference(ws, obj, status, plan=plan, revision=rev, resources_ready=True)
    await sync.tuning(ws, obj, status, plan=plan, revision=rev, resources_ready=True)

Writes are server-side applies (field manager ``workspace-controller``, forced: the
controller owns these objects), made only when the live object's ``kaito.sh/spec-hash``
differs from the desired one, so a steady-state reconcile reads caches and writes
nothing. A changed Workspace changes the pod template's revision annotation, and the
Deployment/StatefulSet controller rolls the pods (step 7).

A Job's pod template is immutable: a tuning Job whose desired spec changed is deleted
(and re-created on the reconcile its deletion triggers) unless it already succeeded,
in which case its adapter stands and the change is reported in an Event.

A pod that fetches weights runs as the Workspace's fetcher ServiceAccount; it, its
Role and its RoleBinding are applied first, the same way (`podspec.fetcher_access`).

Nothing is applied before ``ResourceReady``: pods would only sit Pending on nodes that
do not exist yet.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog

from kaito.api.workspace import LABEL_WORKSPACE, ConditionType, Workspace
from kaito.controllers.workspace import podspec
from kaito.controllers.workspace.plan import WorkspacePlan
from kaito.controllers.workspace.status.draft import WorkspaceStatusDraft
from kaito.controllers.workspace.status.readiness import (
    Verdict,
    group_summary,
    inference_verdict,
    job_verdicts,
)
from kaito.controllers.workspace.tuning.job import tuning_job
from kaito.controllers.workspace.workload.inference import inference_objects, multi_node_refusal
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.meta import Obj
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    JOBS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SERVICES,
    STATEFULSETS,
    Resource,
)

__all__ = ["WORKLOAD_SELECTOR", "WorkloadCaches", "WorkloadSync"]

log = structlog.get_logger("kaito.controllers.workspace")


WORKLOAD_SELECTOR = LABEL_WORKSPACE
"""Label selector (key exists) of every cache of objects the controller creates."""

INFERENCE_READY = ConditionType.INFERENCE_READY
JOB_STARTED = ConditionType.JOB_STARTED
WORKSPACE_READY = ConditionType.WORKSPACE_READY
WORKSPACE_SUCCEEDED = ConditionType.WORKSPACE_SUCCEEDED
RESOURCE_READY = ConditionType.RESOURCE_READY


@dataclass(frozen=True)
class WorkloadCaches:
    deployments: Cache
    statefulsets: Cache
    services: Cache
    configmaps: Cache
    jobs: Cache
    pods: Cache
    serviceaccounts: Cache
    roles: Cache
    rolebindings: Cache

    def for_resource(self, res: Resource) -> Cache:
        return {
            DEPLOYMENTS: self.deployments,
            STATEFULSETS: self.statefulsets,
            SERVICES: self.services,
            CONFIGMAPS: self.configmaps,
            JOBS: self.jobs,
            SERVICEACCOUNTS: self.serviceaccounts,
            ROLES: self.roles,
            ROLEBINDINGS: self.rolebindings,
        }[res]


class WorkloadSync:
    def __init__(
        self,
        *,
        client: Client,
        caches: WorkloadCaches,
        recorder: EventRecorder,
        field_manager: str,
    ) -> None:
        self.client = client
        self.caches = caches
        self.recorder = recorder
        self.field_manager = field_manager

    def pods(self, ws: Workspace) -> list[Obj]:
        """The Workspace's pods, from the cache (any revision, deleting ones too)."""
        return self.caches.pods.list(
            ws.metadata.namespace, label_selector=f"{LABEL_WORKSPACE}={ws.metadata.name}"
        )

    async def _apply(self, ws: Workspace, obj: Obj, res: Resource, body: Obj) -> Obj:
        """Apply ``body`` unless the live object already has its spec hash; the live one."""
        meta = body["metadata"]
        live = self.caches.for_resource(res).get_by_name(meta["name"], meta["namespace"])
        want = podspec.live_spec_hash(body)
        if live is not None and podspec.live_spec_hash(live) == want:
            return live
        applied = await self.client.apply(res, body, field_manager=self.field_manager)
        verb = "created" if live is None else "updated"
        reason = "WorkloadCreated" if live is None else "WorkloadUpdated"
        self.recorder.event(obj, EventType.NORMAL, reason, f"{verb} {res.kind} {meta['name']}")
        log.info(
            f"{res.kind.lower()} {verb}",
            workspace=f"{ws.metadata.namespace}/{ws.metadata.name}",
            name=meta["name"],
            spec_hash=want,
        )
        return applied

    # -- inference ---------------------------------------------------------------------------

    async def inference(
        self,
        ws: Workspace,
        obj: Obj,
        status: WorkspaceStatusDraft,
        *,
        plan: WorkspacePlan,
        revision: str,
        resources_ready: bool,
    ) -> None:
        workload: Obj | None = None
        kind = "Deployment"
        refusal = multi_node_refusal(ws, plan)
        if refusal is not None:
            if status.set(INFERENCE_READY, "False", "MultiNodeNeedsVLLM", refusal):
                self.recorder.event(obj, EventType.WARNING, "MultiNodeNeedsVLLM", refusal)
            _workspace_ready(status)
            return
        if resources_ready:
            for res, body in inference_objects(ws, plan, revision=revision):
                live = await self._apply(ws, obj, res, body)
                if res in (DEPLOYMENTS, STATEFULSETS):
                    workload, kind = live, res.kind
        else:
            for res in (DEPLOYMENTS, STATEFULSETS):
                found = self.caches.for_resource(res).get_by_name(
                    ws.metadata.name, ws.metadata.namespace
                )
                if found is not None:
                    workload, kind = found, res.kind
        if workload is None and not resources_ready:
            verdict = Verdict(
                "False", "ResourceNotReady", "waiting for the GPU nodes (see ResourceReady)"
            )
        else:
            group = None
            if kind == STATEFULSETS.kind:
                group = group_summary(ws.resource.count, plan.gpus_per_node)
            verdict = inference_verdict(workload, self.pods(ws), kind=kind, group=group)
        was_ready = status.is_true(INFERENCE_READY)
        changed = status.set(INFERENCE_READY, verdict.status, verdict.reason, verdict.message)
        if verdict.status == "True" and not was_ready:
            self.recorder.event(obj, EventType.NORMAL, "InferenceReady", verdict.message)
        elif changed and verdict.status == "False" and verdict.reason not in _TRANSIENT:
            self.recorder.event(obj, EventType.WARNING, verdict.reason, verdict.message)
        _workspace_ready(status)

    # -- tuning ------------------------------------------------------------------------------

    async def tuning(
        self,
        ws: Workspace,
        obj: Obj,
        status: WorkspaceStatusDraft,
        *,
        plan: WorkspacePlan,
        revision: str,
        resources_ready: bool,
    ) -> None:
        job = self.caches.jobs.get_by_name(ws.metadata.name, ws.metadata.namespace)
        if resources_ready:
            _res, body = tuning_job(ws, plan, revision=revision)
            if podspec.fetches(body["spec"]["template"]["spec"]):
                for res, access in podspec.fetcher_access(ws):  # before the pod runs as it
                    await self._apply(ws, obj, res, access)
            job = await self._sync_job(ws, obj, job, body)
        if job is None and not resources_ready:
            waiting = Verdict(
                "False", "ResourceNotReady", "waiting for the GPU nodes (see ResourceReady)"
            )
            started, done = waiting, waiting
        else:
            started, done = job_verdicts(job, self.pods(ws))
        was_done = status.is_true(WORKSPACE_READY)
        status.set(JOB_STARTED, started.status, started.reason, started.message)
        changed = status.set(WORKSPACE_READY, done.status, done.reason, done.message)
        status.set(WORKSPACE_SUCCEEDED, done.status, done.reason, done.message)
        if done.status == "True" and not was_done:
            self.recorder.event(obj, EventType.NORMAL, "TuningSucceeded", done.message)
        elif changed and done.reason == "TuningFailed":
            self.recorder.event(obj, EventType.WARNING, "TuningFailed", done.message)

    async def _sync_job(self, ws: Workspace, obj: Obj, live: Obj | None, body: Obj) -> Obj | None:
        if live is None:
            return await self._apply(ws, obj, JOBS, body)
        if podspec.live_spec_hash(live) == podspec.live_spec_hash(body):
            return live
        name = live["metadata"]["name"]
        succeeded = any(
            c.get("type") == "Complete" and c.get("status") == "True"
            for c in (live.get("status") or {}).get("conditions") or ()
        )
        if succeeded:
            self.recorder.event(
                obj,
                EventType.NORMAL,
                "TuningSpecChanged",
                f"the tuning spec changed after Job {name} succeeded; its adapter stands "
                "(create a new Workspace to tune again)",
            )
            return live
        if not live["metadata"].get("deletionTimestamp"):
            with contextlib.suppress(NotFound):
                await self.client.delete(
                    JOBS, name, ws.metadata.namespace, propagation_policy="Background"
                )
            self.recorder.event(
                obj,
                EventType.NORMAL,
                "WorkloadReplaced",
                f"the tuning spec changed: deleted Job {name} to run it again",
            )
        return None


_TRANSIENT = frozenset(
    {
        "InferenceStarting",
        "RolloutInProgress",
        "WorkloadNotCreated",
        "ResourceNotReady",
        "DownloadingWeights",
    }
)


def _workspace_ready(status: WorkspaceStatusDraft) -> None:
    """``WorkspaceReady`` (and ``WorkspaceSucceeded``) = ResourceReady and InferenceReady."""
    for type_ in (RESOURCE_READY, INFERENCE_READY):
        cond = status.get(type_)
        if cond is None or cond.get("status") != "True":
            reason = (cond or {}).get("reason") or "Pending"
            message = f"{type_} is not True: {(cond or {}).get('message') or 'not yet reported'}"
            status.set(WORKSPACE_READY, "False", reason, message)
            status.set(WORKSPACE_SUCCEEDED, "False", reason, message)
            return
    message = "the GPU nodes are ready and the inference server answers"
    status.set(WORKSPACE_READY, "True", "WorkspaceReady", message)
    status.set(WORKSPACE_SUCCEEDED, "True", "WorkspaceReady", message)
