"""``kaito workspace-controller``: the workspace controller and its validating webhook.

The Deployment's entrypoint. The cluster comes from in-cluster config or
``--kubeconfig``; the webhook (``--webhook-*`` flags,
`kaito.controllers.workspace.admission.cli`) serves beside the manager on every
replica, while the reconciler runs only on the leader when ``--leader-elect`` is on.
``--image-registry`` (env ``KAITO_IMAGE_REGISTRY``, default ``ghcr.io/kaito-project``)
is where every workload's images come from: ``<registry>/kaito-python/inference:<version>``
and ``<registry>/kaito-python/tuning:<version>``. ``--hf-endpoint`` (env
``KAITO_HF_ENDPOINT``) is the Hugging Face hub the weights fetchers download from (a
mirror; default the public hub). ``--plain-http-registry HOST[:PORT]`` (repeatable; env
``KAITO_PLAIN_HTTP_REGISTRIES``, comma-separated) names the registries the adapter
pusher, the adapter puller and the model-image fetcher reach over plain http instead of
https, as a container runtime's insecure registries: no other host is ever downgraded
(loopback aside). SIGTERM/SIGINT stop it gracefully; a
lost Lease exits 1 so that Kubernetes restarts the pod as a follower.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import structlog

from kaito.controllers.workspace.admission import cli as webhook_cli
from kaito.controllers.workspace.nodes.provisioning import Mode, Provisioning
from kaito.presets.catalog import (
    DEFAULT_IMAGE_REGISTRY,
    check_hf_endpoint,
    check_image_registry,
    check_plain_http_registry,
    load_catalog,
)
from kaito.runtime.entrypoint import (
    add_manager_arguments,
    manager_options,
    run_until_stopped,
    user_agent,
)

__all__ = ["HF_ENDPOINT_ENV", "IMAGE_REGISTRY_ENV", "PLAIN_HTTP_REGISTRIES_ENV", "add_commands"]

IMAGE_REGISTRY_ENV = "KAITO_IMAGE_REGISTRY"
HF_ENDPOINT_ENV = "KAITO_HF_ENDPOINT"
PLAIN_HTTP_REGISTRIES_ENV = "KAITO_PLAIN_HTTP_REGISTRIES"

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
    p.add_argument(
        "--image-registry",
        type=_registry,
        default=os.environ.get(IMAGE_REGISTRY_ENV) or DEFAULT_IMAGE_REGISTRY,
        help="the registry holding the project's images: workloads run "
        "<registry>/kaito-python/inference:<version> and .../tuning:<version> "
        f"(env {IMAGE_REGISTRY_ENV}; default {DEFAULT_IMAGE_REGISTRY})",
    )
    p.add_argument(
        "--hf-endpoint",
        type=_hf_endpoint,
        default=os.environ.get(HF_ENDPOINT_ENV) or "",
        help="the Hugging Face hub the weights fetchers download from, an http(s) URL "
        f"(their HF_ENDPOINT; env {HF_ENDPOINT_ENV}; default: the public hub)",
    )
    p.add_argument(
        "--plain-http-registry",
        dest="plain_http_registries",
        type=_plain_http_registry,
        action="append",
        default=None,
        metavar="HOST[:PORT]",
        help="a registry the adapter pusher/puller and model-image fetcher reach over "
        f"plain http, not https (repeatable; env {PLAIN_HTTP_REGISTRIES_ENV}, "
        "comma-separated; default none)",
    )
    webhook_cli.add_arguments(p)
    p.set_defaults(func=cmd_workspace_controller)


def _registry(value: str) -> str:
    try:
        return check_image_registry(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _hf_endpoint(value: str) -> str:
    try:
        return check_hf_endpoint(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _plain_http_registry(value: str) -> str:
    try:
        return check_plain_http_registry(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def plain_http_registries(args: argparse.Namespace) -> list[str]:
    """The flag's registries, else the environment's (checked like the flag's)."""
    if args.plain_http_registries is not None:
        return list(args.plain_http_registries)
    env = os.environ.get(PLAIN_HTTP_REGISTRIES_ENV, "")
    return [check_plain_http_registry(h) for h in env.split(",") if h.strip()]


def cmd_workspace_controller(args: argparse.Namespace) -> int:
    try:
        args.plain_http_registries = plain_http_registries(args)
    except ValueError as e:
        # The flag is checked by argparse; the environment's value is checked here, with
        # the same words and exit code.
        print(f"kaito workspace-controller: {PLAIN_HTTP_REGISTRIES_ENV}: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from kaito.controllers.workspace.app import WorkspaceController
    from kaito.runtime.client import Client, ClientConfig

    catalog = (
        load_catalog()
        .with_image_registry(args.image_registry)
        .with_hf_endpoint(args.hf_endpoint)
        .with_plain_http_registries(args.plain_http_registries)
    )
    options = manager_options(
        args, component="workspace-controller", leader_election_id="workspace-controller"
    )
    config = await ClientConfig.load(args.kubeconfig)
    config.user_agent = user_agent("workspace-controller", options.leader_election_identity)
    async with Client(config) as client:
        ctrl = WorkspaceController(
            client,
            catalog=catalog,
            workers=args.workers,
            provisioning=Provisioning(Mode(args.node_provisioning_mode)),
            manager_options=options,
        )
        log.info(
            "workspace-controller starting",
            workers=args.workers,
            leader_elect=args.leader_elect,
            identity=options.leader_election_identity,
            node_provisioning_mode=args.node_provisioning_mode,
            inference_image=catalog.images.inference,
            tuning_image=catalog.images.tuning,
            hf_endpoint=catalog.hf_endpoint or "(public hub)",
            plain_http_registries=sorted(catalog.plain_http_registries),
            webhook=not args.no_webhook,
        )
        hook = None if args.no_webhook else webhook_cli.options_from_args(args)
        return await run_until_stopped(lambda: ctrl.run(webhook=hook), ctrl.stop)
