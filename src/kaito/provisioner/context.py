"""One reconcile's Machine, and every write the provisioner makes about it.

A reconcile reads its Machine from the cache once, as a model, at its edge
(`MachineContext.read`), and from then on carries only that model, the status draft made
from it and a bound logger. The writes are built from the model here and nowhere else:
metadata merge patches (the finalizer, the continuation token), the status through its
subresource, and Events naming the Machine. The apiserver's answer to each write, parsed
once, becomes the model the reconcile goes on with, so the next conditional write uses
the resourceVersion the last one returned.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from kaito.api.machine import MACHINES, TERMINATION_FINALIZER, Machine
from kaito.provisioner.conditions import MachineStatusDraft
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.meta import Obj

__all__ = ["TOKEN_ANNOTATION", "MachineContext", "MachineWriter"]

TOKEN_ANNOTATION = "kaito.sh/agentpool-create-token"
"""The continuation token of the agent-pool create in flight (removed once it ends)."""


@dataclass
class MachineContext:
    """What one reconcile knows about its Machine: the model, its status draft, a logger."""

    machine: Machine
    status: MachineStatusDraft
    log: Any

    @classmethod
    def read(cls, machine: Machine, *, log: Any) -> MachineContext:
        return cls(machine, MachineStatusDraft.of(machine), log)

    @property
    def name(self) -> str:
        return self.machine.name


class MachineWriter:
    """The provisioner's writes about Machines, each built from the model it was given."""

    def __init__(self, *, client: Client, recorder: EventRecorder) -> None:
        self.client = client
        self.recorder = recorder

    async def add_finalizer(self, ctx: MachineContext) -> None:
        meta = ctx.machine.metadata
        if TERMINATION_FINALIZER not in meta.finalizers:
            await self._patch_finalizers(ctx, [*meta.finalizers, TERMINATION_FINALIZER])

    async def remove_finalizer(self, ctx: MachineContext) -> None:
        meta = ctx.machine.metadata
        if TERMINATION_FINALIZER in meta.finalizers:
            await self._patch_finalizers(
                ctx, [f for f in meta.finalizers if f != TERMINATION_FINALIZER]
            )

    async def _patch_finalizers(self, ctx: MachineContext, finalizers: list[str]) -> None:
        """Conditional on the resourceVersion we read: a concurrent edit is a 409, not lost."""
        meta = {"finalizers": finalizers, "resourceVersion": ctx.machine.metadata.resource_version}
        await self._patch(ctx, {"metadata": meta})

    async def set_token(self, ctx: MachineContext, token: str | None) -> None:
        """Store (or, with None, remove) the agent-pool create's continuation token."""
        if ctx.machine.metadata.annotations.get(TOKEN_ANNOTATION) == token:
            return
        await self._patch(ctx, {"metadata": {"annotations": {TOKEN_ANNOTATION: token}}})

    async def write_status(self, ctx: MachineContext) -> None:
        """Write the draft if it changed (conditional on the resourceVersion we read)."""
        if not ctx.status.changed:
            return
        body = {
            "metadata": {"resourceVersion": ctx.machine.metadata.resource_version},
            "status": ctx.status.data,
        }
        await self._patch(ctx, body, subresource="status")
        ctx.status = MachineStatusDraft.of(ctx.machine)

    async def _patch(
        self, ctx: MachineContext, body: Obj, *, subresource: str | None = None
    ) -> None:
        written = await self.client.patch(MACHINES, ctx.name, body, subresource=subresource)
        ctx.machine = Machine.model_validate(written)

    async def delete(self, machine: Machine) -> None:
        """Delete the Machine, so that its owner creates a fresh one (gone already: done)."""
        with contextlib.suppress(NotFound):
            await self.client.delete(MACHINES, machine.name)

    def event(self, machine: Machine, type_: EventType, reason: str, message: str) -> None:
        """Record an Event about ``machine`` (``kubectl describe machine`` shows it)."""
        target = {
            "apiVersion": machine.api_version,
            "kind": machine.kind,
            "metadata": {
                "name": machine.name,
                "uid": machine.metadata.uid,
                "resourceVersion": machine.metadata.resource_version,
            },
        }
        self.recorder.event(target, type_, reason, message)
