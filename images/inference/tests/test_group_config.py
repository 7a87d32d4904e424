"""A multi-node group's command line: ranks from pod names, vLLM's arguments, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from kaito_inference.config import ConfigError, parse_settings
from kaito_inference.engines import create_engine
from kaito_inference.group import (
    BOOT_ID,
    JOINED,
    JOINING,
    LOST_AFTER_S,
    TERMINATION_LOG_ENV,
    WAITING,
    Answer,
    Group,
    GroupWatch,
    make_group,
    rank_from_name,
)

HOSTS = "ws-0.ws-headless.ns.svc,ws-1.ws-headless.ns.svc,ws-2.ws-headless.ns.svc"


def test_the_rank_is_the_statefulset_ordinal_of_the_pod_name() -> None:
    group = make_group(HOSTS, None, 29500, 5000, pod_name="ws-2")
    assert group is not None
    assert (group.rank, group.size, group.is_head) == (2, 3, False)
    assert group.vllm_args() == {
        "distributed_executor_backend": "mp",
        "nnodes": 3,
        "node_rank": 2,
        "master_addr": "ws-0.ws-headless.ns.svc",
        "master_port": 29500,
    }
    assert group.health_url(1) == "http://ws-1.ws-headless.ns.svc:5000/health"
    assert rank_from_name("my-ws-10") == 10


@pytest.mark.parametrize(
    ("hosts", "rank", "pod", "message"),
    [
        ("a", None, "ws-0", "a group needs at least 2 ranks"),
        (HOSTS, 3, "ws-0", r"--group-rank 3: --group-hosts names 3 ranks \(0..2\)"),
        (HOSTS, None, "worker", "has no StatefulSet ordinal"),
        (None, 1, "ws-1", "--group-rank 1 needs --group-hosts"),
    ],
)
def test_a_bad_group_is_refused_naming_the_flag(
    hosts: str | None, rank: int | None, pod: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_group(hosts, rank, 29500, 5000, pod_name=pod)


def test_one_node_has_no_group() -> None:
    assert make_group(None, None, 29500, 5000, pod_name="anything") is None


def test_the_transformers_engine_refuses_a_group() -> None:
    settings = parse_settings(["--model", "/m", "--engine", "transformers"])
    group = make_group(HOSTS, 0, 29500, 5000)
    with pytest.raises(ConfigError, match=r"--engine transformers runs on one node.*--engine vllm"):
        create_engine(settings, group)


def worker(code: int, status: str, boot: str, head: str | None = BOOT_ID) -> Answer:
    """A worker's /health answer, bound by default to this process as rank 0."""
    return Answer(code=code, status=status, boot=boot, head=head if status != WAITING else None)


def head(code: int, status: str, boot: str) -> Answer:
    return Answer(code=code, status=status, boot=boot)


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(path))
    return path


def test_rank0_counts_ranks_bound_to_it_and_loses_one_that_goes_silent(
    termination_log: Path,
) -> None:
    lost: list[str] = []
    group = Group(hosts=("h0", "h1", "h2"), rank=0, port=29500, http_port=5000)
    watch = GroupWatch(group=group, on_lost=lambda: lost.append("called"))
    assert watch.summary() == "1/3 ranks joined"
    watch.observe(1, worker(200, JOINED, "a"), error="", now=10.0)
    watch.observe(2, worker(503, JOINING, "b"), error="", now=10.0)
    assert watch.summary() == "2/3 ranks joined"
    assert watch.waiting_for() == ["rank 2 (h2): HTTP 503 joining"]
    # Silence within the limit is waited out; a joining rank that answers is healthy.
    watch.observe(1, None, error="ConnectTimeout", now=10.0 + LOST_AFTER_S / 2)
    watch.observe(2, worker(503, JOINING, "b"), error="", now=10.0 + LOST_AFTER_S)
    assert watch.lost is None
    watch.observe(1, None, error="ConnectTimeout", now=10.0 + LOST_AFTER_S)
    assert watch.lost is not None
    assert watch.lost.startswith("rank 1 (h1) lost: no healthy answer for 20 s (ConnectTimeout)")
    assert termination_log.read_text() == f"GroupRankLost: {watch.lost}"
    watch.observe(2, None, error="refused", now=100.0 + LOST_AFTER_S)
    assert lost == ["called"]  # once, for the first loss
    assert watch.lost.startswith("rank 1 ")


def test_rank0_ignores_a_worker_still_bound_to_a_previous_rank0(termination_log: Path) -> None:
    group = Group(hosts=("h0", "h1"), rank=0, port=29500, http_port=5000)
    watch = GroupWatch(group=group)
    for t in range(0, 100, 10):
        watch.observe(1, worker(200, JOINED, "old", head="previous"), error="", now=float(t))
    assert watch.lost is None
    assert watch.summary() == "1/2 ranks joined"
    assert watch.waiting_for() == [
        "rank 1 (h1): HTTP 200 joined, bound to a previous rank 0 (boot previous): it restarts"
    ]
    # The worker restarts (it lost its rank 0), waits, and binds to this one.
    watch.observe(1, worker(503, WAITING, "new"), error="", now=100.0)
    watch.observe(1, worker(503, JOINING, "new"), error="", now=101.0)
    watch.observe(1, worker(200, JOINED, "new"), error="", now=150.0)
    assert watch.lost is None
    assert watch.summary() == "2/2 ranks joined"


def test_rank0_loses_a_bound_worker_that_answers_as_a_new_process_at_once(
    termination_log: Path,
) -> None:
    """The gate's failure on 2026-12-06: the restarted worker answered ``joining`` for 5 s
    before rank 0 noticed; now its new boot id is enough, whatever it answers."""
    group = Group(hosts=("h0", "h1"), rank=0, port=29500, http_port=5000)
    watch = GroupWatch(group=group)
    watch.observe(1, worker(503, JOINING, "first"), error="", now=1.0)
    watch.observe(1, worker(503, WAITING, "second"), error="", now=2.0)
    assert watch.lost == (
        "rank 1 (h1) lost: it restarted (boot first -> second, HTTP 503 waiting); "
        "the group must restart"
    )
    assert termination_log.read_text().startswith("GroupRankLost: rank 1 (h1)")


def test_a_worker_binds_only_to_a_rank0_that_is_loading() -> None:
    bound: list[str] = []
    group = Group(hosts=("h0", "h1"), rank=1, port=29500, http_port=5000)
    watch = GroupWatch(group=group, on_bound=lambda: bound.append("called"))
    # Serving or failing: that rank 0 still counts a previous worker and will restart.
    watch.observe(0, head(200, "ok", "serving"), error="", now=1.0)
    watch.observe(0, head(503, "unhealthy", "serving"), error="", now=2.0)
    watch.observe(0, None, error="ClientConnectorError", now=3.0)
    assert (watch.head_boot, bound) == (None, [])
    assert watch.waiting_for() == ["rank 0 (h0): ClientConnectorError"]
    watch.observe(0, head(503, "loading", "fresh"), error="", now=4.0)
    assert (watch.head_boot, bound) == ("fresh", ["called"])
    watch.observe(0, head(200, "ok", "fresh"), error="", now=60.0)
    assert watch.lost is None
    assert watch.summary() == "2/2 ranks joined"


def test_a_worker_loses_its_rank0_when_it_restarts_or_goes_silent(termination_log: Path) -> None:
    group = Group(hosts=("h0", "h1"), rank=1, port=29500, http_port=5000)
    restarted = GroupWatch(group=group)
    restarted.observe(0, head(503, "loading", "first"), error="", now=1.0)
    restarted.observe(0, head(503, "loading", "second"), error="", now=2.0)
    assert restarted.lost is not None
    assert "it restarted (boot first -> second" in restarted.lost
    assert termination_log.read_text().startswith("GroupHeadLost: rank 0 (h0)")

    silent = GroupWatch(group=group)
    silent.observe(0, head(503, "loading", "first"), error="", now=1.0)
    silent.observe(0, head(503, "unhealthy", "first"), error="", now=2.0)
    silent.observe(0, None, error="ServerDisconnectedError", now=1.0 + LOST_AFTER_S - 0.1)
    assert silent.lost is None
    silent.observe(0, None, error="ServerDisconnectedError", now=1.0 + LOST_AFTER_S)
    assert silent.lost is not None
    assert "no healthy answer for 20 s (ServerDisconnectedError)" in silent.lost
