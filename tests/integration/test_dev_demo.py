"""The README's main command, `make demo` (= `kaito dev demo`), works and cleans up.

Runs the real command as a subprocess in its own state directory (its own control
plane, registry, AKS emulator, Hugging Face hub emulator, kube-proxy, cluster DNS), with
``--down`` so it tears itself down. KAITO is installed as users install it: ``kubectl
apply -k`` of deploy/ (a local overlay), both controllers' two replicas running as pods
of our controller image on a real system node, and the summary lists them (``kubectl
get pods -n kaito-system``). The AKS emulator boots the GPU pool's VM as a REAL node (containerd +
kubelet 1.20 + the emulated-GPU device plugin); the kubelet pulls our inference image
from the stack's registry, runs the pod's ``fetch-weights`` init container (the real
fetcher, which downloads phi-3's repo at the preset's pinned revision from the hub
emulator, serving the tiny stand-in model there, into the node's own disk) and the
server, which the device plugin's ``KAITO_EMULATED_GPU=cpu`` puts on CPU. The answer
comes as the seeds' quick start gets it: a curl pod POSTing to the Service's ClusterIP.

Afterwards nothing is left: no process, no node state, container, cgroup, bridge or
``KUBE-*`` chain (`kaito dev down` checks them and fails naming what is left; the test
checks again), and the host's sysctls are back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kaito.presets.catalog import load_catalog
from kaito_dev.hfhub.presets import LOCAL_MARKERS
from kaito_dev.realnode import hoststate
from kaito_dev.realnode.node import RUN_ROOT
from kaito_dev.stack import stand_in_model_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (the node agent's children)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not _alive(int(proc.name)):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.timeout(1200)  # the first run on a machine builds the images (~5 min)
def test_make_demo_serves_the_quick_start_workspace_answers_chat_and_tears_down(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "dev"
    sysctls = {name: hoststate.read_sysctl(name) for name in hoststate.SYSCTLS}
    pids: dict[str, int] = {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaito_dev", "demo", "--down", "--dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        out += line
        state_file = state_dir / "state.json"
        if not pids and "stack is up" in line and state_file.exists():
            pids = json.loads(state_file.read_text())["pids"]
    assert proc.wait(timeout=900) == 0, out
    assert re.search(r"kubectl apply -k \S+/kaito-install", out), out
    assert re.search(r"both controllers' 2 replicas Ready after [\d.]+s", out), out
    # The summary's kubectl get pods -n kaito-system: 2 + 2 pods Running from our image.
    listed = re.findall(
        r"\] +((?:gpu-provisioner|kaito-workspace-controller)-\S+) +(\S+) +(\S+) +\S+ +(aks-system-\S+)",
        out.split("the controllers, installed by kubectl apply -k")[-1],
    )
    assert len(listed) == 4, out
    assert all(phase == "Running" for _, phase, _, _ in listed), listed
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+/kaito-python/controller:[\w.-]+", i)
               for _, _, i, _ in listed), listed  # fmt: skip
    assert "Machine Ready: AKS agent pool provisioned" in out, out
    assert "kube-scheduler bound workspace-phi-3-mini-" in out, out
    for cond in ("ResourceReady", "InferenceReady", "WorkspaceReady"):
        assert f"{cond}=True" in out, out
    # kubectl's own table, with every column True at the end.
    table = [line.split() for line in out.splitlines() if "workspace-phi-3-mini   Standard" in line]
    assert table, out
    last = table[-1][table[-1].index("workspace-phi-3-mini") :]
    # NAME INSTANCE RESOURCEREADY INFERENCEREADY (JOBSTARTED empty) WORKSPACEREADY AGE
    assert last[1] == "Standard_NC6s_v3" and last[2:5] == ["True", "True", "True"], last
    # The seeds' quick start: a curl pod (our curl image) POSTs to the ClusterIP.
    assert re.search(r"kubectl -n default run quickstart-curl --image=127\.0\.0\.1:\d+/", out), out
    assert re.search(r"POST http://10\.96\.\d+\.\d+/chat", out), out
    assert re.search(r'-> \{"Result": ?"What is Kubernetes\?', out), out
    for measured in (
        "node boot -> Ready",
        "image pull inference:0.1.0",
        "weights fetch (fetch-weights)",
        "server start (container start -> Ready)",
        "apply -> WORKSPACEREADY",
    ):
        assert f"measured: {measured}" in out, out
    assert "SSE chunks ending in [DONE]" in out, out
    assert "KAITO's part" in out, out
    assert "/metrics" in out, out
    # The weights: the real fetcher, from the hub emulator, every file of the stand-in once.
    preset = load_catalog().get("phi-3-mini-4k-instruct")
    assert preset is not None and preset.hugging_face is not None
    ref = f"{preset.hugging_face.repo}@{preset.hugging_face.revision[:7]}"
    assert re.search(r"Hugging Face hub emulator at http://(?!127\.)[\d.]+:", out), out
    assert "each holding the tiny stand-in model (NOT the presets' weights)" in out, out
    assert f"fetch-weights: the real fetcher downloads {ref} from the hub emulator" in out, out
    assert "weights fetched into the node's model cache (.kaito-complete)" in out, out
    sent = re.search(
        rf"the hub emulator \(http://[^)]+\) sent {ref}: (\d+) files, ([\d.]+) MB", out
    )
    assert sent, out
    model = [
        p for p in stand_in_model_dir().rglob("*") if p.is_file() and p.name not in LOCAL_MARKERS
    ]
    assert int(sent.group(1)) == len(model), (sent.group(0), model)
    assert sent.group(2) == f"{sum(p.stat().st_size for p in model) / 1e6:.1f}", sent.group(0)
    assert (
        f"STAND-IN: this repo holds the local tiny model 'tiny-model', not the weights of {preset.hugging_face.repo}"
        in out
    ), out
    expected = {
        "etcd",
        "kube-apiserver",
        "registry",
        "aks-emulator",
        "hf-hub",
        "kube-proxy",
        "cluster-dns",
    }
    assert set(pids) >= expected, pids
    # The controllers are pods, not host processes; no node agent either.
    assert not {"node-agent", "gpu-provisioner", "workspace-controller"} & set(pids), pids
    assert "stopped system node aks-system-" in out, out
    assert "stopped real node aks-" in out, out
    assert not [name for name, pid in pids.items() if _alive(pid)], "processes left running"
    assert _processes_under(state_dir) == [], "a node or a container outlived the demo"
    assert not state_dir.exists(), "--down removes the state directory"
    assert "LEFT BEHIND" not in out, out
    assert not list(RUN_ROOT.glob("aks-*")), "node state left in /run/kaito-node"
    assert hoststate.kube_chains() == [], "iptables chains left"
    assert {n: hoststate.read_sysctl(n) for n in hoststate.SYSCTLS} == sysctls
