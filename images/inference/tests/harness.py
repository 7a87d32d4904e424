"""Running the inference server as a real process, for the tests and the benchmark.

The server is started exactly as in a pod (`python -m kaito_inference ...`) on a free
port; `ServerProcess` waits for it to become healthy, records the health statuses it saw
while loading, and stops it with SIGTERM (SIGKILL after a timeout).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kaito_inference.group import TERMINATION_LOG_ENV

INFERENCE_DIR = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = INFERENCE_DIR.parents[1] / "src"
"""Where ``kaito_contracts`` lives (the image copies it beside its package)."""
STARTUP_TIMEOUT_S = 240.0
# How the test servers are configured (see conftest.server).
MAX_CONCURRENT = 4
MAX_REQUEST_BYTES = 64 * 1024
MAX_MODEL_LEN = 2048
MUTED_ADAPTER = "alpha_muted"  # a copy of alpha served with strength 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


@dataclass(kw_only=True)
class ServerProcess:
    """A `python -m kaito_inference` child process."""

    engine: str
    model: Path
    served_model_name: str = "tiny"
    adapters_dir: Path | None = None
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int = field(default_factory=free_port)
    argv: Sequence[str] | None = None  # another server's command line (the benchmark's)
    health_seen: list[tuple[int, str]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    startup_seconds: float = 0.0
    new_session: bool = False
    """Own process group, so that `kill` takes vLLM's child processes too (a pod lost)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.argv is not None:
            return list(self.argv)
        cmd = [
            sys.executable,
            "-m",
            "kaito_inference",
            "--engine",
            self.engine,
            "--model",
            str(self.model),
            "--served-model-name",
            self.served_model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--adapters-dir",
            str(self.adapters_dir or ""),
            "--log-format",
            "json",
        ]
        return cmd + list(self.extra_args)

    def launch(self) -> None:
        """Start the process without waiting; a restart appends to the same log."""
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(INFERENCE_DIR), str(CONTRACTS_DIR), env.get("PYTHONPATH", "")) if p
        )
        env.update(self.env)
        mode = "ab" if self.proc is not None else "wb"
        out = open(self.log_path, mode) if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.health_seen = []
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=INFERENCE_DIR,
            start_new_session=self.new_session,
        )  # fmt: skip

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> ServerProcess:
        started = time.monotonic()
        self.launch()
        assert self.proc is not None
        deadline = started + timeout
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.engine} server exited with {self.proc.returncode} while "
                        f"starting; log: {self.log_path}\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"{self.engine} server not healthy after {timeout}s; log: "
                        f"{self.log_path}\n{self.log_tail()}"
                    )
                try:
                    r = client.get(self.base_url + "/health")
                except httpx.TransportError:
                    time.sleep(0.2)
                    continue
                status = str(r.json().get("status", "")) if r.content else ""
                if not self.health_seen or self.health_seen[-1] != (r.status_code, status):
                    self.health_seen.append((r.status_code, status))
                if r.status_code == 200:
                    break
                time.sleep(0.2)
        self.startup_seconds = time.monotonic() - started
        return self

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, to the whole process group when it has its own."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.new_session:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        self.proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        """The exit code of a process expected to stop by itself within ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {timeout:.0f} s; log: {self.log_path}\n{self.log_tail()}"
            ) from None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0.0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def metrics_text(http: httpx.Client) -> str:
    response = http.get("/metrics")
    assert response.status_code == 200
    return response.text


def wait_idle(http: httpx.Client, timeout: float = 15.0) -> str:
    """Wait until no request is in flight and the engine runs nothing; returns /metrics."""
    deadline = time.monotonic() + timeout
    while True:
        text = metrics_text(http)
        busy = (
            metric_value(text, "kaito_inference_requests_in_flight")
            + metric_value(text, "vllm:num_requests_running")
            + metric_value(text, "vllm:num_requests_waiting")
        )
        if busy == 0:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"server still busy after {timeout}s:\n{text}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Artifacts:
    root: Path
    model: Path
    adapters: Path


class Reference:
    """Greedy generation with plain transformers + PEFT, in the test process."""

    def __init__(self, artifacts: Artifacts) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(artifacts.model))
        base = AutoModelForCausalLM.from_pretrained(str(artifacts.model), dtype=torch.float32)
        self.model = PeftModel.from_pretrained(
            base, str(artifacts.adapters / "alpha"), adapter_name="alpha"
        )
        self.model.load_adapter(str(artifacts.adapters / "beta"), adapter_name="beta")
        self.model.eval()
        self._cache: dict[tuple[Any, ...], str] = {}

    def add_adapter(self, name: str, path: Path) -> None:
        self.model.load_adapter(str(path), adapter_name=name)

    def chat_ids(self, content: str) -> list[int]:
        prompt = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(prompt, add_special_tokens=False))

    def greedy(self, ids: list[int], adapter: str | None, max_tokens: int) -> str:
        key = (tuple(ids), adapter, max_tokens)
        if key not in self._cache:
            torch = self._torch
            inputs = torch.tensor([ids])
            kwargs = {"max_new_tokens": max_tokens, "do_sample": False, "pad_token_id": 3}
            with torch.inference_mode():
                if adapter is None:
                    with self.model.disable_adapter():
                        out = self.model.generate(input_ids=inputs, **kwargs)
                else:
                    self.model.set_adapter(adapter)
                    out = self.model.generate(input_ids=inputs, **kwargs)
            self._cache[key] = self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
        return self._cache[key]


@dataclass
class GroupProcesses:
    """A two-rank group (one model split across two nodes), started like two pods.

    Rank 0 listens on 127.0.0.1 and rank 1 on 127.0.0.2, each with its own
    ``VLLM_HOST_IP``, so each rank has its own node address; ``--pipeline-parallel-size
    2`` puts one pipeline stage on each. Each rank runs in its own process group so that
    killing it kills its vLLM processes too, as losing a pod does; restarting a rank
    starts a new process on the same address, as kubelet restarts a container.
    """

    model: Path
    logs: Path
    extra_args: Sequence[str] = ()
    head: ServerProcess = field(init=False)
    worker: ServerProcess = field(init=False)

    def __post_init__(self) -> None:
        head_port, worker_port, torch_port = free_port(), free_port(), free_port()
        hosts = f"127.0.0.1:{head_port},127.0.0.2:{worker_port}"

        def rank(r: int, host: str, port: int) -> ServerProcess:
            args = [
                *self.extra_args,
                "--pipeline-parallel-size", "2", "--group-hosts", hosts,
                "--group-rank", str(r), "--group-port", str(torch_port), "--host", host,
            ]  # fmt: skip
            env = {"VLLM_HOST_IP": host, TERMINATION_LOG_ENV: str(self.termination_log(r))}
            log_path = self.logs / f"group-rank{r}.log"
            return ServerProcess(
                engine="vllm", model=self.model, port=port, extra_args=args, env=env,
                log_path=log_path, new_session=True,
            )  # fmt: skip

        self.head = rank(0, "127.0.0.1", head_port)
        self.worker = rank(1, "127.0.0.2", worker_port)

    def termination_log(self, rank: int) -> Path:
        return self.logs / f"rank{rank}-termination"

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.2:{self.worker.port}"

    def worker_health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.worker_url + "/health", timeout=5).json()
        return body

    def start(self) -> GroupProcesses:
        """Start rank 1 without waiting (it is healthy only once rank 0 took it in),
        then rank 0, waiting until the whole group serves."""
        self.worker.launch()
        try:
            self.head.start()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_worker(self) -> None:
        """Rank 1's container dies and kubelet starts a new one at the same address."""
        self.worker.kill()
        self.worker.launch()

    def stop(self) -> None:
        self.head.stop()
        self.worker.stop()
        self.head.kill()  # vLLM's processes, should any outlive their rank
        self.worker.kill()
