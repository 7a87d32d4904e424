"""The README's main command, `make demo` (= `kaito dev demo`), works and cleans up.

Runs the real command as a subprocess in its own state directory (its own control
plane, AKS emulator, gpu-provisioner and workspace controller), with ``--down`` so it
tears itself down, then checks that no process it started is left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_make_demo_brings_the_quick_start_workspace_to_resource_ready_and_tears_down(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "dev"
    pids: dict[str, int] = {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaito.cli", "dev", "demo", "--down", "--dir", str(state_dir)],
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
    assert proc.wait(timeout=180) == 0, out
    assert "created by the workspace controller" in out, out
    assert "Machine MachineLaunched=True" in out, out
    assert "Workspace ResourceReady=True" in out, out
    assert "is Ready with nvidia.com/gpu=1, labelled accelerator=nvidia" in out, out
    assert "done: workspace-phi-3-mini is ResourceReady" in out, out
    expected = {"etcd", "kube-apiserver", "aks-emulator", "gpu-provisioner", "workspace-controller"}
    assert set(pids) >= expected, pids
    assert not [name for name, pid in pids.items() if _alive(pid)], "processes left running"
    assert not state_dir.exists(), "--down removes the state directory"
