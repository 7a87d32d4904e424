"""``kaito workspace-controller``: the workspace controller and its validating webhook.

The Deployment's entrypoint. The cluster comes from in-cluster config or
``--kubeconfig``; the webhook (``--webhook-*`` flags,
`kaito.controllers.workspace.admission.cli`) serves beside the manager on every
replica, while the reconciler runs only on the leader when ``--leader-elect`` is on.
SIGTERM/SIGINT stop it gracefully; a lost Lease exits 1 so that Kubernetes restarts the
pod as a follower.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import structlog

from kaito.controllers.workspace.admission import cli as webhook_cli
from kaito.controllers.workspace.nodes.provisioning import Mode, Provisioning
from kaito.runtime.entrypoint import add_manager_arguments, manager_options, run_until_stopped

__all__ = ["add_commands"]

log = structlog.get_logger("kaito.controllers.workspace.cli")


def add_commands(sub: Any) -> None:
    """Register ``kaito workspace-controller`` on the top-level subparsers."""
    p = sub.add_parser(
        "workspace-controller",
        help="reconcile Workspaces (kaito.sh) into Machines and GPU nodes; serve the webhook",
    )
    add_manager_arguments(p)
    p.add_argument("--workers", type=int, default=5, help="concurrent reconciles (default 5)")
    p.add_argument("--no-webhook", action="store_true", help="do not serve the validating webhook")
    p.add_argument(
        "--node-provisioning-mode",
        choices=[m.value for m in Mode],
        default=Mode.MACHINE.value,
        help="how missing GPU nodes are made: machine (KAITO's gpu-provisioner, default), "
        "nodeclaim (Karpenter v1 NodeClaims) or byo (never: bring your own nodes)",
    )
    webhook_cli.add_arguments(p)
    p.set_defaults(func=cmd_workspace_controller)


def cmd_workspace_controller(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from kaito.controllers.workspace.app import WorkspaceController
    from kaito.runtime.client import Client, ClientConfig

    async with Client(await ClientConfig.load(args.kubeconfig)) as client:
        ctrl = WorkspaceController(
            client,
            workers=args.workers,
            provisioning=Provisioning(Mode(args.node_provisioning_mode)),
            manager_options=manager_options(
                args, component="workspace-controller", leader_election_id="workspace-controller"
            ),
        )
        log.info(
            "workspace-controller starting",
            workers=args.workers,
            leader_elect=args.leader_elect,
            node_provisioning_mode=args.node_provisioning_mode,
            webhook=not args.no_webhook,
        )
        hook = None if args.no_webhook else webhook_cli.options_from_args(args)
        return await run_until_stopped(lambda: ctrl.run(webhook=hook), ctrl.stop)
