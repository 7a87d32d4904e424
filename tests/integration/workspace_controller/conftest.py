"""The workspace controller's test rig: real apiserver, AKS emulator, real gpu-provisioner.

Everything runs in this process, each on its own: the emulator (HTTPS, the real Azure
SDK calling it), the provisioner (`tests.integration.provisioner.conftest.Rig`) and the
workspace controller, which only ever talks to the provisioner through Machines.

- ``emulator``: the provisioner rig's emulator, with a create latency of 0.3 s by default
  (``@pytest.mark.parametrize("emulator", [0.0], indirect=True)`` for another);
  teardown asserts no agent pool and no Node is left.
- ``wsrig``: a namespace of its own, the Workspace CRD, a running provisioner that
  serves only this test's Machines (they carry the Workspace's ``kaito-test=<id>``
  match label), and workspace controllers (``start``/``kill``/``stop``). Teardown
  deletes what the test left through the running controllers and asserts that no
  Workspace and no Machine is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kaito.api.workspace import FINALIZER, WORKSPACES, WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.app import WorkspaceController
from kaito.controllers.workspace.nodes.provisioning import Provisioning
from kaito.presets.catalog import load_catalog
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.manager import ManagerOptions
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    JOBS,
    NAMESPACES,
    NODES,
    PODS,
    REPLICASETS,
    SERVICES,
    STATEFULSETS,
)
from kaito.runtime.timestamps import now_rfc3339
from kaito_dev.aks import AKSEmulator, EmulatorConfig
from tests.integration.polling import poll_until
from tests.integration.provisioner.conftest import (  # noqa: F401 - fixtures
    ArmTls,
    Rig,
    arm_tls,
    emulator_nodes,
    machine_crd,
    rig,
)
from tests.integration.workspace.conftest import committed_crd, install_crd

Obj = dict[str, Any]


@pytest.fixture
async def emulator(
    client: Client,
    arm_tls: ArmTls,  # noqa: F811 - the imported fixture
    request: pytest.FixtureRequest,
) -> AsyncIterator[AKSEmulator]:
    cfg = EmulatorConfig(
        cluster_name=f"aks{uuid.uuid4().hex[:8]}",
        create_latency=float(getattr(request, "param", 0.3)),
        delete_latency=0.1,
        heartbeat_interval=0,
    )
    emu = AKSEmulator(client, cfg, tls=arm_tls.server_context)
    await emu.start()
    try:
        yield emu
        await emu.wait_idle()
        assert not emu.pools, f"leaked agent pools: {sorted(emu.pools)}"
        leaked = [n["metadata"]["name"] for n in await emulator_nodes(client, emu)]
        assert not leaked, f"leaked Nodes: {leaked}"
    finally:
        await emu.stop()
        for node in await emulator_nodes(client, emu):
            with contextlib.suppress(NotFound):
                await client.delete(NODES, node["metadata"]["name"])


@pytest.fixture(scope="session")
async def workspace_crd(client: Client) -> None:
    await install_crd(client, committed_crd())
    async with asyncio.timeout(30):
        while True:  # the REST endpoint appears a moment after Established
            try:
                await client.list(WORKSPACES)
                return
            except NotFound:
                await asyncio.sleep(0.1)


def condition(obj: Obj | None, type_: str) -> Obj | None:
    for cond in (obj or {}).get("status", {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(obj: Obj | None, type_: str) -> bool:
    cond = condition(obj, type_)
    return cond is not None and cond["status"] == "True"


def ready_node(name: str, labels: dict[str, str], gpus: str = "1") -> tuple[Obj, Obj]:
    """(object, status) of a Ready GPU node carrying ``labels``."""
    resources = {"nvidia.com/gpu": gpus, "cpu": "6", "memory": "112Gi", "pods": "110"}
    status = {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now_rfc3339(),
                "lastTransitionTime": now_rfc3339(),
            }
        ],
    }
    obj = {
        "metadata": {"name": name, "labels": {**labels, "kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]},
    }
    return obj, status


async def register(client: Client, obj: Obj, status: Obj) -> None:
    name = obj["metadata"]["name"]
    await client.create(NODES, obj)
    await client.patch(NODES, name, {"status": status}, subresource="status")
    # The node lifecycle controller would lift the not-ready taint of a Ready node.
    await client.patch(NODES, name, {"spec": {"taints": obj["spec"]["taints"]}})


IMAGE_REGISTRY = "registry.kaito.test:5000"
"""The controllers' ``--image-registry``: every workload's images come from it."""

WORKLOAD_KINDS = (DEPLOYMENTS, STATEFULSETS, REPLICASETS, SERVICES, CONFIGMAPS, JOBS, PODS)


async def _workload_names(client: Client, namespace: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for res in WORKLOAD_KINDS:
        names = [o["metadata"]["name"] for o in await client.list_all(res, namespace)]
        if names:
            out[res.kind] = sorted(names)
    return out


async def workload_left(client: Client, namespace: str, timeout: float = 120.0) -> dict[str, Any]:
    """What is left of the Workspaces' workloads once the garbage collector is done.

    There is no kubelet in this rig: a deleted pod stays Terminating until one confirms
    it, so the test confirms it (grace period 0), as the kubelet of a gone node would be
    replaced by the pod garbage collector.
    """
    deadline = time.monotonic() + timeout
    while True:
        for pod in await client.list_all(PODS, namespace):
            if pod["metadata"].get("deletionTimestamp"):
                with contextlib.suppress(NotFound):
                    await client.delete(
                        PODS, pod["metadata"]["name"], namespace, grace_period_seconds=0
                    )
        left = await _workload_names(client, namespace)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.2)


class WsRig:
    """Workspace controllers and Workspaces of one test, in a namespace of its own."""

    def __init__(self, client: Client, prov: Rig, namespace: str) -> None:
        self.client = client
        self.prov = prov
        self.emulator = prov.emulator
        self.namespace = namespace
        self.test_id = prov.test_id
        self.controller: WorkspaceController | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the controller ---------------------------------------------------------------------

    def start(self, provisioning: Provisioning | None = None) -> WorkspaceController:
        assert self._task is None, "stop or kill the running controller first"
        self.controller = WorkspaceController(
            self.client,
            provisioning=provisioning,
            catalog=load_catalog().with_image_registry(IMAGE_REGISTRY),
            manager_options=ManagerOptions(
                component="workspace-controller",
                namespace=self.namespace,
                metrics_bind_address="0",
                health_probe_bind_address="0",
                graceful_shutdown_timeout=5,
            ),
        )
        self._task = asyncio.create_task(self.controller.run(), name="workspace-controller")
        return self.controller

    async def stop(self) -> None:
        if self._task is None:
            return
        assert self.controller is not None
        self.controller.stop()
        try:
            async with asyncio.timeout(15):
                await self._task
        finally:
            self._task = None

    async def kill(self) -> None:
        """Cancel the controller wherever it is (the closest an asyncio test gets to kill -9)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    # -- Workspaces -------------------------------------------------------------------------

    def body(
        self,
        name: str,
        *,
        count: int = 1,
        instance_type: str = "Standard_NC6s_v3",
        preset: str = "phi-3-mini-4k-instruct",
    ) -> Obj:
        """The quick start's Workspace, selecting this test's nodes."""
        return {
            "apiVersion": WORKSPACES_V1ALPHA1.api_version,
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": self.namespace},
            "resource": {
                "instanceType": instance_type,
                "count": count,
                "labelSelector": {"matchLabels": {"apps": name, "kaito-test": self.test_id}},
            },
            "inference": {"preset": {"name": preset}},
        }

    async def create(self, name: str, **kw: Any) -> Obj:
        return await self.client.create(WORKSPACES_V1ALPHA1, self.body(name, **kw))

    async def get(self, name: str) -> Obj | None:
        try:
            return await self.client.get(WORKSPACES, name, self.namespace)
        except NotFound:
            return None

    async def wait(
        self, name: str, until: Callable[[Obj | None], bool], *, timeout: float = 30.0
    ) -> Obj | None:
        return await poll_until(
            lambda: self.get(name), until, timeout=timeout, what=f"workspace {name}"
        )

    async def wait_resource_ready(self, name: str, timeout: float = 30.0) -> Obj:
        ws = await self.wait(name, lambda w: is_true(w, "ResourceReady"), timeout=timeout)
        assert ws is not None
        return ws

    async def delete(self, name: str, *, wait: bool = True, timeout: float = 30.0) -> None:
        with contextlib.suppress(NotFound):
            await self.client.delete(WORKSPACES, name, self.namespace)
        if wait:
            await self.wait(name, lambda w: w is None, timeout=timeout)

    async def machines(self) -> list[Obj]:
        return await self.prov.my_machines()

    async def events(self, name: str) -> list[Obj]:
        page = await self.client.list(
            EVENTS, self.namespace, field_selector=f"involvedObject.name={name}"
        )
        return list(page["items"])

    async def wait_event(self, name: str, reason: str, timeout: float = 10.0) -> Obj:
        async with asyncio.timeout(timeout):
            while True:
                for event in await self.events(name):
                    if event["reason"] == reason:
                        return event
                await asyncio.sleep(0.1)


@pytest.fixture
async def wsrig(
    client: Client,
    workspace_crd: None,
    rig: Rig,  # noqa: F811 - the imported fixture
) -> AsyncIterator[WsRig]:
    namespace = f"wsc-{uuid.uuid4().hex[:8]}"
    await client.create(NAMESPACES, {"metadata": {"name": namespace}})
    await rig.start()
    r = WsRig(client, rig, namespace)
    try:
        yield r
        # Delete what the test left through running controllers: finalizers must run.
        left = await client.list_all(WORKSPACES, namespace)
        if left:
            if r._task is None:
                r.start()
            if rig._task is None:
                await rig.start()
            for ws in left:
                await r.delete(ws["metadata"]["name"], wait=False)
            deadline = time.monotonic() + 30
            while await client.list_all(WORKSPACES, namespace) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        assert await client.list_all(WORKSPACES, namespace) == [], "leaked Workspaces"
        assert await r.machines() == [], "leaked Machines"
        assert await workload_left(client, namespace) == {}, "leaked workload objects"
    finally:
        await r.stop()
        for ws in await client.list_all(WORKSPACES, namespace):  # never poison later tests
            with contextlib.suppress(NotFound):
                finalizers = [f for f in ws["metadata"].get("finalizers") or () if f != FINALIZER]
                await client.patch(
                    WORKSPACES,
                    ws["metadata"]["name"],
                    {"metadata": {"finalizers": finalizers}},
                    namespace,
                )
        with contextlib.suppress(NotFound):
            await client.delete(NAMESPACES, namespace)
