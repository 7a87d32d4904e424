"""A local cluster with two REAL nodes (containerd + kubelet + device plugin) and kube-proxy.

Its own control plane (the session's one runs without the node lifecycle and endpoint
controllers, which real kubelets need and simulated nodes must not get). Everything it
needs (containerd, runc, CNI plugins, kubelet, kube-proxy, root) must be there: it fails,
never skips.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kaito_dev.controlplane import ControlPlane, ControlPlaneState, ensure_binaries
from kaito_dev.realnode import (
    HostState,
    KubeProxy,
    RealNode,
    boot,
    pause_archive,
    push_tiny,
    stop,
    wait_ready,
)
from kaito_dev.registry import LocalRegistry

GPU_NODE = "aks-gpu-12345678-vmss000000"
CPU_NODE = "aks-sys-87654321-vmss000000"


def say(msg: str) -> None:
    print(f"[realnodes] {msg}", file=sys.stderr)


@dataclass
class RealCluster:
    plane: ControlPlaneState
    registry: LocalRegistry
    host: HostState
    proxy: KubeProxy
    image: str  # the tiny test image in the local registry
    nodes: dict[str, RealNode] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    logs: Path = Path()
    torn_down: bool = False

    def teardown(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        self.proxy.stop()
        for node in self.nodes.values():
            stop(node, keep_logs=self.logs / node.name)
        self.host.restore()


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    assert os.geteuid() == 0, "real nodes need root (mount namespaces, cgroups, bridges)"
    base = tmp_path_factory.mktemp("rn")
    t0 = time.monotonic()
    bin_dir = ensure_binaries(progress=say)
    for binary in ("kubelet", "kube-proxy"):
        assert (bin_dir / binary).exists(), f"{binary} missing in {bin_dir}"
    pause_archive()  # installs the host tools once per machine, builds the tiny binary
    plane = ControlPlane(base / "cp", bin_dir=bin_dir, real_nodes=True)
    state = plane.start(progress=say)
    registry = LocalRegistry(base / "registry").start()
    host = HostState.capture(base / "host-state.json")
    host.prepare()
    cluster = RealCluster(
        plane=state,
        registry=registry,
        host=host,
        proxy=KubeProxy(kubeconfig=state.kubeconfig, hostname=CPU_NODE, log_dir=base / "proxy"),
        image=push_tiny(registry.address),
        logs=base / "logs",
    )
    say(f"set-up (control plane, registry, image) {time.monotonic() - t0:.1f}s")
    specs = {
        GPU_NODE: dict(
            labels={"kubernetes.azure.com/agentpool": "gpu", "apps": "kaito-test"},
            taints=["sku=gpu:NoSchedule"],
            pod_cidr="10.244.1.0/24",
            gpus=2,
        ),
        CPU_NODE: dict(
            labels={"kubernetes.azure.com/agentpool": "sys"}, pod_cidr="10.244.2.0/24", gpus=0
        ),
    }

    def up(name: str) -> RealNode:
        node = boot(
            name,
            kubeconfig=state.kubeconfig,
            base_dir=base / "nodes",
            registry=registry.address,
            bin_dir=bin_dir,
            **specs[name],  # type: ignore[arg-type]
        )
        cluster.nodes[name] = node
        wait_ready(node, timeout=120)
        return node

    try:
        with ThreadPoolExecutor(2) as pool:
            for node in pool.map(up, specs):
                say(f"node {node.name} Ready {node.ready_after_s:.1f}s after boot")
                cluster.timings[f"boot->Ready {node.name}"] = node.ready_after_s or 0.0
        t1 = time.monotonic()
        cluster.proxy.start()
        cluster.timings["kube-proxy healthy"] = round(time.monotonic() - t1, 2)
        yield cluster
    finally:
        try:
            cluster.teardown()
        finally:
            registry.stop()
            plane.stop()
            say("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in cluster.timings.items()))
