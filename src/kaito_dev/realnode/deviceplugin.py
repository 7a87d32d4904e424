"""The emulated GPUs of a real local node: a kubelet device plugin for ``nvidia.com/gpu``.

It speaks the kubelet's device-plugin API (v1beta1, ``deviceplugin.proto``): serves
``DevicePlugin`` on a socket in the kubelet's ``/var/lib/kubelet/device-plugins/`` and
calls ``Registration.Register`` on the kubelet's ``kubelet.sock`` there. The kubelet then
advertises ``nvidia.com/gpu`` = ``--count`` on its Node, the real scheduler places GPU
pods by it, and on admission the kubelet calls ``Allocate``: the answer's container envs
tell the pod that its "GPU" is emulated on CPU::

    NVIDIA_VISIBLE_DEVICES=<the allocated device ids, comma-separated>
    KAITO_EMULATED_GPU=cpu
    VLLM_CPU_KVCACHE_SPACE=<GiB per allocated device, the emulated GPU's memory>

The last is the emulated GPU's memory, as vLLM's CPU backend takes it: without it, each
vLLM process reserves 90 % of the host's RAM (``--gpu-memory-utilization`` on CPU), so a
second one on the same host (another node's pod, a multi-node group's rank) fails to
start with "Available memory ... is less than desired CPU memory utilization".

No device node is mounted: there is no GPU. The plugin runs inside its node's mount
namespace (kubelet 1.20 hard-codes the device-plugins folder), one process per node:

    python -m kaito_dev.realnode.deviceplugin --count 2 [--resource nvidia.com/gpu]

The kubelet empties the folder when it (re)starts; the plugin then serves and registers
again. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import structlog

__all__ = ["EMULATED_GPU_ENV", "GpuPlugin", "allocate_envs", "device_ids", "main"]

log = structlog.get_logger("kaito_dev.realnode.deviceplugin")

API_VERSION = "v1beta1"
PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
SOCKET_NAME = "kaito-emulated-gpu.sock"
RESOURCE = "nvidia.com/gpu"
# The env the inference server reads to run its CPU engine: exactly this name.
EMULATED_GPU_ENV = "KAITO_EMULATED_GPU"

protos: Any
services: Any
protos, services = grpc.protos_and_services("kaito_dev/realnode/deviceplugin.proto")


def device_ids(count: int) -> list[str]:
    """The device ids: ``emulated-gpu-0`` ... (stable, so the kubelet's checkpoint holds)."""
    return [f"emulated-gpu-{i}" for i in range(count)]


KV_CACHE_GIB_PER_DEVICE = 1
"""The emulated GPU's memory for vLLM's KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB): ample
for the stand-in model, small enough for many servers on one host."""


def allocate_envs(ids: Sequence[str]) -> dict[str, str]:
    """The container envs for an allocation of ``ids``."""
    return {
        "NVIDIA_VISIBLE_DEVICES": ",".join(ids),
        EMULATED_GPU_ENV: "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB_PER_DEVICE * max(len(ids), 1)),
    }


class GpuPlugin(services.DevicePluginServicer):  # type: ignore[misc]
    """The ``DevicePlugin`` service: ``count`` healthy emulated GPUs."""

    def __init__(self, count: int, stopping: threading.Event) -> None:
        self.ids = device_ids(count)
        self.stopping = stopping

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return protos.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
        log.info("list and watch", devices=len(self.ids))
        yield protos.ListAndWatchResponse(
            devices=[protos.Device(ID=i, health="Healthy") for i in self.ids]
        )
        # The devices never change; keep the stream open until the kubelet or we go.
        while context.is_active() and not self.stopping.wait(1.0):
            pass

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        responses = []
        for req in request.container_requests:
            chosen = list(req.must_include_deviceIDs)
            for dev in req.available_deviceIDs:
                if len(chosen) >= req.allocation_size:
                    break
                if dev not in chosen:
                    chosen.append(dev)
            responses.append(protos.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return protos.PreferredAllocationResponse(container_responses=responses)

    def Allocate(self, request: Any, context: Any) -> Any:
        responses = []
        for req in request.container_requests:
            ids = list(req.devicesIDs)
            unknown = [i for i in ids if i not in self.ids]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown device ids: {unknown}")
            log.info("allocate", devices=ids)
            responses.append(protos.ContainerAllocateResponse(envs=allocate_envs(ids)))
        return protos.AllocateResponse(container_responses=responses)

    def PreStartContainer(self, request: Any, context: Any) -> Any:
        return protos.PreStartContainerResponse()


def _serve(plugin: GpuPlugin, socket: Path) -> grpc.Server:
    socket.unlink(missing_ok=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services.add_DevicePluginServicer_to_server(plugin, server)
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    return server


def _register(plugin_dir: Path, resource: str, timeout: float) -> None:
    with grpc.insecure_channel(f"unix://{plugin_dir / KUBELET_SOCKET}") as channel:
        services.RegistrationStub(channel).Register(
            protos.RegisterRequest(
                version=API_VERSION,
                endpoint=SOCKET_NAME,
                resource_name=resource,
                options=protos.DevicePluginOptions(get_preferred_allocation_available=True),
            ),
            timeout=timeout,
        )


def run(count: int, *, resource: str, plugin_dir: Path, stopping: threading.Event) -> None:
    """Serve and register until ``stopping``; serve and register again after a kubelet restart."""
    socket = plugin_dir / SOCKET_NAME
    while not stopping.is_set():
        kubelet = plugin_dir / KUBELET_SOCKET
        if not kubelet.exists():
            stopping.wait(0.2)
            continue
        plugin = GpuPlugin(count, stopping)
        server = _serve(plugin, socket)
        try:
            _register(plugin_dir, resource, timeout=10.0)
        except grpc.RpcError as e:
            log.warning("registration failed; retrying", error=str(e.details()))
            server.stop(0)
            stopping.wait(1.0)
            continue
        log.info("registered", resource=resource, devices=plugin.ids, socket=str(socket))
        # A restarted kubelet wipes the folder (our socket with it): serve and register again.
        while not stopping.wait(0.5) and socket.exists():
            pass
        server.stop(grace=1.0)
        if not stopping.is_set():
            log.info("socket removed (kubelet restarted): registering again")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaito_dev.realnode.deviceplugin")
    parser.add_argument("--count", type=int, required=True, help="number of emulated GPUs")
    parser.add_argument("--resource", default=RESOURCE)
    parser.add_argument("--plugin-dir", type=Path, default=PLUGIN_DIR)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count: must be at least 1, got {args.count}")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    log.info("starting", pid=os.getpid(), count=args.count, plugin_dir=str(args.plugin_dir))
    t0 = time.monotonic()
    run(args.count, resource=args.resource, plugin_dir=args.plugin_dir, stopping=stopping)
    log.info("stopped", after_s=round(time.monotonic() - t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
