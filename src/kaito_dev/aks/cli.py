"""``kaito dev aks-emulator``: the emulated AKS agent-pool API as a process.

It serves the ARM wire protocol over HTTPS with a self-signed certificate written to
``--dir`` and prints the environment a gpu-provisioner needs to use it. Its pools and
operations live in ``--dir``/state.json: started again on the same ``--dir`` (and
``--port``), it is the same cluster, with the same CA, as AKS is to a client after a
restart of either.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

__all__ = ["add_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``kaito dev aks-emulator``."""
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


def cmd_aks_emulator(args: argparse.Namespace) -> int:
    return asyncio.run(_run_emulator(args))


async def _run_emulator(args: argparse.Namespace) -> int:
    from kaito.runtime.certwatcher import CertWatcher
    from kaito.runtime.client import Client, ClientConfig
    from kaito_dev.aks import AKSEmulator, EmulatorConfig
    from kaito_dev.aks.tls import write_self_signed

    directory: Path = args.dir.resolve()
    hosts = sorted({args.host, "127.0.0.1", "localhost"})
    ca, cert, key = (directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    if not all(f.exists() for f in (ca, cert, key)):  # a restart keeps its CA
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
            kube,
            config,
            host=args.host,
            port=args.port,
            tls=CertWatcher(cert, key),
            state_file=directory / "state.json",
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
