"""A controller process's exit codes: 0 after SIGTERM stops it, 1 when the Lease is lost."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from kaito.runtime.entrypoint import add_manager_arguments, manager_options, run_until_stopped
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
