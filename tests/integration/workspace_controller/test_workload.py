"""Workspaces get their workloads: Services, Deployments and Jobs on the real control plane.

The real kube-scheduler places the pods on the emulated GPU nodes (proving that the
GPU requests, tolerations and affinities fit the nodes the provisioner made), and the
real Deployment, ReplicaSet and Job controllers turn pod status into workload status.
There is no kubelet in this rig: where a test needs a pod to run, fail or finish, it
writes the pod's status the way kubelet would, and says so. The node agent's tests and
the end-to-end test run the pods for real.
"""

from __future__ import annotations

from typing import Any

import pytest

from kaito.api.workspace import ANNOTATION_REVISION, WORKSPACES, WORKSPACES_V1ALPHA1
from kaito.runtime.client import Client
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    JOBS,
    NODES,
    PODS,
    REPLICASETS,
    SERVICES,
)
from kaito.runtime.timestamps import now_rfc3339
from tests.integration.polling import poll_until

from .conftest import (
    IMAGE_REGISTRY,
    WsRig,
    condition,
    is_true,
    ready_node,
    register,
    workload_left,
)

Obj = dict[str, Any]


async def workload_pods(client: Client, wsrig: WsRig, name: str) -> list[Obj]:
    page = await client.list(PODS, wsrig.namespace, label_selector=f"kaito.sh/workspace={name}")
    return [p for p in page["items"] if not p["metadata"].get("deletionTimestamp")]


async def scheduled_pod(client: Client, wsrig: WsRig, name: str, timeout: float = 30.0) -> Obj:
    """The Workspace's pod once the real scheduler has bound it to a node."""
    pods = await poll_until(
        lambda: workload_pods(client, wsrig, name),
        lambda ps: len(ps) == 1 and bool(ps[0]["spec"].get("nodeName")),
        timeout=timeout,
        what=f"a scheduled pod of {name}",
    )
    return pods[0]


async def play_kubelet(client: Client, pod: Obj, status: Obj) -> None:
    """Write pod status as kubelet would (there is no kubelet in this rig)."""
    meta = pod["metadata"]
    await client.patch(
        PODS, meta["name"], {"status": status}, meta["namespace"], subresource="status"
    )


def _scheduled() -> Obj:
    return {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}


def running_ready(container: str) -> Obj:
    now = now_rfc3339()
    return {
        "phase": "Running",
        "podIP": "10.244.0.7",
        "conditions": [
            _scheduled(),
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": container,
                "ready": True,
                "restartCount": 0,
                "image": "img",
                "imageID": "",
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
        ],
    }


def image_pull_backoff(container: str, image: str) -> Obj:
    return {
        "phase": "Pending",
        "conditions": [_scheduled()],
        "containerStatuses": [
            {
                "name": container,
                "ready": False,
                "restartCount": 0,
                "image": image,
                "imageID": "",
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{image}"',
                    }
                },
            }
        ],
    }


def with_adapter(body: Obj, name: str = "phi-3-adapter", strength: str = "1.0") -> Obj:
    body["inference"]["adapters"] = [
        {"source": {"name": name, "image": "myacr.azurecr.io/adapter:0.0.1"}, "strength": strength}
    ]
    return body


async def test_quick_start_workspaces_are_served_from_pods_the_scheduler_puts_on_their_nodes(
    wsrig: WsRig, client: Client
) -> None:
    """Both quick-start Workspaces (plain, and with an adapter): Service, ConfigMap,
    Deployment, and a pod that the real kube-scheduler binds to the Workspace's own GPU
    node: GPU request, taints/tolerations and node affinity fit."""
    wsrig.start()
    await wsrig.create("workspace-phi-3-mini")
    await client.create(
        WORKSPACES_V1ALPHA1, with_adapter(wsrig.body("workspace-phi-3-mini-adapter"))
    )
    for name in ("workspace-phi-3-mini", "workspace-phi-3-mini-adapter"):
        ws = await wsrig.wait_resource_ready(name)
        pod = await scheduled_pod(client, wsrig, name)
        assert pod["spec"]["nodeName"] == ws["status"]["workerNodes"][0]
        node = await client.get(NODES, pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["apps"] == name
        svc = await client.get(SERVICES, name, wsrig.namespace)
        assert svc["spec"]["ports"][0]["port"] == 80
        assert svc["spec"]["ports"][0]["targetPort"] == 5000
        assert svc["spec"]["clusterIP"]  # a real ClusterIP from the service CIDR
        await client.get(CONFIGMAPS, f"{name}-inference-params", wsrig.namespace)
        dep = await client.get(DEPLOYMENTS, name, wsrig.namespace)
        owner = dep["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("Workspace", ws["metadata"]["uid"])
        # No kubelet: the pod never starts, and InferenceReady says it is starting.
        ws = await wsrig.wait(
            name, lambda w: (condition(w, "InferenceReady") or {}).get("reason") is not None
        )
        assert (condition(ws, "InferenceReady") or {})["reason"] == "InferenceStarting"
        assert (condition(ws, "WorkspaceReady") or {})["status"] == "False"
        await wsrig.wait_event(name, "WorkloadCreated")
    adapter_pod = await scheduled_pod(client, wsrig, "workspace-phi-3-mini-adapter")
    fetch, init = adapter_pod["spec"]["initContainers"]
    # The weights first: our inference image, from the controller's registry, fetches
    # them into the node's model cache (a hostPath the apiserver and scheduler accept).
    ours = f"{IMAGE_REGISTRY}/kaito-python/inference:0.1.0"
    assert (fetch["name"], fetch["image"]) == ("fetch-weights", ours)
    assert fetch["command"][:3] == ["python", "-m", "kaito_inference.fetch"]
    assert adapter_pod["spec"]["containers"][0]["image"] == ours
    assert {
        "name": "model-cache",
        "hostPath": {"path": "/var/lib/kaito/models", "type": "DirectoryOrCreate"},
    } in adapter_pod["spec"]["volumes"]
    # the server's image pulls the adapter image (which has no shell to copy with)
    assert init["image"] == ours
    assert init["command"][3:5] == ["--image", "myacr.azurecr.io/adapter:0.0.1"]
    assert adapter_pod["spec"]["containers"][0]["env"] == [
        {"name": "phi-3-adapter", "value": "1.0"}
    ]


async def test_pod_status_drives_inference_ready_and_workspace_ready(
    wsrig: WsRig, client: Client
) -> None:
    """An unpullable image shows as ``InferenceReady=False ImagePullBackOff`` with
    kubelet's message; a Ready pod makes the Deployment, InferenceReady and
    WorkspaceReady True. (The test writes the pod status kubelet would write.)"""
    wsrig.start()
    name = "phi-status"
    await wsrig.create(name)
    await wsrig.wait_resource_ready(name)
    pod = await scheduled_pod(client, wsrig, name)
    container = pod["spec"]["containers"][0]
    await play_kubelet(client, pod, image_pull_backoff(container["name"], container["image"]))
    ws = await wsrig.wait(
        name,
        lambda w: (
            not is_true(w, "InferenceReady")
            and ((condition(w, "InferenceReady") or {}).get("reason") == "ImagePullBackOff")
        ),
    )
    cond = condition(ws, "InferenceReady")
    assert cond is not None
    assert container["image"] in cond["message"] and pod["metadata"]["name"] in cond["message"]
    assert (condition(ws, "WorkspaceReady") or {})["reason"] == "ImagePullBackOff"
    await wsrig.wait_event(name, "ImagePullBackOff")

    await play_kubelet(client, pod, running_ready(container["name"]))
    ws = await wsrig.wait(name, lambda w: is_true(w, "WorkspaceReady"))
    assert is_true(ws, "InferenceReady") and is_true(ws, "WorkspaceSucceeded")
    dep = await client.get(DEPLOYMENTS, name, wsrig.namespace)
    assert dep["status"]["readyReplicas"] == 1
    await wsrig.wait_event(name, "InferenceReady")


async def test_a_changed_workspace_rolls_the_deployment_to_the_new_revision(
    wsrig: WsRig, client: Client
) -> None:
    wsrig.start()
    name = "phi-roll"
    await wsrig.create(name)
    await wsrig.wait_resource_ready(name)
    first = await scheduled_pod(client, wsrig, name)
    ws = await wsrig.get(name)
    assert ws is not None
    old_rev = ws["metadata"]["annotations"][ANNOTATION_REVISION]
    assert first["metadata"]["annotations"][ANNOTATION_REVISION] == old_rev

    # Adapters are mutable: adding one changes the revision and the pod template.
    body = with_adapter({"inference": dict(ws["inference"])}, strength="0.5")
    await client.patch(WORKSPACES, name, body, wsrig.namespace)
    ws = await wsrig.wait(
        name, lambda w: (w or {})["metadata"]["annotations"][ANNOTATION_REVISION] != old_rev
    )
    assert ws is not None
    new_rev = ws["metadata"]["annotations"][ANNOTATION_REVISION]

    def rolled(dep: Obj) -> bool:
        template = dep["spec"]["template"]
        return template["metadata"]["annotations"][ANNOTATION_REVISION] == new_rev

    dep = await poll_until(
        lambda: client.get(DEPLOYMENTS, name, wsrig.namespace),
        rolled,
        timeout=30,
        what="rolled Deployment",
    )
    assert dep["metadata"]["generation"] >= 2
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "phi-3-adapter", "value": "0.5"}]
    # strength 0.5 needs the transformers engine (vLLM cannot weight adapters).
    assert dep["spec"]["template"]["metadata"]["annotations"][
        "kaito.sh/runtime-selected"
    ].startswith("transformers:")
    # The Deployment controller made a second ReplicaSet for the new template.
    replicasets = await poll_until(
        lambda: client.list_all(
            REPLICASETS, wsrig.namespace, label_selector=f"kaito.sh/workspace={name}"
        ),
        lambda rs: len(rs) == 2,
        timeout=30,
        what="a second ReplicaSet",
    )
    assert len(replicasets) == 2
    await wsrig.wait_event(name, "WorkloadUpdated")


async def test_an_unschedulable_pod_shows_the_schedulers_reason(
    wsrig: WsRig, client: Client
) -> None:
    """A node the user brought that reports fewer GPUs than its size has: the pod asks
    for the SKU's two GPUs and the real scheduler says why it cannot place it."""
    name = f"nogpu-{wsrig.test_id}"
    node, status = ready_node(
        name,
        {
            "apps": "short",
            "kaito-test": wsrig.test_id,
            "node.kubernetes.io/instance-type": "Standard_NC12s_v3",
        },
    )
    await register(client, node, status)
    try:
        wsrig.start()
        body = wsrig.body("short", instance_type="Standard_NC12s_v3")
        body["resource"]["labelSelector"]["matchLabels"]["apps"] = "short"
        await client.create(WORKSPACES_V1ALPHA1, body)
        ws = await wsrig.wait(
            "short",
            lambda w: (condition(w, "InferenceReady") or {}).get("reason") == "Unschedulable",
        )
        assert is_true(ws, "ResourceReady")
        cond = condition(ws, "InferenceReady")
        assert cond is not None and "Insufficient nvidia.com/gpu" in cond["message"], cond
        assert await wsrig.machines() == []
        await wsrig.delete("short")
    finally:
        await client.delete(NODES, name)


async def test_a_tuning_workspace_gets_its_job_and_is_ready_when_the_job_succeeds(
    wsrig: WsRig, client: Client, tmp_path: Any
) -> None:
    wsrig.start()
    name = "tune-phi-3"
    body = wsrig.body(name)
    del body["inference"]
    body["tuning"] = {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "qlora",
        "input": {"volumeSource": {"hostPath": {"path": str(tmp_path / "data")}}},
        "output": {"volumeSource": {"hostPath": {"path": str(tmp_path / "out")}}},
    }
    await client.create(WORKSPACES_V1ALPHA1, body)
    ws = await wsrig.wait_resource_ready(name)
    job = await poll_until(
        lambda: client.get(JOBS, name, wsrig.namespace),
        lambda j: True,
        timeout=30,
        what="tuning Job",
    )
    tuning = job["spec"]["template"]["spec"]["containers"][0]
    assert tuning["command"][:3] == ["python", "-m", "kaito_tuning"]
    assert tuning["image"] == f"{IMAGE_REGISTRY}/kaito-python/tuning:0.1.0"
    (fetch,) = job["spec"]["template"]["spec"]["initContainers"]
    assert fetch["image"] == f"{IMAGE_REGISTRY}/kaito-python/inference:0.1.0"
    pod = await scheduled_pod(client, wsrig, name)
    assert pod["spec"]["nodeName"] == ws["status"]["workerNodes"][0]
    ws = await wsrig.wait(name, lambda w: is_true(w, "JobStarted"))
    assert (condition(ws, "WorkspaceReady") or {})["reason"] == "TuningInProgress"

    # kubelet's part: the tuning container ran and exited 0.
    now = now_rfc3339()
    await play_kubelet(
        client,
        pod,
        {
            "phase": "Succeeded",
            "conditions": [_scheduled()],
            "containerStatuses": [
                {
                    "name": tuning["name"],
                    "ready": False,
                    "restartCount": 0,
                    "image": tuning["image"],
                    "imageID": "",
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        },
    )
    ws = await wsrig.wait(name, lambda w: is_true(w, "WorkspaceReady"))
    cond = condition(ws, "WorkspaceReady")
    assert cond is not None and cond["reason"] == "TuningSucceeded"
    assert is_true(ws, "WorkspaceSucceeded")
    await wsrig.wait_event(name, "TuningSucceeded")


@pytest.mark.parametrize("emulator", [0.0], indirect=True)
async def test_deleting_a_workspace_removes_its_workload(wsrig: WsRig, client: Client) -> None:
    wsrig.start()
    await wsrig.create("gone")
    await wsrig.wait_resource_ready("gone")
    await scheduled_pod(client, wsrig, "gone")
    await wsrig.delete("gone")  # waits until the Workspace itself is gone
    assert await client.list_all(WORKSPACES, wsrig.namespace) == []
    assert await wsrig.machines() == []
    # The garbage collector removes the Deployment, ReplicaSet, Service, ConfigMap and pod.
    assert await workload_left(client, wsrig.namespace) == {}


def running_not_ready(container: str) -> Obj:
    """Running, its readiness probe not passing yet."""
    status = running_ready(container)
    status["conditions"] = [c for c in status["conditions"] if c["type"] == "PodScheduled"]
    status["containerStatuses"][0]["ready"] = False
    return status


def restarted_after(container: str, message: str) -> Obj:
    """Running again, not ready, after exiting 1 with ``message`` as termination message."""
    status = running_not_ready(container)
    cs = status["containerStatuses"][0]
    cs["restartCount"] = 1
    cs["lastState"] = {
        "terminated": {
            "exitCode": 1,
            "reason": "Error",
            "message": message,
            "startedAt": now_rfc3339(),
            "finishedAt": now_rfc3339(),
        }
    }
    return status


async def test_a_model_split_across_two_nodes_is_one_statefulset_group_with_its_status(
    wsrig: WsRig, client: Client
) -> None:
    """A distributed preset on two nodes: one StatefulSet whose pods form one group
    (pod 0 first); InferenceReady says the split, a rank lost by pod 0 becomes the
    reason while it restarts, and both pods Ready make it True. (The test writes the
    pod status kubelet would write.)"""
    wsrig.start()
    name = "llama-split"
    body = wsrig.body(
        name, count=2, instance_type="Standard_NC48ads_A100_v4", preset="llama-3.3-70b-instruct"
    )
    body["inference"]["preset"]["presetOptions"] = {"modelAccessSecret": "hf-token"}
    await client.create(WORKSPACES_V1ALPHA1, body)
    await wsrig.wait_resource_ready(name, timeout=60)
    pods = await poll_until(
        lambda: workload_pods(client, wsrig, name),
        lambda ps: len(ps) == 2 and all(p["spec"].get("nodeName") for p in ps),
        timeout=30,
        what="two scheduled pods",
    )
    pods.sort(key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["name"] for p in pods] == [f"{name}-0", f"{name}-1"]
    assert pods[0]["spec"]["nodeName"] != pods[1]["spec"]["nodeName"]
    command = pods[0]["spec"]["containers"][0]["command"]
    ns = wsrig.namespace
    assert command[command.index("--group-hosts") + 1] == (
        f"{name}-0.{name}-headless.{ns}.svc,{name}-1.{name}-headless.{ns}.svc"
    )
    container = pods[0]["spec"]["containers"][0]["name"]
    # Starting: InferenceReady counts the ranks as pod 0 does.
    await play_kubelet(client, pods[0], running_not_ready(container))
    await play_kubelet(client, pods[1], running_not_ready(container))
    await wsrig.wait(name, lambda w: "1/2 ranks joined; pod llama-split-0 waits for llama-split-1"
                     in (condition(w, "InferenceReady") or {}).get("message", ""))  # fmt: skip
    await play_kubelet(client, pods[1], running_ready(container))
    await wsrig.wait(name, lambda w: "2/2 ranks joined; pod llama-split-0 is loading the model"
                     in (condition(w, "InferenceReady") or {}).get("message", ""))  # fmt: skip

    lost = f"GroupRankLost: rank 1 ({name}-1.{name}-headless.{ns}.svc:5000) lost"
    await play_kubelet(client, pods[0], restarted_after(container, lost))
    ws = await wsrig.wait(
        name, lambda w: (condition(w, "InferenceReady") or {}).get("reason") == "GroupRankLost"
    )
    message = (condition(ws, "InferenceReady") or {})["message"]
    assert message.startswith(
        "one model across 2 nodes: tensor-parallel 2 (GPUs per node) x pipeline-parallel 2"
    )
    assert lost in message

    await play_kubelet(client, pods[0], running_ready(container))
    ws = await wsrig.wait(name, lambda w: is_true(w, "WorkspaceReady"))
    assert "pipeline-parallel 2 (nodes)" in (condition(ws, "InferenceReady") or {})["message"]
