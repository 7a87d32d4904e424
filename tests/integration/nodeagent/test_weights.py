"""A preset's weights take the real fetch path on an emulated GPU node.

The pod is what the workspace controller writes (`podspec.weights_parts`): a
``fetch-weights`` init container running the inference image's fetcher into the node's
model cache (a hostPath), and the server loading ``--model`` from there. The node agent
runs the fetcher as it is, against the rig's hub emulator (which serves the tiny
stand-in model under phi-3's repo at the preset's pinned revision): the hub's request log
proves each file crossed the wire once for the node, the cache folder carries the
fetcher's ``.kaito-complete`` marker, and the next pod on the node loads from the cache
without a single request to the hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kaito.controllers.workspace import podspec
from kaito.controllers.workspace.plan import Weights
from kaito.presets.catalog import fetch_command, load_catalog, model_path
from kaito.runtime.client import Client
from kaito.runtime.resource import DEPLOYMENTS, PODS
from kaito_dev.nodeagent.pod import ADAPTATIONS_ANNOTATION, MODEL_ANNOTATION
from tests.integration.nodeagent.conftest import GPU_TOLERATIONS, NodeAgentRig
from tests.integration.polling import poll_until

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]
PRESET = "phi-3-mini-4k-instruct"
SERVER_ARGS = [
    "--engine", "transformers", "--served-model-name", PRESET, "--dtype", "float16",
    "--max-model-len", "4096", "--port", "5000",
]  # fmt: skip


def weights() -> Weights:
    catalog = load_catalog()
    preset = catalog.get(PRESET)
    assert preset is not None and preset.hugging_face is not None
    return Weights(
        model=model_path(preset, catalog.defaults),
        fetch=tuple(fetch_command(preset, catalog.defaults)),
        cache_dir=catalog.defaults.model_cache_dir,
    )


def deployment(name: str, w: Weights) -> Obj:
    volumes, inits, mounts = podspec.weights_parts(w, "kaito-python/inference:test")
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
                    "initContainers": inits,
                    "containers": [
                        {
                            "name": "inference",
                            "image": "kaito-python/inference:test",
                            "command": ["python", "-m", "kaito_inference"],
                            "args": [*SERVER_ARGS, "--model", w.model],
                            "ports": [{"name": "http", "containerPort": 5000}],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 5000},
                                "periodSeconds": 10,
                            },
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


async def ready_pod(client: Client, rig: NodeAgentRig, name: str, *, not_uid: str = "") -> Obj:
    async def pod() -> Obj | None:
        found = await rig.pod_of("app", name)
        if found is None or found["metadata"]["uid"] == not_uid:
            return None
        return found

    def ready(p: Obj | None) -> bool:
        if p is None or p["metadata"].get("deletionTimestamp"):
            return False
        for cs in p.get("status", {}).get("initContainerStatuses") or ():
            term = (cs.get("state") or {}).get("terminated") or cs.get("lastState", {}).get(
                "terminated"
            )
            if term and term.get("exitCode"):
                raise AssertionError(f"fetch-weights failed: {term.get('message')}")
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions") or ()}
        return conds.get("Ready") == "True"

    found = await poll_until(pod, ready, timeout=180, what=f"a Ready {name} pod", interval=0.2)
    assert found is not None
    return found


def fetch_log(rig: NodeAgentRig, pod: Obj) -> str:
    worker = rig.agent.workers[f"{rig.namespace}/{pod['metadata']['name']}"]
    return (worker.dir / "logs" / "fetch-weights.log").read_text()


async def test_the_weights_are_fetched_once_per_node_and_the_next_pod_loads_from_the_cache(
    client: Client, narig: NodeAgentRig
) -> None:
    ns, hub, w = narig.namespace, narig.hub, weights()
    cache_name = Path(w.model).name
    repo = "microsoft/Phi-3-mini-4k-instruct"
    await client.create(DEPLOYMENTS, deployment("phi", w), ns)
    first = await ready_pod(client, narig, "phi")

    # The real fetcher ran against the hub: every file once, all bytes once.
    commit = hub.store.resolve(repo, cache_name.split("@")[1])
    files = {f.path: f for f in commit.files}
    assert files and "config.json" in files
    for path, f in files.items():
        route = "cdn" if f.lfs else "resolve"
        assert hub.count(route=route, method="GET", file=path) == 1, path
    assert hub.bytes_sent() == sum(f.size for f in files.values())
    assert "STAND-IN" in (hub.store.note(repo) or "")
    log = fetch_log(narig, first)
    assert "weights ready" in log, log
    assert hub.url in log, "the fetch ran with HF_ENDPOINT on the rig's hub"

    # ... into the emulated node's own disk, verified and marked complete.
    target = narig.node_disk / "var/lib/kaito/models" / cache_name
    marker = json.loads((target / ".kaito-complete").read_text())
    assert (marker["repo"], marker["commit"]) == (repo, commit.sha)
    assert {f["path"] for f in marker["files"]} == set(files)

    annotations = first["metadata"]["annotations"]
    adaptations = json.loads(annotations[ADAPTATIONS_ANNOTATION])
    assert any(
        a.startswith("fetch-weights: fetch of microsoft/Phi-3-mini-4k-instruct@")
        and hub.url in a
        and "stand-in" in a
        for a in adaptations
    ), adaptations
    assert any("--max-model-len 4096 -> 2048" in a for a in adaptations), adaptations
    assert "tiny-llama" in annotations[MODEL_ANNOTATION]
    ip = first["status"]["podIP"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{ip}:5000/chat", json={"prompt": "hello"}) as resp,
    ):
        assert resp.status == 200, await resp.text()

    # A second pod on the node (the Deployment replaces a deleted one): no request at all.
    before = len(hub.requests)
    await client.delete(PODS, first["metadata"]["name"], ns)
    second = await ready_pod(client, narig, "phi", not_uid=first["metadata"]["uid"])
    assert second["spec"]["nodeName"] == narig.node
    assert len(hub.requests) == before, [r for r in hub.requests[before:]]
    log = fetch_log(narig, second)
    assert "weights already cached" in log, log
