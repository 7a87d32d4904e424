"""The real processes: ``kaito dev aks-emulator`` and ``kaito gpu-provisioner``.

A provisioner process killed with SIGKILL mid-create is replaced by a new process,
which resumes the agent-pool operation from the Machine's annotation: one PUT, one
pool, one Node, Machine Ready. Both processes stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaito.api.machine import MACHINES
from kaito.provisioner.context import TOKEN_ANNOTATION
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import NODES
from kaito_dev.controlplane import free_port

SRC = Path(__file__).resolve().parents[3] / "src"


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "kaito.cli", *argv],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"did not stop on {sig}:\n{self.tail()}") from None
        finally:
            self._out.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


def base_env(kubeconfig: str) -> dict[str, str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig, "KAITO_LOG_FORMAT": "json"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def emulator_state(url: str, ca_file: str) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(f"{url}/_emulator/state", context=ctx, timeout=5) as r:
        return dict(json.loads(r.read()))


async def wait_until(check: Any, timeout: float, what: str, proc: Proc | None = None) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = await check()
                if value:
                    return value
                await asyncio.sleep(0.1)
    except TimeoutError:
        tail = f"\n{proc.tail()}" if proc else ""
        raise AssertionError(f"timed out waiting for {what}{tail}") from None


async def test_provisioner_process_killed_mid_create_is_replaced_and_converges(
    client: Client, kubeconfig: str, machine_crd: None, tmp_path: Path, procs: list[Proc]
) -> None:
    test_id = uuid.uuid4().hex[:10]
    cluster = f"aks{test_id[:8]}"
    port = free_port()
    env = base_env(kubeconfig)
    emu = Proc(
        [
            "dev", "aks-emulator", "--port", str(port), "--dir", str(tmp_path / "emu"),
            "--cluster-name", cluster, "--create-latency", "3", "--delete-latency", "0.2",
            "--node-ready-delay", "0.3", "--heartbeat-interval", "0",
        ],
        env,
        tmp_path / "emulator.log",
    )  # fmt: skip
    procs.append(emu)
    env_file = tmp_path / "emu" / "provisioner.env"
    await wait_until(lambda: _exists(env_file), 30, "the emulator's env file", emu)
    prov_env = {**env, **_read_env(env_file)}
    prov_env.update(
        ARM_POLLING_INTERVAL="0.1",
        LAUNCH_BACKOFF_BASE_SECONDS="0.2",
        MACHINE_LABEL_SELECTOR=f"kaito-test={test_id}",
    )
    url, ca_file = prov_env["ARM_BASE_URL"], prov_env["ARM_CA_BUNDLE"]
    prov_args = [
        "gpu-provisioner",
        "--metrics-bind-address",
        "0",
        "--health-probe-bind-address",
        "0",
    ]

    first = Proc(prov_args, prov_env, tmp_path / "provisioner-1.log")
    procs.append(first)
    name = f"p{test_id[:8]}"
    await client.create(
        MACHINES,
        {
            "metadata": {
                "name": name,
                "labels": {"kaito.sh/workspace": "ws", "kaito-test": test_id},
            },
            "spec": {
                "requirements": [
                    {
                        "key": "node.kubernetes.io/instance-type",
                        "operator": "In",
                        "values": ["Standard_NC24ads_A100_v4"],
                    }
                ],
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    )

    async def token() -> bool:
        m = await client.get(MACHINES, name)
        return TOKEN_ANNOTATION in (m["metadata"].get("annotations") or {})

    await wait_until(token, 30, "the create's continuation token", first)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    state = emulator_state(url, ca_file)
    assert state["pools"][name]["provisioningState"] == "Creating"

    second = Proc(prov_args, prov_env, tmp_path / "provisioner-2.log")
    procs.append(second)

    async def ready() -> dict[str, Any] | None:
        m = await client.get(MACHINES, name)
        conds = {c["type"]: c["status"] for c in m.get("status", {}).get("conditions") or ()}
        return m if conds.get("Ready") == "True" else None

    machine = await wait_until(ready, 30, "the Machine Ready", second)
    node = await client.get(NODES, machine["status"]["nodeName"])
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"  # NC24ads_A100_v4: 1 GPU
    puts = [
        r
        for r in emulator_state(url, ca_file)["requests"]
        if r["op"] == "create" and r["pool"] == name
    ]
    assert len(puts) == 1, f"a second PUT: {puts}"
    assert '"event": "resuming agent pool create"' in second.log.read_text()

    await client.delete(MACHINES, name)

    async def gone() -> bool:
        try:
            await client.get(MACHINES, name)
        except NotFound:
            return True
        return False

    await wait_until(gone, 30, "the Machine deleted", second)
    assert emulator_state(url, ca_file)["pools"] == {}
    assert second.stop() == 0, second.tail()
    assert emu.stop() == 0, emu.tail()


async def _exists(path: Path) -> bool:
    return _nonempty(path)


def _bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def _nonempty(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


async def test_emulator_killed_mid_create_restarts_as_the_same_cluster_and_finishes_the_pool(
    client: Client, kubeconfig: str, machine_crd: None, tmp_path: Path, procs: list[Proc]
) -> None:
    """Found by `make chaos`: a SIGKILLed emulator forgot every pool (AKS never does), so
    Machines lost their pools and Nodes were orphaned. Now it keeps its pools, operations
    and CA in ``--dir``: started again there, it finishes the create it was running."""
    test_id = uuid.uuid4().hex[:10]
    port, env = free_port(), base_env(kubeconfig)
    emu_argv = [
        "dev", "aks-emulator", "--port", str(port), "--dir", str(tmp_path / "emu"),
        "--cluster-name", f"aks{test_id[:8]}", "--create-latency", "2",
        "--delete-latency", "0.2", "--node-ready-delay", "0.3", "--heartbeat-interval", "0",
    ]  # fmt: skip
    emu = Proc(emu_argv, env, tmp_path / "emulator-1.log")
    procs.append(emu)
    env_file = tmp_path / "emu" / "provisioner.env"
    await wait_until(lambda: _exists(env_file), 30, "the emulator's env file", emu)
    prov_env = {**env, **_read_env(env_file)}
    prov_env.update(ARM_POLLING_INTERVAL="0.1", MACHINE_LABEL_SELECTOR=f"kaito-test={test_id}")
    url, ca_file = prov_env["ARM_BASE_URL"], prov_env["ARM_CA_BUNDLE"]
    ca_before = _bytes(ca_file)
    prov = Proc(
        ["gpu-provisioner", "--metrics-bind-address", "0", "--health-probe-bind-address", "0"],
        prov_env,
        tmp_path / "provisioner.log",
    )
    procs.append(prov)
    name = f"e{test_id[:8]}"
    await client.create(
        MACHINES,
        {
            "metadata": {
                "name": name,
                "labels": {"kaito.sh/workspace": "ws", "kaito-test": test_id},
            },
            "spec": {
                "requirements": [
                    {
                        "key": "node.kubernetes.io/instance-type",
                        "operator": "In",
                        "values": ["Standard_NC6s_v3"],
                    }
                ],
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    )

    async def creating() -> bool:
        return bool(emulator_state(url, ca_file)["pools"].get(name))

    await wait_until(creating, 30, "the pool creating", prov)
    assert emu.stop(signal.SIGKILL) == -signal.SIGKILL
    emu2 = Proc(emu_argv, env, tmp_path / "emulator-2.log")
    procs.append(emu2)
    assert _bytes(ca_file) == ca_before, "a restart keeps the emulator's CA"

    async def ready() -> dict[str, Any] | None:
        m = await client.get(MACHINES, name)
        conds = {c["type"]: c["status"] for c in m.get("status", {}).get("conditions") or ()}
        return m if conds.get("Ready") == "True" else None

    machine = await wait_until(ready, 30, "the Machine Ready", emu2)
    await client.get(NODES, machine["status"]["nodeName"])
    state = emulator_state(url, ca_file)
    assert state["pools"][name]["provisioningState"] == "Succeeded"
    assert '"event": "agent pools restored"' in emu2.log.read_text()

    await client.delete(MACHINES, name)

    async def gone() -> bool:
        try:
            await client.get(MACHINES, name)
        except NotFound:
            return True
        return False

    await wait_until(gone, 30, "the Machine deleted", prov)
    assert emulator_state(url, ca_file)["pools"] == {}
    with pytest.raises(NotFound):
        await client.get(NODES, machine["status"]["nodeName"])
    assert prov.stop() == 0, prov.tail()
    assert emu2.stop() == 0, emu2.tail()
