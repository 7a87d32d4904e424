"""A multi-node group's command line: ranks from pod names, vLLM's arguments, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from kaito_inference.config import ConfigError, parse_settings
from kaito_inference.engines import create_engine
from kaito_inference.group import (
    LOST_AFTER_S,
    TERMINATION_LOG_ENV,
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


def test_rank0_counts_joined_ranks_and_loses_one_that_goes_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    group = Group(hosts=("h0", "h1", "h2"), rank=0, port=29500, http_port=5000)
    watch = GroupWatch(group=group)
    assert watch.summary() == "1/3 ranks joined"
    watch.observe(1, ok=True, error="", now=10.0, boot="a")
    watch.observe(2, ok=False, error="HTTP 503 joining", now=10.0)
    assert watch.summary() == "2/3 ranks joined"
    assert watch.waiting_for() == ["rank 2 (h2): HTTP 503 joining"]
    assert watch.lost is None  # a rank that never joined is waited for, not lost
    watch.observe(1, ok=False, error="refused", now=10.0 + LOST_AFTER_S / 2)
    assert watch.lost is None
    watch.observe(1, ok=False, error="refused", now=10.0 + LOST_AFTER_S)
    assert watch.lost is not None
    assert watch.lost.startswith("rank 1 (h1) lost")
    assert (tmp_path / "termination-log").read_text() == f"GroupRankLost: {watch.lost}"


def test_a_rank_that_answers_as_a_new_process_is_lost_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    group = Group(hosts=("h0", "h1"), rank=1, port=29500, http_port=5000)
    watch = GroupWatch(group=group)
    watch.observe(0, ok=True, error="", now=1.0, boot="first")
    watch.observe(0, ok=True, error="", now=2.0, boot="second")
    assert watch.lost is not None
    assert "restarted" in watch.lost
    assert (tmp_path / "termination-log").read_text().startswith("GroupHeadLost: rank 0 (h0)")
