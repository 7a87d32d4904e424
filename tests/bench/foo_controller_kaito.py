"""The benchmark's Foo -> Deployment controller written with kaito.runtime.

python foo_controller_kaito.py KUBECONFIG NAMESPACE PROBE_PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

from foo_common import GROUP, KIND, PLURAL, VERSION, deployment_for, status_for

from kaito.runtime import log as runtime_log
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import AlreadyExists, NotFound
from kaito.runtime.manager import Manager, ManagerOptions
from kaito.runtime.reconcile import Request
from kaito.runtime.resource import DEPLOYMENTS, Resource

FOOS = Resource(GROUP, VERSION, PLURAL, KIND)


async def main(kubeconfig: str, namespace: str, probe_port: int, metrics_port: int) -> None:
    runtime_log.configure(json=True, level="warning")
    client = Client(await ClientConfig.from_kubeconfig(kubeconfig))
    mgr = Manager(
        client,
        ManagerOptions(
            namespace=namespace,
            metrics_bind_address=f"127.0.0.1:{metrics_port}",
            health_probe_bind_address=f"127.0.0.1:{probe_port}",
        ),
    )
    foos = mgr.informer(FOOS).cache
    deploys = mgr.informer(DEPLOYMENTS).cache

    async def reconcile(req: Request) -> None:
        foo = foos.get_by_name(req.name, req.namespace)
        if foo is None:
            return  # deleted; owner references garbage-collect the Deployment
        desired = deployment_for(foo)
        current = deploys.get_by_name(desired["metadata"]["name"], req.namespace)
        if current is None:
            try:
                current = await client.create(DEPLOYMENTS, desired)
            except AlreadyExists:
                current = await client.get(DEPLOYMENTS, desired["metadata"]["name"], req.namespace)
        elif current["spec"]["replicas"] != desired["spec"]["replicas"]:
            current = await client.patch(
                DEPLOYMENTS,
                desired["metadata"]["name"],
                {"spec": {"replicas": desired["spec"]["replicas"]}},
                req.namespace,
            )
        status = status_for(foo, current)
        if foo.get("status") != status:
            try:
                await client.patch(
                    FOOS, req.name, {"status": status}, req.namespace, subresource="status"
                )
            except NotFound:
                return

    mgr.controller("foo", reconcile, max_concurrent_reconciles=16).for_(FOOS).owns(DEPLOYMENTS)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, mgr.stop)
    try:
        await mgr.run()
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
