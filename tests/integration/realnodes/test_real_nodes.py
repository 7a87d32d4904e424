"""Two real nodes (containerd + kubelet 1.20.2 + emulated-GPU device plugin) and kube-proxy.

Real all the way: the real scheduler places a pod requesting ``nvidia.com/gpu`` on the
node whose device plugin advertises it, that node's kubelet pulls the image from a local
registry through containerd and starts it with the plugin's env; a ClusterIP answers on
the host through kube-proxy's iptables rules, and what they do not route is refused; the
teardown leaves nothing on the host.
The tests run in file order on one module-scoped cluster (conftest.py); the last one
tears it down and checks.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from kaito_dev.controlplane import SERVICE_CIDR
from kaito_dev.realnode import check_torn_down, leftovers
from kaito_dev.realnode.deviceplugin import EMULATED_GPU_ENV
from kaito_dev.realnode.hoststate import UNROUTED_CHAIN, reject_unrouted
from kaito_dev.realnode.node import BRIDGE_PREFIX, CLUSTER_CIDR

from .conftest import CPU_NODE, GPU_NODE, RealCluster

pytestmark = pytest.mark.cluster


def kubectl(cluster: RealCluster, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={cluster.plane.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def get(cluster: RealCluster, *args: str) -> Any:
    return json.loads(kubectl(cluster, "get", "-o", "json", *args))


def wait_running(cluster: RealCluster, pod: str, *, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = get(cluster, "pod", pod)
        statuses = obj["status"].get("containerStatuses", [])
        if obj["status"].get("phase") == "Running" and all(s.get("ready") for s in statuses):
            return obj
        time.sleep(0.2)
    events = kubectl(cluster, "get", "events", "--field-selector", f"involvedObject.name={pod}")
    raise AssertionError(
        f"pod {pod} not Running after {timeout:.0f}s: {obj.get('status')}\n{events}"
    )


def pulled_seconds(cluster: RealCluster, pod: str) -> float:
    """The kubelet's own measure, from its ``Pulled`` event: "... in 123.4ms" / "in 1.2s"."""
    events = get(cluster, "events", "--field-selector", f"involvedObject.name={pod},reason=Pulled")
    for event in events["items"]:
        m = re.search(r" in ([\d.]+)(ms|s)\b", event["message"])
        if m:
            return float(m[1]) / (1000 if m[2] == "ms" else 1)
    raise AssertionError(f"no Pulled event with a duration for {pod}: {events['items']}")


def test_nodes_are_ready_with_their_labels_taints_and_gpus(real_cluster: RealCluster) -> None:
    gpu, cpu = get(real_cluster, "node", GPU_NODE), get(real_cluster, "node", CPU_NODE)
    assert gpu["metadata"]["labels"]["kubernetes.azure.com/agentpool"] == "gpu"
    assert gpu["metadata"]["labels"]["apps"] == "kaito-test"
    assert gpu["metadata"]["labels"]["kubernetes.io/hostname"] == GPU_NODE
    assert cpu["metadata"]["labels"]["kubernetes.azure.com/agentpool"] == "sys"
    assert {"key": "sku", "value": "gpu", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    assert "taints" not in cpu["spec"], cpu["spec"]  # the not-ready taint was lifted
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in cpu["status"]["allocatable"]
    for node in (gpu, cpu):
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", ready
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_gpu_pod_runs_a_registry_image_and_learns_its_gpu_is_emulated(
    real_cluster: RealCluster,
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-env", "namespace": "default"},
        "spec": {
            "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu"}],
            "containers": [
                {
                    "name": "main",
                    "image": real_cluster.image,
                    "args": ["env"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }
    t0 = time.monotonic()
    kubectl(real_cluster, "create", "-f", "-", stdin=json.dumps(pod))
    obj = wait_running(real_cluster, "gpu-env")
    started = time.monotonic() - t0
    assert obj["spec"]["nodeName"] == GPU_NODE  # the only node advertising nvidia.com/gpu
    pull = pulled_seconds(real_cluster, "gpu-env")
    real_cluster.timings["GPU pod create->Running (incl. pull)"] = round(started, 2)
    real_cluster.timings["image pull (kubelet event)"] = pull
    print(f"[realnodes] pod start {started:.2f}s, image pull {pull:.3f}s", file=sys.stderr)

    deadline = time.monotonic() + 30
    logs = ""
    while EMULATED_GPU_ENV not in logs and time.monotonic() < deadline:
        logs = kubectl(real_cluster, "logs", "gpu-env")  # apiserver -> kubelet -> containerd
        time.sleep(0.2)
    env = dict(line.split("=", 1) for line in logs.splitlines() if "=" in line)
    assert env.get(EMULATED_GPU_ENV) == "cpu", logs
    assert env.get("NVIDIA_VISIBLE_DEVICES", "").startswith("emulated-gpu-"), logs
    assert len(env["NVIDIA_VISIBLE_DEVICES"].split(",")) == 1

    # A second GPU pod gets the node's other GPU; a third has none left and stays Pending.
    for name in ("gpu-2", "gpu-3"):
        pod["metadata"]["name"] = name
        kubectl(real_cluster, "create", "-f", "-", stdin=json.dumps(pod))
    wait_running(real_cluster, "gpu-2")
    time.sleep(1.0)
    pending = get(real_cluster, "pod", "gpu-3")
    assert pending["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in json.dumps(pending["status"]), pending["status"]


def test_cluster_ip_answers_on_the_host_through_kube_proxy(real_cluster: RealCluster) -> None:
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "nodeSelector": {"kubernetes.azure.com/agentpool": "sys"},
                "containers": [
                    {
                        "name": "web",
                        "image": real_cluster.image,
                        "args": ["http", ":8080"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": 8080},
                            "periodSeconds": 1,
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]
    t0 = time.monotonic()
    kubectl(
        real_cluster,
        "create",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": manifests}),
    )
    pod = wait_running(real_cluster, "web")
    assert pod["spec"]["nodeName"] == CPU_NODE
    real_cluster.timings["web pod create->Ready (image cached)"] = round(time.monotonic() - t0, 2)
    cluster_ip = get(real_cluster, "service", "web")["spec"]["clusterIP"]
    assert cluster_ip.startswith("10.96.")

    t1 = time.monotonic()
    deadline = t1 + 30
    answer, last = "", "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=2) as resp:
                answer = resp.read().decode()
                break
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
            time.sleep(0.2)
    assert answer.startswith("hello from web"), f"http://{cluster_ip}/: {last}"
    real_cluster.timings["ClusterIP answers after pod Ready"] = round(time.monotonic() - t1, 2)


def connect(ip: str, port: int) -> str:
    """What a TCP client meets at ``ip:port``: ``refused``, ``connected`` or the error."""
    with socket.socket() as sock:
        sock.settimeout(5)
        try:
            sock.connect((ip, port))
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            return repr(e)
        return "connected"


def test_what_kube_proxy_does_not_route_is_refused(real_cluster: RealCluster) -> None:
    """kube-proxy itself refuses a Service without endpoints. Without `reject_unrouted`
    the unallocated ClusterIP and the pod IP on no node would connect: this host's egress
    proxy answers any TCP connection (HTTP 404), where a real network drops the packet."""
    kubectl(
        real_cluster,
        "create",
        "service",
        "clusterip",
        "empty",
        "--tcp=80:8080",
    )
    empty_ip = get(real_cluster, "service", "empty")["spec"]["clusterIP"]
    taken = {s["spec"]["clusterIP"] for s in get(real_cluster, "services", "-A")["items"]}
    unallocated = next(
        str(ip) for ip in reversed(list(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        if str(ip) not in taken
    )  # fmt: skip
    no_bridge = str(CLUSTER_CIDR[250 * 256 + 9])  # on no node's subnet
    web_ip = get(real_cluster, "service", "web")["spec"]["clusterIP"]
    deadline = time.monotonic() + 30  # kube-proxy syncs the new Service (its REJECT)
    while connect(empty_ip, 80) != "refused" and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = {
        "Service without endpoints": connect(empty_ip, 80),
        "unallocated ClusterIP": connect(unallocated, 80),
        "unallocated ClusterIP, another port": connect(unallocated, 5000),
        "pod IP on no node": connect(no_bridge, 5000),
        "a routed ClusterIP": connect(web_ip, 80),
    }
    assert seen == {
        "Service without endpoints": "refused",
        "unallocated ClusterIP": "refused",
        "unallocated ClusterIP, another port": "refused",
        "pod IP on no node": "refused",
        "a routed ClusterIP": "connected",
    }
    # A restarted kube-proxy installs it again: still one jump per hook.
    reject_unrouted(SERVICE_CIDR, str(CLUSTER_CIDR), f"{BRIDGE_PREFIX}+")
    rules = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True)
    jumps = [ln for ln in rules.stdout.splitlines() if ln.endswith(f"-j {UNROUTED_CHAIN}")]
    assert sorted(jumps) == [f"-A FORWARD -j {UNROUTED_CHAIN}", f"-A OUTPUT -j {UNROUTED_CHAIN}"]
    kubectl(real_cluster, "delete", "service", "empty")


def test_teardown_leaves_nothing_on_the_host(real_cluster: RealCluster) -> None:
    nodes = list(real_cluster.nodes.values())
    t0 = time.monotonic()
    real_cluster.teardown()
    real_cluster.timings["teardown (2 nodes, kube-proxy, host)"] = round(time.monotonic() - t0, 2)
    for node in nodes:
        assert node.veths, f"{node.name}: stop saw no pod veths: the test ran no pods there?"
        check_torn_down(node)
        assert leftovers(node) == []
    assert real_cluster.host.leftovers() == []
    # The Node objects belong to whoever asked for the nodes: here, the test.
    kubectl(real_cluster, "delete", "node", GPU_NODE, CPU_NODE)
