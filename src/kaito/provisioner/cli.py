"""``kaito gpu-provisioner``: the gpu-provisioner's entrypoint.

``kaito gpu-provisioner`` is the Deployment's entrypoint: configuration comes from the
environment (`kaito.provisioner.config`), the cluster from in-cluster config or
``--kubeconfig``; SIGTERM stops it gracefully.

The AKS emulator it is tested against is development tooling: ``kaito dev aks-emulator``
(`kaito_dev.aks.cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import structlog

from kaito.provisioner.config import ConfigError, ProvisionerConfig
from kaito.runtime.entrypoint import (
    add_manager_arguments,
    manager_options,
    run_until_stopped,
    user_agent,
)

__all__ = ["add_commands"]

log = structlog.get_logger("kaito.provisioner.cli")


def add_commands(sub: Any) -> None:
    """Register ``kaito gpu-provisioner`` on the top-level subparsers."""
    p = sub.add_parser(
        "gpu-provisioner",
        help="serve Machines (karpenter.sh/v1alpha5) with AKS agent pools",
        description="Configuration from the environment: ARM_SUBSCRIPTION_ID, "
        "ARM_RESOURCE_GROUP, AZURE_CLUSTER_NAME, LOCATION, ARM_BASE_URL, ... "
        "(see kaito.provisioner.config).",
    )
    add_manager_arguments(p)
    p.set_defaults(func=cmd_gpu_provisioner)


def cmd_gpu_provisioner(args: argparse.Namespace) -> int:
    try:
        config = ProvisionerConfig.from_env()
    except ConfigError as e:
        print(f"kaito gpu-provisioner: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_run_provisioner(args, config))


async def _run_provisioner(args: argparse.Namespace, config: ProvisionerConfig) -> int:
    from kaito.provisioner.app import Provisioner
    from kaito.provisioner.azure import AzureAgentPoolAPI
    from kaito.provisioner.credentials import make_credential
    from kaito.runtime.client import Client, ClientConfig

    options = manager_options(
        args, component="gpu-provisioner", leader_election_id="gpu-provisioner"
    )
    credential = make_credential(config.arm_static_token)
    api = AzureAgentPoolAPI(
        subscription_id=config.subscription_id,
        resource_group=config.resource_group,
        cluster_name=config.cluster_name,
        credential=credential,
        base_url=config.arm_base_url,
        ca_file=config.arm_ca_bundle,
        polling_interval=config.polling_interval,
    )
    try:
        kube = await ClientConfig.load(args.kubeconfig)
        kube.user_agent = user_agent("gpu-provisioner", options.leader_election_identity)
        async with Client(kube) as client:
            prov = Provisioner(client, api, config, manager_options=options)
            log.info(
                "gpu-provisioner starting",
                cluster=config.cluster_name,
                resource_group=config.resource_group,
                arm=config.arm_base_url,
                workers=config.workers,
                identity=options.leader_election_identity,
            )
            return await run_until_stopped(prov.run, prov.stop)
    finally:
        await api.close()
        await credential.close()
