"""One model split across two nodes: a two-rank group of real server processes.

Rank 0 (the HTTP API and vLLM's head) and rank 1 (vLLM's headless workers) run as two
``python -m kaito_inference`` processes, as two StatefulSet pods run them, each on its
own loopback address (`harness.GroupProcesses`), with ``--pipeline-parallel-size 2``:
each holds one of the model's two layers. Greedy answers must equal the reference
generator's (the contract suite proves the single-node vLLM server gives those same
answers), streaming must work, and killing rank 1 (SIGKILL to its process group: a pod
lost) must make rank 0's ``/health`` fail, naming the lost rank, so that its liveness
probe restarts the group, and rank 0 must leave the reason for the controller.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import MAX_MODEL_LEN, Artifacts, GroupProcesses, Reference

PROMPT = "Which nodes hold the model?"
N_TOKENS = 16
LOST_BOUND_S = 30.0
"""Generous bound for rank 0 to report a killed rank (it polls every second and loses a
rank after 5 s of silence)."""


@pytest.fixture(scope="module")
def group(
    artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GroupProcesses]:
    logs = Path(os.environ.get("INF_TEST_LOG_DIR") or tmp_path_factory.mktemp("group-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    processes = GroupProcesses(
        model=artifacts.model,
        logs=logs,
        extra_args=["--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN)],
    )
    processes.start()
    try:
        yield processes
    finally:
        processes.stop()


def test_rank0_reports_the_ranks_while_it_waits_and_serves_once_all_joined(
    group: GroupProcesses,
) -> None:
    head = group.head
    waiting = [code for code, _ in head.health_seen[:-1]]
    assert waiting, head.health_seen
    assert set(waiting) == {503}, head.health_seen
    assert head.health_seen[-1] == (200, "ok")
    assert httpx.get(head.base_url + "/health").json()["ranks"] == "2/2 ranks joined"
    worker_health = httpx.get(group.worker_url + "/health").json()
    assert (worker_health["status"], worker_health["rank"]) == ("joined", 1)


def test_a_model_split_across_two_ranks_answers_like_the_reference(
    group: GroupProcesses, reference: Reference
) -> None:
    expected = reference.greedy(reference.chat_ids(PROMPT), None, N_TOKENS)
    url = group.head.base_url + "/v1/chat/completions"
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": N_TOKENS,
        "temperature": 0,
    }
    r = httpx.post(url, json=request, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected

    streamed = []
    with httpx.stream("POST", url, json={**request, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                streamed.append(choice["delta"].get("content") or "")
    assert len(streamed) > 1
    assert "".join(streamed) == expected


def test_a_worker_rank_refuses_api_requests(group: GroupProcesses) -> None:
    r = httpx.post(group.worker_url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 503
    assert "rank 0" in r.json()["error"]["message"]


def test_killing_the_worker_rank_makes_rank0_unhealthy_and_say_why(group: GroupProcesses) -> None:
    head = group.head
    group.kill_worker()
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
    message = group.termination_log(0).read_text()
    assert message.startswith("GroupRankLost: rank 1 (127.0.0.2:"), message
