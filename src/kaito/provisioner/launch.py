"""Launch: from a valid Machine to a Succeeded agent pool, resumable across restarts.

Its own module because launching is the one step that waits on Azure for minutes, and
everything here is about waiting well (PROVISIONER.md, "Lifecycle of one Machine"):

- A continuation token is stored on the Machine as soon as ARM accepts the PUT, so a
  restarted provisioner resumes polling instead of creating again; without a token, a
  GET of the pool tells where things stand (a pool still Creating is polled, a Failed one
  deleted and recreated).
- A reconcile waits at most ``lro_wait`` and stops waiting at once when the Machine is
  deleted (`DeletionWatch`); the token keeps its place for the next reconcile.
- Azure failures become ``MachineLaunched=False`` with Azure's reason and message,
  retried with the lifecycle's per-Machine backoff.
- A transient failure the SDK retries by itself (429 throttling, 5xx) is not waited out
  silently: while the reconcile waits, it looks every `RETRY_CHECK` seconds whether the
  pool's latest answer was one (`AgentPoolAPI.retrying`) and if so says it at once as
  ``MachineLaunched=False`` (reason ``Throttled`` or ``AzureServerError``, severity
  Warning) and an Event. Without this a throttling storm whose Retry-After outlasts
  ``lro_wait`` left the Machine "provisioning" for as long as it lasted, with no reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

from kaito.api.machine import ConditionType
from kaito.provisioner import metrics
from kaito.provisioner.azure import AgentPool, AgentPoolAPI, AzureError
from kaito.provisioner.config import ProvisionerConfig
from kaito.provisioner.context import TOKEN_ANNOTATION, MachineContext, MachineWriter
from kaito.provisioner.pool import pool_spec
from kaito.runtime.aio import Interrupted, run_unless
from kaito.runtime.events import EventType
from kaito.runtime.meta import Obj
from kaito.runtime.ratelimit import ItemExponentialFailureRateLimiter
from kaito.runtime.reconcile import Result

__all__ = ["DeletionWatch", "Launcher"]

T = TypeVar("T")

LAUNCHED = ConditionType.LAUNCHED
RETRY_CHECK = 1.0
"""Seconds between looks at `AgentPoolAPI.retrying` while a reconcile waits on Azure."""
_WAIT_STATES = frozenset({"Creating", "Updating", "Scaling", "Upgrading", "Starting"})


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


class Launcher:
    """Moves a Machine to ``MachineLaunched=True``: its agent pool exists and Succeeded."""

    def __init__(
        self,
        *,
        api: AgentPoolAPI,
        writer: MachineWriter,
        config: ProvisionerConfig,
        deletions: DeletionWatch,
        backoff: ItemExponentialFailureRateLimiter,
    ) -> None:
        self.api = api
        self.writer = writer
        self.config = config
        self.deletions = deletions
        self._backoff = backoff

    async def launch(self, ctx: MachineContext) -> Result | None:
        try:
            pool = await self._unless_deleted(ctx, self._create_or_resume(ctx))
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
            await self.writer.set_token(ctx, None)
            delay = self._backoff.when(ctx.name)
            if ctx.status.set(LAUNCHED, "False", e.reason, str(e)):
                self.writer.event(ctx.machine, EventType.WARNING, e.reason, str(e))
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
        self.writer.event(ctx.machine, EventType.NORMAL, "Launched", message)
        created = ctx.machine.metadata.creation_timestamp
        seconds = max(0.0, time.time() - created.timestamp()) if created else None
        if seconds is not None:
            metrics.LAUNCH_DURATION.observe(seconds)
        ctx.log.info("agent pool created", vm_size=pool.vm_size, seconds=seconds)
        await self.writer.set_token(ctx, None)
        return None

    async def _create_or_resume(self, ctx: MachineContext) -> AgentPool | None:
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
            await self.writer.set_token(ctx, None)
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
            await self.writer.set_token(ctx, token)

        return await self.api.create(spec, on_started=save)

    async def _unless_deleted(self, ctx: MachineContext, work: Awaitable[T]) -> T:
        """``await work`` for at most ``lro_wait`` seconds, unless the Machine is deleted;
        meanwhile report what the SDK is retrying (`_report_retrying`)."""
        event = self.deletions.watch(ctx.name)
        task = asyncio.ensure_future(run_unless(event, work))
        try:
            async with asyncio.timeout(self.config.lro_wait):
                while True:
                    done, _ = await asyncio.wait({task}, timeout=RETRY_CHECK)
                    if done:
                        return task.result()
                    await self._report_retrying(ctx)
        except Interrupted:
            raise _Deleted from None
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Interrupted):
                    await task
            self.deletions.unwatch(ctx.name)

    async def _report_retrying(self, ctx: MachineContext) -> None:
        error = self.api.retrying(ctx.name)
        if error is None:
            return
        if ctx.status.set(LAUNCHED, "False", error.reason, str(error), severity="Warning"):
            self.writer.event(ctx.machine, EventType.WARNING, error.reason, str(error))
            ctx.log.warning("azure keeps answering with a transient error", error=str(error))
            await self.writer.write_status(ctx)
