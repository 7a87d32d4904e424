"""A controller process's exit codes: 0 after SIGTERM stops it, 1 when the Lease is lost."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import pytest

from kaito.runtime.entrypoint import (
    add_manager_arguments,
    duration,
    manager_options,
    run_until_stopped,
    user_agent,
)
from kaito.runtime.leaderelection import LeaderElectionLost


async def test_sigterm_calls_stop_and_exits_0() -> None:
    stopped = asyncio.Event()

    async def run() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stopped.wait()

    assert await run_until_stopped(run, stopped.set) == 0


async def test_a_lost_lease_exits_1() -> None:
    async def run() -> None:
        raise LeaderElectionLost("lost")

    assert await run_until_stopped(run, lambda: None) == 1


def test_flags_map_onto_manager_options() -> None:
    parser = argparse.ArgumentParser()
    add_manager_arguments(parser)
    args = parser.parse_args(["--leader-elect", "--leader-election-namespace", "kaito-system",
                              "--metrics-bind-address", "0"])  # fmt: skip
    opts = manager_options(args, component="c", leader_election_id="lease")
    assert opts.leader_election and opts.leader_election_id == "lease"
    assert opts.leader_election_namespace == "kaito-system"
    assert opts.metrics_bind_address == "0" and opts.health_probe_bind_address == ":8081"
    assert (opts.lease_duration, opts.renew_deadline, opts.retry_period) == (15, 10, 2)
    host, _, rand = opts.leader_election_identity.rpartition("_")
    assert host and len(rand) == 36, "<hostname>_<uuid>, as controller-runtime"
    assert user_agent("c", opts.leader_election_identity) == f"c/0.1.0 {host}_{rand}"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_manager_arguments(parser)
    return parser.parse_args(argv)


def test_leader_election_durations_take_go_durations_or_seconds() -> None:
    args = _parse("--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3000ms",
                  "--leader-elect-retry-period", "0.5")  # fmt: skip
    opts = manager_options(args, component="c", leader_election_id="lease")
    assert (opts.lease_duration, opts.renew_deadline, opts.retry_period) == (4, 3, 0.5)
    assert duration("1m30s") == 90 and duration("1.5s") == 1.5 and duration("2h") == 7200
    for bad in ("", "abc", "5x", "s", "-1s", "0", "1s2"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)


def test_durations_out_of_order_are_a_usage_error_naming_the_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = [
        (["--leader-elect-lease-duration=10s"], "--leader-elect-lease-duration (10s)"),
        (["--leader-elect-retry-period=9s"], "--leader-elect-retry-period (9s)"),
    ]
    for argv, flag in cases:
        with pytest.raises(SystemExit) as exit_:
            manager_options(_parse(*argv), component="c", leader_election_id="lease")
        assert exit_.value.code == 2
        assert flag in capsys.readouterr().err
