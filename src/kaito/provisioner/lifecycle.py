"""The Machine lifecycle: finalizer -> launch -> register -> initialize -> Ready; terminate.

One reconcile reads the Machine from the cache, as a model, and moves it as far as the
world allows (PROVISIONER.md, "Lifecycle of one Machine"), writing the status once at
the end:

1. add the finalizer ``karpenter.sh/termination``;
2. validate; an invalid Machine gets ``MachineLaunched=False`` naming the field, and no
   ARM call is made;
3. launch the agent pool named after the Machine (`kaito.provisioner.launch`: resumable,
   retried with backoff, 5 s doubling to 5 min by default);
4. register and initialize its Node (`kaito.provisioner.registration`).

Deletion (the finalizer): delete the Node, delete the agent pool and wait until it is
gone, only then remove the finalizer. A reconcile never waits on Azure longer than
``lro_wait``. A pool still there ``delete_stall_after`` seconds after the Machine's
deletion is a stall: the DELETE is sent again (AKS answers it idempotently; it restarts
an operation that died) at most once per that period, and the stall is reported as the
``MachineTerminating=False`` condition (reason ``AgentPoolDeleteStalled``) and a Warning
Event, never waited out silently. This module is the order of those steps; the steps, the writes
(`kaito.provisioner.context`) and the pure decisions (`pool`, `nodes`) live beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from kaito.api.machine import LABEL_WORKSPACE, TERMINATION_FINALIZER, ConditionType, Machine
from kaito.provisioner.azure import AgentPoolAPI, AzureError
from kaito.provisioner.config import ProvisionerConfig
from kaito.provisioner.context import TOKEN_ANNOTATION, MachineContext, MachineWriter
from kaito.provisioner.launch import DeletionWatch, Launcher
from kaito.provisioner.pool import NAME_PATTERN, validate
from kaito.provisioner.registration import Registrar
from kaito.runtime.cache import Cache
from kaito.runtime.client import Client
from kaito.runtime.errors import Conflict, NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.labels import parse_selector
from kaito.runtime.meta import Obj
from kaito.runtime.ratelimit import ItemExponentialFailureRateLimiter
from kaito.runtime.reconcile import Request, Result
from kaito.runtime.resource import NODES

__all__ = ["MachineLifecycle", "machine_state", "managed_by"]

log = structlog.get_logger("kaito.provisioner")

LAUNCHED, REGISTERED, INITIALIZED = (
    ConditionType.LAUNCHED,
    ConditionType.REGISTERED,
    ConditionType.INITIALIZED,
)


def managed_by(selector: str) -> Callable[[Obj], bool]:
    """``obj -> bool``: whether a Machine matches ``selector`` (default: has the workspace
    label), i.e. is served by this provisioner."""
    parsed = parse_selector(selector or LABEL_WORKSPACE)

    def is_managed(obj: Obj) -> bool:
        return parsed.matches(obj.get("metadata", {}).get("labels") or {})

    return is_managed


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
        self.api = api
        self.config = config
        self.is_managed = managed_by(config.machine_selector)
        self.deletions = DeletionWatch()
        self._reissued: dict[str, float] = {}
        """When the DELETE of a stalled pool was last re-issued (monotonic), by Machine."""
        self._backoff = ItemExponentialFailureRateLimiter(
            base=config.launch_backoff_base, max_delay=config.launch_backoff_max
        )
        self.writer = MachineWriter(client=client, recorder=recorder)
        self.launcher = Launcher(
            api=api,
            writer=self.writer,
            config=config,
            deletions=self.deletions,
            backoff=self._backoff,
        )
        self.registrar = Registrar(client=client, nodes=nodes, writer=self.writer, config=config)

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
        ctx = MachineContext.read(
            Machine.model_validate(obj), log=log.bind(machine=req.name, pool=req.name)
        )
        if ctx.machine.metadata.deletion_timestamp is not None:
            return await self._terminate(ctx)
        await self.writer.add_finalizer(ctx)
        result = await self._progress(ctx)
        await self.writer.write_status(ctx)
        return result

    async def _progress(self, ctx: MachineContext) -> Result | None:
        problems = validate(ctx.machine)
        if problems:
            reason = problems[0].reason
            message = "; ".join(p.message for p in problems)
            if ctx.status.set(LAUNCHED, "False", reason, message):
                self.writer.event(ctx.machine, EventType.WARNING, reason, message)
                ctx.log.warning("machine invalid", reason=reason, error=message)
            return None
        if not ctx.status.is_true(LAUNCHED):
            result = await self.launcher.launch(ctx)
            if result is not None or not ctx.status.is_true(LAUNCHED):
                return result
        elif TOKEN_ANNOTATION in ctx.machine.metadata.annotations:
            await self.writer.set_token(ctx, None)
        return await self.registrar.register_and_initialize(ctx)

    # -- terminate ---------------------------------------------------------------------------

    async def _terminate(self, ctx: MachineContext) -> Result | None:
        if TERMINATION_FINALIZER not in ctx.machine.metadata.finalizers:
            return None
        node = self.registrar.find_node(ctx.machine)
        if node is not None:
            with contextlib.suppress(NotFound):
                await self.client.delete(NODES, node["metadata"]["name"])
            ctx.log.info("node deleted", node=node["metadata"]["name"])
        # An invalid Machine never got a pool: no ARM call (GC would sweep any leftover).
        invalid = not NAME_PATTERN.match(ctx.name) or (
            bool(validate(ctx.machine)) and not ctx.status.is_true(LAUNCHED)
        )
        if not invalid:
            reissue = await self._report_stall(ctx)
            try:
                async with asyncio.timeout(self.config.lro_wait):
                    await self.api.delete(ctx.name, reissue=reissue)
            except TimeoutError:
                ctx.log.info(
                    "agent pool still deleting",
                    waited=self.config.lro_wait,
                    deleting_for=round(self._deleting_for(ctx), 3),
                )
                return Result(requeue_after=0.01)
            except AzureError as e:
                delay = self._backoff.when(ctx.name)
                self.writer.event(ctx.machine, EventType.WARNING, "TerminationFailed", str(e))
                ctx.log.warning(
                    "agent pool delete failed",
                    reason=str(e.reason),
                    error=str(e),
                    retry_in=round(delay, 3),
                )
                return Result(requeue_after=delay)
            ctx.log.info("agent pool deleted")
        with contextlib.suppress(NotFound):
            await self.writer.remove_finalizer(ctx)
        self._backoff.forget(ctx.name)
        self._reissued.pop(ctx.name, None)
        deleted = ctx.machine.metadata.deletion_timestamp
        ctx.log.info(
            "machine terminated",
            seconds=round(time.time() - deleted.timestamp(), 3) if deleted else None,
        )
        return None

    def _deleting_for(self, ctx: MachineContext) -> float:
        deleted = ctx.machine.metadata.deletion_timestamp
        return time.time() - deleted.timestamp() if deleted else 0.0

    async def _report_stall(self, ctx: MachineContext) -> bool:
        """Whether to re-issue the DELETE now: the Machine has been deleting longer than
        ``delete_stall_after`` and the last re-issue (if any) was that long ago. Says so
        on the Machine (condition, Event) and in the log before the DELETE goes out."""
        stall_after = self.config.delete_stall_after
        deleting_for = self._deleting_for(ctx)
        if deleting_for < stall_after:
            return False
        now = time.monotonic()
        if now - self._reissued.get(ctx.name, -float("inf")) < stall_after:
            return False
        self._reissued[ctx.name] = now
        message = (
            f"agent pool {ctx.name} still exists {deleting_for:.0f}s after the Machine's "
            f"deletion (deadline {stall_after:g}s); the DELETE was re-issued"
        )
        reason = "AgentPoolDeleteStalled"
        ctx.status.set(ConditionType.TERMINATING, "False", reason, message, severity="Warning")
        self.writer.event(ctx.machine, EventType.WARNING, reason, message)
        ctx.log.warning(
            "agent pool delete stalled, re-issuing DELETE",
            deleting_for=round(deleting_for, 3),
            deadline=stall_after,
        )
        with contextlib.suppress(NotFound):
            await self.writer.write_status(ctx)
        return True


def machine_state(machine: Machine) -> str:
    """The lifecycle state of a Machine for ``gpu_provisioner_machines{state}``."""
    if machine.metadata.deletion_timestamp is not None:
        return "deleting"
    if machine.is_true(ConditionType.READY):
        return "ready"
    parts = [machine.condition(t) for t in (LAUNCHED, REGISTERED, INITIALIZED)]
    if any(c is not None and c.status == "False" for c in parts):
        return "failed"
    if not machine.is_true(LAUNCHED):
        return "launching"
    if not machine.is_true(REGISTERED):
        return "registering"
    return "initializing"
