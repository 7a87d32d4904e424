"""The manager: owns the shared informers, the controllers, and the process lifecycle.

Start order (each step waits for the one before):
  1. the metrics server (:8080) and the probe server (:8081); ``/readyz`` fails until 3.
  2. every informer LISTs and WATCHes; the event recorder starts.
  3. wait until every informer has synced (timeout: ``cache_sync_timeout``, default 2 min).
  4. leader election, when enabled: block until this replica holds the Lease.
  5. the controllers' workers.

Stop (``stop()``, SIGTERM in the CLI) runs in reverse: controllers take no new work and
in-flight reconciles get ``graceful_shutdown_timeout`` (default 30 s) to finish; the
Lease is released if ``leader_election_release_on_cancel``; informers and servers stop.
Every task the manager starts lives in one TaskGroup, so nothing outlives ``run()``.

Losing the Lease is different: another replica may already be reconciling, so the
controllers are cancelled at once and ``run()`` raises `LeaderElectionLost` (the CLI
exits non-zero and Kubernetes restarts the pod as a follower). Before that, from the
moment the renew deadline passes, the client refuses every write (the elector's write
fence, `LeaderElector.write_fence`): reconciles still in flight cannot write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from kaito.runtime import metrics
from kaito.runtime._server import Check, metrics_app, probes_app
from kaito.runtime.aio import Interrupted, run_unless
from kaito.runtime.cache import IndexFunc
from kaito.runtime.client import Client
from kaito.runtime.controller import Controller, Reconciler
from kaito.runtime.events import EventRecorder
from kaito.runtime.handler import (
    EnqueueRequestForObject,
    EnqueueRequestForOwner,
    EnqueueRequestsFromMapFunc,
    MapFunc,
)
from kaito.runtime.httpserver import HttpServer, parse_bind
from kaito.runtime.informer import Informer
from kaito.runtime.leaderelection import LeaderElectionLost, LeaderElector
from kaito.runtime.predicate import Predicate
from kaito.runtime.resource import Resource

log = structlog.get_logger("kaito.runtime.manager")


class CacheSyncTimeout(RuntimeError):
    """An informer did not finish its first LIST in time (RBAC or connectivity, usually)."""


@dataclass
class ManagerOptions:
    metrics_bind_address: str = ":8080"
    """Where /metrics listens; "0" disables. Default ":8080"."""
    health_probe_bind_address: str = ":8081"
    """Where /healthz and /readyz listen; "0" disables. Default ":8081"."""
    namespace: str | None = None
    """Watch only this namespace (namespaced resources); default None: all namespaces."""
    cache_sync_timeout: float = 120.0
    graceful_shutdown_timeout: float = 30.0
    leader_election: bool = False
    leader_election_id: str = ""
    """The Lease's name; required when leader_election is on."""
    leader_election_namespace: str = "default"
    leader_election_release_on_cancel: bool = True
    leader_election_identity: str = ""
    """This replica's holderIdentity; default "" means `default_identity()`."""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    component: str = "kaito"
    """The event source component and the default leader identity prefix."""


class Manager:
    def __init__(self, client: Client, options: ManagerOptions | None = None, **kw: Any) -> None:
        self.client = client
        self.options = options or ManagerOptions(**kw)
        metrics.register_runtime_metrics()
        self._informers: dict[tuple[Resource, str | None, str | None], Informer] = {}
        self.controllers: list[Controller] = []
        self.recorder = EventRecorder(client, component=self.options.component)
        self._healthz: dict[str, Check] = {"ping": lambda: None}
        self._readyz: dict[str, Check] = {"informers": self._informers_synced}
        self._stop = asyncio.Event()
        self._synced = False
        self.metrics_server: HttpServer | None = None
        self.probe_server: HttpServer | None = None
        self.elector: LeaderElector | None = None
        if self.options.leader_election:
            if not self.options.leader_election_id:
                raise ValueError("leader_election_id is required when leader_election is on")
            self.elector = LeaderElector(
                client,
                name=self.options.leader_election_id,
                namespace=self.options.leader_election_namespace,
                lease_duration=self.options.lease_duration,
                renew_deadline=self.options.renew_deadline,
                retry_period=self.options.retry_period,
                identity=self.options.leader_election_identity or None,
            )
            client.set_write_fence(self.elector.write_fence)

    # -- wiring --------------------------------------------------------------------------

    def informer(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        indexers: dict[str, IndexFunc] | None = None,
    ) -> Informer:
        """The shared informer for ``resource``: one per (resource, namespace, selector).

        ``label_selector`` narrows what is listed, watched and cached to the objects a
        controller serves (e.g. only Machines with a ``kaito.sh/workspace`` label);
        default None: every object.
        """
        ns = (
            namespace
            if namespace is not None
            else (self.options.namespace if resource.namespaced else None)
        )
        key = (resource, ns, label_selector)
        inf = self._informers.get(key)
        if inf is None:
            inf = Informer(self.client, resource, namespace=ns, label_selector=label_selector)
            self._informers[key] = inf
        for name, fn in (indexers or {}).items():
            if name not in inf.cache._indexers:
                inf.cache.add_indexer(name, fn)
        return inf

    def controller(
        self, name: str, reconciler: Reconciler, *, max_concurrent_reconciles: int = 1, **kw: Any
    ) -> ControllerBuilder:
        """Create a controller; wire its watches with the returned builder."""
        if any(c.name == name for c in self.controllers):
            raise ValueError(f"a controller named {name!r} already exists")
        ctrl = Controller(
            name, reconciler, max_concurrent_reconciles=max_concurrent_reconciles, **kw
        )
        self.controllers.append(ctrl)
        return ControllerBuilder(self, ctrl)

    def add_healthz_check(self, name: str, check: Check) -> None:
        self._healthz[name] = check

    def add_readyz_check(self, name: str, check: Check) -> None:
        self._readyz[name] = check

    def _informers_synced(self) -> str | None:
        if self._synced:
            return None
        pending = [str(i.resource) for i in self._informers.values() if not i.has_synced]
        return f"caches not synced: {', '.join(pending)}" if pending else "starting"

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run()`` to shut down gracefully; safe to call from a signal handler."""
        self._stop.set()

    async def run(self) -> None:
        opts = self.options
        t0 = time.monotonic()
        await self._start_servers()
        try:
            async with asyncio.TaskGroup() as tg:
                informer_tasks = [
                    tg.create_task(inf.run(), name=f"informer {inf.resource}")
                    for inf in self._informers.values()
                ]
                recorder_task = tg.create_task(self.recorder.run(), name="event-recorder")
                await self._wait_synced()
                self._synced = True
                log.info(
                    "caches synced",
                    informers=len(informer_tasks),
                    seconds=round(time.monotonic() - t0, 3),
                )

                renew_task: asyncio.Task[bool] | None = None
                elector = self.elector
                if elector is not None and await self._acquire_or_stop(elector):
                    renew_task = tg.create_task(self._renew(elector), name="lease-renewal")

                controller_tasks = []
                if not self._stop.is_set():
                    controller_tasks = [
                        tg.create_task(c.run(), name=f"controller {c.name}")
                        for c in self.controllers
                    ]
                    log.info("controllers started", controllers=[c.name for c in self.controllers])

                lost = await self._wait_for_stop(renew_task)

                # -- reverse order ---------------------------------------------------------
                if lost:
                    log.error("leader election lost, stopping controllers now")
                    for t in controller_tasks:
                        t.cancel()
                else:
                    log.info("stopping controllers", grace=opts.graceful_shutdown_timeout)
                    await asyncio.gather(
                        *(
                            c.shutdown(grace=opts.graceful_shutdown_timeout)
                            for c in self.controllers
                        )
                    )
                    for t in controller_tasks:
                        if not t.done():
                            t.cancel()
                await asyncio.gather(*controller_tasks, return_exceptions=True)
                if renew_task is not None and not renew_task.done():
                    renew_task.cancel()
                    await asyncio.gather(renew_task, return_exceptions=True)
                if self.elector is not None and not lost and opts.leader_election_release_on_cancel:
                    await self.elector.release()
                for t in informer_tasks:
                    t.cancel()
                recorder_task.cancel()
        finally:
            await self._stop_servers()
        if lost:
            raise LeaderElectionLost(
                f"lost the lease {opts.leader_election_namespace}/{opts.leader_election_id}"
            )
        log.info("manager stopped")

    async def _start_servers(self) -> None:
        mb = parse_bind(self.options.metrics_bind_address)
        if mb is not None:
            self.metrics_server = HttpServer(
                metrics_app(metrics.REGISTRY), host=mb[0], port=mb[1], name="metrics"
            )
            await self.metrics_server.start()
        pb = parse_bind(self.options.health_probe_bind_address)
        if pb is not None:
            self.probe_server = HttpServer(
                probes_app(self._healthz, self._readyz), host=pb[0], port=pb[1], name="probes"
            )
            await self.probe_server.start()

    async def _stop_servers(self) -> None:
        for server in (self.probe_server, self.metrics_server):
            if server is not None:
                await server.stop()

    async def _wait_synced(self) -> None:
        timeout = self.options.cache_sync_timeout
        informers = list(self._informers.values())
        try:
            synced = await run_unless(
                self._stop, asyncio.gather(*(inf.wait_for_sync(timeout) for inf in informers))
            )
        except Interrupted:
            return
        if not all(synced):
            pending = [str(i.resource) for i in informers if not i.has_synced]
            raise CacheSyncTimeout(
                f"caches did not sync within {timeout:.0f}s: {', '.join(pending)}"
            )

    async def _acquire_or_stop(self, elector: LeaderElector) -> bool:
        """Block until leading (True) or until stop() is called (False)."""
        try:
            await run_unless(self._stop, elector.acquire())
        except Interrupted:
            return False
        return True

    @staticmethod
    async def _renew(elector: LeaderElector) -> bool:
        """Renew until the lease is lost; return True then. Catching the loss here keeps
        it from aborting the TaskGroup: the manager decides how to stop."""
        try:
            await elector.renew_until_lost()
        except LeaderElectionLost:
            return True
        return False  # pragma: no cover - renew_until_lost only returns by raising

    async def _wait_for_stop(self, renew_task: asyncio.Task[bool] | None) -> bool:
        """Wait for stop() or for the lease renewal to end; return True if the lease was lost."""
        if renew_task is None:
            await self._stop.wait()
            return False
        try:
            # Shielded: when stop wins, the renewal goes on until the controllers are
            # down (run() cancels it then), so the Lease stays ours meanwhile.
            return await run_unless(self._stop, asyncio.shield(renew_task))
        except Interrupted:
            return False


class ControllerBuilder:
    """``mgr.controller(name, fn).for_(FOO).owns(DEPLOYMENTS).watches(NODES, map_fn)``."""

    def __init__(self, manager: Manager, controller: Controller) -> None:
        self.manager = manager
        self.controller = controller
        self._for: Resource | None = None

    def for_(
        self, resource: Resource, *, predicates: Sequence[Predicate] = ()
    ) -> ControllerBuilder:
        """Reconcile objects of ``resource`` themselves."""
        if self._for is not None:
            raise ValueError("for_() may be called once per controller")
        self._for = resource
        self.controller.watch(
            self.manager.informer(resource), EnqueueRequestForObject(), predicates
        )
        return self

    def owns(
        self,
        resource: Resource,
        *,
        predicates: Sequence[Predicate] = (),
        label_selector: str | None = None,
    ) -> ControllerBuilder:
        """Reconcile the ``for_`` object that is the controller owner of ``resource`` objects
        (with ``label_selector``, only those the shared informer for it lists and caches)."""
        if self._for is None:
            raise ValueError("call for_() before owns()")
        handler = EnqueueRequestForOwner(
            self._for.group, self._for.kind, owner_namespaced=self._for.namespaced
        )
        informer = self.manager.informer(resource, label_selector=label_selector)
        self.controller.watch(informer, handler, predicates)
        return self

    def watches(
        self,
        resource: Resource,
        map_fn: MapFunc,
        *,
        predicates: Sequence[Predicate] = (),
        label_selector: str | None = None,
    ) -> ControllerBuilder:
        """Reconcile whatever ``map_fn`` maps each ``resource`` object to (with
        ``label_selector``, only objects the shared informer for it lists and caches)."""
        informer = self.manager.informer(resource, label_selector=label_selector)
        self.controller.watch(informer, EnqueueRequestsFromMapFunc(map_fn), predicates)
        return self

    @property
    def informers(self) -> Iterable[Informer]:
        return self.controller.informers
