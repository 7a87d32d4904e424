"""An inference Deployment on an emulated GPU node: scheduled, run, Ready, serving /chat."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import DEPLOYMENTS
from kaito_dev.nodeagent.pod import ADAPTATIONS_ANNOTATION, MODEL_ANNOTATION
from tests.integration.nodeagent.conftest import GPU_TOLERATIONS, NodeAgentRig, agent_processes
from tests.integration.polling import poll_until

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]


def inference_deployment(name: str) -> Obj:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": GPU_TOLERATIONS,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "inference",
                            "image": "mcr.microsoft.com/aks/kaito/kaito-phi-3-mini-4k-instruct:0.0.1",
                            "command": ["python", "-m", "kaito_inference"],
                            "args": [
                                "--engine",
                                "transformers",
                                "--model",
                                "/workspace/weights",
                                "--served-model-name",
                                "tiny",
                                "--dtype",
                                "float16",
                                "--port",
                                "5000",
                                "--adapters-dir",
                                "/mnt/adapter",
                            ],
                            "ports": [{"name": "http", "containerPort": 5000}],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 5000},
                                "periodSeconds": 10,
                            },
                            "volumeMounts": [
                                {"name": "dshm", "mountPath": "/dev/shm"},
                                {"name": "adapter", "mountPath": "/mnt/adapter"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "adapter", "emptyDir": {}},
                    ],
                },
            },
        },
    }


async def test_inference_deployment_becomes_ready_and_answers_chat(
    client: Client, narig: NodeAgentRig
) -> None:
    ns = narig.namespace
    await client.create(DEPLOYMENTS, inference_deployment("tiny"), ns)

    deploy = await poll_until(
        lambda: client.get(DEPLOYMENTS, "tiny", ns),
        lambda d: (d or {}).get("status", {}).get("readyReplicas") == 1,
        timeout=120,
        what="Deployment tiny readyReplicas 1",
        interval=0.2,
    )
    assert deploy is not None
    pod = await narig.pod_of("app", "tiny")
    assert pod is not None
    assert pod["spec"]["nodeName"] == narig.node, "scheduled by the real scheduler"
    status = pod["status"]
    assert status["phase"] == "Running"
    assert status["podIP"].startswith("127.0.")
    assert status["podIPs"] == [{"ip": status["podIP"]}]
    assert status["hostIP"] == "127.0.0.1"
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    (cs,) = status["containerStatuses"]
    assert cs["ready"] is True
    assert "running" in cs["state"]
    assert cs["restartCount"] == 0

    annotations = pod["metadata"]["annotations"]
    assert "tiny-llama" in annotations[MODEL_ANNOTATION]
    adaptations = json.loads(annotations[ADAPTATIONS_ANNOTATION])
    assert any("--dtype float16 -> float32" in a for a in adaptations), adaptations
    assert any("--host" in a for a in adaptations), adaptations

    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{status['podIP']}:5000/chat", json={"prompt": "hello"}) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert isinstance(body["Result"], str)

    pids = narig.agent.workers[f"{ns}/{pod['metadata']['name']}"].pids
    assert len(pids) == 1

    await client.delete(DEPLOYMENTS, "tiny", ns, propagation_policy="Background")

    async def pods() -> Obj:
        return {"items": await narig.pods()}

    await poll_until(
        pods, lambda o: not (o or {}).get("items"), timeout=60, what="pod deleted", interval=0.2
    )
    with pytest.raises(NotFound):
        await client.get(DEPLOYMENTS, "tiny", ns)
    assert not agent_processes(narig.state), "the server process exited"
    for pid in pids:
        assert not _alive(pid), f"process {pid} still alive"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return ") Z " not in f.read()
    except OSError:
        return False
