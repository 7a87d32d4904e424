"""Real local nodes: containerd + kubelet 1.20.2 + an emulated-GPU device plugin per node,
and one kube-proxy per cluster (REAL-NODES.md).

- `boot` / `wait_ready` / `stop` / `check_torn_down` (`kaito_dev.realnode.node`): one node;
- `KubeProxy` (`kaito_dev.realnode.kubeproxy`): Services' ClusterIPs on the host;
- `HostState` (`kaito_dev.realnode.hoststate`): the host sysctls and iptables chains the
  kubelets and kube-proxy change, recorded before and restored after;
- `pause_archive` / `push_tiny` (`kaito_dev.realnode.images`): the sandbox image and a
  tiny test image, made from one static binary (``hack/tiny``);
- ``python -m kaito_dev.realnode.deviceplugin``: the device plugin itself.

Host tools (containerd, runc, CNI plugins, iptables, conntrack) come from
``hack/node-tools.sh``; kubelet and kube-proxy from ``hack/local-cluster.sh``.
"""

from kaito_dev.realnode.hoststate import HostState
from kaito_dev.realnode.images import PAUSE_IMAGE, pause_archive, push_tiny
from kaito_dev.realnode.kubeproxy import KubeProxy
from kaito_dev.realnode.node import (
    NodeBootError,
    NodeLeftovers,
    RealNode,
    boot,
    check_torn_down,
    leftovers,
    stop,
    stop_all,
    stop_and_check_all,
    wait_ready,
)

__all__ = [
    "PAUSE_IMAGE",
    "HostState",
    "KubeProxy",
    "NodeBootError",
    "NodeLeftovers",
    "RealNode",
    "boot",
    "check_torn_down",
    "leftovers",
    "pause_archive",
    "push_tiny",
    "stop",
    "stop_all",
    "stop_and_check_all",
    "wait_ready",
]
