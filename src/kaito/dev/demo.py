"""``kaito dev demo``: the main job on the local stack, narrated step by step.

It applies the quick start's Workspace (``examples/kaito_workspace_phi_3.yaml``:
phi-3-mini-4k-instruct on Standard_NC6s_v3) through the validating webhook. The
workspace controller creates the Machine; the gpu-provisioner turns it into an AKS agent
pool through the real Azure SDK against the emulated ARM API, which registers a GPU
Node; the controller labels the node and sets ``ResourceReady``. Serving (inference
pods on a node agent, ``/chat``) comes with the rest of the workspace controller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import yaml

from kaito.dev.controlplane import REPO_ROOT, ControlPlaneState
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import NODES, Resource

QUICK_START = REPO_ROOT / "examples" / "kaito_workspace_phi_3.yaml"
WORKSPACES = Resource("kaito.sh", "v1alpha1", "workspaces", "Workspace")
MACHINES = Resource("karpenter.sh", "v1alpha5", "machines", "Machine", namespaced=False)


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or ()}


async def run_quick_start(
    state: ControlPlaneState, *, say: Callable[[str], None], timeout: float = 120.0
) -> dict[str, Any]:
    """Apply the quick start's Workspace and narrate it to ResourceReady; return the Node."""
    body = yaml.safe_load(QUICK_START.read_text())
    name, ns = body["metadata"]["name"], body["metadata"].get("namespace", "default")
    async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
        try:
            await client.get(WORKSPACES, name, ns)
        except NotFound:
            await _create_when_webhook_answers(client, body, ns)
        say(f"applied {QUICK_START.relative_to(REPO_ROOT)} (workspace {ns}/{name})")
        t0 = time.monotonic()
        told: set[str] = set()
        while time.monotonic() - t0 < timeout:
            for m in (await client.list(MACHINES, label_selector=f"kaito.sh/workspace={name}"))[
                "items"
            ]:
                key = f"machine {m['metadata']['name']}"
                if key not in told:
                    told.add(key)
                    say(f"  Machine {m['metadata']['name']} created by the workspace controller")
                for ctype, cond in _conditions(m).items():
                    tag = f"{key} {ctype}={cond['status']}"
                    if cond["status"] == "True" and tag not in told:
                        told.add(tag)
                        say(f"  Machine {ctype}=True after {time.monotonic() - t0:.1f}s")
            ws = await client.get(WORKSPACES, name, ns)
            for ctype, cond in _conditions(ws).items():
                tag = f"ws {ctype}={cond['status']}:{cond.get('reason')}"
                if tag not in told and ctype in ("MachineReady", "ResourceReady"):
                    told.add(tag)
                    say(f"  Workspace {ctype}={cond['status']} ({cond.get('reason')}): "
                        f"{cond.get('message', '')[:160]}")  # fmt: skip
            ready = _conditions(ws).get("ResourceReady", {}).get("status") == "True"
            nodes = ws.get("status", {}).get("workerNodes") or []
            if ready and nodes:
                node = await client.get(NODES, nodes[0])
                gpus = node["status"]["allocatable"].get("nvidia.com/gpu")
                accelerator = node["metadata"]["labels"].get("accelerator")
                say(f"node {nodes[0]} is Ready with nvidia.com/gpu={gpus}, "
                    f"labelled accelerator={accelerator}")  # fmt: skip
                return node
            await asyncio.sleep(0.2)
    raise TimeoutError(f"workspace {ns}/{name} not ResourceReady after {timeout:.0f}s")


async def _create_when_webhook_answers(client: Client, body: dict[str, Any], ns: str) -> None:
    """The apiserver picks up the webhook registration asynchronously: retry briefly."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.create(WORKSPACES, body, ns)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
