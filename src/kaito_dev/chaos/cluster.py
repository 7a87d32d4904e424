"""The stack a chaos run kills: the local control plane and `kaito_dev.stack`'s processes.

The same processes as ``kaito dev up`` (etcd, kube-apiserver, controller-manager,
scheduler, the AKS emulator, the hub emulator, both controllers as their
ServiceAccounts, the node agent), with settings that keep a cycle short:

- the emulator creates a pool in 0.5 s and deletes one in 1.5 s (long enough for a kill
  to land mid-delete), on a fixed port and ``--dir`` so that a restarted emulator is the
  same AKS cluster (same URL, same CA, its pools and operations from its state file);
- the gpu-provisioner replaces a Machine whose Node has not joined after 8 s
  (``REGISTRATION_TIMEOUT_SECONDS``), re-issues a DELETE stalled for 10 s
  (``DELETE_STALL_SECONDS``), retries Azure errors from 1 s doubling to 4 s, and sweeps
  orphan pools every 10 s;
- no registry: the pods run on the node agent from local files.

`kill` SIGKILLs a component and reaps it; `restart` starts it again with its first
command line (the control plane's components keep their ports and data directory).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaito.runtime.client import Client, ClientConfig
from kaito_dev import identities
from kaito_dev.controlplane import ControlPlane, ControlPlaneState, free_port, stop_pids
from kaito_dev.stack import Stack, install_crds

__all__ = ["CONTROL_PLANE", "ChaosCluster"]

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")

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


class ChaosCluster:
    """``await ChaosCluster(dir, say=print).start()`` ... ``stop()``."""

    def __init__(self, data_dir: Path, *, say: Callable[[str], None]) -> None:
        self.data_dir = data_dir.resolve()
        self.say = say
        self.control_plane = ControlPlane(self.data_dir)
        self.state: ControlPlaneState | None = None
        self.stack: Stack | None = None
        self.arm_env: dict[str, str] = {}
        self._kubeconfigs: dict[str, str] = {}

    @property
    def kubeconfig(self) -> str:
        assert self.state is not None
        return self.state.kubeconfig

    async def start(self) -> None:
        self.state = await asyncio.to_thread(self.control_plane.start, progress=self.say)
        ids = self.data_dir / "identities"
        ids.mkdir(exist_ok=True)
        async with Client(await ClientConfig.from_kubeconfig(self.state.kubeconfig)) as client:
            crds = await install_crds(client)
            self.say(f"installed CRDs: {', '.join(crds)}")
            await asyncio.to_thread(identities.apply_identities, self.state.kubeconfig)
            for ident in identities.CONTROLLERS:
                self._kubeconfigs[ident.component] = await identities.service_account_kubeconfig(
                    client, self.state.kubeconfig, ident, ids / f"{ident.component}.kubeconfig"
                )
        stack = self.stack = Stack(self.state, say=self.say)
        self.arm_env = await asyncio.to_thread(
            stack.start_aks_emulator, create_latency=0.5, port=free_port(), extra=EMULATOR_ARGS
        )
        hub = stack.start_hf_hub(await stack.stand_in_model())
        stack.start_gpu_provisioner(
            self.arm_env, self._kubeconfigs["gpu-provisioner"], PROVISIONER_ENV
        )
        await asyncio.to_thread(
            stack.start_workspace_controller, self._kubeconfigs["workspace-controller"]
        )
        stack.start_node_agent(hub)

    def stop(self) -> None:
        if self.stack is not None and self.state is not None:
            stop_pids({n: p for n, p in self.state.pids.items() if n not in CONTROL_PLANE})
        self.control_plane.stop()

    # -- kill and restart ---------------------------------------------------------------------

    def kill(self, component: str) -> None:
        if component in CONTROL_PLANE:
            self.control_plane.kill(component)
        else:
            assert self.stack is not None
            self.stack.kill(component)

    def restart(self, component: str) -> None:
        if component in CONTROL_PLANE:
            self.control_plane.restart(component)
        else:
            assert self.stack is not None
            self.stack.restart(component)

    def alive(self) -> dict[str, bool]:
        """Every component: whether its process still runs (a crash is a finding)."""
        assert self.stack is not None
        procs = {**self.control_plane._procs, **self.stack.procs}
        return {name: p.poll() is None for name, p in procs.items()}

    def log(self, component: str) -> Path:
        return self.data_dir / "logs" / f"{component}.log"

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
