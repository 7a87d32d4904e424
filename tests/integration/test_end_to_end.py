"""The whole path, as a user runs it, on the local stack (`kaito dev up`) with REAL nodes:

1. the seeds' second quick start: a tuning Workspace of phi-3 whose input is a volume
   and whose output is an adapter IMAGE in the stack's registry for pods (its
   authenticated listener on the host's address, `Stack.start_pod_registry`; a
   ``kubernetes.io/dockerconfigjson`` Secret from the stack's credentials): the workspace
   controller provisions a GPU node (Machine -> gpu-provisioner -> emulated AKS pool,
   whose VM boots as a real node: containerd + kubelet 1.20 + the emulated-GPU device
   plugin), creates the Job, the real scheduler binds its pod to the node, the kubelet
   pulls our images from the stack's registry and runs its ``fetch-weights`` init
   container (the real fetcher, against the stack's hub emulator, which serves the tiny
   stand-in model under phi-3's repo at the preset's pinned revision) and then our
   tuning image on those weights, which writes a LoRA adapter; the ``pusher`` sidecar
   pushes it as an adapter image (plain http, which only the controller's
   ``--plain-http-registry`` allows); the Workspace reports JobStarted and
   WorkspaceReady, and the registry holds the image;
2. an inference Workspace with ``adapters: [{source: {image: ...}}]`` and the pull
   Secret, on a node of its own: its ``adapter-0`` init container pulls the image into
   the adapters folder (the test prints the measured tuning, push and pull times);
   its pod fetches the weights onto that node's disk (the hub's log shows every file
   sent once per node, each node's cache has the fetcher's ``.kaito-complete``); the
   server lists the adapter as a model and answers with it (differently from the base
   model);
3. a real Prometheus (Debian's) scrapes both controllers and the inference server and
   returns ``controller_runtime_reconcile_total`` and ``vllm:*`` series;
4. deleting the Workspaces leaves nothing: no Machines, agent pools, Nodes, pods,
   Services, Deployments or Jobs, and the pools' real nodes are stopped with nothing of
   them left on the host; `kaito dev down` then finds nothing left either (no node
   state, containers, cgroups, bridges, ``KUBE-*`` chains; the host's sysctls back).

The controllers run as users run them: `kaito dev up` installs them with ``kubectl apply
-k`` of deploy/ (a local overlay) as two leader-elected replicas each, pods of our
controller image on a real system node, reaching the apiserver the in-cluster way with
their ServiceAccounts' tokens; so every API call of the path is checked against the
shipped RBAC, and Prometheus scrapes the controllers' pods.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kaito.api.machine import MACHINES
from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.presets.catalog import load_catalog
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    JOBS,
    NODES,
    PODS,
    SECRETS,
    SERVICES,
    Resource,
)
from kaito_dev.controlplane import ControlPlaneState
from kaito_dev.incluster import controller_pods
from kaito_dev.realnode import hoststate
from kaito_dev.realnode.node import RUN_ROOT
from kaito_dev.stack import node_dir_for, read_env_file
from tests.integration.polling import poll_until
from tests.integration.prometheus import start_prometheus

Obj = dict[str, Any]

NS = "default"
PRESET = "phi-3-mini-4k-instruct"
ADAPTER = "tuned"
TRAINING_CONFIG = """\
training_config:
  LoraConfig: {r: 8, lora_alpha: 16, lora_dropout: 0.0}
  TrainingArguments: {max_steps: 12, learning_rate: 0.05, logging_steps: 4, seed: 7}
  DatasetConfig: {max_seq_length: 128}
"""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[ControlPlaneState, Client]]:
    """`kaito dev up` in its own folder (its own control plane), `kaito dev down` after."""
    state_dir = tmp_path / "dev"
    kaito = [sys.executable, "-m", "kaito_dev"]
    sysctls = {name: hoststate.read_sysctl(name) for name in hoststate.SYSCTLS}
    up = await asyncio.to_thread(
        subprocess.run,
        [*kaito, "up", "--dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=900,  # the first run on a machine builds the images (~5 min)
    )
    passed = False
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = ControlPlaneState.load(state_dir)
        async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
            yield state, client
        passed = True
    finally:
        down = await asyncio.to_thread(
            subprocess.run,
            [*kaito, "down", "--dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if passed:  # else the test's own failure is the news
        assert down.returncode == 0 and "LEFT BEHIND" not in down.stdout, down.stdout
        assert not list(RUN_ROOT.glob("aks-*")), "node state left in /run/kaito-node"
        assert hoststate.kube_chains() == [], "iptables chains left"
        assert {n: hoststate.read_sysctl(n) for n in hoststate.SYSCTLS} == sysctls


ROUTED_WITHIN_S = 30.0
"""WorkspaceReady follows the pods' readiness; the Service routes once the EndpointSlice
controller and kube-proxy have caught up (until then kube-proxy rejects: connection
refused). A user sees the same lag; this bounds it."""


async def routed(base: str, explain: Callable[[], str] | None = None) -> float:
    """Seconds until the Service answers ``/health`` with 200, each try on a new
    connection: a kept-alive one stays with whatever answered it first. On failure the
    message lists each change of answer (and ``explain()``, run then)."""
    started = time.monotonic()
    answers: list[str] = []
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while time.monotonic() - started < ROUTED_WITHIN_S:
            try:
                async with session.get(f"{base}/health") as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
                    answer = f"HTTP {resp.status} (Server: {resp.headers.get('Server')})"
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer = repr(exc)
            if not answers or not answers[-1].endswith(answer):
                answers.append(f"{time.monotonic() - started:.1f}s {answer}")
            await asyncio.sleep(0.2)
    said = "\n".join(answers)
    if explain is not None:
        said += "\n" + await asyncio.to_thread(explain)
    raise AssertionError(f"{base} not routed {ROUTED_WITHIN_S:.0f} s after Ready:\n{said}")


def service_path(state: ControlPlaneState, svc: Obj, pod: Obj) -> str:
    """What stands between a client and ``pod`` behind ``svc``: the Services and endpoints,
    kube-proxy's NAT rules for the ClusterIP and its log, the route to the pod, and the
    pod asked directly."""
    ip, pod_ip = svc["spec"]["clusterIP"], pod["status"]["podIP"]
    out = []
    for argv in (
        ["kubectl", f"--kubeconfig={state.kubeconfig}", "get", "svc,ep,pods", "-A", "-o", "wide"],
        ["iptables-save", "-t", "nat"],
        ["ip", "route", "get", pod_ip],
        ["curl", "-sS", "-i", "--max-time", "5", f"http://{pod_ip}:5000/v1/models"],
        ["tail", "-n", "30", str(Path(state.data_dir) / "logs" / "kube-proxy.log")],
    ):
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        text = run.stdout + run.stderr
        if argv[0] == "iptables-save":
            text = "\n".join(ln for ln in text.splitlines() if ip in ln or "KUBE-SEP" in ln)
        out.append(f"$ {' '.join(argv)}\n{text}")
    return "\n".join(out)


async def gpu_nodes(client: Client) -> list[str]:
    """The Nodes of KAITO's agent pools: all but the system node, where the controllers
    run (and which stays until `kaito dev down`)."""
    return [
        n["metadata"]["name"]
        for n in await client.list_all(NODES)
        if n["metadata"].get("labels", {}).get("kubernetes.azure.com/mode") != "system"
    ]


async def delete_workspaces(client: Client, *names: str, timeout: float) -> None:
    """Delete the Workspaces and wait until each is gone (its finalizer done)."""
    for name in names:
        await client.delete(WORKSPACES_V1ALPHA1, name, NS)
    for name in names:
        await poll_until(
            lambda n=name: get_ws(client, n),  # type: ignore[misc]
            lambda w: w is None,
            timeout=timeout,
            what=f"{name} deleted",
        )


async def leftovers(client: Client, *workloads: Resource) -> dict[str, list[str]]:
    """What of KAITO's objects is left in the cluster, by kind: Machines, GPU Nodes, pods,
    Deployments, Services (but ``kubernetes``) and the ``workloads`` kinds named."""
    left: dict[str, list[str]] = {}
    for res, ns in ((MACHINES, None), (PODS, NS), (DEPLOYMENTS, NS), *((w, NS) for w in workloads)):
        if names := [o["metadata"]["name"] for o in await client.list_all(res, ns)]:
            left[res.kind] = names
    services = [s["metadata"]["name"] for s in await client.list_all(SERVICES, NS)]
    if services := [name for name in services if name != "kubernetes"]:
        left["Service"] = services
    if nodes := await gpu_nodes(client):
        left["Node"] = nodes
    return left


def workspace(name: str, **section: Any) -> Obj:
    return {
        "apiVersion": WORKSPACES_V1ALPHA1.api_version,
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": NS},
        "resource": {
            "instanceType": "Standard_NC6s_v3",
            "labelSelector": {"matchLabels": {"apps": name}},
        },
        **section,
    }


def conditions(obj: Obj | None) -> dict[str, Obj]:
    return {c["type"]: c for c in (obj or {}).get("status", {}).get("conditions") or ()}


async def get_ws(client: Client, name: str) -> Obj | None:
    try:
        return await client.get(WORKSPACES_V1ALPHA1, name, NS)
    except NotFound:
        return None


async def wait_true(client: Client, name: str, ctype: str, timeout: float = 480.0) -> Obj:
    def done(ws: Obj | None) -> bool:
        conds = conditions(ws)
        if (conds.get("MachineReady") or {}).get("status") == "False":
            raise AssertionError(f"{name}: {conds['MachineReady']}")
        cond = conds.get(ctype) or {}
        if cond.get("reason") in ("TuningFailed", "CrashLoopBackOff", "ImagePullBackOff"):
            raise AssertionError(f"{name}: {ctype} {cond}")
        return cond.get("status") == "True"

    ws = await poll_until(
        lambda: get_ws(client, name), done, timeout=timeout, what=f"{name} {ctype}", interval=0.2
    )
    assert ws is not None
    return ws


def agent_pools(state: ControlPlaneState) -> list[str]:
    """The emulated AKS cluster's agent pools, asked over its ARM API."""
    env = read_env_file(Path(state.data_dir) / "aks-emulator" / "provisioner.env")
    url = (
        f"{env['ARM_BASE_URL']}/subscriptions/{env['ARM_SUBSCRIPTION_ID']}/resourceGroups/"
        f"{env['ARM_RESOURCE_GROUP']}/providers/Microsoft.ContainerService/managedClusters/"
        f"{env['AZURE_CLUSTER_NAME']}/agentPools?api-version=2024-05-01"
    )
    ctx = ssl.create_default_context(cafile=env["ARM_CA_BUNDLE"])
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {env['ARM_STATIC_TOKEN']}"}
    )
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
        return [p["name"] for p in json.loads(resp.read())["value"]]


async def chat(base: str, model: str) -> str:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": "What does a kaito operator do?"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/v1/chat/completions", json=payload) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
    return str(body["choices"][0]["message"]["content"])


def hub_requests(state: ControlPlaneState) -> list[Obj]:
    """The stack's hub emulator's request log."""
    hub = json.loads((Path(state.data_dir) / "stack.json").read_text())["hf_endpoint"]
    with urllib.request.urlopen(f"{hub}/_emulator/requests", timeout=10) as resp:
        return list(json.loads(resp.read()))


async def assert_fetched_once_per_node(
    state: ControlPlaneState, client: Client, serving_pod: Obj, job: Obj
) -> None:
    """Tuning and serving ran on a node each: each node fetched every file once, into its
    own disk's cache, which the fetcher marked complete."""
    preset = load_catalog().get(PRESET)
    assert preset is not None and preset.hugging_face is not None
    hf = preset.hugging_face
    tuning_pods = await client.list(PODS, NS, label_selector=f"job-name={job['metadata']['name']}")
    nodes = {serving_pod["spec"]["nodeName"]}
    nodes |= {p["spec"]["nodeName"] for p in tuning_pods["items"]}
    assert len(nodes) == 2, nodes
    disk = node_dir_for(Path(state.data_dir))  # each real node's own /var/lib/kaito
    for node in nodes:
        marker = disk / node / "disk/kaito/models" / hf.cache_name / ".kaito-complete"
        done = json.loads(marker.read_text())
        assert (done["repo"], done["commit"]) == (hf.repo, hf.revision), done
    sent: dict[str, int] = {}
    for r in hub_requests(state):
        if r["repo"] == hf.repo and r["method"] == "GET" and r["bytes_sent"] > 0:
            sent[r["file"]] = sent.get(r["file"], 0) + 1
    files = {f["path"] for f in done["files"]}
    assert sent == dict.fromkeys(files, len(nodes)), sent


def seconds(start: str, end: str) -> float:
    """Seconds between two of the kubelet's RFC 3339 timestamps (1 s resolution)."""
    from datetime import datetime

    return (
        datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z"))
    ).total_seconds()


def terminated(pod: Obj, name: str) -> Obj:
    """The terminated state of ``pod``'s (init) container ``name``."""
    statuses = [
        *(pod["status"].get("initContainerStatuses") or ()),
        *(pod["status"].get("containerStatuses") or ()),
    ]
    (status,) = [c for c in statuses if c["name"] == name]
    state: Obj = status["state"].get("terminated") or status.get("lastState", {}).get("terminated")
    assert state, f"{name} has not terminated: {status}"
    return state


def manifest_in_registry(registry: str, repository: str, tag: str) -> Obj:
    """The image's manifest, read over the stack's anonymous loopback listener."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.timeout(1500)  # the first run on a machine builds the images (~5 min)
async def test_tune_an_adapter_serve_it_scrape_everything_and_leave_nothing_behind(
    stack: tuple[ControlPlaneState, Client], tmp_path: Path
) -> None:
    state, client = stack
    data = tmp_path / "data"
    data.mkdir()
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"What does a kaito operator do? ({i})"},
                {"role": "assistant", "content": "It runs models on GPU nodes for you."},
            ]
        }
        for i in range(16)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    await client.create(
        CONFIGMAPS,
        {
            "metadata": {"name": "tuning-config", "namespace": NS},
            "data": {"training_config.yaml": TRAINING_CONFIG},
        },
    )

    info = json.loads((Path(state.data_dir) / "stack.json").read_text())
    pod_registry = info["pod_registry"]
    assert not pod_registry.startswith("127."), "pods cannot reach a loopback registry"
    config = await asyncio.to_thread(Path(info["pod_registry_config"]).read_text)
    for secret in ("registry-push", "registry-pull"):
        await client.create(
            SECRETS,
            {
                "metadata": {"name": secret, "namespace": NS},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": config},
            },
        )
    image = f"{pod_registry}/adapters/tune-tiny:0.0.1"

    # 1. Tuning: volume in, adapter image out (the seeds' second quick start).
    tuning = workspace(
        "tune-tiny",
        tuning={
            "preset": {"name": PRESET},
            "method": "lora",
            "config": "tuning-config",
            "input": {"volumeSource": {"hostPath": {"path": str(data)}}},
            "output": {"image": image, "imagePushSecret": "registry-push"},
        },
    )
    await client.create(WORKSPACES_V1ALPHA1, tuning)
    ws = await wait_true(client, "tune-tiny", "JobStarted")
    ws = await wait_true(client, "tune-tiny", "WorkspaceReady")
    assert conditions(ws)["WorkspaceReady"]["reason"] == "TuningSucceeded"
    job = await client.get(JOBS, "tune-tiny", NS)
    assert job["status"]["succeeded"] == 1
    (tuning_pod,) = [
        p
        for p in (await client.list(PODS, NS, label_selector="job-name=tune-tiny"))["items"]
        if p["status"].get("phase") == "Succeeded"
    ]
    tuned_run, pushed = terminated(tuning_pod, "tuning"), terminated(tuning_pod, "pusher")
    assert pushed["exitCode"] == 0, pushed
    manifest = manifest_in_registry(info["registry"], "adapters/tune-tiny", "0.0.1")
    assert manifest["config"]["mediaType"].startswith("application/vnd.oci.image.config")
    timings = {
        "tuning_container_s": seconds(tuned_run["startedAt"], tuned_run["finishedAt"]),
        "push_after_tuning_s": seconds(tuned_run["finishedAt"], pushed["finishedAt"]),
    }

    # 2. Inference with the tuned adapter, pulled from the registry by an init container.
    serving = workspace(
        "serve-tiny",
        inference={
            "preset": {"name": PRESET},
            "adapters": [
                {
                    "source": {
                        "name": ADAPTER,
                        "image": image,
                        "imagePullSecrets": ["registry-pull"],
                    },
                    "strength": "1.0",
                }
            ],
        },
    )
    await client.create(WORKSPACES_V1ALPHA1, serving)
    ws = await wait_true(client, "serve-tiny", "WorkspaceReady")
    assert conditions(ws)["InferenceReady"]["status"] == "True"
    pods = await client.list(PODS, NS, label_selector="kaito.sh/workspace=serve-tiny")
    (pod,) = pods["items"]
    pulled = terminated(pod, "adapter-0")
    assert pulled["exitCode"] == 0, pulled
    timings["adapter_pull_s"] = seconds(pulled["startedAt"], pulled["finishedAt"])
    print(f"tuning -> adapter image -> serving timings: {json.dumps(timings)}")
    # Through the Service's ClusterIP (kube-proxy on the host), as a client in the cluster.
    svc = await client.get(SERVICES, "serve-tiny", NS)
    base = f"http://{svc['spec']['clusterIP']}:80"
    took = await routed(base, explain=lambda: service_path(state, svc, pod))
    print(f"the Service routed {took:.1f}s after WorkspaceReady")
    async with aiohttp.ClientSession() as session, session.get(f"{base}/v1/models") as resp:
        if resp.status != 200:  # seen once (a 404 without a body): say what answered
            print(resp.status, dict(resp.headers), await resp.text())
            print(await asyncio.to_thread(service_path, state, svc, pod))
        models = [m["id"] for m in (await resp.json())["data"]]
    assert models == [PRESET, ADAPTER], models
    plain, tuned = await chat(base, PRESET), await chat(base, ADAPTER)
    assert plain != tuned, "the adapter should change the answer"
    await assert_fetched_once_per_node(state, client, pod, job)

    # 3. A real Prometheus scrapes both controllers' pods and the inference server.
    targets = {
        job: [f"{p['status']['podIP']}:8080" for p in await controller_pods(client, deployment)]
        for job, deployment in (
            ("gpu-provisioner", "gpu-provisioner"),
            ("workspace-controller", "kaito-workspace-controller"),
        )
    }
    targets["inference"] = [f"{pod['status']['podIP']}:5000"]
    with start_prometheus(targets, tmp_path / "prometheus") as prom:
        reconciles = await prom.wait_for_series_async(
            "count by (job) (controller_runtime_reconcile_total)", timeout=60, min_count=2
        )
        assert {s["metric"]["job"] for s in reconciles} == {
            "gpu-provisioner",
            "workspace-controller",
        }
        vllm = await prom.wait_for_series_async('{__name__=~"vllm:.+", job="inference"}', 60)
        assert vllm, "no vllm:* series from the inference server"

    # 4. Deletion leaves nothing behind.
    await delete_workspaces(client, "serve-tiny", "tune-tiny", timeout=120)

    left = await poll_until(
        lambda: leftovers(client, JOBS), lambda x: not x, timeout=180, what="workload garbage"
    )
    assert left == {}
    assert agent_pools(state) == []
    # The pools' VMs are gone too: the emulator stopped them and checked the host.
    assert not list(node_dir_for(Path(state.data_dir)).glob("*/state.json"))
