"""`make chaos`'s short profile, in `make test`: five seeded cycles on a stack of its own
(a REAL system node: run under the shared lock, /tmp/kaito-realnodes.lock).

``kaito dev chaos --profile short`` starts its own control plane and installs both
controllers in it by ``kubectl apply -k`` of deploy/ (two leader-elected replicas each,
pods on a real system node, from the controller image); the GPU side runs on the node
agent. In five cycles it SIGKILLs each of the workspace controller's and the
gpu-provisioner's LEADER container (the kubelet restarts it, the other replica takes the
Lease), kube-apiserver, etcd and the AKS emulator (restarted) once, storms each ARM
fault kind once (throttle, 5xx, failed LRO, OperationNotAllowed, a node that never
joins) and takes the webhook down once (the workspace controller scaled to zero). It
exits non-zero when a cycle misses its convergence bound (120 s ready, 90 s deleted),
anything leaked or was duplicated, a stall showed no condition reason, a controller's
container restarted without a kill of the plan, or the host was not restored at the end;
the report names which. The seed is fixed so a failure here replays with the same plan
(``CHAOS_SEED`` picks another); the plan is printed at the start of the output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from kaito_dev import incluster
from kaito_dev.chaos.schedule import COMPONENTS, STORMS
from kaito_dev.realnode import hoststate
from kaito_dev.realnode.node import RUN_ROOT

SEED = int(os.environ.get("CHAOS_SEED", "1"))


async def test_short_chaos_converges_every_cycle_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.md"
    stack = tmp_path / "stack"
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "kaito_dev", "chaos", "--profile", "short",
            "--seed", str(SEED), "--dir", str(stack), "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    tail = output[-6000:]
    assert out.exists(), tail
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["problems"] == [], "\n".join(report["problems"]) + "\n" + tail
    assert proc.returncode == 0, tail
    cycles = report["cycles"]
    assert len(cycles) == 5
    assert {c["kill"]["component"] for c in cycles if c["kill"]} == set(COMPONENTS)
    assert {c["storm"]["kind"] for c in cycles if c["storm"]} == set(STORMS)
    outages = [c for c in cycles if c["webhook_down"]]
    assert outages and all(c["webhook_refusals"] > 0 for c in outages), outages
    assert all(c["create_seconds"] is not None and c["delete_seconds"] is not None for c in cycles)
    assert "| pass |" in out.read_text()
    # The controllers ran as pods: both installed by kubectl apply -k, each leader's
    # container SIGKILLed by its host PID.
    assert re.search(r"kubectl apply -k \S+kaito-install", output), tail
    for component, pod in (("workspace-controller", "kaito-workspace-controller"),
                           ("gpu-provisioner", "gpu-provisioner")):  # fmt: skip
        assert re.search(rf"SIGKILLed {component} leader {pod}-\S+ \(host pid \d+\)", output), tail
    # Nothing left on the host: the system node's state, its cgroups' processes, chains.
    assert "stopped system node aks-system-" in output, tail
    assert "LEFT BEHIND" not in output, tail
    assert not incluster.system_node_dir_for(stack).exists()
    assert not list(RUN_ROOT.glob("aks-system-*")), "system node state left in /run/kaito-node"
    assert hoststate.kube_chains() == [], "iptables chains left"
    assert not (stack / "host-state.json").exists(), "the host state record was not restored"
