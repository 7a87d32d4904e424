"""A real Prometheus scrapes the real processes: ``kaito gpu-provisioner`` (against the AKS
emulator), ``kaito workspace-controller`` and the inference server (transformers engine,
tiny model). What a dashboard would query is there: controller-runtime's reconcile
counters from both controllers by job, the workspace gauges, and the engine's ``vllm:*``
series once a request has been served."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaito_dev.controlplane import free_port
from tests.integration.prometheus import start_prometheus
from tests.integration.provisioner.conftest import machine_crd  # noqa: F401 - fixture
from tests.integration.workspace_controller.conftest import workspace_crd  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
INFERENCE_DIR = ROOT / "images" / "inference"
INFERENCE_PYTHON = ROOT / ".venv-inference" / "bin" / "python"


class Proc:
    """A child process with its output in a log file; killed at the end of the test."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM\n{self.tail()}") from None


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


def kaito_env(kubeconfig: str) -> dict[str, str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig, "KAITO_LOG_FORMAT": "json"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def inference_env() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(INFERENCE_DIR), str(SRC)]),  # SRC: kaito_contracts
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("VIRTUAL_ENV", None)
    return env


def http(url: str, body: dict[str, object] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


async def wait_http_ok(url: str, proc: Proc, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            while (await asyncio.to_thread(http, url))[0] != 200:
                assert proc.popen.poll() is None, f"{proc.name} exited\n{proc.tail()}"
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"{url} not OK after {timeout}s\n{proc.tail()}") from None


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


def build_tiny_model(output: Path) -> None:
    if not INFERENCE_PYTHON.exists():
        pytest.fail(
            f"{INFERENCE_PYTHON} is missing: `make setup-inference` builds it", pytrace=False
        )
    proc = subprocess.run(
        [str(INFERENCE_PYTHON), "-m", "kaito_inference.tiny_model", "--output", str(output)],
        env=inference_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"tiny model build failed:\n{proc.stdout}\n{proc.stderr}"


async def test_prometheus_scrapes_both_controllers_and_the_inference_server(
    kubeconfig: str,
    machine_crd: None,  # noqa: F811 - the imported fixture
    workspace_crd: None,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    procs: list[Proc],
) -> None:
    test_id = uuid.uuid4().hex[:10]
    logs = tmp_path / "logs"
    logs.mkdir()
    env = kaito_env(kubeconfig)

    # The inference server loads torch: start it first, the controllers meanwhile.
    model = tmp_path / "tiny-model"
    await asyncio.to_thread(build_tiny_model, model)
    inference_port = free_port()
    inference = Proc(
        "inference",
        [
            str(INFERENCE_PYTHON), "-m", "kaito_inference", "--engine", "transformers",
            "--model", str(model), "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(inference_port), "--log-format", "json",
        ],
        inference_env(),
        logs,
    )  # fmt: skip
    procs.append(inference)

    emu_dir = tmp_path / "aks-emulator"
    emulator = Proc(
        "aks-emulator",
        [
            sys.executable, "-m", "kaito_dev", "aks-emulator", "--port", "0",
            "--dir", str(emu_dir), "--cluster-name", f"aks{test_id[:8]}",
            "--heartbeat-interval", "0",
        ],
        env,
        logs,
    )  # fmt: skip
    procs.append(emulator)
    env_file = emu_dir / "provisioner.env"
    async with asyncio.timeout(30):
        while not (env_file.exists() and env_file.stat().st_size > 0):
            assert emulator.popen.poll() is None, emulator.tail()
            await asyncio.sleep(0.1)

    # The provisioner serves only this test's Machines (there are none): its counters
    # exist from start-up at zero, as controller-runtime's do.
    prov_env = {**env, **read_env_file(env_file), "MACHINE_LABEL_SELECTOR": f"kaito-test={test_id}"}
    prov_metrics, prov_probes = free_port(), free_port()
    provisioner = Proc(
        "gpu-provisioner",
        [
            sys.executable, "-m", "kaito.cli", "gpu-provisioner",
            f"--metrics-bind-address=127.0.0.1:{prov_metrics}",
            f"--health-probe-bind-address=127.0.0.1:{prov_probes}",
        ],
        prov_env,
        logs,
    )  # fmt: skip
    procs.append(provisioner)

    ws_metrics, ws_probes = free_port(), free_port()
    controller = Proc(
        "workspace-controller",
        [
            sys.executable, "-m", "kaito.cli", "workspace-controller", "--no-webhook",
            f"--metrics-bind-address=127.0.0.1:{ws_metrics}",
            f"--health-probe-bind-address=127.0.0.1:{ws_probes}",
        ],
        env,
        logs,
    )  # fmt: skip
    procs.append(controller)

    await wait_http_ok(f"http://127.0.0.1:{prov_probes}/readyz", provisioner, 60)
    await wait_http_ok(f"http://127.0.0.1:{ws_probes}/readyz", controller, 60)
    await wait_http_ok(f"http://127.0.0.1:{inference_port}/health", inference, 240)
    code, answer = await asyncio.to_thread(
        http,
        f"http://127.0.0.1:{inference_port}/chat",
        {"prompt": "hello", "generate_kwargs": {"max_new_tokens": 4}},
    )
    assert code == 200, answer

    targets = {
        "gpu-provisioner": [f"127.0.0.1:{prov_metrics}"],
        "workspace-controller": [f"127.0.0.1:{ws_metrics}"],
        "inference": [f"127.0.0.1:{inference_port}"],
    }
    with start_prometheus(targets, tmp_path / "prometheus") as prom:
        jobs = await prom.wait_for_series_async(
            "count by (job) (controller_runtime_reconcile_total)", min_count=2
        )
        assert {s["metric"]["job"] for s in jobs} == {"gpu-provisioner", "workspace-controller"}
        reconciles = await prom.query_async('controller_runtime_reconcile_total{result="success"}')
        controllers = {(s["metric"]["job"], s["metric"]["controller"]) for s in reconciles}
        assert {
            ("gpu-provisioner", "machine-lifecycle"),
            ("workspace-controller", "workspace"),
        } <= controllers, sorted(controllers)

        states = await prom.wait_for_series_async(
            'kaito_workspace_count{job="workspace-controller"}'
        )
        assert {s["metric"]["state"] for s in states} >= {"ready"}, states

        engine = await prom.wait_for_series_async('{__name__=~"vllm:.*", job="inference"}')
        names = {s["metric"]["__name__"] for s in engine}
        assert "vllm:num_requests_running" in names, sorted(names)
        generated = await prom.query_async(
            'sum(vllm:generation_tokens_total{job="inference", model_name="tiny"})'
        )
        assert generated and float(generated[0]["value"][1]) >= 1, generated

        health = {t["labels"]["job"]: t["health"] for t in prom.targets()}
        assert health == dict.fromkeys(targets, "up"), prom.targets()

    for p in (controller, provisioner, emulator, inference):
        assert p.stop() == 0, p.tail()
