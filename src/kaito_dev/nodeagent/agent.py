"""The agent: watch Pods and Nodes, keep one `PodWorker` per pod on a managed node.

One controller (``node-agent``) reconciles pods by ``namespace/name``; Node changes
enqueue the pods bound to that Node. A reconcile is level-based:

- the pod is gone, changed UID, or its Node is no longer managed: retire the worker
  (stop its processes, remove its local folder, free its IP);
- the pod is terminating and its Node is managed or gone: retire the worker, then
  delete the pod with ``gracePeriodSeconds=0`` (what kubelet does once its containers
  stopped);
- the pod is bound to a managed Node and not yet terminal: make sure a worker runs.
  Pods that are already Succeeded/Failed are left alone; a pod that was Running under
  a previous agent is started again (its processes died with that agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.labels import parse_selector
from kaito.runtime.manager import Manager, ManagerOptions
from kaito.runtime.meta import Obj
from kaito.runtime.predicate import Funcs
from kaito.runtime.reconcile import Request
from kaito.runtime.resource import NODES, PODS
from kaito_dev.controlplane import REPO_ROOT
from kaito_dev.nodeagent.env import CPU_ENV
from kaito_dev.nodeagent.model import StandInModel
from kaito_dev.nodeagent.network import IPPool
from kaito_dev.nodeagent.pod import AgentContext, PodWorker
from kaito_dev.nodeagent.process import kill_orphans

__all__ = [
    "DEFAULT_NODE_SELECTOR",
    "DEFAULT_PYTHON",
    "NodeAgent",
]

log = structlog.get_logger("kaito_dev.nodeagent")


DEFAULT_NODE_SELECTOR = "kubernetes.azure.com/agentpool"
"""Nodes the agent plays kubelet for: those with an AKS agent-pool label (any value)."""
DEFAULT_PYTHON = str(REPO_ROOT / ".venv-inference" / "bin" / "python")
"""The interpreter of the project's images: the inference/tuning virtualenv."""
PYTHONPATH = ":".join(
    str(p)
    for p in (
        REPO_ROOT / "images" / "inference",
        REPO_ROOT / "images" / "tuning",
        REPO_ROOT / "src",
    )
)
"""What the images' /workspace holds: their packages, and ``src/kaito_contracts`` (the
config grammar and URL policy they share with the webhook, copied in at build time)."""
NODE_INDEX = "nodeName"


def _node_of(pod: Obj) -> Iterable[str]:
    node = pod.get("spec", {}).get("nodeName")
    return (node,) if node else ()


def _bound(pod: Obj) -> bool:
    return bool(pod.get("spec", {}).get("nodeName"))


def _node_view(node: Obj) -> tuple[Any, ...]:
    return (node["metadata"].get("labels"), node["metadata"].get("deletionTimestamp"))


class NodeAgent:
    """Plays kubelet for the Nodes matching ``node_selector``; see the package docstring."""

    def __init__(
        self,
        client: Client,
        *,
        state_dir: Path,
        python: str = DEFAULT_PYTHON,
        node_selector: str = DEFAULT_NODE_SELECTOR,
        restart_backoff: float = 10.0,
        max_grace: float = 10.0,
        manager_options: ManagerOptions | None = None,
        model_dir: Path | None = None,
        prepare_model: bool = False,
        hf_endpoint: str | None = None,
    ) -> None:
        """
        Args:
            state_dir: pod folders (``pods/``) and the stand-in model (``tiny-model/``).
            python: interpreter for the containers (default: ``.venv-inference``'s).
            node_selector: label selector of the Nodes to serve (default: has
                ``kubernetes.azure.com/agentpool``).
            restart_backoff: first crash-loop backoff in seconds (default 10, doubling
                to 300 as kubelet does).
            max_grace: cap on terminationGracePeriodSeconds when stopping (default 10).
            manager_options: default: component ``node-agent``, no metrics/probe servers.
            model_dir: where the stand-in model is built and kept (default
                ``<state_dir>/tiny-model``); a folder outside the state dir outlives it.
            prepare_model: build the stand-in model at start rather than when the first
                pod needs it (as a node pre-pulls an image it knows it will run).
            hf_endpoint: the Hugging Face hub the weights fetches download from (their
                ``HF_ENDPOINT``; the local stack's hub emulator, which serves the
                stand-in model under the presets' repos). None: a fetch copies the
                stand-in model into the cache instead.
        """
        self.prepare_model = prepare_model
        self.client = client
        self.state_dir = Path(state_dir).resolve()
        self.selector = parse_selector(node_selector)
        self.manager = Manager(
            client,
            manager_options
            or ManagerOptions(
                component="node-agent",
                metrics_bind_address="0",
                health_probe_bind_address="0",
                graceful_shutdown_timeout=5.0,
            ),
        )
        self.pods = self.manager.informer(PODS, indexers={NODE_INDEX: _node_of})
        self.nodes = self.manager.informer(NODES)
        env = {**CPU_ENV, "PYTHONPATH": PYTHONPATH}
        self.ctx = AgentContext(
            client=client,
            recorder=self.manager.recorder,
            python=python,
            pythonpath=PYTHONPATH,
            state_dir=self.state_dir,
            restart_backoff=restart_backoff,
            max_grace=max_grace,
            model=StandInModel(
                Path(model_dir).resolve() if model_dir else self.state_dir / "tiny-model",
                python=python,
                env=env,
            ),
            ips=IPPool(self._ips_in_cluster),
            hf_endpoint=hf_endpoint,
        )
        self.workers: dict[str, PodWorker] = {}
        self._tg: asyncio.TaskGroup | None = None
        (
            self.manager.controller("node-agent", self.reconcile, max_concurrent_reconciles=4)
            .for_(
                PODS,
                predicates=[Funcs(create=_bound, update=lambda o, n: _bound(n), delete=_bound)],
            )
            .watches(
                NODES,
                self._pods_on,
                predicates=[Funcs(update=lambda o, n: _node_view(o) != _node_view(n))],
            )
        )

    # -- wiring ----------------------------------------------------------------------------

    def _ips_in_cluster(self) -> list[str]:
        return [ip for p in self.pods.cache.all() if (ip := p.get("status", {}).get("podIP"))]

    def _pods_on(self, node: Obj) -> list[Request]:
        pods = self.pods.cache.by_index(NODE_INDEX, node["metadata"]["name"])
        return [Request(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods]

    def manages_node(self, name: str) -> bool:
        node = self.nodes.cache.get(name)
        return node is not None and self.selector.matches(node["metadata"].get("labels") or {})

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop` (or cancellation); every child process is stopped on the way out."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        kill_orphans(self.state_dir)
        log.info(
            "node agent starting", state_dir=str(self.state_dir), python=self.ctx.python,
            hf_endpoint=self.ctx.hf_endpoint,
        )  # fmt: skip
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self.prepare_model:
                    tg.create_task(self._prepare_model(), name="prepare-model")
                try:
                    await self.manager.run()
                finally:
                    await asyncio.gather(
                        *(self._retire(w, self.ctx.max_grace) for w in list(self.workers.values())),
                        return_exceptions=True,
                    )
        finally:
            for w in self.workers.values():
                w.kill_now()
            self._tg = None
            log.info("node agent stopped")

    async def _prepare_model(self) -> None:
        try:
            await self.ctx.model.ensure()
        except (OSError, RuntimeError) as e:  # the first pod that needs it will say so
            log.warning("preparing the stand-in model failed", error=str(e))

    def stop(self) -> None:
        self.manager.stop()

    # -- reconcile -------------------------------------------------------------------------

    async def reconcile(self, req: Request) -> None:
        pod = self.pods.cache.get_by_name(req.name, req.namespace)
        worker = self.workers.get(req.key)
        if worker is not None and (
            pod is None
            or pod["metadata"].get("uid") != worker.uid
            or not self.manages_node(pod["spec"].get("nodeName", ""))
        ):
            await self._retire(worker, self.ctx.max_grace)
            worker = None
        if pod is None or not _bound(pod):
            return
        meta, spec = pod["metadata"], pod["spec"]
        node = spec["nodeName"]
        if meta.get("deletionTimestamp"):
            if self.nodes.cache.get(node) is not None and not self.manages_node(node):
                return  # another kubelet's pod
            if worker is not None:
                grace = min(
                    float(
                        meta.get("deletionGracePeriodSeconds")
                        or spec.get("terminationGracePeriodSeconds")
                        or 30
                    ),
                    self.ctx.max_grace,
                )
                worker.event("Normal", "Killing", "Stopping the pod's local processes")
                await self._retire(worker, grace)
            with contextlib.suppress(NotFound):
                await self.client.delete(
                    PODS,
                    req.name,
                    req.namespace,
                    grace_period_seconds=0,
                    preconditions={"uid": meta["uid"]},
                )
                log.info("pod deleted", pod=req.key, node=node)
            return
        if not self.manages_node(node):
            return
        if worker is not None:
            worker.update(pod)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return  # finished before this agent started: kubelet never re-runs those
        if self._tg is None:
            return
        worker = PodWorker(self.ctx, pod)
        self.workers[req.key] = worker
        worker.task = self._tg.create_task(worker.run(), name=f"pod {req.key}")
        log.info("pod admitted", pod=req.key, node=node, uid=worker.uid)

    async def _retire(self, worker: PodWorker, grace: float) -> None:
        await worker.stop(grace)
        shutil.rmtree(worker.dir, ignore_errors=True)
        self.ctx.ips.release(worker.uid)
        key = f"{worker.namespace}/{worker.name}"
        if self.workers.get(key) is worker:
            del self.workers[key]
        log.info("pod retired", pod=key, uid=worker.uid)
