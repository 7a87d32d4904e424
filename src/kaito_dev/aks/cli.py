"""``kaito dev aks-emulator``: the emulated AKS agent-pool API as a process.

It serves the ARM wire protocol over HTTPS with a self-signed certificate written to
``--dir`` and prints the environment a gpu-provisioner needs to use it. Its pools and
operations live in ``--dir``/state.json: started again on the same ``--dir`` (and
``--port``), it is the same cluster, with the same CA, as AKS is to a client after a
restart of either.

``--nodes simulated`` (default) registers Node objects and heartbeats for each VM;
``--nodes real`` boots each VM as a real node on this host (containerd + kubelet +
device plugin, `kaito_dev.aks.realnodes`; root, ``hack/node-tools.sh`` and the kubelet
from ``hack/local-cluster.sh``), under ``--node-dir``, pulling from ``--registry``.
Real nodes outlive this process; a restarted emulator re-adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

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
    p.add_argument(
        "--nodes",
        choices=("simulated", "real"),
        default="simulated",
        help="simulated: Node objects only (default); real: boot each VM as a real node",
    )
    p.add_argument(
        "--node-dir", type=Path, default=None, help="real nodes' folders (default <dir>/nodes)"
    )
    p.add_argument(
        "--registry", default=None, help="real nodes pull HOST:PORT/... from this registry"
    )
    p.add_argument(
        "--mirror-for",
        action="append",
        default=[],
        help="a registry host whose images real nodes pull from --registry (repeatable)",
    )
    p.add_argument(
        "--cluster-dns", default="", help="real nodes' pods resolve names through this DNS server"
    )
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
        backend = None
        if args.nodes == "real":
            backend = _real_nodes(args, config, kube, directory)
        emulator = AKSEmulator(
            kube,
            config,
            host=args.host,
            port=args.port,
            tls=CertWatcher(cert, key),
            state_file=directory / "state.json",
            node_backend=backend,
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


def _real_nodes(args: argparse.Namespace, config: Any, kube: Any, directory: Path) -> Any:
    import os

    from kaito_dev.aks.realnodes import RealKubelets

    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise SystemExit("--nodes real: give --kubeconfig (the kubelets use it) or $KUBECONFIG")
    node_dir = (args.node_dir or directory / "nodes").resolve()

    def make(spawn: Any) -> RealKubelets:
        return RealKubelets(
            kube,
            subscription_id=config.subscription_id,
            resource_group=config.resource_group,
            cluster=config.cluster_name,
            location=config.location,
            spawn=spawn,
            base_dir=node_dir,
            kubeconfig=str(Path(kubeconfig).resolve()),
            registry=args.registry,
            mirror_for=args.mirror_for,
            cluster_dns=args.cluster_dns,
        )

    return make
