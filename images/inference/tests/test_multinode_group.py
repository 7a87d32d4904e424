"""One model split across two nodes: a two-rank group of real server processes.

Rank 0 (the HTTP API and vLLM's head) and rank 1 (vLLM's headless workers) run as two
``python -m kaito_inference`` processes, as two StatefulSet pods run them, each on its
own loopback address (`harness.GroupProcesses`), with ``--pipeline-parallel-size 2``:
each holds one of the model's two layers. Greedy answers must equal the reference
generator's (the contract suite proves the single-node vLLM server gives those same
answers), streaming must work. A restarted rank 1 (a new process at the same address,
as kubelet restarts a container) must make rank 0 exit, leaving the reason for the
controller; restarted in turn, rank 0 takes in the new worker and the group answers the
same. A rank 0 that is lost (SIGKILL to its process group: a pod lost) makes the worker
exit the same way; so does a worker whose own vLLM worker process is killed, naming it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import MAX_MODEL_LEN, Artifacts, GroupProcesses, Reference
from kaito_inference.group import LOST_AFTER_S

PROMPT = "Which nodes hold the model?"
N_TOKENS = 16
EXIT_MARGIN_S = 30.0
"""On top of `LOST_AFTER_S`: a poll's timeout, and shutting down on 2 loaded cores."""
WAIT_S = 60.0


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


def test_a_restarted_worker_makes_rank0_exit_and_the_restarted_group_answers_the_same(
    group: GroupProcesses, reference: Reference
) -> None:
    """vLLM's group cannot take in a new process: rank 0 must exit, saying why, and once
    kubelet has restarted it the new worker binds to it and the group serves again."""
    head = group.head
    first_boot = group.worker_health()["boot"]
    group.restart_worker()
    assert head.wait_exit(LOST_AFTER_S + EXIT_MARGIN_S) == 1
    message = group.termination_log(0).read_text()
    assert message.startswith("GroupRankLost: rank 1 (127.0.0.2:"), message
    # The new worker waits for a rank 0 that loads: it never joins a stale one.
    health = wait_for(group.worker_health, lambda h: h.get("status") == "waiting")
    assert health["head"] is None
    assert health["boot"] != first_boot
    assert group.worker.proc is not None
    assert group.worker.proc.poll() is None  # waiting, not exiting

    head.start()  # kubelet restarts the container
    worker = group.worker_health()
    assert worker["status"] == "joined"
    assert worker["head"] == httpx.get(head.base_url + "/health").json()["boot"]
    expected = reference.greedy(reference.chat_ids(PROMPT), None, N_TOKENS)
    r = httpx.post(
        head.base_url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": N_TOKENS,
            "temperature": 0,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected


def test_a_worker_whose_rank0_is_lost_exits_and_says_why(group: GroupProcesses) -> None:
    group.head.kill()  # rank 0's pod is lost: no answer at all
    assert group.worker.wait_exit(LOST_AFTER_S + EXIT_MARGIN_S) == 1
    message = group.termination_log(1).read_text()
    assert message.startswith("GroupHeadLost: rank 0 (127.0.0.1:"), message
    assert "no healthy answer for" in message, message


def test_a_worker_whose_vllm_workers_die_exits_and_says_why(group: GroupProcesses) -> None:
    group.start()  # the previous test left both ranks down: kubelet restarts them
    assert group.worker.proc is not None
    workers = vllm_workers(group.worker.proc.pid)
    assert workers, "rank 1 runs no vLLM worker process"
    os.kill(workers[0], signal.SIGKILL)
    assert group.worker.wait_exit(EXIT_MARGIN_S) == 1
    message = group.termination_log(1).read_text()
    assert message.startswith("GroupWorkersExited: rank 1: vLLM's workers exited: "), message
    assert "(exit code -9)" in message, message


def vllm_workers(pid: int) -> list[int]:
    """The processes vLLM's executor started under ``pid`` (its resource tracker aside)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in cmdline:
            children.append(int(stat.parent.name))
    return sorted(children)


def wait_for(
    read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            seen = read()
        except httpx.TransportError:
            seen = {}
        if done(seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"not reached within {WAIT_S} s; last seen {seen}")
