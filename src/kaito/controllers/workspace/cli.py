"""``kaito workspace-controller``: the workspace controller and its validating webhook.

The Deployment's entrypoint. The cluster comes from in-cluster config or
``--kubeconfig``; the webhook (``--webhook-*`` flags, `kaito.controllers.workspace.webhook`)
serves beside the manager on every replica, while the reconciler runs only on the
leader when ``--leader-elect`` is on. SIGTERM/SIGINT stop it gracefully; a lost Lease
exits 1 so that Kubernetes restarts the pod as a follower.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

import structlog

from kaito.controllers.workspace import webhook

__all__ = ["add_commands"]

log = structlog.get_logger("kaito.controllers.workspace.cli")


def add_commands(sub: Any) -> None:
    """Register ``kaito workspace-controller`` on the top-level subparsers."""
    p = sub.add_parser(
        "workspace-controller",
        help="reconcile Workspaces (kaito.sh) into Machines and GPU nodes; serve the webhook",
    )
    p.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    p.add_argument("--metrics-bind-address", default=":8080", help="default :8080; 0 disables")
    p.add_argument("--health-probe-bind-address", default=":8081", help="default :8081")
    p.add_argument("--leader-elect", action="store_true", help="run only while holding a Lease")
    p.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE") or "kube-system",
        help="where the Lease lives; default $POD_NAMESPACE or kube-system",
    )
    p.add_argument("--workers", type=int, default=5, help="concurrent reconciles (default 5)")
    p.add_argument("--no-webhook", action="store_true", help="do not serve the validating webhook")
    webhook.add_arguments(p)
    p.set_defaults(func=cmd_workspace_controller)


def cmd_workspace_controller(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from kaito.controllers.workspace.app import WorkspaceController
    from kaito.runtime.client import Client, ClientConfig
    from kaito.runtime.leaderelection import LeaderElectionLost
    from kaito.runtime.manager import ManagerOptions

    try:
        async with Client(await ClientConfig.load(args.kubeconfig)) as client:
            ctrl = WorkspaceController(
                client,
                workers=args.workers,
                manager_options=ManagerOptions(
                    component="workspace-controller",
                    metrics_bind_address=args.metrics_bind_address,
                    health_probe_bind_address=args.health_probe_bind_address,
                    leader_election=args.leader_elect,
                    leader_election_id="workspace-controller",
                    leader_election_namespace=args.leader_election_namespace,
                ),
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, ctrl.stop)
            log.info(
                "workspace-controller starting",
                workers=args.workers,
                leader_elect=args.leader_elect,
                webhook=not args.no_webhook,
            )
            await ctrl.run(webhook=None if args.no_webhook else webhook.options_from_args(args))
    except LeaderElectionLost as e:
        log.error("leader election lost", error=str(e))
        return 1
    return 0
