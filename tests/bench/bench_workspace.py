"""`make bench-workspace`: how long KAITO itself takes, from `kubectl apply` to serving.

On the local stack (`kaito dev up`: real control plane, AKS emulator with a 0.5 s
agent-pool create latency, both controllers as processes under their ServiceAccounts,
the node agent running the inference server on CPU), it applies the quick start's
Workspace ``--runs`` times (each under a new name, deleted before the next) and records,
by polling the apiserver every 20 ms:

- apply -> Machine created, Node registered, Node Ready, ResourceReady, pod scheduled,
  inference server process started, pod Ready (server's /health), WorkspaceReady;
- KAITO's part: apply -> WorkspaceReady minus the inference server's own start-up
  (process start -> /health 200), which the model and GPU decide, not KAITO;
- Node Ready -> ResourceReady (the workspace controller's reaction; the emulated node
  registers NotReady and turns Ready 0.5 s later, as a kubelet does).

Then one 4-node Workspace: the spread of its four Machines' creation times (created all
at once, or one after another?) and apply -> ResourceReady, against one node's.

Prints a markdown table (and writes it to ``--out``) with medians and worst cases.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kaito.api.machine import MACHINES
from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import NODES, PODS
from kaito_dev.controlplane import REPO_ROOT, ControlPlaneState

QUICK_START = REPO_ROOT / "examples" / "kaito_workspace_phi_3.yaml"
NS = "default"
POLL = 0.02

Obj = dict[str, Any]


def say(msg: str) -> None:
    print(f"[bench-workspace {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _true(obj: Obj, ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True"
        for c in obj.get("status", {}).get("conditions") or ()
    )


async def _get(client: Client, name: str) -> Obj | None:
    try:
        return await client.get(WORKSPACES_V1ALPHA1, name, NS)
    except NotFound:
        return None


async def one_run(
    client: Client, name: str, *, count: int = 1, serve: bool = True
) -> dict[str, float]:
    body = yaml.safe_load(QUICK_START.read_text())
    body["metadata"]["name"] = name
    body["resource"]["labelSelector"]["matchLabels"]["apps"] = name
    body["resource"]["count"] = count
    selector = f"kaito.sh/workspace={name}"
    t0 = time.monotonic()
    await client.create(WORKSPACES_V1ALPHA1, body, NS)
    marks: dict[str, float] = {}

    def mark(key: str) -> None:
        marks.setdefault(key, time.monotonic() - t0)

    goal = "WorkspaceReady" if serve else "ResourceReady"
    while goal not in marks or (serve and "pod Ready" not in marks):
        if time.monotonic() - t0 > 300:
            raise TimeoutError(f"{name}: no {goal} after 300 s; saw {marks}")
        machines = (await client.list(MACHINES, label_selector=selector))["items"]
        if len(machines) >= count:
            mark("Machine created")
        pools = {m["metadata"]["name"] for m in machines}
        nodes = (await client.list(NODES))["items"]
        ours = [n for n in nodes if n["metadata"]["labels"].get("agentpool") in pools]
        if len(ours) >= count:
            mark("Node registered")
        if len(ours) >= count and all(_true(n, "Ready") for n in ours):
            mark("Node Ready")
        if serve:
            pods = (await client.list(PODS, NS, label_selector=selector))["items"]
            for pod in pods:
                if pod["spec"].get("nodeName"):
                    mark("pod scheduled")
                for cs in pod.get("status", {}).get("containerStatuses") or ():
                    if "running" in (cs.get("state") or {}):
                        mark("server process started")
                if _true(pod, "Ready"):
                    mark("pod Ready")
        ws = await _get(client, name)
        for ctype in ("ResourceReady", "InferenceReady", "WorkspaceReady"):
            if ws is not None and _true(ws, ctype):
                mark(ctype)
        await asyncio.sleep(POLL)
    if count > 1:
        created = sorted(
            datetime.fromisoformat(m["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
            for m in machines
        )
        marks["Machine creation spread"] = (created[-1] - created[0]).total_seconds()
    if serve:
        server = marks["pod Ready"] - marks["server process started"]
        marks["server start-up"] = server
        marks["KAITO's part"] = marks["WorkspaceReady"] - server
    marks["Node Ready -> ResourceReady"] = marks["ResourceReady"] - marks["Node Ready"]
    await client.delete(WORKSPACES_V1ALPHA1, name, NS)
    while await _get(client, name) is not None:
        await asyncio.sleep(0.1)
    return marks


ORDER = [
    "Machine created",
    "Node registered",
    "Node Ready",
    "ResourceReady",
    "pod scheduled",
    "server process started",
    "pod Ready",
    "InferenceReady",
    "WorkspaceReady",
    "server start-up",
    "KAITO's part",
    "Node Ready -> ResourceReady",
]


def table(runs: list[dict[str, float]], four: dict[str, float]) -> str:
    lines = [
        f"`make bench-workspace`, {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
        f"{len(runs)} runs of the quick start (Standard_NC6s_v3, phi-3-mini-4k-instruct on "
        "the tiny stand-in model), AKS emulator create latency 0.5 s, polled every 20 ms.",
        "",
        "| from apply (s) | median | worst |",
        "|---|---|---|",
    ]
    for key in ORDER:
        values = [r[key] for r in runs if key in r]
        if values:
            lines.append(f"| {key} | {statistics.median(values):.2f} | {max(values):.2f} |")
    lines += [
        "",
        "| 4-node Workspace | value (s) |",
        "|---|---|",
        f"| spread of the 4 Machines' creation times | {four['Machine creation spread']:.2f} |",
        f"| apply -> ResourceReady, 4 nodes | {four['ResourceReady']:.2f} |",
        f"| apply -> ResourceReady, 1 node (median above) | "
        f"{statistics.median(r['ResourceReady'] for r in runs):.2f} |",
    ]
    return "\n".join(lines) + "\n"


async def bench(state: ControlPlaneState, runs: int) -> str:
    async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
        # The webhook registers itself asynchronously: one warm-up run also builds the
        # stand-in model the node agent serves, so it is not counted.
        say("warm-up run (not counted)")
        await one_run(client, "bench-warmup")
        results = []
        for i in range(runs):
            r = await one_run(client, f"bench-{i}")
            say(f"run {i + 1}/{runs}: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.items()))
            results.append(r)
        say("4-node Workspace (to ResourceReady)")
        four = await one_run(client, "bench-four", count=4, serve=False)
        say(", ".join(f"{k} {v:.2f}s" for k, v in four.items()))
    return table(results, four)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dir", type=Path, default=Path(".kaito/bench-workspace"))
    p.add_argument("--out", type=Path, default=Path(".kaito/bench-workspace.md"))
    args = p.parse_args()
    kaito = [sys.executable, "-m", "kaito_dev"]
    say("starting the local stack (kaito dev up)")
    subprocess.run([*kaito, "up", "--dir", str(args.dir)], check=True)
    try:
        state = ControlPlaneState.load(args.dir.resolve())
        report = asyncio.run(bench(state, args.runs))
    finally:
        subprocess.run([*kaito, "down", "--dir", str(args.dir)], check=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
