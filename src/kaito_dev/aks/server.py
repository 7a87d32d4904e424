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

The parts: `arm.py` (routes and answers), `state.py` (pools and their operations),
`kubelet.py` (Nodes); this module puts them on the runtime's HTTP server and adds the
control surface and the helpers tests use.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from kaito.runtime.certwatcher import CertWatcher
from kaito.runtime.client import Client
from kaito.runtime.faults import add_fault_routes
from kaito.runtime.httpserver import HttpServer
from kaito_dev.aks.arm import ArmApi
from kaito_dev.aks.faults import Fault, FaultInjector, Op
from kaito_dev.aks.kubelet import Kubelets, SimulatedKubelets, Spawn
from kaito_dev.aks.state import (
    AgentPools,
    EmulatorConfig,
    Operation,
    Pool,
    RecordedRequest,
)

__all__ = ["AKSEmulator", "EmulatorConfig", "RecordedRequest"]

log = structlog.get_logger("kaito_dev.aks")


class AKSEmulator:
    """One managed cluster's agent pools. ``async with AKSEmulator(kube, cfg, tls=...)``.

    Args:
        kube: a client of the cluster the Nodes register in; None: no Nodes (ARM only).
        config: see `EmulatorConfig`.
        host, port: where to listen; port 0 (default) picks a free one (see ``url``).
        tls: serve HTTPS with this context, or with a `CertWatcher`'s files, reloaded
            when they change (the SDK sends bearer tokens over HTTPS only).
        state_file: keep the pools and operations in this JSON file (rewritten after
            every change, read back by `start`), so a restarted emulator resumes where a
            killed one stopped; default None (in memory only).
        node_backend: makes the pools' kubelets from the emulator's task spawner
            (e.g. `kaito_dev.aks.realnodes.RealKubelets`, real nodes); default
            `SimulatedKubelets` (Node objects and heartbeats only). A backend with an
            ``adopt()`` gets the pools of the VMs that outlived a previous process back.
    """

    def __init__(
        self,
        kube: Client | None,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | CertWatcher | None = None,
        state_file: Path | None = None,
        node_backend: Callable[[Spawn], Kubelets] | None = None,
    ) -> None:
        self.kube = kube
        self.state_file = state_file
        self.config = config or EmulatorConfig()
        self.host, self.port = host, port
        self.tls = tls
        self.faults = FaultInjector()
        self.requests: list[RecordedRequest] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: HttpServer | None = None
        cfg = self.config
        self.kubelets: Kubelets | None = (
            node_backend(self._spawn)
            if kube is not None and node_backend is not None
            else SimulatedKubelets(
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
        self.state = AgentPools(
            cfg, self.kubelets, self._spawn, self._save if state_file is not None else None
        )
        self._arm = ArmApi(cfg, self.state, self.faults, self.requests)

    @property
    def pools(self) -> dict[str, Pool]:
        return self.state.pools

    @property
    def operations(self) -> dict[str, Operation]:
        return self.state.operations

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _save(self) -> None:
        """Write the state file atomically (a kill mid-write leaves the previous one)."""
        assert self.state_file is not None
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.snapshot()))
        os.replace(tmp, self.state_file)

    async def start(self) -> None:
        if self.state_file is not None and self.state_file.exists():
            self.state.restore(json.loads(self.state_file.read_text()))
        app = web.Application(middlewares=[self._arm.middleware])
        self._arm.add_routes(app.router)
        app.router.add_get("/_emulator/state", self._control_state)
        add_fault_routes(app.router, self.faults, Fault.from_json)
        self._http = HttpServer(
            app, host=self.host, port=self.port, tls=self.tls, name="aks-emulator"
        )
        await self._http.start()
        self.port = int(self._http.port or 0)
        adopt = getattr(self.kubelets, "adopt", None)
        if adopt is not None:
            for name, (properties, nodes) in adopt().items():
                self.state.adopt(name, properties, nodes)
        if self.kubelets is not None and self.config.heartbeat_interval > 0:
            self._spawn(
                self.kubelets.heartbeat_forever(
                    self.config.heartbeat_interval, self.state.node_names
                ),
                "heartbeats",
            )
        log.info("aks emulator listening", url=self.url, cluster=self.config.cluster_name)

    async def stop(self) -> None:
        """Stop serving and cancel pending operations. Pools and Nodes are left as they are."""
        if self._http is not None:
            await self._http.stop()
            self._http = None
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
        task.add_done_callback(_log_failure)
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
                if self.state.idle():
                    return
                await asyncio.sleep(0.02)

    # -- control surface (no auth: loopback dev/test use only) -----------------------------

    async def _control_state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "pools": {
                    n: {
                        "provisioningState": p.state,
                        "nodes": p.nodes,
                        "count": p.properties.get("count", 1),
                        "nodeLabels": p.properties.get("nodeLabels") or {},
                    }
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


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task that died of an exception says so (nobody awaits it)."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    log.error(
        "background task failed",
        task=task.get_name(),
        error=str(error) or type(error).__name__,
        exc_info=error,
    )
