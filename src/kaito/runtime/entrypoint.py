"""What every controller process shares: its standard flags and how it runs and stops.

Both ``kaito workspace-controller`` and ``kaito gpu-provisioner`` take the same flags as
controller-runtime's managers (``--kubeconfig``, ``--metrics-bind-address``,
``--health-probe-bind-address``, ``--leader-elect``, ``--leader-election-namespace``) and
behave the same way as a process: SIGTERM or SIGINT stops the manager gracefully (exit
0); losing the Lease exits 1 so Kubernetes restarts the pod as a follower.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Awaitable, Callable

import structlog

from kaito.runtime.leaderelection import LeaderElectionLost
from kaito.runtime.manager import ManagerOptions

log = structlog.get_logger("kaito.runtime.entrypoint")


def add_manager_arguments(parser: argparse.ArgumentParser) -> None:
    """The manager flags, with controller-runtime's names and defaults."""
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument("--metrics-bind-address", default=":8080", help="default :8080; 0 disables")
    parser.add_argument("--health-probe-bind-address", default=":8081", help="default :8081")
    parser.add_argument(
        "--leader-elect", action="store_true", help="run only while holding a Lease"
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE") or "kube-system",
        help="where the Lease lives; default $POD_NAMESPACE or kube-system",
    )


def manager_options(
    args: argparse.Namespace, *, component: str, leader_election_id: str
) -> ManagerOptions:
    """ManagerOptions from the flags of `add_manager_arguments`."""
    return ManagerOptions(
        component=component,
        metrics_bind_address=args.metrics_bind_address,
        health_probe_bind_address=args.health_probe_bind_address,
        leader_election=args.leader_elect,
        leader_election_id=leader_election_id,
        leader_election_namespace=args.leader_election_namespace,
    )


async def run_until_stopped(run: Callable[[], Awaitable[None]], stop: Callable[[], None]) -> int:
    """Run ``run()`` with SIGTERM/SIGINT wired to ``stop``; the process's exit code."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await run()
    except LeaderElectionLost as e:
        log.error("leader election lost", error=str(e))
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
