"""What every controller process shares: its standard flags and how it runs and stops.

Both ``kaito workspace-controller`` and ``kaito gpu-provisioner`` take the same flags as
controller-runtime's managers (``--kubeconfig``, ``--metrics-bind-address``,
``--health-probe-bind-address``, ``--leader-elect``, ``--leader-election-namespace``,
and Kubernetes components' ``--leader-elect-lease-duration``,
``--leader-elect-renew-deadline``, ``--leader-elect-retry-period``) and behave the same
way as a process: SIGTERM or SIGINT stops the manager gracefully (exit 0); losing the
Lease exits 1 so Kubernetes restarts the pod as a follower, having released nothing.

Each process has one identity, ``<hostname>_<uuid>``: its Lease holderIdentity, and the
end of its User-Agent (``<component>/<version> <identity>``, `user_agent`), so the
apiserver's audit log tells which replica sent each request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

import structlog

from kaito import __version__
from kaito.runtime.leaderelection import LeaderElectionLost, default_identity
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
    parser.add_argument(
        "--leader-elect-lease-duration",
        type=duration,
        default=15.0,
        metavar="DURATION",
        help="how long followers wait after the last renewal before taking over (default 15s)",
    )
    parser.add_argument(
        "--leader-elect-renew-deadline",
        type=duration,
        default=10.0,
        metavar="DURATION",
        help="how long the leader tries to renew before it stops leading; must be "
        "shorter than the lease duration (default 10s)",
    )
    parser.add_argument(
        "--leader-elect-retry-period",
        type=duration,
        default=2.0,
        metavar="DURATION",
        help="the pause between acquire/renew attempts (default 2s)",
    )


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(value: str) -> float:
    """Seconds from a Go duration (``15s``, ``1.5s``, ``500ms``, ``1m30s``) or a bare
    number of seconds; argparse names the flag when this raises."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a duration (e.g. 15s, 500ms, 1m30s)"
            ) from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: a duration must be positive")
    return seconds


def user_agent(component: str, identity: str) -> str:
    """``<component>/<version> <identity>``: what this process sends as User-Agent."""
    return f"{component}/{__version__} {identity}"


def manager_options(
    args: argparse.Namespace, *, component: str, leader_election_id: str
) -> ManagerOptions:
    """ManagerOptions from the flags of `add_manager_arguments`, with a new identity
    (`default_identity`); give the client ``user_agent(component, opts.leader_election_identity)``.

    Leader election durations out of order (lease > renew deadline > 1.2 x retry
    period, as client-go requires) are a usage error naming the flags (exit 2)."""
    lease, renew, retry = (
        args.leader_elect_lease_duration,
        args.leader_elect_renew_deadline,
        args.leader_elect_retry_period,
    )
    if not lease > renew:
        _usage_error(
            f"--leader-elect-lease-duration ({lease:g}s) must be longer than "
            f"--leader-elect-renew-deadline ({renew:g}s)"
        )
    if not renew > 1.2 * retry:
        _usage_error(
            f"--leader-elect-renew-deadline ({renew:g}s) must be longer than 1.2 x "
            f"--leader-elect-retry-period ({retry:g}s)"
        )
    return ManagerOptions(
        component=component,
        metrics_bind_address=args.metrics_bind_address,
        health_probe_bind_address=args.health_probe_bind_address,
        leader_election=args.leader_elect,
        leader_election_id=leader_election_id,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_identity=default_identity(),
        lease_duration=lease,
        renew_deadline=renew,
        retry_period=retry,
    )


def _usage_error(message: str) -> NoReturn:
    print(f"kaito: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
