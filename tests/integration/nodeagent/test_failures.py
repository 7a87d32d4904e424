"""What kubelet reports when a pod cannot run: unpullable images, crash loops."""

from __future__ import annotations

from typing import Any

import pytest

from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import DEPLOYMENTS, PODS
from tests.integration.nodeagent.conftest import GPU_TOLERATIONS, NodeAgentRig
from tests.integration.polling import poll_until

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]


def _waiting(status: Obj | None, key: str = "containerStatuses") -> Obj:
    for cs in (status or {}).get(key) or ():
        return dict(cs["state"].get("waiting") or {})
    return {}


async def test_an_image_the_agent_cannot_run_is_reported_as_image_pull_backoff(
    client: Client, narig: NodeAgentRig
) -> None:
    ns = narig.namespace
    adapter_image = "myacr.azurecr.io/adapter:0.0.1"
    plain = {
        "metadata": {"name": "unknown"},
        "spec": {
            "nodeName": narig.node,
            "tolerations": GPU_TOLERATIONS,
            "containers": [{"name": "main", "image": "docker.io/library/nginx:1.25"}],
        },
    }
    init = {
        "metadata": {"name": "adapter-init"},
        "spec": {
            "tolerations": GPU_TOLERATIONS,
            "initContainers": [
                {
                    "name": "adapter",
                    "image": adapter_image,
                    "command": ["/bin/sh", "-c", "cp -r /data/. /mnt/adapter/x"],
                    "volumeMounts": [{"name": "adapter", "mountPath": "/mnt/adapter"}],
                }
            ],
            "containers": [
                {
                    "name": "inference",
                    "image": "kaito-base",
                    "command": ["python", "-m", "kaito_inference", "--model", "/workspace/weights"],
                    "volumeMounts": [{"name": "adapter", "mountPath": "/mnt/adapter"}],
                }
            ],
            "volumes": [{"name": "adapter", "emptyDir": {}}],
        },
    }
    await client.create(PODS, plain, ns)
    await client.create(PODS, init, ns)

    pod = await poll_until(
        lambda: client.get(PODS, "unknown", ns),
        lambda p: _waiting((p or {}).get("status")).get("reason") == "ImagePullBackOff",
        timeout=30,
        what="pod unknown in ImagePullBackOff",
    )
    assert pod is not None
    waiting = _waiting(pod["status"])
    assert waiting["message"] == (
        "image docker.io/library/nginx:1.25 is not available to the node agent "
        "(it runs only the project's own images as local processes)"
    )
    assert pod["status"]["phase"] == "Pending"

    pod = await poll_until(
        lambda: client.get(PODS, "adapter-init", ns),
        lambda p: (
            _waiting((p or {}).get("status"), "initContainerStatuses").get("reason")
            == "ImagePullBackOff"
        ),
        timeout=60,
        what="pod adapter-init's init container in ImagePullBackOff",
    )
    assert pod is not None
    status = pod["status"]
    assert status["phase"] == "Pending"
    assert adapter_image in _waiting(status, "initContainerStatuses")["message"]
    assert _waiting(status)["reason"] == "PodInitializing"
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Initialized"] == "False"
    assert conds["Ready"] == "False"


async def test_a_crashing_container_goes_into_crash_loop_backoff_with_its_log_tail(
    client: Client, narig: NodeAgentRig
) -> None:
    ns = narig.namespace
    labels = {"app": "crash"}
    deploy = {
        "metadata": {"name": "crash"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": GPU_TOLERATIONS,
                    "containers": [
                        {
                            "name": "inference",
                            "image": "kaito-base",
                            "command": ["python", "-m", "kaito_tuning"],
                            "args": [
                                "--model",
                                "/workspace/weights",
                                "--data",
                                "/mnt/data",
                                "--output",
                                "/mnt/output",
                                "--no-such-flag",
                            ],
                        }
                    ],
                },
            },
        },
    }
    await client.create(DEPLOYMENTS, deploy, ns)

    async def read() -> Obj | None:
        return await narig.pod_of("app", "crash")

    def crash_looping(pod: Obj | None) -> bool:
        for cs in (pod or {}).get("status", {}).get("containerStatuses") or ():
            return bool(
                cs["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
                and cs["restartCount"] >= 1
            )
        return False

    pod = await poll_until(read, crash_looping, timeout=90, what="CrashLoopBackOff", interval=0.1)
    assert pod is not None
    (cs,) = pod["status"]["containerStatuses"]
    last = cs["lastState"]["terminated"]
    assert last["exitCode"] == 2
    assert last["reason"] == "Error"
    assert "unrecognized arguments: --no-such-flag" in last["message"]
    assert "back-off" in cs["state"]["waiting"]["message"]
    assert pod["status"]["phase"] == "Running"
    assert cs["ready"] is False


async def test_an_unsupported_volume_is_reported_and_the_pod_stays_pending(
    client: Client, narig: NodeAgentRig
) -> None:
    pod = {
        "metadata": {"name": "pvc"},
        "spec": {
            "nodeName": narig.node,
            "containers": [
                {
                    "name": "inference",
                    "image": "kaito-base",
                    "command": ["python", "-m", "kaito_inference", "--model", "/workspace/weights"],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "nope"}}],
        },
    }
    await client.create(PODS, pod, narig.namespace)

    def volumes_not_ready(p: Obj | None) -> bool:
        return any(
            c["type"] == "VolumesReady" and c["status"] == "False"
            for c in (p or {}).get("status", {}).get("conditions") or ()
        )

    got = await poll_until(
        lambda: client.get(PODS, "pvc", narig.namespace),
        volumes_not_ready,
        timeout=30,
        what="pod pvc's VolumesReady=False",
    )
    assert got is not None
    (cond,) = [c for c in got["status"]["conditions"] if c["type"] == "VolumesReady"]
    assert "persistentVolumeClaim is not supported by the node agent" in cond["message"]
    assert got["status"]["phase"] == "Pending"
    assert narig.agent.workers[f"{narig.namespace}/pvc"].pids == []


async def test_a_terminating_pod_on_a_node_that_is_gone_is_force_deleted(
    client: Client, narig: NodeAgentRig
) -> None:
    pod = {
        "metadata": {"name": "orphan"},
        "spec": {
            "nodeName": f"gone-{narig.test_id}",
            "containers": [{"name": "main", "image": "kaito-base"}],
        },
    }
    await client.create(PODS, pod, narig.namespace)
    await client.delete(PODS, "orphan", narig.namespace)  # default grace: stays terminating

    async def read() -> Obj | None:
        try:
            return await client.get(PODS, "orphan", narig.namespace)
        except NotFound:
            return None

    gone = await poll_until(read, lambda p: p is None, timeout=30, what="pod orphan deleted")
    assert gone is None  # no kubelet will ever confirm it: only a force delete removes it


async def test_a_container_whose_interpreter_is_missing_reports_run_container_error(
    client: Client, narig: NodeAgentRig
) -> None:
    await narig.stop()
    narig.start(python="/nonexistent/bin/python")
    pod = {
        "metadata": {"name": "nopython"},
        "spec": {
            "nodeName": narig.node,
            "containers": [
                {
                    "name": "download",
                    "image": "kaito-tuning",
                    "command": ["python", "-m", "kaito_tuning.download", "--output", "/tmp/x"],
                }
            ],
        },
    }
    await client.create(PODS, pod, narig.namespace)
    got = await poll_until(
        lambda: client.get(PODS, "nopython", narig.namespace),
        lambda p: _waiting((p or {}).get("status")).get("reason") == "RunContainerError",
        timeout=30,
        what="pod nopython in RunContainerError",
    )
    assert "/nonexistent/bin/python" in _waiting(got["status"])["message"]
