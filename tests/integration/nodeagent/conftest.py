"""The node agent's test rig: a real apiserver, scheduler and controller-manager, one
GPU Node shaped like the AKS emulator's, and a `NodeAgent` running in this process.

- ``nodeagent_state``: one state folder per session (the tiny stand-in model is built
  once and shared by the tests).
- ``stand_in_hub_root``: the hub emulator's repos, once per session: that stand-in model
  under every preset's repo at its pinned revision, as `kaito dev up` publishes it.
- ``narig``: a namespace of its own, a Ready GPU Node (``Standard_NC6s_v3``, taint
  ``sku=gpu:NoSchedule``) labelled ``kaito-test=<id>``, a hub emulator of its own on
  those repos (``rig.hub``: its request log is this test's), and an agent serving only
  that Node whose weights fetches download from that hub. Teardown deletes the
  namespace's workloads through the running agent, then asserts that no pod, no process
  started by the agent and no Node is left.

Needs ``.venv-inference`` (the images' interpreter): it fails, not skips, without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import (
    DEPLOYMENTS,
    JOBS,
    NAMESPACES,
    NODES,
    PODS,
    SERVICEACCOUNTS,
)
from kaito_dev.aks.nodes import build_node
from kaito_dev.hfhub import HubEmulator
from kaito_dev.hfhub.presets import publish_stand_in
from kaito_dev.hfhub.store import HubStore
from kaito_dev.nodeagent import DEFAULT_PYTHON, NodeAgent
from kaito_dev.nodeagent.agent import PYTHONPATH
from kaito_dev.nodeagent.env import CPU_ENV
from kaito_dev.nodeagent.model import StandInModel
from kaito_dev.nodeagent.process import orphans
from tests.integration.polling import poll_until

Obj = dict[str, Any]

GPU_TOLERATIONS = [
    {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]


def agent_processes(state_dir: Path) -> list[tuple[int, str]]:
    """Live processes of an agent on ``state_dir``: by inherited environment (`orphans`)
    or by a command line that mentions the folder (the stand-in model's path)."""
    pids = set(orphans(state_dir))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if str(state_dir) in cmdline and ") Z " not in stat:
            pids.add(int(entry.name))
    return [(pid, _cmdline(pid)) for pid in sorted(pids)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


@pytest.fixture(scope="session")
def nodeagent_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path(DEFAULT_PYTHON).exists():
        pytest.fail(
            f"{DEFAULT_PYTHON} is missing: the node agent runs the images with it "
            "(make test builds .venv-inference)",
            pytrace=False,
        )
    return tmp_path_factory.mktemp("node-agent")


@pytest.fixture(scope="session")
async def stand_in_hub_root(
    nodeagent_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The stand-in model (the agent's own, built here once) under every preset's repo."""
    model = StandInModel(
        nodeagent_state / "tiny-model",
        python=DEFAULT_PYTHON,
        env={**CPU_ENV, "PYTHONPATH": PYTHONPATH},
    )
    root = tmp_path_factory.mktemp("hf-hub")
    publish_stand_in(HubStore(root), await model.ensure())
    return root


class NodeAgentRig:
    def __init__(
        self,
        client: Client,
        namespace: str,
        node: str,
        test_id: str,
        state: Path,
        hub: HubEmulator,
    ):
        self.client = client
        self.namespace = namespace
        self.node = node
        self.test_id = test_id
        self.state = state
        self.hub = hub
        self.selector = f"kaito-test={test_id}"
        self.agent = self._new_agent()
        self.task: asyncio.Task[None] | None = None

    @property
    def node_disk(self) -> Path:
        """The emulated node's own disk (its ``/var/lib/kaito`` hostPaths)."""
        return self.state / "node-disk" / self.node

    def _new_agent(self, python: str = DEFAULT_PYTHON) -> NodeAgent:
        return NodeAgent(
            self.client,
            state_dir=self.state,
            python=python,
            node_selector=self.selector,
            restart_backoff=0.5,
            max_grace=5.0,
            hf_endpoint=self.hub.url,
        )

    def start(self, *, python: str = DEFAULT_PYTHON) -> None:
        """Start a fresh in-process agent (the previous one must be stopped)."""
        assert self.task is None or self.task.done()
        self.agent = self._new_agent(python)
        self.task = asyncio.create_task(self.agent.run())

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.agent.stop()
            await asyncio.wait_for(self.task, 30)

    async def pods(self) -> list[Obj]:
        return (await self.client.list(PODS, self.namespace)).get("items") or []

    async def pod_of(self, label: str, value: str) -> Obj | None:
        items = (
            await self.client.list(PODS, self.namespace, label_selector=f"{label}={value}")
        ).get("items") or []
        return items[0] if items else None


async def _default_service_account(client: Client, namespace: str) -> None:
    async def read() -> Obj | None:
        try:
            return await client.get(SERVICEACCOUNTS, "default", namespace)
        except NotFound:
            return None

    await poll_until(read, lambda sa: sa is not None, timeout=30, what="default ServiceAccount")


@pytest.fixture
async def narig(
    client: Client, nodeagent_state: Path, stand_in_hub_root: Path
) -> AsyncIterator[NodeAgentRig]:
    test_id = uuid.uuid4().hex[:8]
    namespace = f"na-{test_id}"
    await client.create(NAMESPACES, {"metadata": {"name": namespace}})
    node = build_node(
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group="rg",
        cluster=f"na{test_id}",
        location="eastus",
        pool=f"na{test_id}"[:12],
        index=0,
        properties={
            "vmSize": "Standard_NC6s_v3",
            "nodeTaints": ["sku=gpu:NoSchedule"],
            "nodeLabels": {"kaito-test": test_id},
        },
        ip="10.224.0.4",
        ready=True,
    )
    name = node["metadata"]["name"]
    await client.create(NODES, node)
    # The apiserver taints every new Node not-ready; the node lifecycle controller (not
    # running here) would lift it once Ready, as the emulator does.
    created = await client.get(NODES, name)
    created["spec"]["taints"] = [
        t for t in created["spec"].get("taints") or () if t["key"] != "node.kubernetes.io/not-ready"
    ]
    await client.update(NODES, created)
    await _default_service_account(client, namespace)
    hub = HubEmulator(stand_in_hub_root)
    await hub.start()
    rig = NodeAgentRig(client, namespace, name, test_id, nodeagent_state, hub)
    rig.start()
    try:
        yield rig
        # Clean up through the running agent, as a cluster would.
        for res in (DEPLOYMENTS, JOBS):
            for obj in (await client.list(res, namespace)).get("items") or ():
                with contextlib.suppress(NotFound):
                    await client.delete(
                        res, obj["metadata"]["name"], namespace, propagation_policy="Background"
                    )
        for pod in await rig.pods():
            with contextlib.suppress(NotFound):
                await client.delete(PODS, pod["metadata"]["name"], namespace)
        await poll_until(
            lambda: _as_obj(rig.pods()),
            lambda o: not (o or {}).get("items"),
            timeout=60,
            what="the namespace's pods going away",
            interval=0.2,
        )
        assert not rig.agent.workers, f"workers left: {sorted(rig.agent.workers)}"
    finally:
        await rig.stop()
        await hub.stop()
        with contextlib.suppress(NotFound):
            await client.delete(NODES, name)
        with contextlib.suppress(NotFound):
            await client.delete(NAMESPACES, namespace)
    leaked = agent_processes(nodeagent_state)
    assert not leaked, f"processes left behind: {leaked}"
    assert not (nodeagent_state / "pods").exists() or not any(
        (nodeagent_state / "pods").iterdir()
    ), "pod folders left behind"


async def _as_obj(items: Any) -> Obj:
    return {"items": await items}
