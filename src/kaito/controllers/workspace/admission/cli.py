"""The webhook's command line: its ``--webhook-*`` flags, and a standalone command.

``kaito workspace-controller`` takes the flags (`add_arguments`, `options_from_args`)
and serves the webhook beside its manager. Alone, for a local apiserver or to write the
committed manifest::

    python -m kaito.controllers.workspace.admission serve --webhook-cert-secret '' \\
        --webhook-url 'https://127.0.0.1:{port}/validate/workspaces'
    python -m kaito.controllers.workspace.admission manifests [--check] [--repo-root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import structlog

from kaito.controllers.workspace.admission.manifests import MANIFEST_PATH, write_or_check
from kaito.controllers.workspace.admission.webhook import WebhookOptions, WebhookServer
from kaito.runtime.client import Client, ClientConfig

__all__ = ["add_arguments", "main", "options_from_args", "serve"]

log = structlog.get_logger("kaito.controllers.workspace.admission.cli")

PROG = "python -m kaito.controllers.workspace.admission"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The webhook's flags, for ``kaito workspace-controller`` and standalone use."""
    d = WebhookOptions()
    parser.add_argument(
        "--webhook-bind-address", default=d.bind_address, help=f"default {d.bind_address}"
    )
    parser.add_argument(
        "--webhook-namespace",
        default=os.environ.get("POD_NAMESPACE", d.namespace),
        help=f"namespace of the Service and Secret (default $POD_NAMESPACE, {d.namespace})",
    )
    parser.add_argument(
        "--webhook-service", default=d.service_name, help=f"default {d.service_name}"
    )
    parser.add_argument(
        "--webhook-cert-secret",
        default=d.cert_secret,
        help="Secret with the webhook's CA and certificate; '' keeps them in memory "
        f"(default {d.cert_secret})",
    )
    parser.add_argument(
        "--webhook-url",
        default="",
        help="register this URL instead of the Service, e.g. "
        "https://127.0.0.1:{port}/validate/workspaces for a local apiserver "
        "({port} is replaced by the bound port; default: use the Service)",
    )
    parser.add_argument(
        "--webhook-no-register",
        action="store_true",
        help="do not create/update the ValidatingWebhookConfiguration",
    )


def options_from_args(args: argparse.Namespace) -> WebhookOptions:
    return WebhookOptions(
        bind_address=args.webhook_bind_address,
        namespace=args.webhook_namespace,
        service_name=args.webhook_service,
        cert_secret=args.webhook_cert_secret,
        url=args.webhook_url,
        register=not args.webhook_no_register,
    )


async def serve(options: WebhookOptions, *, kubeconfig: str | None = None) -> None:
    """Run the webhook alone until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = await ClientConfig.load(kubeconfig)
    async with Client(config) as client, WebhookServer(client, options):
        await stop.wait()
    log.info("webhook stopped")

    config = await ClientConfig.load(kubeconfig)
    async with Client(config) as client, WebhookServer(client, options):
        await stop.wait()
    log.info("webhook stopped")


def main(argv: Sequence[str] | None = None) -> int:
    from kaito.runtime import log as runtime_log

    parser = argparse.ArgumentParser(prog=PROG, description="The Workspace validating webhook.")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="serve the webhook (standalone)")
    srv.add_argument("--kubeconfig", default=None, help="default: in-cluster or $KUBECONFIG")
    add_arguments(srv)
    man = sub.add_parser("manifests", help=f"write {MANIFEST_PATH} (Service + registration)")
    man.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    man.add_argument(
        "--repo-root",
        type=Path,
        default=Path.cwd(),
        help="the repository the manifest belongs to (default: the current directory)",
    )
    man.add_argument(
        "--out", type=Path, default=None, help=f"the file (default REPO_ROOT/{MANIFEST_PATH})"
    )
    args = parser.parse_args(argv)
    runtime_log.configure()
    if args.command == "manifests":
        out = args.out if args.out is not None else args.repo_root / MANIFEST_PATH
        return write_or_check(out, check=args.check)
    asyncio.run(serve(options_from_args(args), kubeconfig=args.kubeconfig))
    return 0
