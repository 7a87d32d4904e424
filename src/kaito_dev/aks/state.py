"""One managed cluster's agent pools and the long-running operations that change them.

AKS answers a PUT or DELETE at once and finishes the work later: the answer names an
operation, and the pool's ``provisioningState`` and the operation's ``status`` move on
their own (``Creating`` -> ``Succeeded``/``Failed``, ``InProgress`` -> a final status).
Here each operation is one task that sleeps the configured latency, registers or removes
the pool's Nodes (`kubelet.py`) and finishes the operation. The ARM surface (`arm.py`)
only reads this state and starts operations; it never finishes one.

An operation outlives the cluster's apiserver being down, as AKS's do (the VMs and their
kubelets do not care): registering or removing Nodes is retried with the runtime's
`Backoff` until the apiserver answers, never given up, so a pool is not left
``Deleting`` forever by a restart of kube-apiserver. A DELETE of a pool whose delete is
still running answers with that operation (AKS's idempotent DELETE); one whose task
died is started again.

The pools and operations also outlive the emulator's own process, as AKS's outlive a
client: with a state file (`snapshot` after every change, `restore` at start) a
restarted emulator knows every pool, answers polls of the operations it had started,
and resumes the ones its predecessor was running (a SIGKILLed create or delete is
finished by the new process, its Nodes made Ready again).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import structlog

from kaito.runtime.backoff import Backoff
from kaito.runtime.errors import ApiError
from kaito.runtime.meta import Obj
from kaito.runtime.timestamps import now_rfc3339
from kaito_dev.aks.faults import ALLOCATION_FAILED, Fault, FaultKind, Op
from kaito_dev.aks.kubelet import Kubelets
from kaito_dev.aks.nodes import node_name

__all__ = ["AgentPools", "EmulatorConfig", "Operation", "Pool", "RecordedRequest"]

log = structlog.get_logger("kaito_dev.aks")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]

_T = TypeVar("_T")

APISERVER_ERRORS = (ApiError, OSError, aiohttp.ClientError, TimeoutError)
"""What a call to an unavailable or restarting apiserver raises (a refused connection is
an `OSError`, a dropped one an `aiohttp.ClientError`, a 5xx/429 an `ApiError`)."""


@dataclass
class EmulatorConfig:
    subscription_id: str = "00000000-0000-0000-0000-000000000000"
    resource_group: str = "kaito-rg"
    cluster_name: str = "kaito-aks"
    location: str = "eastus"
    create_latency: float = 0.5
    """Seconds from PUT to the pool's operation succeeding (AKS: minutes). Default 0.5."""
    delete_latency: float = 0.2
    """Seconds from DELETE to the pool being gone. Default 0.2."""
    node_ready_delay: float = 0.0
    """Nodes register NotReady and turn Ready this many seconds later; 0 (default): Ready."""
    heartbeat_interval: float = 30.0
    """How often Ready heartbeats are refreshed; 0 disables. Default 30 s."""
    lro_retry_after: int | None = None
    """A Retry-After header on LRO answers; default None (the client's polling_interval)."""
    list_page_size: int = 100
    accept_token: Callable[[str], bool] | None = None
    """Which bearer tokens are valid; default any non-empty token."""
    apiserver_retry_initial: float = 0.5
    apiserver_retry_cap: float = 10.0
    """An operation retries Node writes the apiserver refused after 0.5 s doubling to
    10 s (plus jitter), until they succeed."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    op: Op
    pool: str | None
    status: int


@dataclass
class Operation:
    """An ARM long-running operation, as its ``Azure-AsyncOperation`` URL reports it."""

    id: str
    kind: str  # "create" | "delete"
    pool: str
    status: str = "InProgress"
    error: Obj | None = None
    start: str = field(default_factory=now_rfc3339)
    end: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "InProgress"

    def finish(self, status: str, error: Obj | None = None) -> None:
        self.status, self.error, self.end = status, error, now_rfc3339()

    def body(self) -> Obj:
        out: Obj = {"id": self.id, "name": self.id, "status": self.status, "startTime": self.start}
        if self.end:
            out["endTime"] = self.end
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Pool:
    name: str
    properties: Obj
    op: Operation | None = None
    task: asyncio.Task[None] | None = None
    nodes: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(self.properties["provisioningState"])

    @property
    def busy(self) -> bool:
        """An operation on the pool is still running."""
        return self.op is not None and not self.op.done

    @property
    def deleting(self) -> bool:
        """A delete is running: its operation is open and its task alive."""
        return (
            self.busy
            and self.op is not None
            and self.op.kind == "delete"
            and self.task is not None
            and not self.task.done()
        )


class AgentPools:
    """The pools by name and every operation by id; starts and finishes operations.

    Args:
        config: latencies and the cluster's names.
        kubelets: registers and removes the pools' Nodes; None: no Nodes (ARM only).
        spawn: runs an operation's task; its owner cancels them all on stop.
        on_change: called after every change of a pool or an operation (the emulator
            saves a `snapshot` there); default none.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        kubelets: Kubelets | None,
        spawn: Spawn,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.config, self.kubelets, self._spawn = config, kubelets, spawn
        self._on_change = on_change
        self.pools: dict[str, Pool] = {}
        self.operations: dict[str, Operation] = {}
        self._late: dict[str, FaultKind] = {}
        """The late fault (failed-lro, node-never-joins) of each pool still creating."""

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def snapshot(self) -> Obj:
        """Every pool and operation as JSON (what `restore` reads back)."""
        return {
            "pools": {
                n: {
                    "properties": p.properties,
                    "nodes": p.nodes,
                    "op": p.op.id if p.op else None,
                    "late_fault": str(self._late[n]) if n in self._late else None,
                }
                for n, p in self.pools.items()
            },
            "operations": {
                i: {
                    "kind": o.kind,
                    "pool": o.pool,
                    "status": o.status,
                    "error": o.error,
                    "start": o.start,
                    "end": o.end,
                }
                for i, o in self.operations.items()
            },
        }

    def restore(self, data: Obj) -> list[str]:
        """Load a `snapshot`; resume the operations that were running (a create ends as
        its late fault said, a delete removes the Nodes) and make the Nodes of finished
        pools Ready (their kubelets' pending turn-Ready died with the old process).
        Returns the names of the pools whose operation was resumed."""
        for op_id, o in (data.get("operations") or {}).items():
            self.operations[op_id] = Operation(id=op_id, **o)
        resumed = []
        for name, p in (data.get("pools") or {}).items():
            op = self.operations.get(p.get("op") or "")
            pool = Pool(name=name, properties=p["properties"], op=op, nodes=list(p["nodes"]))
            self.pools[name] = pool
            if op is not None and not op.done:
                resumed.append(name)
                if op.kind == "delete":
                    pool.task = self._spawn(self._delete(pool, op), f"delete {name}")
                else:
                    late = p.get("late_fault")
                    failure = Fault(FaultKind(late)) if late else None
                    if failure is not None:
                        self._late[name] = failure.kind
                    pool.task = self._spawn(self._create(pool, op, failure), f"create {name}")
            elif self.kubelets is not None:
                for node in pool.nodes:
                    self._spawn(self._ready_again(self.kubelets, name, node), f"ready {node}")
        log.info("agent pools restored", pools=sorted(self.pools), resumed=resumed)
        return resumed

    def idle(self) -> bool:
        return not any(p.busy for p in self.pools.values())

    def node_names(self) -> list[str]:
        return [n for p in self.pools.values() for n in p.nodes]

    async def _ready_again(self, kubelets: Kubelets, pool: str, node: str) -> None:
        await self._until_apiserver_answers(
            lambda: kubelets.turn_ready(node, 0.0), pool=pool, step="node ready again"
        )

    def adopt(self, name: str, properties: Obj, nodes: list[str]) -> Pool:
        """A pool whose VMs outlived a previous emulator process: ``Succeeded``. A pool the
        state file already restored keeps what it says."""
        if name in self.pools:
            return self.pools[name]
        pool = Pool(name=name, properties={**properties, "provisioningState": "Succeeded"})
        pool.nodes = list(nodes)
        self.pools[name] = pool
        log.info("agent pool re-adopted", pool=name, nodes=nodes)
        return pool

    def begin_create(self, name: str, props: Obj, *, failure: Fault | None) -> Pool:
        """A new pool, ``Creating``; ``failure`` (a late fault) decides how it ends."""
        op = self._new_operation("create", name)
        properties = {
            "count": 1,
            "osType": "Linux",
            "osSKU": "Ubuntu",
            "type": "VirtualMachineScaleSets",
            "mode": "User",
            **props,
            "provisioningState": "Creating",
            "powerState": {"code": "Running"},
            "orchestratorVersion": "1.29.7",
            "currentOrchestratorVersion": "1.29.7",
            "nodeImageVersion": "AKSUbuntu-2204gen2containerd-202407.29.0",
        }
        pool = Pool(name=name, properties=properties, op=op)
        self.pools[name] = pool
        if failure is not None:
            self._late[name] = failure.kind
        pool.task = self._spawn(self._create(pool, op, failure), f"create {name}")
        log.info("agent pool creating", pool=name, vm_size=props.get("vmSize"), operation=op.id)
        self._changed()
        return pool

    def begin_delete(self, pool: Pool) -> Operation:
        """``Deleting``; a create still running is cancelled first, as AKS does. A delete
        already running is the answer (idempotent); one whose task died starts again."""
        if pool.deleting and pool.op is not None:
            return pool.op
        if pool.busy and pool.task is not None and pool.op is not None:
            pool.task.cancel()
            message = (
                "The operation was canceled by a delete."
                if pool.op.kind == "create"
                else "The operation was superseded by a new delete."
            )
            pool.op.finish("Canceled", {"code": "OperationCanceled", "message": message})
        op = self._new_operation("delete", pool.name)
        pool.op = op
        pool.properties["provisioningState"] = "Deleting"
        pool.task = self._spawn(self._delete(pool, op), f"delete {pool.name}")
        self._late.pop(pool.name, None)
        log.info("agent pool deleting", pool=pool.name, operation=op.id)
        self._changed()
        return op

    def _new_operation(self, kind: str, pool: str) -> Operation:
        op = Operation(id=str(uuid.uuid4()), kind=kind, pool=pool)
        self.operations[op.id] = op
        return op

    async def _create(self, pool: Pool, op: Operation, failure: Fault | None) -> None:
        await asyncio.sleep(self.config.create_latency)
        if failure is not None and failure.kind is FaultKind.NODE_NEVER_JOINS:
            pool.properties["provisioningState"] = "Succeeded"
            op.finish("Succeeded")
            self._late.pop(pool.name, None)
            self._changed()
            log.info("agent pool created; its node will never join", pool=pool.name)
            return
        if failure is not None:
            error = {
                "code": failure.code or "AllocationFailed",
                "message": failure.message or ALLOCATION_FAILED,
            }
            pool.properties["provisioningState"] = "Failed"
            op.finish("Failed", error)
            self._late.pop(pool.name, None)
            self._changed()
            log.info("agent pool failed", pool=pool.name, code=error["code"])
            return
        kubelets = self.kubelets
        if kubelets is not None:
            pool.nodes = await self._until_apiserver_answers(
                lambda: kubelets.register(
                    pool.name, pool.properties, ready_delay=self.config.node_ready_delay
                ),
                pool=pool.name,
                step="register nodes",
            )
        pool.properties["provisioningState"] = "Succeeded"
        op.finish("Succeeded")
        self._changed()
        log.info("agent pool created", pool=pool.name, nodes=pool.nodes)

    async def _delete(self, pool: Pool, op: Operation) -> None:
        await asyncio.sleep(self.config.delete_latency)
        kubelets = self.kubelets
        if kubelets is not None:
            count = int(pool.properties.get("count", 1))
            names = pool.nodes or [
                node_name(self.config.cluster_name, pool.name, i) for i in range(count)
            ]
            await self._until_apiserver_answers(
                lambda: kubelets.remove(names), pool=pool.name, step="remove nodes"
            )
            pool.nodes = []
        self.pools.pop(pool.name, None)
        op.finish("Succeeded")
        self._changed()
        log.info("agent pool deleted", pool=pool.name)

    async def _until_apiserver_answers(
        self, call: Callable[[], Awaitable[_T]], *, pool: str, step: str
    ) -> _T:
        """``call()`` again, with backoff, until the apiserver lets it through."""
        backoff = Backoff(
            initial=self.config.apiserver_retry_initial, cap=self.config.apiserver_retry_cap
        )
        tries = 0
        while True:
            tries += 1
            try:
                result = await call()
            except APISERVER_ERRORS as e:
                delay = backoff.next()
                log.warning(
                    "apiserver unavailable, retrying",
                    pool=pool,
                    step=step,
                    tries=tries,
                    retry_in=round(delay, 3),
                    error=str(e) or type(e).__name__,
                )
                await asyncio.sleep(delay)
                continue
            if tries > 1:
                log.info("apiserver answered again", pool=pool, step=step, tries=tries)
            return result
