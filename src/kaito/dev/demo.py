"""``kaito dev demo``: the main job on the local stack, narrated step by step.

Today it provisions the GPU node a quick-start Workspace needs: a Machine for
Standard_NC6s_v3 (what the workspace controller creates for the quick start) goes through
the real gpu-provisioner, the real Azure SDK and the emulated AKS agent-pool API to a
registered, Ready Node with ``nvidia.com/gpu`` capacity. The Workspace itself takes over
this step when the workspace controller's reconcile flow lands.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from kaito.dev.controlplane import ControlPlaneState
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import NODES, Resource

MACHINES = Resource("karpenter.sh", "v1alpha5", "machines", "Machine", namespaced=False)
DEMO_MACHINE = "wsdemo0001"


def quick_start_machine() -> dict[str, Any]:
    """The Machine the workspace controller makes for the quick start's phi-3 Workspace."""
    return {
        "apiVersion": "karpenter.sh/v1alpha5",
        "kind": "Machine",
        "metadata": {
            "name": DEMO_MACHINE,
            "labels": {
                "karpenter.sh/provisioner-name": "default",
                "kaito.sh/workspace": "workspace-phi-3-mini",
                "kaito.sh/workspacenamespace": "default",
                "apps": "phi-3",
            },
        },
        "spec": {
            "machineTemplateRef": {"name": DEMO_MACHINE},
            "requirements": [
                {
                    "key": "node.kubernetes.io/instance-type",
                    "operator": "In",
                    "values": ["Standard_NC6s_v3"],
                },
                {"key": "karpenter.sh/provisioner-name", "operator": "In", "values": ["default"]},
                {"key": "kaito.sh/machine-type", "operator": "In", "values": ["gpu"]},
            ],
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
            "resources": {"requests": {"storage": "80Gi"}},
        },
    }


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions") or ()}


async def provision_quick_start_node(
    state: ControlPlaneState, *, say: Callable[[str], None], timeout: float = 90.0
) -> dict[str, Any]:
    async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
        try:
            await client.get(MACHINES, DEMO_MACHINE)
        except NotFound:
            await client.create(MACHINES, quick_start_machine())
        say(f"created Machine {DEMO_MACHINE} (Standard_NC6s_v3, as for the quick start's phi-3)")
        t0 = time.monotonic()
        seen: set[str] = set()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            machine = await client.get(MACHINES, DEMO_MACHINE)
            for ctype, status in _conditions(machine).items():
                if status == "True" and ctype not in seen:
                    seen.add(ctype)
                    say(f"  {ctype}=True after {time.monotonic() - t0:.1f}s")
                elif status == "False":
                    cond = next(c for c in machine["status"]["conditions"] if c["type"] == ctype)
                    if cond.get("reason") not in ("", None) and f"!{ctype}" not in seen:
                        seen.add(f"!{ctype}")
                        say(
                            f"  {ctype}=False {cond.get('reason')}: {cond.get('message', '')[:200]}"
                        )
            if "Ready" in seen:
                node = await client.get(NODES, machine["status"]["nodeName"])
                gpus = node["status"]["allocatable"].get("nvidia.com/gpu")
                say(f"node {node['metadata']['name']} is Ready with nvidia.com/gpu={gpus}")
                return node
            await asyncio.sleep(0.2)
    raise TimeoutError(f"Machine {DEMO_MACHINE} not Ready after {timeout:.0f}s")
