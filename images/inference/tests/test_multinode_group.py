"""One model split across two nodes: a two-rank group of real server processes.

Rank 0 (the HTTP API and vLLM's head) and rank 1 (vLLM's headless workers) run as two
``python -m kaito_inference`` processes, as two StatefulSet pods run them, on two
loopback addresses (127.0.0.1 and 127.0.0.2) so that each rank has its own node
address, with ``--pipeline-parallel-size 2``: each holds one of the model's two layers.
Greedy answers must equal the reference generator's (the contract suite proves the
single-node vLLM server gives those same answers), streaming must work, and killing
rank 1 (SIGKILL, a node or pod lost) must make rank 0's ``/health`` fail, naming the
lost rank, so its liveness probe restarts the group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import INFERENCE_DIR, MAX_MODEL_LEN, Artifacts, Reference, ServerProcess, free_port
from kaito_inference.group import TERMINATION_LOG_ENV

PROMPT = "Which nodes hold the model?"
N_TOKENS = 16
LOST_BOUND_S = 30.0
"""Generous bound for rank 0 to report a killed rank (it polls every second, loses a
rank after 5 s of silence)."""


def _group_args(ports: tuple[int, int, int], rank: int, host: str) -> list[str]:
    head_port, worker_port, torch_port = ports
    return [
        "--dtype",
        "float32",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--pipeline-parallel-size",
        "2",
        "--group-hosts",
        f"127.0.0.1:{head_port},127.0.0.2:{worker_port}",
        "--group-rank",
        str(rank),
        "--group-port",
        str(torch_port),
        "--host",
        host,
    ]


@pytest.fixture(scope="module")
def group(
    artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    logs = Path(os.environ.get("INF_TEST_LOG_DIR") or tmp_path_factory.mktemp("group-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    ports = (free_port(), free_port(), free_port())
    head_port, worker_port, _ = ports
    head_args = _group_args(ports, 0, "127.0.0.1")
    worker_args = _group_args(ports, 1, "127.0.0.2")
    worker = ServerProcess(
        engine="vllm",
        model=artifacts.model,
        port=worker_port,
        extra_args=worker_args,
        env={"VLLM_HOST_IP": "127.0.0.2", TERMINATION_LOG_ENV: str(logs / "rank1-termination")},
        log_path=logs / "group-rank1.log",
    )
    head = ServerProcess(
        engine="vllm",
        model=artifacts.model,
        port=head_port,
        extra_args=head_args,
        env={"VLLM_HOST_IP": "127.0.0.1", TERMINATION_LOG_ENV: str(logs / "rank0-termination")},
        log_path=logs / "group-rank0.log",
    )
    # The worker's /health says 200 only once the head has taken it in, so it is
    # started without waiting; the head's start waits for the whole group.
    with open(worker.log_path, "wb") as out:  # type: ignore[arg-type]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(INFERENCE_DIR), env.get("PYTHONPATH", "")])
        env.update(worker.env)
        # Its own process group: killing it kills the pod, vLLM's worker processes too.
        worker.proc = subprocess.Popen(
            worker.command(),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=INFERENCE_DIR,
            start_new_session=True,
        )
    try:
        head.start()
        yield head, worker
    finally:
        head.stop()
        worker.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)


def test_rank0_reports_the_ranks_while_it_waits_and_serves_once_all_joined(
    group: tuple[ServerProcess, ServerProcess],
) -> None:
    head, _ = group
    waiting = [status for code, status in head.health_seen if code == 503]
    assert waiting, head.health_seen
    assert head.health_seen[-1] == (200, "ok")
    body = httpx.get(head.base_url + "/health").json()
    assert body["ranks"] == "2/2 ranks joined"
    worker_health = httpx.get(f"http://127.0.0.2:{group[1].port}/health").json()
    assert worker_health["status"] == "joined"
    assert worker_health["rank"] == 1


def test_a_model_split_across_two_ranks_answers_like_the_reference(
    group: tuple[ServerProcess, ServerProcess], reference: Reference
) -> None:
    head, _ = group
    expected = reference.greedy(reference.chat_ids(PROMPT), None, N_TOKENS)
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": N_TOKENS,
        "temperature": 0,
    }
    r = httpx.post(head.base_url + "/v1/chat/completions", json=request, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected

    streamed = []
    with httpx.stream(
        "POST",
        head.base_url + "/v1/chat/completions",
        json={**request, "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                streamed.append(choice["delta"].get("content") or "")
    assert "".join(streamed) == expected


def test_a_worker_rank_refuses_api_requests(group: tuple[ServerProcess, ServerProcess]) -> None:
    _, worker = group
    r = httpx.post(f"http://127.0.0.2:{worker.port}/v1/completions", json={"prompt": "x"})
    assert r.status_code == 503
    assert "rank 0" in r.json()["error"]["message"]


def test_killing_the_worker_rank_makes_rank0_unhealthy(
    group: tuple[ServerProcess, ServerProcess],
) -> None:
    head, worker = group
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)  # the pod dies, all of its processes
    deadline = time.monotonic() + LOST_BOUND_S
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        r = httpx.get(head.base_url + "/health", timeout=5)
        body = r.json()
        if r.status_code == 503:
            break
        time.sleep(0.5)
    assert body.get("status") == "unhealthy", body
    assert "rank 1 (127.0.0.2:" in str(body.get("error")), body
    assert body.get("ranks") == "1/2 ranks joined"
    # Its liveness probe fails; when kubelet stops it, it exits non-zero and leaves the
    # reason where the controller reads it (the pod's last termination message).
    assert head.stop() == 1
    assert head.log_path is not None
    message = (head.log_path.parent / "rank0-termination").read_text()
    assert message.startswith("GroupRankLost: rank 1 (127.0.0.2:"), message
