"""Cold start on the real control plane: the weights fetcher's identity, the
``DownloadingWeights`` condition, a failed fetch's reason and ``status.coldStart``.

There is no kubelet in this rig: the test writes the pod status kubelet would write
(an init container running, then exited), and patches the progress annotation the way
the fetcher does, authenticated as the fetcher's own ServiceAccount (a TokenRequest
token), which proves the Role the controller made is enough and is what the fetcher
needs. The fetcher itself patching a real pod is tests/integration/hfhub.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from kaito.runtime.client import Client
from kaito.runtime.resource import (
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
)
from kaito.runtime.timestamps import now_rfc3339
from kaito_dev.controlplane import ControlPlaneState
from tests.integration.polling import poll_until

from .conftest import WsRig, condition, is_true
from .test_workload import play_kubelet, scheduled_pod

Obj = dict[str, Any]

pytestmark = pytest.mark.cluster

PHASES = [
    "MachineCreated",
    "NodeReady",
    "PodScheduled",
    "ImagePulled",
    "WeightsFetched",
    "ServerLoaded",
    "Ready",
]


async def kubectl_as(
    plane: ControlPlaneState, token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """kubectl authenticated only by ``token`` (no kubeconfig's admin credentials)."""
    return await asyncio.to_thread(
        subprocess.run,
        [
            "kubectl",
            "--kubeconfig=/dev/null",
            f"--server={plane.server}",
            f"--certificate-authority={plane.ca_file}",
            f"--token={token}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def fetcher_token(client: Client, namespace: str, account: str) -> str:
    answer = await client.request(
        "POST",
        SERVICEACCOUNTS.path(namespace=namespace, name=account, subresource="token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    return str(answer["status"]["token"])


def fetch_status(fetch_state: Obj, *, main: Obj | None = None, ready: bool = False) -> Obj:
    """Pod status as kubelet writes it around the fetch-weights init container."""
    now = now_rfc3339()
    conditions: list[Obj] = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True" if main else "False", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": now},
        {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
    ]
    return {
        "phase": "Running" if main else "Pending",
        "conditions": conditions,
        "initContainerStatuses": [
            {
                "name": "fetch-weights",
                "ready": "terminated" in fetch_state,
                "restartCount": 0,
                "image": "img",
                "imageID": "",
                "state": fetch_state,
            }
        ],
        "containerStatuses": [
            {
                "name": "inference",
                "ready": ready,
                "restartCount": 0,
                "image": "img",
                "imageID": "",
                "started": ready,
                "state": main or {"waiting": {"reason": "PodInitializing"}},
            }
        ],
    }


async def test_a_fetching_pod_shows_its_progress_and_the_workspace_records_its_cold_start(
    wsrig: WsRig, client: Client, control_plane: ControlPlaneState
) -> None:
    wsrig.start()
    name = "phi-cold"
    await wsrig.create(name)
    await wsrig.wait_resource_ready(name)
    pod = await scheduled_pod(client, wsrig, name)
    account = f"{name}-weights-fetcher"
    assert pod["spec"]["serviceAccountName"] == account
    ws = await wsrig.get(name)
    assert ws is not None
    for res in (SERVICEACCOUNTS, ROLES, ROLEBINDINGS):
        obj = await client.get(res, account, wsrig.namespace)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == ws["metadata"]["uid"]

    started = now_rfc3339()
    await play_kubelet(client, pod, fetch_status({"running": {"startedAt": started}}))
    ws = await wsrig.wait(
        name, lambda w: (condition(w, "InferenceReady") or {}).get("reason") == "DownloadingWeights"
    )
    assert (condition(ws, "InferenceReady") or {})["message"].endswith(": starting")

    # The fetcher's report, as the fetcher's ServiceAccount: its Role lets it.
    token = await fetcher_token(client, wsrig.namespace, account)
    progress = {
        "bytesDone": 1288490188,
        "bytesTotal": 8160437862,
        "bytesPerSecond": 47500000,
        "updated": now_rfc3339(),
    }
    patch = {"metadata": {"annotations": {"kaito.sh/weights-progress": json.dumps(progress)}}}
    pod_name = pod["metadata"]["name"]
    run = await kubectl_as(
        control_plane, token, "-n", wsrig.namespace, "patch", "pod", pod_name,
        "--type=merge", "-p", json.dumps(patch),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # ... and nothing else: not a Deployment, not the Workspace, not another namespace's pods.
    denied = await kubectl_as(control_plane, token, "-n", wsrig.namespace, "get", "deployments")
    assert "forbidden" in denied.stderr.lower()
    denied = await kubectl_as(control_plane, token, "-n", "default", "get", "pods")
    assert "forbidden" in denied.stderr.lower()

    ws = await wsrig.wait(
        name,
        lambda w: (
            "1.2 GiB of 7.6 GiB (15%), 45.3 MiB/s"
            in (condition(w, "InferenceReady") or {}).get("message", "")
        ),
    )
    message = (condition(ws, "InferenceReady") or {})["message"]
    assert message == (
        f"pod {pod_name}: fetching microsoft/Phi-3-mini-4k-instruct@0a67737: "
        "1.2 GiB of 7.6 GiB (15%), 45.3 MiB/s"
    )
    assert (condition(ws, "WorkspaceReady") or {})["reason"] == "DownloadingWeights"
    recorded = [p["phase"] for p in ws["status"]["coldStart"]["phases"]]
    assert recorded == PHASES[:4]

    await asyncio.sleep(1.1)  # a second later, so the phases' times differ
    finished = now_rfc3339()
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                           "finishedAt": finished}}  # fmt: skip
    await play_kubelet(
        client, pod, fetch_status(done, main={"running": {"startedAt": finished}}, ready=True)
    )
    ws = await wsrig.wait(name, lambda w: is_true(w, "InferenceReady"))
    cold = ws["status"]["coldStart"]
    assert [p["phase"] for p in cold["phases"]] == PHASES
    assert cold["startedAt"] == ws["metadata"]["creationTimestamp"]
    fetched = next(p for p in cold["phases"] if p["phase"] == "WeightsFetched")
    assert fetched["time"] == finished
    seconds = [p["seconds"] for p in cold["phases"]]
    assert seconds == sorted(seconds)
    events = [e for e in await wsrig.events(name) if e["reason"] == "ColdStart"]
    assert sorted(e["message"].split()[0] for e in events) == sorted(PHASES)
    assert all(e["type"] == "Normal" and e["count"] == 1 for e in events)

    # Steady state: the record is not rewritten.
    rv = ws["metadata"]["resourceVersion"]
    await play_kubelet(
        client, pod, fetch_status(done, main={"running": {"startedAt": finished}}, ready=True)
    )
    await asyncio.sleep(1.0)
    again = await wsrig.get(name)
    assert again is not None
    assert again["status"]["coldStart"] == cold
    assert again["metadata"]["resourceVersion"] == rv

    described = await asyncio.to_thread(
        subprocess.run,
        ["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "-n", wsrig.namespace,
         "describe", "workspace", name],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    described = described.stdout
    print(described)
    assert "Cold Start:" in described and "WeightsFetched" in described


async def test_a_failed_fetch_names_its_reason_on_the_workspace(
    wsrig: WsRig, client: Client
) -> None:
    """A gated repo without a token: the fetcher exits 3 with ``Unauthorized: ...``;
    kubelet restarts the init container with back-off, and the reason stays the fetcher's."""
    wsrig.start()
    name = "phi-denied"
    await wsrig.create(name)
    await wsrig.wait_resource_ready(name)
    pod = await scheduled_pod(client, wsrig, name)
    message = (
        "Unauthorized: microsoft/Phi-3-mini-4k-instruct: 401 Unauthorized; "
        "set presetOptions.modelAccessSecret"
    )
    last = {"exitCode": 3, "reason": "Error", "message": message, "startedAt": now_rfc3339(),
            "finishedAt": now_rfc3339()}  # fmt: skip
    status = fetch_status({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}})
    status["initContainerStatuses"][0]["lastState"] = {"terminated": last}
    status["initContainerStatuses"][0]["restartCount"] = 2
    await play_kubelet(client, pod, status)
    ws = await wsrig.wait(
        name, lambda w: (condition(w, "InferenceReady") or {}).get("reason") == "Unauthorized"
    )
    cond = condition(ws, "InferenceReady") or {}
    assert (
        "fetch-weights" in cond["message"] and "presetOptions.modelAccessSecret" in cond["message"]
    )
    event = await wsrig.wait_event(name, "Unauthorized")
    assert event["type"] == "Warning"
    # The Workspace's own phases stop where the fetch failed.
    recorded = await poll_until(
        lambda: wsrig.get(name),
        lambda w: (
            [
                p["phase"]
                for p in ((w or {}).get("status", {}).get("coldStart") or {}).get("phases", [])
            ]
            == PHASES[:4]
        ),
        timeout=10,
        what="the cold start up to ImagePulled",
    )
    assert recorded is not None
