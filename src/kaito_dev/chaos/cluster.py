"""The stack a chaos run kills: the local control plane, KAITO installed in it as users
install it, and `kaito_dev.stack`'s emulators.

- the control plane (etcd, kube-apiserver, controller-manager, scheduler) as processes,
  listening on the host's address too (the pods' in-cluster config reaches it there);
- a **system node** (`kaito_dev.incluster.boot_system_node`: a real node, containerd +
  kubelet, labelled as an AKS system pool), kube-proxy, the local registry, and both
  controllers installed by ``kubectl apply -k`` of the local overlay of ``deploy/``
  (`kaito_dev.incluster.write_overlay`): two leader-elected replicas of each, as pods on
  the system node, from the controller image (built once, buildah's layers cached);
- the AKS emulator on the host's address (the pods' 127.0.0.1 is their own), on a fixed
  port and ``--dir`` so that a restarted emulator is the same AKS cluster (same URL, same
  CA, its pools and operations from its state file); it creates a pool in 0.5 s and
  deletes one in 1.5 s (long enough for a kill to land mid-delete); its VMs are Node
  objects only;
- the GPU side on the node agent, which runs the inference pods as local processes (a
  real GPU node would pull the inference image each cycle) and serves only the user
  pools' Nodes (``kubernetes.azure.com/mode!=system``), never the system node;
- the gpu-provisioner's settings that keep a cycle short (`PROVISIONER_ENV`, in its
  ConfigMap): it replaces a Machine whose Node has not joined after 8 s, re-issues a
  DELETE stalled for 10 s, retries Azure errors from 1 s doubling to 4 s, and sweeps
  orphan pools every 10 s. The leader election is ``deploy/``'s (15 s Lease, 10 s renew
  deadline, 2 s retry).

`kill` of a control-plane component or an emulator SIGKILLs its process and reaps it;
`restart` starts it again with its first command line (same ports, same data). `kill`
of a controller SIGKILLs the main process of its LEADER pod's container (the host PID
containerd reports for the container ID in the pod's status), as the OOM killer would:
the kubelet restarts the container and the other replica takes the Lease once it
expires; `restart` starts nothing, it waits until the Deployment has its two replicas
Ready again and a live process holds the Lease. `webhook_down` scales the workspace
controller's Deployment to zero (both replicas serve the webhook: killing one is no
outage) and `webhook_up` back to two. `alive` reports a controller as crashed when one
of its containers restarted more often than the plan killed it. `stop` stops
everything, the system node included, restores the host (sysctls, ``KUBE-*`` chains)
and returns what was left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaito.controllers.workspace.cli import HF_ENDPOINT_ENV
from kaito_dev import incluster
from kaito_dev.controlplane import (
    ControlPlane,
    ControlPlaneError,
    ControlPlaneState,
    free_port,
    stop_pids,
)
from kaito_dev.realnode.hoststate import HostState
from kaito_dev.stack import Stack, cache_dir, pod_reachable_address

__all__ = ["CONTROLLERS", "CONTROL_PLANE", "ChaosCluster"]

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class Controller:
    deployment: str
    lease: str


CONTROLLERS = {
    "workspace-controller": Controller("kaito-workspace-controller", "workspace-controller"),
    "gpu-provisioner": Controller("gpu-provisioner", "gpu-provisioner"),
}
"""The components that run as pods on the system node: their Deployment and Lease."""

PROVISIONER_ENV = {
    "REGISTRATION_TIMEOUT_SECONDS": "8",
    "DELETE_STALL_SECONDS": "10",
    "LAUNCH_BACKOFF_BASE_SECONDS": "1",
    "LAUNCH_BACKOFF_MAX_SECONDS": "4",
    "GC_INTERVAL_SECONDS": "10",
    "GC_MIN_AGE_SECONDS": "5",
}
"""The gpu-provisioner's settings in a chaos run (see the module docstring)."""

EMULATOR_ARGS = ("--delete-latency", "1.5", "--heartbeat-interval", "5")
GPU_NODES = "kubernetes.azure.com/agentpool,kubernetes.azure.com/mode!=system"
"""The Nodes the node agent serves: the emulator's user pools (KAITO's), not the system
node, whose real kubelet runs the controllers."""
RESTART_TIMEOUT = 150.0
"""How long `restart` waits for a controller: a restarted container may first sit out
the kubelet's crash-loop backoff (10 s, doubling for the same container), and the other
replica takes an unreleased Lease only after its 15 s."""


class ChaosCluster:
    """``await ChaosCluster(dir, say=print).start()`` ... ``stop()``."""

    def __init__(self, data_dir: Path, *, say: Callable[[str], None]) -> None:
        self.data_dir = data_dir.resolve()
        self.say = say
        self.address = pod_reachable_address()
        self.control_plane = ControlPlane(self.data_dir, real_nodes=True, pod_address=self.address)
        self.state: ControlPlaneState | None = None
        self.stack: Stack | None = None
        self.host: HostState | None = None
        self.system_node = ""
        self.arm_env: dict[str, str] = {}
        self._expected: dict[str, int] = {}
        """Controller pod name -> the restarts the plan caused (kills)."""
        self._killed: dict[str, tuple[str, int, str, float]] = {}
        """Controller -> (pod, its restartCount, the Lease holder, when) at the last kill."""
        self._crashed: set[str] = set()

    @property
    def kubeconfig(self) -> str:
        assert self.state is not None
        return self.state.kubeconfig

    async def start(self) -> None:
        self.state = await asyncio.to_thread(self.control_plane.start, progress=self.say)
        stack = self.stack = Stack(self.state, say=self.say)
        self.host = stack.prepare_real_nodes()
        registry = stack.start_registry(storage=cache_dir() / "registry")
        await asyncio.to_thread(stack.build_images, registry, ("controller",))
        hub = stack.start_hf_hub(await stack.stand_in_model(), host=self.address)
        stack.start_kube_proxy()
        self.arm_env = await asyncio.to_thread(
            stack.start_aks_emulator,
            create_latency=0.5,
            port=free_port(),
            extra=("--host", self.address, *EMULATOR_ARGS),
        )
        installed = await incluster.install_in_cluster(
            self.state,
            say=self.say,
            registry=registry,
            workspace_controller={HF_ENDPOINT_ENV: hub},
            arm_env=self.arm_env,
            provisioner_settings=PROVISIONER_ENV,
        )
        self.system_node = installed["system_node"]
        stack.start_node_agent(hub, node_selector=GPU_NODES)

    def stop(self) -> list[str]:
        """Stop everything and restore the host; what was left behind (empty: nothing)."""
        left: list[str] = []
        try:
            if self.state is not None:
                stop_pids({n: p for n, p in self.state.pids.items() if n not in CONTROL_PLANE})
                left += incluster.stop_system_node(self.data_dir)
            self.control_plane.stop()
        finally:
            if self.host is not None:  # after the kubelet and kube-proxy (they re-add chains)
                self.host.restore()
                left += [f"host: {x}" for x in self.host.leftovers()]
        return left

    # -- kill and restart ---------------------------------------------------------------------

    def kill(self, component: str) -> None:
        if component in CONTROLLERS:
            self._kill_leader(component)
        elif component in CONTROL_PLANE:
            self.control_plane.kill(component)
        else:
            assert self.stack is not None
            self.stack.kill(component)

    def restart(self, component: str) -> None:
        if component in CONTROLLERS:
            self._wait_restarted(component)
        elif component in CONTROL_PLANE:
            self.control_plane.restart(component)
        else:
            assert self.stack is not None
            self.stack.restart(component)

    def webhook_down(self) -> None:
        """Scale the workspace controller to zero and wait until none of its pods is left
        (a terminating replica still serves the webhook)."""
        deployment = CONTROLLERS["workspace-controller"].deployment
        self._kubectl("scale", f"deployment/{deployment}", "--replicas=0")
        deadline = time.monotonic() + RESTART_TIMEOUT
        while self._pods(deployment, terminating=True):
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{deployment}: pods still there after scaling to 0")
            time.sleep(0.2)

    def webhook_up(self) -> None:
        """Scale the workspace controller back to its two replicas and wait for them."""
        deployment = CONTROLLERS["workspace-controller"].deployment
        self._kubectl("scale", f"deployment/{deployment}", "--replicas=2")
        self._wait_restarted("workspace-controller")

    def alive(self) -> dict[str, bool]:
        """Every component: whether its process still runs, and for each controller
        whether no container of it restarted more often than the plan killed it (a
        crash is a finding)."""
        assert self.stack is not None
        procs = {**self.control_plane._procs, **self.stack.procs}
        alive = {name: p.poll() is None for name, p in procs.items()}
        for component, ctl in CONTROLLERS.items():
            pods = self._pods(ctl.deployment)
            crashed = [
                name for name, pod in pods.items()
                if _restarts(pod) > self._expected.get(name, 0)
            ]  # fmt: skip
            if crashed:
                self._crashed.add(component)
            alive[component] = not crashed
        return alive

    def log(self, component: str) -> Path:
        path = self.data_dir / "logs" / f"{component}.log"
        if component in CONTROLLERS:
            # The pods' logs, the previous container's included (what a crash said).
            out = []
            for name in self._pods(CONTROLLERS[component].deployment):
                for previous in (True, False):
                    proc = subprocess.run(
                        ["kubectl", f"--kubeconfig={self.kubeconfig}", "-n", incluster.NAMESPACE,
                         "logs", name, f"--previous={str(previous).lower()}", "--tail=40"],
                        capture_output=True, text=True, timeout=30, check=False,
                    )  # fmt: skip
                    which = "previous" if previous else "current"
                    out.append(f"--- {name} ({which} container)\n{proc.stdout}{proc.stderr}")
            path.write_text("\n".join(out))
        return path

    def _kill_leader(self, component: str) -> None:
        """SIGKILL the main process of the Lease holder's container, as the kernel's OOM
        killer would (the kubelet restarts the container)."""
        ctl = CONTROLLERS[component]
        deadline = time.monotonic() + 30
        while True:
            holder = self._holder(ctl.lease)
            pod = self._pods(ctl.deployment).get(holder.rsplit("_", 1)[0]) if holder else None
            status = _container(pod) if pod else None
            if status and "running" in (status.get("state") or {}) and status.get("containerID"):
                break
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{component}: no running leader to kill (Lease {holder})")
            time.sleep(0.2)
        assert pod is not None
        name = pod["metadata"]["name"]
        pid = incluster.container_pid(self.data_dir, str(status["containerID"]))
        restarts = _restarts(pod)
        os.kill(pid, signal.SIGKILL)
        self._expected[name] = max(self._expected.get(name, 0), restarts) + 1
        self._killed[component] = (name, restarts, holder or "", time.monotonic())
        self.say(f"  SIGKILLed {component} leader {name} (host pid {pid})")

    def _wait_restarted(self, component: str) -> None:
        """The Deployment back at two Ready replicas, the killed container restarted, and
        the Lease held by a live process (not the killed one): every part runs again."""
        ctl = CONTROLLERS[component]
        t0 = time.monotonic()
        killed, restarts, holder, t0 = self._killed.pop(component, ("", 0, "", t0))
        deadline = time.monotonic() + RESTART_TIMEOUT
        marks: dict[str, float] = {}
        while True:
            with contextlib.suppress(ControlPlaneError, subprocess.TimeoutExpired):
                pods = self._pods(ctl.deployment)
                ready = len(pods) == 2 and all(_pod_ready(p) for p in pods.values())
                back = killed not in pods or _restarts(pods[killed]) > restarts
                now = self._holder(ctl.lease)
                led = bool(now) and now != holder and now.rsplit("_", 1)[0] in pods
                for mark, reached in (("leader", led), ("Ready", ready and back)):
                    if reached:
                        marks.setdefault(mark, time.monotonic() - t0)
                if ready and back and led:
                    break
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{component}: not back to 2 Ready replicas with a leader after "
                    f"{RESTART_TIMEOUT:g}s"
                )
            time.sleep(0.3)
        self.say(
            f"  {component} back: {now.rsplit('_', 1)[0]} leads "
            f"{marks['leader']:.1f}s, both replicas Ready {marks['Ready']:.1f}s after "
            + ("the kill" if killed else "the scale-up / crash")
        )
        if component in self._crashed:  # reported by `alive`: counted from now on
            self._crashed.discard(component)
            self._expected.update({n: _restarts(p) for n, p in pods.items()})

    def _pods(self, deployment: str, *, terminating: bool = False) -> dict[str, dict[str, Any]]:
        """The Deployment's pods by name (those being deleted only with ``terminating``)."""
        selector = f"app.kubernetes.io/name={deployment}"
        pods = json.loads(self._kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
        return {
            p["metadata"]["name"]: p
            for p in pods
            if terminating or not p["metadata"].get("deletionTimestamp")
        }

    def _holder(self, lease: str) -> str:
        """The Lease's holderIdentity (``<pod>_<uuid>``); empty when none."""
        obj = json.loads(self._kubectl("get", "lease", lease, "-o", "json"))
        return str((obj.get("spec") or {}).get("holderIdentity") or "")

    def _kubectl(self, *args: str) -> str:
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", "-n", incluster.NAMESPACE, *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    # -- the emulator's own view ------------------------------------------------------------

    def emulator_state(self) -> dict[str, Any] | None:
        """``/_emulator/state`` (pools, faults), or None while the emulator is down."""
        try:
            return self._emulator("GET", "/_emulator/state")
        except OSError:
            return None

    def inject(self, fault: dict[str, Any]) -> None:
        self._emulator("POST", "/_emulator/faults", fault)

    def clear_faults(self) -> None:
        self._emulator("DELETE", "/_emulator/faults")

    def _emulator(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        ctx = ssl.create_default_context(cafile=self.arm_env["ARM_CA_BUNDLE"])
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.arm_env["ARM_BASE_URL"] + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            raw = resp.read()
        return dict(json.loads(raw)) if raw else {}

    # -- the node agent's own view -----------------------------------------------------------

    def node_agent_pods(self) -> list[str]:
        """The pod folders the node agent holds (one per pod it runs)."""
        pods = self.data_dir / "node-agent" / "pods"
        return sorted(p.name for p in pods.iterdir()) if pods.exists() else []


def _container(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The status of the pod's (only) container."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return dict(statuses[0]) if statuses else None


def _restarts(pod: dict[str, Any]) -> int:
    return int((_container(pod) or {}).get("restartCount") or 0)


def _pod_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or ()}
    return (pod.get("status") or {}).get("phase") == "Running" and conds.get("Ready") == "True"
