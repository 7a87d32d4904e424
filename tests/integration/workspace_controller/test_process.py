"""The real process: ``kaito workspace-controller`` with its webhook, leader election,
probes and metrics, beside an in-process gpu-provisioner and AKS emulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.admission.webhook import (
    CONFIGURATION_NAME,
    VALIDATING_WEBHOOK_CONFIGURATIONS,
)
from kaito.runtime.client import Client
from kaito.runtime.errors import ApiError, NotFound
from kaito_dev.controlplane import free_port

from .conftest import WsRig

SRC = Path(__file__).resolve().parents[3] / "src"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kaito.cli", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _http(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, url)


@pytest.fixture
async def webhook_configuration_cleanup(client: Client) -> AsyncIterator[None]:
    yield None
    # failurePolicy Fail: a registration left behind would block later Workspace writes.
    with contextlib.suppress(NotFound):
        await client.delete(VALIDATING_WEBHOOK_CONFIGURATIONS, CONFIGURATION_NAME)


async def test_the_controller_process_serves_the_webhook_and_provisions_and_stops_on_sigterm(
    wsrig: WsRig,
    client: Client,
    kubeconfig: str,
    tmp_path: Path,
    webhook_configuration_cleanup: None,
) -> None:
    metrics, probes = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": kubeconfig, "KAITO_LOG_FORMAT": "json"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log = tmp_path / "controller.log"
    argv = [
        "workspace-controller",
        f"--metrics-bind-address=127.0.0.1:{metrics}",
        f"--health-probe-bind-address=127.0.0.1:{probes}",
        "--leader-elect",
        f"--leader-election-namespace={wsrig.namespace}",
        "--webhook-bind-address=127.0.0.1:0",
        "--webhook-cert-secret=",
        "--webhook-url=https://127.0.0.1:{port}/validate/workspaces",
    ]
    proc = _spawn(argv, env, log)
    try:
        async with asyncio.timeout(30):
            while (await _http(f"http://127.0.0.1:{probes}/readyz"))[0] != 200:
                assert proc.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.2)

        # The webhook answers (the apiserver picks the registration up asynchronously).
        bad = wsrig.body("bad", preset="no-such-model")
        denied = ""
        async with asyncio.timeout(30):
            while not denied:
                try:
                    await client.create(WORKSPACES_V1ALPHA1, bad)
                except ApiError as e:
                    if "denied the request" not in e.message:
                        raise
                    denied = e.message
                    break
                await client.delete(WORKSPACES_V1ALPHA1, "bad", wsrig.namespace)
                await asyncio.sleep(0.2)

        assert "no-such-model" in denied

        await wsrig.create("proc")
        await wsrig.wait_resource_ready("proc")
        _, text = await _http(f"http://127.0.0.1:{metrics}/metrics")
        assert 'kaito_workspace_count{state="ready"}' in text
        assert 'kaito_workspace_preset_count{preset="phi-3-mini-4k-instruct"}' in text
        assert 'controller_runtime_reconcile_total{controller="workspace"' in text

        await wsrig.delete("proc")
        assert await wsrig.machines() == []

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
