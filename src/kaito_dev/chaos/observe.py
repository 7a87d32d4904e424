"""What a chaos run looks at: samples of the cluster and the emulator, and what they prove.

`Observer.sample` reads the Workspaces, Machines, Nodes (apiserver) and the agent pools
(the emulator's ``/_emulator/state``) at one moment; a sample taken while a component
is down is partial (the missing side is None) and only what was read is judged. The
judgements are pure functions of a sample:

- `duplicates`: two of something where one is allowed (more live Machines or agent
  pools labelled for a Workspace than its ``resource.count``, a pool with more Nodes
  than its ``count``, a pool for a Machine name that is not one of the Workspace's);
- `unexplained`: a condition that is not True and carries no reason;
- `stall_visible`: whether a Workspace that has not converged shows why, as a condition
  reason on itself or its Machines;
- `leftovers`: what of a deleted Workspace is still anywhere (apiserver objects, agent
  pools, Nodes, the node agent's pod folders).

Nodes are the user pools' (`GPU_NODES`): the system node, which runs the controllers,
is no Workspace's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kaito.api.machine import MACHINES
from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.runtime.client import Client
from kaito.runtime.errors import ApiError, NotFound
from kaito.runtime.meta import Obj
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NODES,
    PODS,
    SERVICES,
    STATEFULSETS,
)
from kaito_dev.chaos.cluster import GPU_NODES, ChaosCluster

__all__ = ["NS", "Observer", "Sample", "conditions", "duplicates", "stall_visible", "unexplained"]

NS = "default"
WS_LABEL = "kaito.sh/workspace"
AGENTPOOL_LABEL = "kubernetes.azure.com/agentpool"
UNAVAILABLE = (ApiError, OSError, aiohttp.ClientError, TimeoutError)
"""What a read raises while kube-apiserver or etcd is down or restarting."""

WORKLOADS = {
    "Deployment": DEPLOYMENTS,
    "StatefulSet": STATEFULSETS,
    "Service": SERVICES,
    "ConfigMap": CONFIGMAPS,
    "Pod": PODS,
}


@dataclass
class Sample:
    t: float
    """Seconds since the run began."""
    workspaces: dict[str, Obj] | None
    machines: list[Obj] | None
    nodes: list[Obj] | None
    pools: dict[str, Obj] | None
    """Pool name -> ``{"provisioningState", "nodes", "nodeLabels", "count"}``."""


def conditions(obj: Obj | None) -> list[Obj]:
    return list((obj or {}).get("status", {}).get("conditions") or ())


def condition(obj: Obj | None, ctype: str) -> Obj | None:
    return next((c for c in conditions(obj) if c.get("type") == ctype), None)


def is_true(obj: Obj | None, ctype: str) -> bool:
    cond = condition(obj, ctype)
    return cond is not None and cond.get("status") == "True"


def machines_of(sample: Sample, workspace: str) -> list[Obj]:
    return [
        m
        for m in sample.machines or ()
        if (m["metadata"].get("labels") or {}).get(WS_LABEL) == workspace
    ]


def duplicates(sample: Sample, counts: dict[str, int]) -> list[str]:
    """What exists twice in ``sample``; ``counts`` is each live Workspace's node count."""
    found = []
    if sample.machines is not None:
        for ws, count in counts.items():
            live = [
                m for m in machines_of(sample, ws) if not m["metadata"].get("deletionTimestamp")
            ]
            if len(live) > count:
                names = sorted(m["metadata"]["name"] for m in live)
                found.append(f"{ws}: {len(live)} live Machines for count {count}: {names}")
    if sample.pools is not None:
        for ws, count in counts.items():
            pools = [
                n
                for n, p in sample.pools.items()
                if (p.get("nodeLabels") or {}).get(WS_LABEL) == ws
                and p["provisioningState"] != "Deleting"
            ]
            if len(pools) > count:
                found.append(f"{ws}: {len(pools)} live agent pools for count {count}: {pools}")
        for name, p in sample.pools.items():
            if len(p.get("nodes") or ()) > int(p.get("count") or 1):
                found.append(f"pool {name}: {len(p['nodes'])} Nodes for count {p.get('count')}")
    if sample.nodes is not None:
        per_pool: dict[str, list[str]] = {}
        for node in sample.nodes:
            pool = (node["metadata"].get("labels") or {}).get(AGENTPOOL_LABEL)
            if pool:
                per_pool.setdefault(pool, []).append(node["metadata"]["name"])
        for pool, names in per_pool.items():
            want = int(((sample.pools or {}).get(pool) or {}).get("count") or 1)
            if len(names) > want:
                found.append(f"pool {pool}: Nodes {sorted(names)} for count {want}")
    return found


def unexplained(sample: Sample) -> list[str]:
    """Conditions that are not True and say no reason (on Workspaces and Machines)."""
    out = []
    objs: list[tuple[str, Obj]] = [
        (f"Workspace {n}", w) for n, w in (sample.workspaces or {}).items()
    ]
    objs += [(f"Machine {m['metadata']['name']}", m) for m in sample.machines or ()]
    for what, obj in objs:
        for cond in conditions(obj):
            if cond.get("status") != "True" and not cond.get("reason"):
                out.append(f"{what}: {cond.get('type')}={cond.get('status')} without a reason")
    return out


def stall_visible(sample: Sample, workspace: str, phase: str) -> tuple[bool, list[str]]:
    """Whether a stalled Workspace shows why; and the reasons it shows.

    Creating: a condition of the Workspace or of one of its Machines that is not True,
    with a reason. Deleting: a Machine's False condition with a reason (e.g.
    ``AgentPoolDeleteStalled``), or, with no Machine left, the Workspace's
    ``WorkspaceDeleting`` reason; a Workspace already gone is not stalled.
    """
    ws = (sample.workspaces or {}).get(workspace)
    machines = machines_of(sample, workspace)
    if phase == "create":
        if is_true(ws, "WorkspaceReady"):
            return True, []  # converged; the driver has not seen it yet
        reasons = [
            f"{c['type']}:{c['reason']}"
            for obj in [ws, *machines]
            for c in conditions(obj)
            if c.get("status") != "True" and c.get("reason")
        ]
        return bool(reasons), reasons
    if ws is None:
        return True, []
    reasons = [
        f"{c['type']}:{c['reason']}"
        for m in machines
        for c in conditions(m)
        if c.get("status") == "False" and c.get("reason")
    ]
    if not machines:
        deleting = condition(ws, "WorkspaceDeleting")
        if deleting and deleting.get("reason"):
            reasons.append(f"WorkspaceDeleting:{deleting['reason']}")
    return bool(reasons), reasons


def all_reasons(sample: Sample, workspace: str) -> set[str]:
    """Every condition reason on the Workspace and its Machines (any status)."""
    ws = (sample.workspaces or {}).get(workspace)
    return {
        str(c["reason"])
        for obj in [ws, *machines_of(sample, workspace)]
        for c in conditions(obj)
        if c.get("reason")
    }


@dataclass
class Observer:
    client: Client
    cluster: ChaosCluster
    samples: list[Sample] = field(default_factory=list)

    async def sample(self, t: float) -> Sample:
        workspaces = await _read(self.client.list_all(WORKSPACES_V1ALPHA1, NS))
        machines = await _read(self.client.list_all(MACHINES))
        nodes = await _read(self.client.list_all(NODES, label_selector=GPU_NODES))
        state = await _thread(self.cluster.emulator_state)
        pools = None if state is None else dict(state["pools"])
        s = Sample(
            t=t,
            workspaces=None
            if workspaces is None
            else {w["metadata"]["name"]: w for w in workspaces},
            machines=machines,
            nodes=nodes,
            pools=pools,
        )
        self.samples.append(s)
        return s

    async def leftovers(self, workspace: str, machine_names: Iterable[str]) -> list[str] | None:
        """What of ``workspace`` is left anywhere; None when something cannot be read now."""
        out: list[str] = []
        try:
            with contextlib.suppress(NotFound):
                await self.client.get(WORKSPACES_V1ALPHA1, workspace, NS)
                out.append(f"Workspace {workspace}")
            selector = f"{WS_LABEL}={workspace}"
            for m in await self.client.list_all(MACHINES, label_selector=selector):
                out.append(f"Machine {m['metadata']['name']}")
            for kind, resource in WORKLOADS.items():
                for obj in await self.client.list_all(resource, NS, label_selector=selector):
                    out.append(f"{kind} {obj['metadata']['name']}")
            pools = set(machine_names)
            for node in await self.client.list_all(NODES, label_selector=GPU_NODES):
                if node["metadata"]["labels"][AGENTPOOL_LABEL] in pools:
                    out.append(f"Node {node['metadata']['name']}")
        except UNAVAILABLE:
            return None
        state = await _thread(self.cluster.emulator_state)
        if state is None:
            return None
        out += [f"agent pool {n}" for n in state["pools"] if n in pools]
        out += [f"node-agent pod folder {p}" for p in self.cluster.node_agent_pods()]
        return out

    async def anything_left(self) -> list[str] | None:
        """The end of a run: any kaito object, agent pool, emulated Node or pod left."""
        out: list[str] = []
        try:
            out += [f"Workspace {w['metadata']['name']}" for w in await self.client.list_all(
                WORKSPACES_V1ALPHA1, NS)]  # fmt: skip
            out += [
                f"Machine {m['metadata']['name']}" for m in await self.client.list_all(MACHINES)
            ]
            for kind, resource in WORKLOADS.items():
                for obj in await self.client.list_all(resource, NS, label_selector=WS_LABEL):
                    out.append(f"{kind} {obj['metadata']['name']}")
            for node in await self.client.list_all(NODES, label_selector=GPU_NODES):
                out.append(f"Node {node['metadata']['name']}")
        except UNAVAILABLE:
            return None
        state = await _thread(self.cluster.emulator_state)
        if state is None:
            return None
        out += [f"agent pool {n}" for n in state["pools"]]
        out += [f"node-agent pod folder {p}" for p in self.cluster.node_agent_pods()]
        return out


async def _read(coro: Any) -> list[Obj] | None:
    try:
        return list(await coro)
    except UNAVAILABLE:
        return None


async def _thread(fn: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn)
