"""The Machine lifecycle: finalizer -> launch -> register -> initialize -> Ready; terminate.

One reconcile reads the Machine from the cache and moves it as far as the world allows
(PROVISIONER.md, "Lifecycle of one Machine"), writing the status once at the end:

1. add the finalizer ``karpenter.sh/termination``;
2. validate; an invalid Machine gets ``MachineLaunched=False`` naming the field, and no
   ARM call is made;
3. launch: the agent pool named after the Machine. A continuation token is stored in
   an annotation as soon as ARM accepts the PUT, so a restarted provisioner resumes
   polling instead of creating again; without a token, a GET of the pool tells where
   things stand (a pool still Creating is polled, a Failed one deleted and recreated).
   Azure failures become the condition's reason and ARM's message, retried with
   backoff (5 s doubling to 5 min by default);
4. register: find the Node by its agent-pool label, sync labels and taints, copy
   providerID and nodeName; no Node within the registration timeout (15 min) -> the
   Machine is deleted so that its owner creates a fresh one;
5. initialize: Node Ready, startup taints gone, requested resources allocatable ->
   ``MachineInitialized`` and ``Ready``.

Deletion (the finalizer): delete the Node, delete the agent pool and wait until it is
gone, only then remove the finalizer. A reconcile never waits on Azure longer than
``lro_wait`` (and stops waiting at once when the Machine is deleted): the continuation
token keeps its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from kaito.api.machine import (
    LABEL_WORKSPACE,
    MACHINES,
    TERMINATION_FINALIZER,
    ConditionType,
    Machine,
)
from kaito.provisioner import metrics
from kaito.provisioner.azure import AgentPool, AgentPoolAPI, AzureError
from kaito.provisioner.conditions import MachineStatusDraft
from kaito.provisioner.config import ProvisionerConfig
from kaito.provisioner.nodes import initialization_gaps, initialized_change, plan_registration
from kaito.provisioner.pool import NAME_PATTERN, pool_spec, validate
from kaito.runtime.aio import Interrupted, run_unless
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.errors import Conflict, NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.labels import parse_selector
from kaito.runtime.meta import Obj
from kaito.runtime.ratelimit import ItemExponentialFailureRateLimiter
from kaito.runtime.reconcile import Request, Result
from kaito.runtime.resource import NODES

__all__ = [
    "AGENTPOOL_INDEX",
    "TOKEN_ANNOTATION",
    "DeletionWatch",
    "MachineLifecycle",
    "machine_state",
    "managed_by",
]

log = structlog.get_logger("kaito.provisioner")

T = TypeVar("T")

TOKEN_ANNOTATION = "kaito.sh/agentpool-create-token"
"""The continuation token of the agent-pool create in flight (removed once it ends)."""
AGENTPOOL_INDEX = "agentpool"
"""The Node cache index on the agent-pool label."""
LAUNCHED, REGISTERED, INITIALIZED = (
    ConditionType.LAUNCHED,
    ConditionType.REGISTERED,
    ConditionType.INITIALIZED,
)
_WAIT_STATES = frozenset({"Creating", "Updating", "Scaling", "Upgrading", "Starting"})


def managed_by(selector: str) -> Callable[[Obj], bool]:
    """``obj -> bool``: whether a Machine matches ``selector`` (default: has the workspace
    label), i.e. is served by this provisioner."""
    parsed = parse_selector(selector or LABEL_WORKSPACE)

    def is_managed(obj: Obj) -> bool:
        return parsed.matches(obj.get("metadata", {}).get("labels") or {})

    return is_managed


class _Deleted(Exception):
    """The Machine was deleted while a reconcile waited on Azure."""


class DeletionWatch:
    """An informer handler that wakes a reconcile waiting on Azure when its Machine is deleted."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def watch(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def unwatch(self, name: str) -> None:
        self._events.pop(name, None)

    def _check(self, obj: Obj, gone: bool = False) -> None:
        meta = obj.get("metadata", {})
        event = self._events.get(meta.get("name", ""))
        if event is not None and (gone or meta.get("deletionTimestamp")):
            event.set()

    def on_add(self, obj: Obj) -> None:
        self._check(obj)

    def on_update(self, old: Obj, new: Obj) -> None:
        self._check(new)

    def on_delete(self, obj: Obj) -> None:
        self._check(obj, gone=True)


@dataclass
class _Ctx:
    obj: Obj
    machine: Machine
    status: MachineStatusDraft
    log: Any

    @property
    def name(self) -> str:
        return self.machine.name


class MachineLifecycle:
    """The reconciler of managed Machines (``reconcile`` is what the controller calls)."""

    def __init__(
        self,
        *,
        client: Client,
        machines: Cache,
        nodes: Cache,
        api: AgentPoolAPI,
        recorder: EventRecorder,
        config: ProvisionerConfig,
    ) -> None:
        self.client = client
        self.machines = machines
        self.nodes = nodes
        self.api = api
        self.recorder = recorder
        self.config = config
        self.is_managed = managed_by(config.machine_selector)
        self.deletions = DeletionWatch()
        self._backoff = ItemExponentialFailureRateLimiter(
            base=config.launch_backoff_base, max_delay=config.launch_backoff_max
        )

    async def reconcile(self, req: Request) -> Result | None:
        try:
            return await self._reconcile(req)
        except Conflict as e:
            # Our cache lagged behind a write (often our own): read again shortly.
            log.debug("stale object, retrying", machine=req.name, error=str(e))
            return Result(requeue=True)

    async def _reconcile(self, req: Request) -> Result | None:
        obj = self.machines.get_by_name(req.name)
        if obj is None:
            self._backoff.forget(req.name)
            return None
        if not self.is_managed(obj):
            return None
        ctx = _Ctx(
            obj,
            Machine.model_validate(obj),
            MachineStatusDraft(obj.get("status")),
            log.bind(machine=req.name, pool=req.name),
        )
        if ctx.machine.metadata.deletion_timestamp is not None:
            return await self._terminate(ctx)
        if TERMINATION_FINALIZER not in ctx.machine.metadata.finalizers:
            await self._patch_metadata(
                ctx, {"finalizers": [*ctx.machine.metadata.finalizers, TERMINATION_FINALIZER]}
            )
        result = await self._progress(ctx)
        await self._write_status(ctx)
        return result

    async def _progress(self, ctx: _Ctx) -> Result | None:
        problems = validate(ctx.machine)
        if problems:
            reason = problems[0].reason
            message = "; ".join(p.message for p in problems)
            if ctx.status.set(LAUNCHED, "False", reason, message):
                self.recorder.event(ctx.obj, EventType.WARNING, reason, message)
                ctx.log.warning("machine invalid", reason=reason, error=message)
            return None
        if not ctx.status.is_true(LAUNCHED):
            result = await self._launch(ctx)
            if result is not None or not ctx.status.is_true(LAUNCHED):
                return result
        elif TOKEN_ANNOTATION in ctx.machine.metadata.annotations:
            await self._set_token(ctx, None)
        return await self._register_and_initialize(ctx)

    # -- launch ------------------------------------------------------------------------------

    async def _launch(self, ctx: _Ctx) -> Result | None:
        try:
            pool = await self._unless_deleted(ctx.name, self._create_or_resume(ctx))
        except _Deleted:
            ctx.log.info("machine deleted while its agent pool was being created")
            return None
        except TimeoutError:
            ctx.log.info("agent pool still creating; resuming later", waited=self.config.lro_wait)
            return Result(requeue_after=0.01)
        except AzureError as e:
            if e.in_progress:
                ctx.log.info("an operation on the agent pool is in progress", error=str(e))
                return Result(requeue_after=self.config.polling_interval)
            await self._set_token(ctx, None)
            delay = self._backoff.when(ctx.name)
            if ctx.status.set(LAUNCHED, "False", e.reason, str(e)):
                self.recorder.event(ctx.obj, EventType.WARNING, e.reason, str(e))
            ctx.log.warning(
                "agent pool launch failed",
                reason=str(e.reason),
                code=e.code,
                status=e.status,
                error=str(e),
                retry_in=round(delay, 3),
            )
            return Result(requeue_after=delay)
        if pool is None:
            return Result(requeue_after=self.config.polling_interval)
        self._backoff.forget(ctx.name)
        message = f"agent pool {ctx.name} ({pool.vm_size}) created"
        ctx.status.set(LAUNCHED, "True", "Launched", message)
        self.recorder.event(ctx.obj, EventType.NORMAL, "Launched", message)
        created = ctx.machine.metadata.creation_timestamp
        seconds = max(0.0, time.time() - created.timestamp()) if created else None
        if seconds is not None:
            metrics.LAUNCH_DURATION.observe(seconds)
        ctx.log.info("agent pool created", vm_size=pool.vm_size, seconds=seconds)
        await self._set_token(ctx, None)
        return None

    async def _create_or_resume(self, ctx: _Ctx) -> AgentPool | None:
        """The pool once it exists; None while someone else's create still runs."""
        token = ctx.machine.metadata.annotations.get(TOKEN_ANNOTATION)
        if token:
            if self.api.owns_token(token):
                ctx.log.info("resuming agent pool create")
                try:
                    return await self.api.resume_create(token)
                except AzureError as e:
                    if e.status != 404:
                        raise
                    ctx.log.info("create operation unknown to Azure; checking the pool")
            else:
                ctx.log.warning("ignoring a continuation token that is not for this endpoint")
            await self._set_token(ctx, None)
        pool = await self.api.get(ctx.name)
        if pool is not None:
            state = pool.provisioning_state
            if state == "Succeeded":
                return pool
            if state in _WAIT_STATES:
                return None
            ctx.log.info("deleting the agent pool before creating it again", state=state)
            await self.api.delete(ctx.name)
        spec = pool_spec(ctx.machine)
        ctx.log.info(
            "creating agent pool",
            vm_size=spec.vm_size,
            os_disk_gb=spec.os_disk_size_gb,
            os_sku=spec.os_sku,
        )

        async def save(token: str) -> None:
            await self._set_token(ctx, token)

        return await self.api.create(spec, on_started=save)

    async def _unless_deleted(self, name: str, work: Awaitable[T]) -> T:
        """``await work`` for at most ``lro_wait`` seconds, unless the Machine is deleted."""
        event = self.deletions.watch(name)
        try:
            async with asyncio.timeout(self.config.lro_wait):
                return await run_unless(event, work)
        except Interrupted:
            raise _Deleted from None
        finally:
            self.deletions.unwatch(name)

    # -- register and initialize ---------------------------------------------------------------

    def _find_node(self, machine: Machine) -> Obj | None:
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

    async def _register_and_initialize(self, ctx: _Ctx) -> Result | None:
        node = self._find_node(ctx.machine)
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
            self.recorder.event(ctx.obj, EventType.NORMAL, "Registered", f"Node {node_name}")
            ctx.log.info("node registered", node=node_name)
        if gaps is not None:
            ctx.status.set(INITIALIZED, "Unknown", *gaps)
            return None
        status = node.get("status", {})
        ctx.status.data["capacity"] = dict(status.get("capacity") or {})
        ctx.status.data["allocatable"] = dict(status.get("allocatable") or {})
        if ctx.status.set(INITIALIZED, "True", "Initialized", f"Node {node_name} is ready"):
            created = ctx.machine.metadata.creation_timestamp
            self.recorder.event(ctx.obj, EventType.NORMAL, "Ready", f"Node {node_name} is ready")
            ctx.log.info(
                "machine ready",
                node=node_name,
                seconds=round(time.time() - created.timestamp(), 3) if created else None,
            )
        return None

    async def _await_node(self, ctx: _Ctx) -> Result | None:
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
            await self._write_status(ctx)
            self.recorder.event(ctx.obj, EventType.WARNING, "RegistrationTimeout", message)
            ctx.log.warning("registration timed out", seconds=round(elapsed, 3))
            with contextlib.suppress(NotFound):
                await self.client.delete(MACHINES, ctx.name)
            return None
        ctx.status.set(
            REGISTERED, "Unknown", "NodeNotFound", f"waiting for a Node of agent pool {ctx.name}"
        )
        return Result(requeue_after=max(0.01, timeout - elapsed))

    # -- terminate ---------------------------------------------------------------------------

    async def _terminate(self, ctx: _Ctx) -> Result | None:
        if TERMINATION_FINALIZER not in ctx.machine.metadata.finalizers:
            return None
        node = self._find_node(ctx.machine)
        if node is not None:
            with contextlib.suppress(NotFound):
                await self.client.delete(NODES, node["metadata"]["name"])
            ctx.log.info("node deleted", node=node["metadata"]["name"])
        # An invalid Machine never got a pool: no ARM call (GC would sweep any leftover).
        invalid = not NAME_PATTERN.match(ctx.name) or (
            bool(validate(ctx.machine)) and not ctx.status.is_true(LAUNCHED)
        )
        if not invalid:
            try:
                async with asyncio.timeout(self.config.lro_wait):
                    await self.api.delete(ctx.name)
            except TimeoutError:
                ctx.log.info("agent pool still deleting", waited=self.config.lro_wait)
                return Result(requeue_after=0.01)
            except AzureError as e:
                delay = self._backoff.when(ctx.name)
                self.recorder.event(ctx.obj, EventType.WARNING, "TerminationFailed", str(e))
                ctx.log.warning(
                    "agent pool delete failed",
                    reason=str(e.reason),
                    error=str(e),
                    retry_in=round(delay, 3),
                )
                return Result(requeue_after=delay)
            ctx.log.info("agent pool deleted")
        finalizers = [f for f in ctx.machine.metadata.finalizers if f != TERMINATION_FINALIZER]
        with contextlib.suppress(NotFound):
            await self._patch_metadata(ctx, {"finalizers": finalizers})
        self._backoff.forget(ctx.name)
        deleted = ctx.machine.metadata.deletion_timestamp
        ctx.log.info(
            "machine terminated",
            seconds=round(time.time() - deleted.timestamp(), 3) if deleted else None,
        )
        return None

    # -- writes ------------------------------------------------------------------------------

    async def _patch_metadata(self, ctx: _Ctx, meta: Obj) -> None:
        """Merge-patch metadata, conditional on the resourceVersion we read (409 -> retry)."""
        rv = ctx.obj["metadata"]["resourceVersion"]
        ctx.obj = await self.client.patch(
            MACHINES, ctx.name, {"metadata": {**meta, "resourceVersion": rv}}
        )
        ctx.machine = Machine.model_validate(ctx.obj)

    async def _set_token(self, ctx: _Ctx, token: str | None) -> None:
        current = ctx.machine.metadata.annotations.get(TOKEN_ANNOTATION)
        if current == token:
            return
        ctx.obj = await self.client.patch(
            MACHINES, ctx.name, {"metadata": {"annotations": {TOKEN_ANNOTATION: token}}}
        )
        ctx.machine = Machine.model_validate(ctx.obj)

    async def _write_status(self, ctx: _Ctx) -> None:
        if not ctx.status.changed:
            return
        body = {
            "metadata": {"resourceVersion": ctx.obj["metadata"]["resourceVersion"]},
            "status": ctx.status.data,
        }
        ctx.obj = await self.client.patch(MACHINES, ctx.name, body, subresource="status")
        ctx.machine = Machine.model_validate(ctx.obj)
        ctx.status = MachineStatusDraft(ctx.obj.get("status"))


def machine_state(obj: Obj) -> str:
    """The lifecycle state of a Machine for ``gpu_provisioner_machines{state}``."""
    if obj.get("metadata", {}).get("deletionTimestamp"):
        return "deleting"
    conditions = {
        c.get("type"): c.get("status") for c in obj.get("status", {}).get("conditions") or ()
    }
    if conditions.get(ConditionType.READY) == "True":
        return "ready"
    if "False" in (conditions.get(t) for t in (LAUNCHED, REGISTERED, INITIALIZED)):
        return "failed"
    if conditions.get(LAUNCHED) != "True":
        return "launching"
    if conditions.get(REGISTERED) != "True":
        return "registering"
    return "initializing"
