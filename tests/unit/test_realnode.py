"""kaito_dev.realnode without booting anything: input checks, generated configs, the OCI
image packing, and the device plugin's gRPC service over a real unix socket.

The kubelet side of the device plugin (registration, allocation into a real pod) is
covered by tests/integration/realnodes.
"""

from __future__ import annotations

import json
import re
import tarfile
import threading
import tomllib
from pathlib import Path

import grpc
import pytest

from kaito_dev.realnode import deviceplugin, node
from kaito_dev.realnode.images import tiny_image, write_oci_archive


def _boot_args(**over: object) -> dict[str, object]:
    args: dict[str, object] = {
        "labels": {"a": "b"},
        "taints": [],
        "pod_cidr": "10.244.3.0/24",
        "gpus": 1,
        "kubeconfig": "/nonexistent",
        "base_dir": Path("/nonexistent"),
    }
    return {**args, **over}


@pytest.mark.parametrize(
    ("name", "over", "field"),
    [
        ("Bad_Name", {}, "name"),
        ("n1", {"pod_cidr": "10.1.0.0/24"}, "pod_cidr"),
        ("n1", {"pod_cidr": "not-a-cidr"}, "pod_cidr"),
        ("n1", {"gpus": -1}, "gpus"),
        ("n1", {"labels": {"a": "b,c=d"}}, "labels['a']"),
        ("n1", {"taints": ["nokey"]}, "taints[0]"),
        ("n1", {"taints": [{"key": "k", "effect": "Sometimes"}]}, "taints[0].effect"),
    ],
)
def test_boot_rejects_bad_input_naming_the_field(
    name: str, over: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        node.boot(name, **_boot_args(**over))  # type: ignore[arg-type]


def test_taints_accept_flag_and_api_forms() -> None:
    taints = node._taints(["sku=gpu:NoSchedule", {"key": "k", "effect": "NoExecute"}])
    assert [t.flag() for t in taints] == ["sku=gpu:NoSchedule", "k:NoExecute"]


def _node(tmp_path: Path) -> node.RealNode:
    return node.RealNode(
        name="aks-gpu-1",
        dir=str(tmp_path / "aks-gpu-1"),
        run_dir="/run/kaito-node/aks-gpu-1",
        pod_cidr="10.244.7.0/24",
        bridge=node.bridge_name("aks-gpu-1"),
        gpus=2,
        kubeconfig="/k",
        kubelet_port=12345,
        labels={"kubernetes.azure.com/agentpool": "gpu"},
        taints=["sku=gpu:NoSchedule"],
    )


def test_containerd_config_has_the_required_cri_settings(tmp_path: Path) -> None:
    n = _node(tmp_path)
    config = tomllib.loads(node.containerd_config(n, registry_dir=tmp_path / "certs.d"))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == node.PAUSE_IMAGE
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["cni"]["conf_dir"] == f"{n.dir}/cni/net.d"
    assert cri["registry"]["config_path"] == str(tmp_path / "certs.d")
    assert config["grpc"]["address"] == "/run/kaito-node/aks-gpu-1/containerd.sock"
    assert len(config["grpc"]["address"]) < 108  # a unix socket path's limit


def test_cni_conflist_and_kubelet_flags(tmp_path: Path) -> None:
    n = _node(tmp_path)
    conflist = node.cni_conflist(n)
    bridge = conflist["plugins"][0]
    assert bridge["bridge"] == n.bridge and len(n.bridge) <= 15  # IFNAMSIZ
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.7.0/24"}]]
    args = node.kubelet_args(n, Path("/bin"))
    assert "--hostname-override=aks-gpu-1" in args
    assert "--cgroup-root=/aks-gpu-1" in args
    assert "--node-labels=kubernetes.azure.com/agentpool=gpu" in args
    assert "--register-with-taints=sku=gpu:NoSchedule" in args
    assert not [a for a in args if a.startswith("--cluster-d")]  # no DNS server: none named
    n.cluster_dns = "10.1.2.3"
    args = node.kubelet_args(n, Path("/bin"))
    assert {"--cluster-dns=10.1.2.3", "--cluster-domain=cluster.local"} <= set(args)


def test_registry_hosts_toml_points_at_the_local_registry_over_http(tmp_path: Path) -> None:
    node.write_registry_hosts(tmp_path, "127.0.0.1:5000", ["mcr.microsoft.com"])
    for host in ("127.0.0.1:5000", "mcr.microsoft.com"):
        hosts = tomllib.loads((tmp_path / host / "hosts.toml").read_text())
        assert hosts["server"] == "http://127.0.0.1:5000"


def test_tiny_image_is_reproducible_and_its_archive_names_it(tmp_path: Path) -> None:
    binary = tmp_path / "tiny"
    binary.write_bytes(b"\x7fELF not really")
    a = tiny_image(binary, entrypoint=["/tiny", "pause"])
    b = tiny_image(binary, entrypoint=["/tiny", "pause"])
    assert a.digest == b.digest
    config = json.loads(a.config)
    assert config["config"]["Entrypoint"] == ["/tiny", "pause"]
    archive = write_oci_archive(a, "kaito.local/pause:tiny", tmp_path / "pause.tar")
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        names = set(tar.getnames())
    annotations = index["manifests"][0]["annotations"]
    assert annotations["io.containerd.image.name"] == "kaito.local/pause:tiny"
    assert f"blobs/sha256/{a.digest.split(':')[1]}" in names


def test_device_plugin_serves_devices_and_allocates_the_emulated_gpu_env(tmp_path: Path) -> None:
    stopping = threading.Event()
    plugin = deviceplugin.GpuPlugin(2, stopping)
    socket = tmp_path / "dp.sock"
    server = deviceplugin._serve(plugin, socket)
    protos = deviceplugin.protos
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = deviceplugin.services.DevicePluginStub(channel)
            options = stub.GetDevicePluginOptions(protos.Empty(), timeout=5)
            assert options.get_preferred_allocation_available
            stream = stub.ListAndWatch(protos.Empty(), timeout=5)
            devices = next(iter(stream)).devices
            assert [(d.ID, d.health) for d in devices] == [
                ("emulated-gpu-0", "Healthy"),
                ("emulated-gpu-1", "Healthy"),
            ]
            stream.cancel()
            preferred = stub.GetPreferredAllocation(
                protos.PreferredAllocationRequest(
                    container_requests=[
                        protos.ContainerPreferredAllocationRequest(
                            available_deviceIDs=["emulated-gpu-0", "emulated-gpu-1"],
                            must_include_deviceIDs=["emulated-gpu-1"],
                            allocation_size=1,
                        )
                    ]
                ),
                timeout=5,
            )
            assert list(preferred.container_responses[0].deviceIDs) == ["emulated-gpu-1"]
            allocated = stub.Allocate(
                protos.AllocateRequest(
                    container_requests=[
                        protos.ContainerAllocateRequest(
                            devicesIDs=["emulated-gpu-0", "emulated-gpu-1"]
                        )
                    ]
                ),
                timeout=5,
            )
            envs = dict(allocated.container_responses[0].envs)
            assert envs == {
                "NVIDIA_VISIBLE_DEVICES": "emulated-gpu-0,emulated-gpu-1",
                "KAITO_EMULATED_GPU": "cpu",
                "VLLM_CPU_KVCACHE_SPACE": "2",
            }
            with pytest.raises(grpc.RpcError) as err:
                stub.Allocate(
                    protos.AllocateRequest(
                        container_requests=[protos.ContainerAllocateRequest(devicesIDs=["gpu-9"])]
                    ),
                    timeout=5,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stopping.set()
        server.stop(0)


def test_an_aks_node_registers_with_the_labels_a_kubelet_may_set_and_gets_the_rest_patched() -> (
    None
):
    from kaito_dev.aks.nodes import build_node
    from kaito_dev.aks.realnodes import kubelet_labels

    node = build_node(
        subscription_id="s",
        resource_group="rg",
        cluster="c",
        location="eastus",
        pool="gpu",
        index=0,
        properties={"vmSize": "Standard_NC6s_v3", "nodeLabels": {"apps": "phi-3"}},
        ip="0.0.0.0",
        ready=False,
    )
    own, later = kubelet_labels(node["metadata"]["labels"])
    assert later == {"kubernetes.io/role": "agent", "node-role.kubernetes.io/agent": ""}
    assert own["apps"] == "phi-3"
    assert own["kubernetes.azure.com/agentpool"] == "gpu"
    assert own["node.kubernetes.io/instance-type"] == "Standard_NC6s_v3"
    assert own["kubernetes.azure.com/accelerator"] == "nvidia"
    assert set(own) | set(later) == set(node["metadata"]["labels"])


def test_the_kubelet_carries_the_provider_id_and_each_node_has_its_own_disk(tmp_path: Path) -> None:
    from kaito_dev.realnode.node import PRIVATE_MOUNTS, RealNode, kubelet_args

    real = RealNode(
        name="aks-gpu-1-vmss000000",
        dir=str(tmp_path),
        run_dir="/run/kaito-node/x",
        pod_cidr="10.244.1.0/24",
        bridge="kbr-1",
        gpus=1,
        kubeconfig="/k",
        kubelet_port=1,
        provider_id="azure:///subscriptions/s/x/virtualMachines/0",
    )
    assert "--provider-id=azure:///subscriptions/s/x/virtualMachines/0" in kubelet_args(
        real, tmp_path
    )
    assert PRIVATE_MOUNTS["disk/kaito"] == "/var/lib/kaito"
