"""An AKS agent-pool API on aiohttp, speaking ARM's wire protocol, that registers Nodes.

What the real service does and this one does too (PROVISIONER.md, "Facts from trying
the SDK"), so that ``azure-mgmt-containerservice`` runs unmodified against it:

- ``PUT .../managedClusters/{cluster}/agentPools/{name}`` -> 201 with
  ``properties.provisioningState: Creating`` and an ``Azure-AsyncOperation`` URL; the
  operation URL answers ``{"status": "InProgress"|"Succeeded"|"Failed"|"Canceled"}``
  (with ``error`` when Failed); the SDK then GETs the pool. A PUT while an operation on
  the pool runs is 409 OperationNotAllowed ("in progress"); a PUT of a pool that
  exists and succeeded is a no-op update (200).
- ``DELETE`` -> 202 with ``Azure-AsyncOperation`` and ``Location`` (the operation
  result: 202 while running, 204 when done); 204 when the pool does not exist.
  Deleting a pool that is still creating cancels the create.
- ``GET`` a pool (404 NotFound when absent) and ``GET .../agentPools`` (``value`` plus
  ``nextLink`` pages).
- every request needs ``api-version`` and a bearer token; errors are
  ``{"error": {"code", "message"}}``.

When a create finishes, the pool's Nodes are registered in the cluster (`nodes.py`),
Ready at once or after ``node_ready_delay``; their Ready heartbeat is refreshed every
``heartbeat_interval``. Deleting the pool deletes its Nodes. Latency and faults
(`faults.py`) are configurable, in-process or over ``/_emulator/*``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from kaito.provisioner.emulator.faults import (
    ALLOCATION_FAILED,
    Fault,
    FaultInjector,
    FaultKind,
    Op,
    arm_answer,
)
from kaito.provisioner.emulator.kubelet import SimulatedKubelets
from kaito.provisioner.emulator.nodes import (
    node_name,
)
from kaito.runtime.client import Client
from kaito.runtime.errors import ApiError
from kaito.runtime.meta import Obj
from kaito.runtime.timestamps import now_rfc3339

__all__ = ["AKSEmulator", "EmulatorConfig", "RecordedRequest"]

log = structlog.get_logger("kaito.provisioner.emulator")


_POOL_NAME_RULE = "must start with a lowercase letter, have at most 12 characters, a-z and 0-9"
_PROVIDER = "providers/Microsoft.ContainerService"
_CLUSTER_PATH = (
    "/subscriptions/{sub}/resourceGroups/{rg}/" + _PROVIDER + "/managedClusters/{cluster}"
)
_OPERATIONS_API_VERSION = "2016-03-30"
_LATE_FAULTS = (FaultKind.FAILED_LRO, FaultKind.NODE_NEVER_JOINS)
_OP = web.RequestKey("op", Op)
_POOL = web.RequestKey("pool", str)


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


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    op: Op
    pool: str | None
    status: int


@dataclass
class _Operation:
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
class _Pool:
    name: str
    properties: Obj
    op: _Operation | None = None
    task: asyncio.Task[None] | None = None
    nodes: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(self.properties["provisioningState"])


def _arm_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class AKSEmulator:
    """One managed cluster's agent pools. ``async with AKSEmulator(kube, cfg, ssl_context=...)``.

    Args:
        kube: a client of the cluster the Nodes register in; None: no Nodes (ARM only).
        config: see `EmulatorConfig`.
        host, port: where to listen; port 0 (default) picks a free one (see ``url``).
        ssl_context: serve HTTPS with it (the SDK sends bearer tokens over HTTPS only).
    """

    def __init__(
        self,
        kube: Client | None,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.kube = kube
        self.config = config or EmulatorConfig()
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.pools: dict[str, _Pool] = {}
        self.operations: dict[str, _Operation] = {}
        self.faults = FaultInjector()
        self.requests: list[RecordedRequest] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        cfg = self.config
        self.kubelets = (
            SimulatedKubelets(
                kube,
                subscription_id=cfg.subscription_id,
                resource_group=cfg.resource_group,
                cluster=cfg.cluster_name,
                location=cfg.location,
                spawn=self._spawn,
            )
            if kube is not None
            else None
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        cluster = _CLUSTER_PATH
        pool = cluster + "/agentPools/{name}"
        ops = "/subscriptions/{sub}/" + _PROVIDER + "/locations/{loc}"
        app.router.add_put(pool, self._put_pool)
        app.router.add_get(pool, self._get_pool)
        app.router.add_delete(pool, self._delete_pool)
        app.router.add_get(cluster + "/agentPools", self._list_pools)
        app.router.add_get(ops + "/operations/{op}", self._get_operation)
        app.router.add_get(ops + "/operationresults/{op}", self._get_operation_result)
        app.router.add_get("/_emulator/state", self._control_state)
        app.router.add_post("/_emulator/faults", self._control_add_fault)
        app.router.add_delete("/_emulator/faults", self._control_clear_faults)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.kubelets is not None and self.config.heartbeat_interval > 0:
            self._spawn(
                self.kubelets.heartbeat_forever(
                    self.config.heartbeat_interval,
                    lambda: [n for p in self.pools.values() for n in p.nodes],
                ),
                "heartbeats",
            )
        log.info("aks emulator listening", url=self.url, cluster=self.config.cluster_name)

    async def stop(self) -> None:
        """Stop serving and cancel pending operations. Pools and Nodes are left as they are."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> AKSEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"aks-emulator {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- test helpers ----------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        """Answer matching requests with ``fault`` (see `faults.py`)."""
        return self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(self, op: Op, *, pool: str | None = None, status: int | None = None) -> int:
        """How many requests of ``op`` (for ``pool``, answered ``status``) were served."""
        return sum(
            1
            for r in self.requests
            if r.op is op
            and (pool is None or r.pool == pool)
            and (status is None or r.status == status)
        )

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no pool operation is running."""
        async with asyncio.timeout(timeout):
            while True:
                if all(p.op is None or p.op.done for p in self.pools.values()):
                    return
                await asyncio.sleep(0.02)

    # -- the ARM surface -------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.monotonic()
        if request.path.startswith("/_emulator/"):
            return await handler(request)  # type: ignore[no-any-return]
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        accept = self.config.accept_token
        response: web.StreamResponse
        if not token:
            response = _arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        elif accept is not None and not accept(token):
            response = _arm_error(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            )
        elif "api-version" not in request.query:
            response = _arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as e:
                response = e
        self.requests.append(
            RecordedRequest(
                request.method, request.get(_OP, Op.ANY), request.get(_POOL), response.status
            )
        )
        log.debug(
            "arm request",
            method=request.method,
            path=request.path,
            status=response.status,
            seconds=round(time.monotonic() - started, 4),
        )
        return response

    def _check_cluster(self, request: web.Request) -> web.Response | None:
        info, cfg = request.match_info, self.config
        if info.get("sub") != cfg.subscription_id:
            return _arm_error(
                404,
                "SubscriptionNotFound",
                f"The subscription '{info.get('sub')}' could not be found.",
            )
        if "rg" in info and info["rg"].lower() != cfg.resource_group.lower():
            return _arm_error(
                404,
                "ResourceGroupNotFound",
                f"Resource group '{info['rg']}' could not be found.",
            )
        if "cluster" in info and info["cluster"].lower() != cfg.cluster_name.lower():
            return _arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerService/managedClusters/{info['cluster']}' "
                f"under resource group '{info['rg']}' was not found.",
            )
        return None

    def _fault_response(self, fault: Fault, vm_size: str | None) -> web.Response | None:
        cfg = self.config
        answer = arm_answer(
            fault,
            cluster=cfg.cluster_name,
            resource_group=cfg.resource_group,
            location=cfg.location,
            vm_size=vm_size,
        )
        if answer is None:
            return None  # FAILED_LRO, NODE_NEVER_JOINS: accepted now, go wrong later
        status, code, message, headers = answer
        return _arm_error(status, code, message, headers=headers or None)

    def _op_urls(self, request: web.Request, op: _Operation) -> dict[str, str]:
        base = f"{request.scheme}://{request.host}/subscriptions/{self.config.subscription_id}"
        loc = f"{base}/{_PROVIDER}/locations/{self.config.location}"
        query = f"?api-version={_OPERATIONS_API_VERSION}"
        headers = {
            "Azure-AsyncOperation": f"{loc}/operations/{op.id}{query}",
            "Location": f"{loc}/operationresults/{op.id}{query}",
        }
        if self.config.lro_retry_after is not None:
            headers["Retry-After"] = str(self.config.lro_retry_after)
        return headers

    def _pool_json(self, pool: _Pool) -> Obj:
        cfg = self.config
        return {
            "id": (
                f"/subscriptions/{cfg.subscription_id}/resourceGroups/{cfg.resource_group}/"
                f"{_PROVIDER}/managedClusters/{cfg.cluster_name}/agentPools/{pool.name}"
            ),
            "name": pool.name,
            "type": "Microsoft.ContainerService/managedClusters/agentPools",
            "properties": pool.properties,
        }

    async def _put_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        request[_OP], request[_POOL] = Op.CREATE, name
        if (bad := self._check_cluster(request)) is not None:
            return bad
        try:
            body = await request.json()
        except ValueError:
            return _arm_error(400, "InvalidRequestContent", "The request content is not JSON.")
        props = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(props, dict):
            return _arm_error(400, "InvalidRequestContent", "The request has no 'properties'.")
        vm_size = props.get("vmSize")
        fault = self.faults.take(Op.CREATE, name, vm_size if isinstance(vm_size, str) else None)
        if fault is not None and (answer := self._fault_response(fault, vm_size)) is not None:
            return answer
        if (invalid := self._validate(name, props)) is not None:
            return invalid
        existing = self.pools.get(name)
        if existing is not None and existing.op is not None and not existing.op.done:
            return _arm_error(
                409,
                "OperationNotAllowed",
                f"Operation is not allowed because there's an in progress {existing.op.kind} "
                f"node pool operation started at {existing.op.start}. Please wait for it to "
                f"finish before starting a new operation.",
            )
        if existing is not None and existing.state == "Succeeded":
            return web.json_response(self._pool_json(existing), status=200)
        op = _Operation(id=str(uuid.uuid4()), kind="create", pool=name)
        self.operations[op.id] = op
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
        pool = _Pool(name=name, properties=properties, op=op)
        self.pools[name] = pool
        failure = fault if fault is not None and fault.kind in _LATE_FAULTS else None
        pool.task = self._spawn(self._create(pool, op, failure), f"create {name}")
        log.info("agent pool creating", pool=name, vm_size=vm_size, operation=op.id)
        return web.json_response(
            self._pool_json(pool), status=201, headers=self._op_urls(request, op)
        )

    def _validate(self, name: str, props: Obj) -> web.Response | None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name):
            return _arm_error(
                400,
                "InvalidParameter",
                f"The value of parameter agentPoolProfile.name is invalid: '{name}' "
                f"{_POOL_NAME_RULE}.",
            )
        if not isinstance(props.get("vmSize"), str) or not props["vmSize"].startswith("Standard_"):
            return _arm_error(
                400,
                "InvalidParameter",
                f"The value of parameter agentPoolProfile.vmSize is invalid: "
                f"{props.get('vmSize')!r}.",
            )
        disk = props.get("osDiskSizeGB")
        if disk is not None and (not isinstance(disk, int) or not (30 <= disk <= 2048)):
            return _arm_error(
                400,
                "InvalidParameter",
                f"The value of parameter agentPoolProfile.osDiskSizeGB is invalid: {disk!r} "
                f"(must be between 30 and 2048).",
            )
        count = props.get("count", 1)
        if not isinstance(count, int) or not (0 <= count <= 1000):
            return _arm_error(
                400, "InvalidParameter", f"agentPoolProfile.count is invalid: {count!r}."
            )
        return None

    async def _get_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        request[_OP], request[_POOL] = Op.GET, name
        if (bad := self._check_cluster(request)) is not None:
            return bad
        fault = self.faults.take(Op.GET, name)
        if fault is not None and (answer := self._fault_response(fault, None)) is not None:
            return answer
        pool = self.pools.get(name)
        if pool is None:
            return self._not_found(name)
        return web.json_response(self._pool_json(pool))

    def _not_found(self, name: str) -> web.Response:
        return _arm_error(
            404,
            "NotFound",
            f"Could not find agent pool {name} in managed cluster {self.config.cluster_name}.",
        )

    async def _list_pools(self, request: web.Request) -> web.Response:
        request[_OP] = Op.LIST
        if (bad := self._check_cluster(request)) is not None:
            return bad
        fault = self.faults.take(Op.LIST)
        if fault is not None and (answer := self._fault_response(fault, None)) is not None:
            return answer
        names = sorted(self.pools)
        start = int(request.query.get("$skipToken", "0") or 0)
        size = self.config.list_page_size
        page = names[start : start + size]
        body: Obj = {"value": [self._pool_json(self.pools[n]) for n in page]}
        if start + size < len(names):
            body["nextLink"] = (
                f"{request.scheme}://{request.host}{request.path}"
                f"?api-version={request.query['api-version']}&$skipToken={start + size}"
            )
        return web.json_response(body)

    async def _delete_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        request[_OP], request[_POOL] = Op.DELETE, name
        if (bad := self._check_cluster(request)) is not None:
            return bad
        fault = self.faults.take(Op.DELETE, name)
        if fault is not None and (answer := self._fault_response(fault, None)) is not None:
            return answer
        pool = self.pools.get(name)
        if pool is None:
            return web.Response(status=204)
        if pool.op is not None and pool.op.kind == "delete" and not pool.op.done:
            return web.Response(status=202, headers=self._op_urls(request, pool.op))
        if pool.op is not None and not pool.op.done and pool.task is not None:
            pool.task.cancel()  # a create in progress: AKS cancels it and deletes
            pool.op.finish(
                "Canceled",
                {"code": "OperationCanceled", "message": "The operation was canceled by a delete."},
            )
        op = _Operation(id=str(uuid.uuid4()), kind="delete", pool=name)
        self.operations[op.id] = op
        pool.op = op
        pool.properties["provisioningState"] = "Deleting"
        pool.task = self._spawn(self._delete(pool, op), f"delete {name}")
        log.info("agent pool deleting", pool=name, operation=op.id)
        return web.Response(status=202, headers=self._op_urls(request, op))

    async def _get_operation(self, request: web.Request) -> web.Response:
        request[_OP] = Op.POLL
        op = self.operations.get(request.match_info["op"])
        if op is not None:
            request[_POOL] = op.pool
        fault = self.faults.take(Op.POLL, op.pool if op else None)
        if fault is not None and (answer := self._fault_response(fault, None)) is not None:
            return answer
        if op is None or request.match_info["sub"] != self.config.subscription_id:
            return _arm_error(404, "NotFound", "The operation was not found.")
        headers = {}
        if not op.done and self.config.lro_retry_after is not None:
            headers["Retry-After"] = str(self.config.lro_retry_after)
        return web.json_response(op.body(), headers=headers)

    async def _get_operation_result(self, request: web.Request) -> web.Response:
        request[_OP] = Op.POLL
        op = self.operations.get(request.match_info["op"])
        if op is None:
            return _arm_error(404, "NotFound", "The operation was not found.")
        request[_POOL] = op.pool
        if not op.done:
            return web.Response(status=202, headers=self._op_urls(request, op))
        if op.status == "Failed":
            return web.json_response({"error": op.error}, status=400)
        return web.Response(status=204)

    # -- pool operations -------------------------------------------------------------------

    async def _create(self, pool: _Pool, op: _Operation, failure: Fault | None) -> None:
        await asyncio.sleep(self.config.create_latency)
        if failure is not None and failure.kind is FaultKind.NODE_NEVER_JOINS:
            pool.properties["provisioningState"] = "Succeeded"
            op.finish("Succeeded")
            log.info("agent pool created; its node will never join", pool=pool.name)
            return
        if failure is not None:
            error = {
                "code": failure.code or "AllocationFailed",
                "message": failure.message or ALLOCATION_FAILED,
            }
            pool.properties["provisioningState"] = "Failed"
            op.finish("Failed", error)
            log.info("agent pool failed", pool=pool.name, code=error["code"])
            return
        try:
            if self.kubelets is not None:
                pool.nodes = await self.kubelets.register(
                    pool.name, pool.properties, ready_delay=self.config.node_ready_delay
                )
        except (ApiError, OSError) as e:
            pool.properties["provisioningState"] = "Failed"
            op.finish("Failed", {"code": "NodeRegistrationFailed", "message": str(e)})
            log.warning("node registration failed", pool=pool.name, error=str(e))
            return
        pool.properties["provisioningState"] = "Succeeded"
        op.finish("Succeeded")
        log.info("agent pool created", pool=pool.name, nodes=pool.nodes)

    async def _delete(self, pool: _Pool, op: _Operation) -> None:
        await asyncio.sleep(self.config.delete_latency)
        if self.kubelets is not None:
            count = int(pool.properties.get("count", 1))
            names = pool.nodes or [
                node_name(self.config.cluster_name, pool.name, i) for i in range(count)
            ]
            await self.kubelets.remove(names)
            pool.nodes = []
        self.pools.pop(pool.name, None)
        op.finish("Succeeded")
        log.info("agent pool deleted", pool=pool.name)

    # -- control surface (no auth: loopback dev/test use only) -----------------------------

    async def _control_state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "pools": {
                    n: {"provisioningState": p.state, "nodes": p.nodes}
                    for n, p in self.pools.items()
                },
                "faults": [f.to_json() for f in self.faults.faults],
                "requests": [
                    {"method": r.method, "op": str(r.op), "pool": r.pool, "status": r.status}
                    for r in self.requests[-10000:]
                ],
                "time": datetime.now(UTC).isoformat(),
            }
        )

    async def _control_add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault.from_json(await request.json())
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        self.inject(fault)
        return web.json_response(fault.to_json(), status=201)

    async def _control_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.Response(status=204)
