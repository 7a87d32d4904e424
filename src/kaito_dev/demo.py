"""``kaito dev demo``: the main job on the local stack, narrated step by step.

It applies the quick start's Workspace (``examples/kaito_workspace_phi_3.yaml``:
phi-3-mini-4k-instruct on Standard_NC6s_v3, exactly as written there) through the
validating webhook, then narrates what happens, printing ``kubectl get workspace``
whenever a condition changes:

1. the workspace controller creates the Machine; the gpu-provisioner turns it into an
   AKS agent pool through the real Azure SDK against the emulated ARM API, which
   registers a GPU Node; the controller labels it and sets ``ResourceReady``;
2. the controller creates the ConfigMap, Service and Deployment; the real scheduler
   binds the pod to the GPU node; the node agent runs the pod's ``fetch-weights`` init
   container, the real fetcher, which downloads phi-3's repo at its pinned revision from
   the stack's Hugging Face hub emulator into the node's model cache (the hub serves the
   tiny local stand-in model there, not phi-3's weights: the demo, the hub's log and the
   pod's annotations say so), then the inference server from images/inference as a
   local process, and the pod turns Ready from the server's own ``/health``;
   ``InferenceReady`` and ``WorkspaceReady`` follow;
3. it sends the quick start's ``/chat`` request and a streaming
   ``/v1/chat/completions`` request and prints the answers, then where the metrics are.
   On real nodes (the default stack) the first goes as the seeds' quick start does it:
   ``kubectl run`` a curl pod (the stack's ``kaito-python/curl`` image) that POSTs to
   ``http://$CLUSTERIP/chat`` through kube-proxy; with the node-agent fallback there is
   no kube-proxy, so the demo talks to the pod itself.

On real nodes the pod is a real one: the kubelet pulls our inference image from the
stack's registry, runs ``fetch-weights`` into the node's own disk, and the device plugin
gives it ``KAITO_EMULATED_GPU=cpu`` (the server runs the preset on CPU). The demo
prints the measured node boot -> Ready, image pulls (kubelet's Pulled events), weights
fetch and server start.

The timings it prints separate the inference server's own start-up (process start to
``/health`` answering 200) from everything KAITO does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from kaito.api.machine import MACHINES
from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.meta import Obj
from kaito.runtime.resource import EVENTS, NODES, PODS, SERVICES
from kaito_dev.controlplane import REPO_ROOT, ControlPlaneState
from kaito_dev.stack import node_dir_for

QUICK_START = REPO_ROOT / "examples" / "kaito_workspace_phi_3.yaml"
CHAT_PROMPT = "What is Kubernetes?"
READY = "Ready"
PULLED = re.compile(r'Successfully pulled image "([^"]+)" in (\S+)')
"""kubelet 1.20's ``Pulled`` event message; the time is a Go duration (``1m1.99s``)."""
GO_DURATION = re.compile(r"([\d.]+)(h|ms|us|µs|ns|m|s)")
GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration string (``1m1.993s``, ``912.4ms``); None if it is not one."""
    parts = GO_DURATION.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return None
    return sum(float(n) * GO_UNITS[u] for n, u in parts)


def _conditions(obj: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or ()}


def _is_true(obj: Obj, type_: str) -> bool:
    return _conditions(obj).get(type_, {}).get("status") == "True"


@dataclass
class Timeline:
    """Seconds since the Workspace was applied, as the demo saw them."""

    applied: float
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> float:
        return self.marks.setdefault(what, time.monotonic() - self.applied)

    def kaito_seconds(self) -> float | None:
        """apply -> WorkspaceReady minus the inference server's own start-up."""
        done = self.marks.get("WorkspaceReady")
        started, ready = self.marks.get("server process started"), self.marks.get("pod Ready")
        if done is None or started is None or ready is None:
            return None
        return done - (ready - started)


@dataclass
class DemoResult:
    workspace: Obj
    node: Obj
    pod: Obj
    chat: str
    stream: str
    timeline: Timeline
    fetched: HubFetch | None = None


@dataclass
class HubFetch:
    """What the hub emulator sent for one repo (its request log)."""

    repo: str
    files: int
    bytes: int
    requests: int
    note: str | None


async def hub_fetch(hub_url: str, repo: str) -> HubFetch:
    """Files and bytes the hub emulator at ``hub_url`` sent for ``repo``."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"{hub_url}/_emulator/requests") as requests,
        session.get(f"{hub_url}/_emulator/state") as state,
    ):
        log = [r for r in await requests.json() if r["repo"] == repo]
        note = (await state.json()).get("notes", {}).get(repo)
    sent = [r for r in log if r["bytes_sent"] > 0]
    return HubFetch(
        repo=repo,
        files=len({r["file"] for r in sent}),
        bytes=sum(r["bytes_sent"] for r in sent),
        requests=len(log),
        note=note,
    )


def _fetch_args(pod: Obj) -> tuple[str, str] | None:
    """(repo, revision) of the pod's ``fetch-weights`` init container."""
    for c in pod["spec"].get("initContainers") or ():
        argv = [*(c.get("command") or ()), *(c.get("args") or ())]
        if c.get("name") == "fetch-weights" and "--repo" in argv and "--revision" in argv:
            return argv[argv.index("--repo") + 1], argv[argv.index("--revision") + 1]
    return None


def kubectl_get_workspace(kubeconfig: str, name: str, namespace: str) -> str:
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", "get", "workspace", name, "-n", namespace],
        capture_output=True,
        text=True,
        check=False,
    )
    return (proc.stdout or proc.stderr).rstrip()


async def run_quick_start(
    state: ControlPlaneState, *, say: Callable[[str], None], timeout: float = 300.0
) -> DemoResult:
    """Apply the quick start's Workspace, narrate it to WorkspaceReady, chat with it."""
    body = yaml.safe_load(QUICK_START.read_text())
    name, ns = body["metadata"]["name"], body["metadata"].get("namespace", "default")
    async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
        await _create_when_webhook_answers(client, body, ns)
        timeline = Timeline(time.monotonic())
        say(f"applied {QUICK_START.relative_to(REPO_ROOT)} (workspace {ns}/{name})")
        ws, pod = await _follow(client, state, name, ns, timeline, say, timeout)
        node = await client.get(NODES, ws["status"]["workerNodes"][0])
        svc = await client.get(SERVICES, name, ns)
    pod_ip = pod["status"]["podIP"]
    port = svc["spec"]["ports"][0]["targetPort"]
    base = f"http://{pod_ip}:{port}"
    model_note = (pod["metadata"].get("annotations") or {}).get("kaito.sh/node-agent-model")
    stack = json.loads((Path(state.data_dir) / "stack.json").read_text())
    real = stack.get("nodes") == "real"
    if real:
        say(f"Service {name}: ClusterIP {svc['spec'].get('clusterIP')}:80 (kube-proxy)")
        async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
            timings = await measure(client, state, pod, timeline)
        for what, seconds in timings.items():
            say(f"  measured: {what} {seconds:.1f}s")
    else:
        say(
            f"Service {name} (ClusterIP {svc['spec'].get('clusterIP')}:80) -> pod "
            f"{pod['metadata']['name']} at {pod_ip}:{port}; no kube-proxy with the node "
            "agent, so the demo talks to the pod"
        )
    fetched = None
    fetch = _fetch_args(pod)
    hub_url = json.loads((Path(state.data_dir) / "stack.json").read_text()).get("hf_endpoint")
    if fetch is not None and hub_url:
        fetched = await hub_fetch(hub_url, fetch[0])
        say(
            f"the hub emulator ({hub_url}) sent {fetched.repo}@{fetch[1][:7]}: "
            f"{fetched.files} files, {fetched.bytes / 1e6:.1f} MB in {fetched.requests} "
            "requests, once: the node's model cache serves the next pod on that node"
        )
        if fetched.note:
            say(f"  {fetched.note}")
    if model_note:
        say(
            f"the node agent serves {model_note}: expect words from the Python docs, "
            "not phi-3's answers"
        )
    if real:
        curl_image = stack["images"]["curl"]
        chat = await asyncio.to_thread(
            curl_chat, state.kubeconfig, curl_image, svc["spec"]["clusterIP"], ns, say
        )
    else:
        chat = await _chat(base, say)
    stream = await _stream(base, say)
    return DemoResult(ws, node, pod, chat, stream, timeline, fetched)


def _seconds(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


async def measure(
    client: Client, state: ControlPlaneState, pod: Obj, timeline: Timeline
) -> dict[str, float]:
    """What the real node and kubelet took: boot -> Ready (the node's record), each image
    pull (kubelet's ``Pulled`` events), the weights fetch and the server's start (the
    containers' timestamps), apply -> WorkspaceReady."""
    out: dict[str, float] = {}
    node_name = pod["spec"]["nodeName"]
    record = node_dir_for(Path(state.data_dir)) / node_name / "state.json"
    with contextlib.suppress(OSError, ValueError):
        ready_after = json.loads(record.read_text()).get("ready_after_s")
        if ready_after is not None:
            out["node boot -> Ready"] = float(ready_after)
    events = await client.list(EVENTS, pod["metadata"]["namespace"])
    for ev in events["items"]:
        obj = ev.get("involvedObject") or {}
        if obj.get("name") != pod["metadata"]["name"] or ev.get("reason") != "Pulled":
            continue
        m = PULLED.search(ev.get("message", ""))
        if m and (seconds := go_duration(m[2])) is not None:
            out[f"image pull {m[1].rsplit('/', 1)[-1]}"] = seconds
    live = await client.get(PODS, pod["metadata"]["name"], pod["metadata"]["namespace"])
    status = live.get("status", {})
    for cs in status.get("initContainerStatuses") or ():
        term = (cs.get("state") or {}).get("terminated") or {}
        took = _seconds(term.get("startedAt"), term.get("finishedAt"))
        if cs["name"] == "fetch-weights" and took is not None:
            out["weights fetch (fetch-weights)"] = took
    started = next(
        (
            (cs.get("state") or {}).get("running", {}).get("startedAt")
            for cs in status.get("containerStatuses") or ()
        ),
        None,
    )
    ready = next(
        (c.get("lastTransitionTime") for c in status.get("conditions") or () if c["type"] == READY),
        None,
    )
    if (took := _seconds(started, ready)) is not None:
        out["server start (container start -> Ready)"] = took
    if "WorkspaceReady" in timeline.marks:
        out["apply -> WORKSPACEREADY"] = timeline.marks["WorkspaceReady"]
    return out


def curl_chat(
    kubeconfig: str, image: str, cluster_ip: str, namespace: str, say: Callable[[str], None]
) -> str:
    """The seeds' quick start: a curl pod POSTs to ``http://$CLUSTERIP/chat``; its log is
    the answer. The pod tolerates the GPU node's taints (the only node there is)."""
    payload = json.dumps({"prompt": CHAT_PROMPT, "generate_kwargs": {"max_new_tokens": 24}})
    pod = "quickstart-curl"
    kubectl = ["kubectl", f"--kubeconfig={kubeconfig}", "-n", namespace]
    overrides = json.dumps({"spec": {"tolerations": [{"operator": "Exists"}]}})
    argv = [
        *kubectl, "run", pod, f"--image={image}", "--restart=Never",
        f"--overrides={overrides}", "--",
        "-sS", "--max-time", "120", "-X", "POST", f"http://{cluster_ip}/chat",
        "-H", "accept: application/json", "-H", "Content-Type: application/json",
        "-d", payload,
    ]  # fmt: skip
    shown = " ".join(a if " " not in a and "{" not in a else f"'{a}'" for a in argv[2:])
    say(f"kubectl {shown}")
    subprocess.run(argv, check=True, capture_output=True, text=True)
    try:
        deadline = time.monotonic() + 180
        phase = ""
        while time.monotonic() < deadline:
            phase = subprocess.run(
                [*kubectl, "get", "pod", pod, "-o", "jsonpath={.status.phase}"],
                capture_output=True, text=True, check=False,
            ).stdout.strip()  # fmt: skip
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.5)
        logs = subprocess.run([*kubectl, "logs", pod], capture_output=True, text=True, check=False)
        answer = (logs.stdout or logs.stderr).strip()
        if phase != "Succeeded":
            raise RuntimeError(f"the curl pod ended {phase or 'nowhere'}: {answer[-1000:]}")
    finally:
        subprocess.run(
            [*kubectl, "delete", "pod", pod, "--wait=false"], capture_output=True, check=False
        )
    say(f"  -> {answer[:300]}")
    try:
        return str(json.loads(answer).get("Result", ""))
    except ValueError as e:
        raise RuntimeError(f"/chat over the ClusterIP answered no JSON: {answer[:500]}") from e


async def _follow(
    client: Client,
    state: ControlPlaneState,
    name: str,
    ns: str,
    timeline: Timeline,
    say: Callable[[str], None],
    timeout: float,
) -> tuple[Obj, Obj]:
    told: set[str] = set()
    shown: tuple[tuple[str, str], ...] | None = None

    def tell(key: str, message: str) -> None:
        if key not in told:
            told.add(key)
            say(f"  +{timeline.mark(key):5.1f}s {message}")

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        machines = await client.list(MACHINES, label_selector=f"kaito.sh/workspace={name}")
        for m in machines["items"]:
            tell(f"Machine {m['metadata']['name']}", f"Machine {m['metadata']['name']} created")
            if _is_true(m, "Ready"):
                node = m.get("status", {}).get("nodeName")
                tell("Machine Ready", f"Machine Ready: AKS agent pool provisioned, node {node}")
        pods = await client.list(PODS, ns, label_selector=f"kaito.sh/workspace={name}")
        pod = next((p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")), None)
        if pod is not None:
            _narrate_pod(pod, tell)
        ws = await client.get(WORKSPACES_V1ALPHA1, name, ns)
        conds = _conditions(ws)
        for ctype in ("ResourceReady", "InferenceReady", "WorkspaceReady"):
            cond = conds.get(ctype)
            if cond and cond["status"] == "True":
                tell(ctype, f"{ctype}=True ({cond.get('reason')}): {cond.get('message', '')[:120]}")
        columns = tuple(sorted((t, c["status"]) for t, c in conds.items()))
        if columns != shown:  # kubectl only when a column can have changed
            shown = columns
            table = await asyncio.to_thread(kubectl_get_workspace, state.kubeconfig, name, ns)
            for line in table.splitlines():
                say(f"    {line}")
        if _is_true(ws, "WorkspaceReady") and pod is not None:
            return ws, pod
        await asyncio.sleep(0.1)
    raise TimeoutError(f"workspace {ns}/{name} not WorkspaceReady after {timeout:.0f}s")


def _narrate_pod(pod: Obj, tell: Callable[[str, str], None]) -> None:
    pod_name = pod["metadata"]["name"]
    tell("pod created", f"pod {pod_name} created by the Deployment")
    node = pod["spec"].get("nodeName")
    if node:
        tell("pod scheduled", f"kube-scheduler bound {pod_name} to {node}")
    fetch = _fetch_args(pod)
    for cs in pod.get("status", {}).get("initContainerStatuses") or ():
        if cs.get("name") != "fetch-weights" or fetch is None:
            continue
        state = cs.get("state") or {}
        if "running" in state or "terminated" in state:
            tell(
                "weights fetch started",
                f"fetch-weights: the real fetcher downloads {fetch[0]}@{fetch[1][:7]} from the "
                "hub emulator (it holds the tiny stand-in model, not the preset's weights)",
            )
        if (state.get("terminated") or {}).get("exitCode") == 0:
            tell("weights fetched", "weights fetched into the node's model cache (.kaito-complete)")
    for cs in pod.get("status", {}).get("containerStatuses") or ():
        if "running" in (cs.get("state") or {}):
            ip = pod["status"].get("podIP")
            tell("server process started", f"the inference server started at {ip}")
    if _is_true(pod, "Ready"):
        tell("pod Ready", "pod Ready: the server's /health answers 200")


async def _chat(base: str, say: Callable[[str], None]) -> str:
    payload = {"prompt": CHAT_PROMPT, "generate_kwargs": {"max_new_tokens": 24}}
    say(f"POST {base}/chat {json.dumps(payload)}")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(f"{base}/chat", json=payload) as resp,
    ):
        answer = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"/chat answered {resp.status}: {answer}")
    result = str(answer.get("Result", ""))
    say(f"  -> {json.dumps(answer)[:300]}")
    return result


async def _stream(base: str, say: Callable[[str], None]) -> str:
    payload = {
        "model": "phi-3-mini-4k-instruct",
        "messages": [{"role": "user", "content": CHAT_PROMPT}],
        "max_tokens": 24,
        "temperature": 0,  # greedy: the stand-in's most likely words, the same every run
        "stream": True,
    }
    say(f"POST {base}/v1/chat/completions (stream: true, temperature: 0)")
    pieces: list[str] = []
    chunks = 0
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(f"{base}/v1/chat/completions", json=payload) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"/v1/chat/completions answered {resp.status}: {await resp.text()}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            for choice in json.loads(line[6:]).get("choices") or ():
                pieces.append((choice.get("delta") or {}).get("content") or "")
    text = "".join(pieces)
    say(f"  -> {chunks} SSE chunks ending in [DONE]: {text[:300]!r}")
    return text


async def _create_when_webhook_answers(client: Client, body: Obj, ns: str) -> None:
    """The apiserver picks up the webhook registration asynchronously: retry briefly."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.create(WORKSPACES_V1ALPHA1, body, ns)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
