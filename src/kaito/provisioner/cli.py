"""``kaito gpu-provisioner`` and ``kaito dev aks-emulator``.

``kaito gpu-provisioner`` is the Deployment's entrypoint: configuration comes from the
environment (`kaito.provisioner.config`), the cluster from in-cluster config or
``--kubeconfig``; SIGTERM stops it gracefully.

``kaito dev aks-emulator`` serves the emulated AKS agent-pool API for the local cluster
(HTTPS with a self-signed certificate written to ``--dir``) and prints the environment
a provisioner needs to use it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from kaito.provisioner.config import ConfigError, ProvisionerConfig
from kaito.runtime.entrypoint import (
    add_manager_arguments,
    manager_options,
    run_until_stopped,
    user_agent,
)

__all__ = ["add_commands", "add_dev_commands"]

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


def add_dev_commands(dev_sub: Any) -> None:
    """Register ``kaito dev aks-emulator`` on the ``kaito dev`` subparsers."""
    p = dev_sub.add_parser(
        "aks-emulator", help="serve an emulated AKS agent-pool API that registers Nodes"
    )
    p.add_argument("--kubeconfig", default=None, help="default $KUBECONFIG")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--dir", type=Path, default=Path(".kaito/aks-emulator"), help="TLS files")
    p.add_argument("--subscription-id", default="00000000-0000-0000-0000-000000000000")
    p.add_argument("--resource-group", default="kaito-rg")
    p.add_argument("--cluster-name", default="kaito-aks")
    p.add_argument("--location", default="eastus")
    p.add_argument("--create-latency", type=float, default=5.0, help="seconds; default 5")
    p.add_argument("--delete-latency", type=float, default=2.0, help="seconds; default 2")
    p.add_argument("--node-ready-delay", type=float, default=1.0, help="seconds; default 1")
    p.add_argument("--heartbeat-interval", type=float, default=30.0, help="0 disables")
    p.set_defaults(func=cmd_aks_emulator)


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


def cmd_aks_emulator(args: argparse.Namespace) -> int:
    return asyncio.run(_run_emulator(args))


async def _run_emulator(args: argparse.Namespace) -> int:
    from kaito.provisioner.emulator import AKSEmulator, EmulatorConfig
    from kaito.provisioner.emulator.tls import write_self_signed
    from kaito.runtime.certwatcher import CertWatcher
    from kaito.runtime.client import Client, ClientConfig

    directory: Path = args.dir.resolve()
    hosts = sorted({args.host, "127.0.0.1", "localhost"})
    ca, cert, key = write_self_signed(directory, hosts)
    config = EmulatorConfig(
        subscription_id=args.subscription_id,
        resource_group=args.resource_group,
        cluster_name=args.cluster_name,
        location=args.location,
        create_latency=args.create_latency,
        delete_latency=args.delete_latency,
        node_ready_delay=args.node_ready_delay,
        heartbeat_interval=args.heartbeat_interval,
    )
    async with Client(await ClientConfig.load(args.kubeconfig)) as kube:
        emulator = AKSEmulator(
            kube, config, host=args.host, port=args.port, tls=CertWatcher(cert, key)
        )
        await emulator.start()
        env = {
            "ARM_BASE_URL": emulator.url,
            "ARM_CA_BUNDLE": str(ca),
            "ARM_STATIC_TOKEN": "aks-emulator",
            "ARM_SUBSCRIPTION_ID": config.subscription_id,
            "ARM_RESOURCE_GROUP": config.resource_group,
            "AZURE_CLUSTER_NAME": config.cluster_name,
            "LOCATION": config.location,
        }
        env_file = directory / "provisioner.env"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        print(
            f"AKS emulator on {emulator.url} (cluster {config.cluster_name}).\n"
            f"Run a provisioner against it:\n  source {env_file} && kaito gpu-provisioner\n"
            f"Inject a fault:\n  curl -sk -XPOST {emulator.url}/_emulator/faults "
            f"""-d '{{"kind": "quota"}}'\n""",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await emulator.stop()
    return 0
