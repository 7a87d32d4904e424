"""``kaito dev up --controllers in-cluster``: KAITO installed as users install it.

Instead of running the two controllers as host processes, the stack

1. boots a **system node**: one more real node (containerd + kubelet, `kaito_dev.realnode`),
   no GPU, labelled like an AKS system pool (``kubernetes.azure.com/mode=system``,
   ``agentpool=system``), with no taint, so the controllers' pods land there (the GPU
   nodes carry ``sku=gpu:NoSchedule``). It is not an agent pool of the AKS emulator
   (whose pools are KAITO's), so it lives in a folder of its own (`system_node_dir_for`);
2. writes a **local overlay** (`write_overlay`) under the stack's folder that references
   ``deploy/`` unchanged and sets only what differs on this machine: the controller image
   from the stack's registry; the workspace controller's settings (image registry, Hugging
   Face endpoint, the plain-http pod registry: `RealNodes.workspace_controller_settings`)
   in its ConfigMap; the gpu-provisioner's ConfigMap pointing at the AKS emulator (listening on
   the host's address: a pod's 127.0.0.1 is its own), the emulator's CA (a ConfigMap
   mounted as a file) and the ARM token from a Secret (what workload identity provides
   on AKS);
3. runs ``kubectl apply -k <overlay>`` and waits until both Deployments have their two
   replicas Ready (`wait_installed`): each replica elects through its Lease in
   kaito-system, the workspace controller's first replica creates the webhook's
   certificate Secret and registers the ValidatingWebhookConfiguration, whose Service the
   apiserver on this host reaches through kube-proxy's ClusterIP rules.

The pods reach the apiserver the in-cluster way (``KUBERNETES_SERVICE_HOST``, the
mounted ServiceAccount token): the control plane listens on the host's address and
advertises it as the ``kubernetes`` Service's endpoint (`ControlPlane(pod_address=...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import ApiError, NotFound
from kaito.runtime.meta import Obj
from kaito.runtime.resource import DEPLOYMENTS, LEASES, NODES, PODS, Resource
from kaito_dev.controlplane import REPO_ROOT, ControlPlaneError, ControlPlaneState

__all__ = [
    "CONTROLLER_DEPLOYMENTS",
    "NAMESPACE",
    "Installed",
    "apply_overlay",
    "boot_system_node",
    "install_in_cluster",
    "system_node_dir_for",
    "system_node_labels",
    "system_node_name",
    "wait_installed",
    "write_overlay",
]

DEPLOY = REPO_ROOT / "deploy"
NAMESPACE = "kaito-system"
BASE_IMAGE = "ghcr.io/kaito-project/kaito-python/controller"
CONTROLLER_DEPLOYMENTS = {
    # Deployment -> its leader-election Lease
    "kaito-workspace-controller": "workspace-controller",
    "gpu-provisioner": "gpu-provisioner",
}
ARM_CREDENTIALS_SECRET = "gpu-provisioner-arm-credentials"
ARM_CA_CONFIGMAP = "aks-emulator-ca"
ARM_CA_MOUNT = "/etc/kaito/arm-ca"
SYSTEM_POOL = "system"
SYSTEM_VM_SIZE = "Standard_D4s_v3"
SYSTEM_POD_CIDR = "10.244.254.0/24"
"""The emulator hands out 10.244.1.0/24 upwards to its VMs; the system node takes the top."""


def _digest(state_dir: Path) -> str:
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def system_node_name(state_dir: Path) -> str:
    """``aks-system-<8 digits>-vmss000000``, as AKS names a system pool's first VM."""
    return f"aks-system-{int(_digest(state_dir), 16) % 10**8:08d}-vmss000000"


def system_node_dir_for(state_dir: Path) -> Path:
    """Beside the emulator's nodes (`kaito_dev.stack.node_dir_for`), not among them: a
    restarted emulator stops every node there that is not one of its pools."""
    from kaito_dev.stack import NODES_ROOT

    return NODES_ROOT / f"{_digest(state_dir)}-system"


def system_node_labels(*, cluster: str = "kaito-dev", location: str = "eastus") -> dict[str, str]:
    """An AKS system pool's node labels (the ones a kubelet sets and AKS's own)."""
    return {
        "agentpool": SYSTEM_POOL,
        "kubernetes.azure.com/agentpool": SYSTEM_POOL,
        "kubernetes.azure.com/mode": "system",
        "kubernetes.azure.com/role": "agent",
        "kubernetes.azure.com/cluster": f"MC_kaito-rg_{cluster}_{location}",
        "kubernetes.azure.com/os-sku": "Ubuntu",
        "node.kubernetes.io/instance-type": SYSTEM_VM_SIZE,
        "beta.kubernetes.io/instance-type": SYSTEM_VM_SIZE,
        "kubernetes.io/os": "linux",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/region": location,
        "topology.kubernetes.io/zone": "0",
        "kubernetes.io/role": "agent",
        "node-role.kubernetes.io/agent": "",
    }


def boot_system_node(
    state: ControlPlaneState, registry: str, *, cluster_dns: str = "", timeout: float = 120.0
) -> str:
    """Boot the system node, label it as AKS does and wait for Ready; returns its name."""
    from kaito_dev.aks.realnodes import kubelet_labels
    from kaito_dev.realnode import boot, wait_ready
    from kaito_dev.realnode.node import get_node

    state_dir = Path(state.data_dir)
    name = system_node_name(state_dir)
    own, later = kubelet_labels(system_node_labels())
    node = boot(
        name,
        labels=own,
        pod_cidr=SYSTEM_POD_CIDR,
        kubeconfig=state.kubeconfig,
        base_dir=system_node_dir_for(state_dir),
        registry=registry,
        cluster_dns=cluster_dns,
    )
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):  # URLError included
            if get_node(state.kubeconfig, name) is not None:
                break
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"system node {name} never registered")
        time.sleep(0.25)
    _kubectl(state.kubeconfig, "label", "--overwrite", f"node/{name}",
             *(f"{k}={v}" for k, v in later.items()))  # fmt: skip
    wait_ready(node, timeout=max(1.0, deadline - time.monotonic()))
    return name


def _kubectl(kubeconfig: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def write_overlay(
    directory: Path,
    *,
    registry: str,
    tag: str,
    workspace_controller: Mapping[str, str],
    arm_env: dict[str, str],
    provisioner_settings: dict[str, str] | None = None,
    deploy: Path = DEPLOY,
) -> Path:
    """The local overlay of ``deploy`` (this checkout's ``deploy/``, or another tree's for
    upgrade tests; see the module docstring); returns its folder. ``provisioner_settings``:
    more of the gpu-provisioner's ConfigMap (its environment, e.g. the chaos run's short
    ``REGISTRATION_TIMEOUT_SECONDS``)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(arm_env["ARM_CA_BUNDLE"], directory / "ca.crt")
    provisioner_config = {
        "ARM_BASE_URL": arm_env["ARM_BASE_URL"],
        "ARM_CA_BUNDLE": f"{ARM_CA_MOUNT}/ca.crt",
        "ARM_SUBSCRIPTION_ID": arm_env["ARM_SUBSCRIPTION_ID"],
        "ARM_RESOURCE_GROUP": arm_env["ARM_RESOURCE_GROUP"],
        "AZURE_CLUSTER_NAME": arm_env["AZURE_CLUSTER_NAME"],
        "LOCATION": arm_env["LOCATION"],
        "ARM_POLLING_INTERVAL": "0.2",
        **(provisioner_settings or {}),
    }
    provisioner_patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-provisioner", "namespace": NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "gpu-provisioner",
                            # envFrom is replaced as a whole: the base's ConfigMap again,
                            # then the credentials workload identity would provide.
                            "envFrom": [
                                {"configMapRef": {"name": "gpu-provisioner"}},
                                {"secretRef": {"name": ARM_CREDENTIALS_SECRET}},
                            ],
                            "volumeMounts": [
                                {"name": "arm-ca", "mountPath": ARM_CA_MOUNT, "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "arm-ca", "configMap": {"name": ARM_CA_CONFIGMAP}}],
                }
            }
        },
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(deploy, directory)],
        "images": [
            {"name": BASE_IMAGE, "newName": f"{registry}/kaito-python/controller", "newTag": tag}
        ],
        "configMapGenerator": [
            {
                "name": "kaito-workspace-controller-config",
                "namespace": NAMESPACE,
                "behavior": "merge",
                "literals": [f"{k}={v}" for k, v in workspace_controller.items()],
            },
            {"name": ARM_CA_CONFIGMAP, "namespace": NAMESPACE, "files": ["ca.crt"]},
        ],
        "secretGenerator": [
            {
                "name": ARM_CREDENTIALS_SECRET,
                "namespace": NAMESPACE,
                "literals": [f"ARM_STATIC_TOKEN={arm_env['ARM_STATIC_TOKEN']}"],
            }
        ],
        "patches": [
            {
                "patch": yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "gpu-provisioner", "namespace": NAMESPACE},
                        "data": provisioner_config,
                    }
                )
            },
            {"patch": yaml.safe_dump(provisioner_patch)},
        ],
    }
    header = (
        "# Generated by `kaito dev up --controllers in-cluster` (kaito_dev.incluster):\n"
        "# deploy/ as a user applies it, with this machine's registry and emulators.\n"
    )
    (directory / "kustomization.yaml").write_text(
        header + yaml.safe_dump(kustomization, sort_keys=False)
    )
    return directory


def apply_overlay(kubeconfig: str, overlay: Path) -> str:
    """``kubectl apply -k <overlay>``; returns kubectl's output."""
    out = _kubectl(kubeconfig, "apply", "-k", str(overlay))
    _kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
             "crd/workspaces.kaito.sh", "crd/machines.karpenter.sh")  # fmt: skip
    return out


class Installed(dict[str, float]):
    """Seconds from apply to each milestone (``pods Running``, ``webhook ready``, ...)."""


def _ready(deployment: Obj) -> bool:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    return bool(
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and status.get("updatedReplicas", 0) == want
        and status.get("readyReplicas", 0) == want
        and status.get("replicas", 0) == want
    )


async def controller_pods(client: Client, deployment: str) -> list[Obj]:
    """The Deployment's pods that are not being deleted."""
    pods = await client.list(PODS, NAMESPACE, label_selector=f"app.kubernetes.io/name={deployment}")
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


async def lease_holder(client: Client, lease: str) -> str | None:
    """The pod holding ``lease`` (its identity is ``<pod name>_<uuid>``), or None."""
    try:
        obj = await client.get(LEASES, lease, NAMESPACE)
    except NotFound:
        return None
    holder = (obj.get("spec") or {}).get("holderIdentity") or ""
    return holder.rsplit("_", 1)[0] or None


async def webhook_answers(client: Client) -> bool:
    """The apiserver reaches the webhook through its Service: a server-side dry run of an
    invalid Workspace is denied by it (not failed for want of it)."""
    from kaito.api.workspace import WORKSPACES_V1ALPHA1

    body = {
        "apiVersion": WORKSPACES_V1ALPHA1.api_version,
        "kind": "Workspace",
        "metadata": {"name": "webhook-probe", "namespace": "default"},
        "resource": {
            "instanceType": "Standard_NC6s_v3",
            "labelSelector": {"matchLabels": {"apps": "webhook-probe"}},
        },
        "inference": {"preset": {"name": "no-such-preset"}},
    }
    try:
        await client.request(
            "POST",
            WORKSPACES_V1ALPHA1.path(namespace="default"),
            body=body,
            params={"dryRun": "All"},
        )
    except ApiError as e:
        return "denied the request" in e.message
    return False


async def wait_installed(
    client: Client, *, say: Callable[[str], None], timeout: float = 300.0
) -> Installed:
    """Both Deployments' replicas Ready, both Leases held by one of their pods, the webhook
    answering through its Service; returns the seconds each took from now."""
    t0 = time.monotonic()
    marks = Installed()
    while True:
        elapsed = time.monotonic() - t0
        if "pods Running" not in marks:
            deployments = [
                await _get_or_none(client, DEPLOYMENTS, name) for name in CONTROLLER_DEPLOYMENTS
            ]
            if all(d is not None and _ready(d) for d in deployments):
                marks["pods Running"] = elapsed
                say(f"in-cluster: both controllers' 2 replicas Ready after {elapsed:.1f}s")
        if "leaders elected" not in marks:
            leases = CONTROLLER_DEPLOYMENTS.values()
            holders = {lease: await lease_holder(client, lease) for lease in leases}
            if all(holders.values()):
                marks["leaders elected"] = elapsed
                say(f"in-cluster: leaders {json.dumps(holders)} after {elapsed:.1f}s")
        if "webhook ready" not in marks and await webhook_answers(client):
            marks["webhook ready"] = elapsed
            say(f"in-cluster: the webhook answers through its Service after {elapsed:.1f}s")
        if len(marks) == 3:
            return marks
        if elapsed > timeout:
            raise ControlPlaneError(
                f"in-cluster install not ready after {timeout:.0f}s (reached: {dict(marks)})"
            )
        await asyncio.sleep(0.5)


async def _get_or_none(client: Client, resource: Resource, name: str) -> Obj | None:
    try:
        return await client.get(resource, name, NAMESPACE)
    except NotFound:
        return None


async def install_in_cluster(
    state: ControlPlaneState,
    *,
    say: Callable[[str], None],
    registry: str,
    workspace_controller: Mapping[str, str],
    arm_env: dict[str, str],
    cluster_dns: str = "",
    provisioner_settings: dict[str, str] | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """Boot the system node and install KAITO on it with ``kubectl apply -k`` (see the
    module docstring; the arguments are `write_overlay`'s); returns the system node's
    name, the overlay's folder and the install's timings."""
    from kaito_dev.images import project_version

    t0 = time.monotonic()
    say("booting the system node (real kubelet, no GPU, AKS system-pool labels)")
    system = await asyncio.to_thread(boot_system_node, state, registry, cluster_dns=cluster_dns)
    say(f"system node {system} Ready after {time.monotonic() - t0:.1f}s")
    overlay = write_overlay(
        Path(state.data_dir) / "kaito-install",
        registry=registry,
        tag=tag or project_version(),
        workspace_controller=workspace_controller,
        arm_env=arm_env,
        provisioner_settings=provisioner_settings,
    )
    say(f"kubectl apply -k {overlay} (deploy/ with this machine's registry and emulators)")
    t0 = time.monotonic()
    await asyncio.to_thread(apply_overlay, state.kubeconfig, overlay)
    async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
        installed = await wait_installed(client, say=say)
    pods = await asyncio.to_thread(
        _kubectl, state.kubeconfig, "get", "pods", "-n", NAMESPACE, "-o", "wide"
    )
    say(f"kubectl get pods -n {NAMESPACE} (installed in {time.monotonic() - t0:.1f}s):")
    for line in pods.splitlines():
        say(f"  {line}")
    return {"system_node": system, "overlay": str(overlay), "install_seconds": dict(installed)}


def stop_system_node(state_dir: Path) -> list[str]:
    """Stop the system node (its pods: the controllers); return what it left behind."""
    from kaito_dev.realnode import stop_and_check_all

    return stop_and_check_all(
        system_node_dir_for(state_dir), say=lambda name: print(f"stopped system node {name}")
    )


async def node_of(client: Client, name: str) -> Obj | None:
    try:
        return await client.get(NODES, name)
    except NotFound:
        return None


def container_pid(state_dir: Path, container_id: str) -> int:
    """The host PID of a container's process on the system node, for faults a test injects
    with signals (SIGSTOP, SIGKILL). ``container_id`` as a pod's status gives it
    (``containerd://<id>``); the node's containerd answers (``ctr tasks ls``), and the
    process's cgroup must name the container."""
    from kaito_dev.realnode import RealNode

    cid = container_id.removeprefix("containerd://")
    node = RealNode.load(system_node_dir_for(state_dir) / system_node_name(state_dir))
    proc = subprocess.run(
        ["ctr", "--address", node.socket, "-n", "k8s.io", "tasks", "ls"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"ctr tasks ls on {node.name}: {proc.stderr.strip()}")
    pids = [int(f[1]) for f in (ln.split() for ln in proc.stdout.splitlines()) if f and f[0] == cid]
    if len(pids) != 1:
        raise ControlPlaneError(f"container {cid} is not running on {node.name}:\n{proc.stdout}")
    if cid not in Path(f"/proc/{pids[0]}/cgroup").read_text():
        raise ControlPlaneError(f"pid {pids[0]} is not in container {cid}'s cgroup")
    return pids[0]
