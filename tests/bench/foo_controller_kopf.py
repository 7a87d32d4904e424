"""The same Foo -> Deployment controller written with kopf, for comparison.

    kopf run --standalone --namespace NS --liveness http://127.0.0.1:PORT/healthz \
        foo_controller_kopf.py

Deployments go through kubernetes-asyncio with ``_preload_content=False`` (raw JSON, no
model deserialisation), so kopf's side is as cheap as we can make it: the comparison
measures the frameworks, not the clients.
"""

from __future__ import annotations

import json
import os
from typing import Any

import kopf
from foo_common import GROUP, PLURAL, VERSION, deployment_for, status_for
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as kconfig

_api: k8s.ApiClient | None = None


async def api() -> k8s.ApiClient:
    global _api
    if _api is None:
        cfg = k8s.Configuration()
        await kconfig.load_kube_config(
            config_file=os.environ["KUBECONFIG"], client_configuration=cfg
        )
        _api = k8s.ApiClient(configuration=cfg)
    return _api


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # No k8s Events, so both controllers make the same API writes. With
    # KOPF_BENCH_DEFAULTS=1, kopf keeps its defaults (an Event per handler outcome).
    settings.posting.enabled = os.environ.get("KOPF_BENCH_DEFAULTS") == "1"
    settings.watching.client_timeout = 600
    settings.persistence.finalizer = "bench.kaito.sh/kopf"


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    foo = {"metadata": dict(body.metadata), "spec": dict(body.spec)}
    desired = deployment_for(foo)
    apps = k8s.AppsV1Api(await api())
    name, ns = desired["metadata"]["name"], desired["metadata"]["namespace"]
    # With _preload_content=False the client does not raise on error statuses: check them.
    resp = await apps.create_namespaced_deployment(ns, desired, _preload_content=False)
    if resp.status == 409:
        resp = await apps.patch_namespaced_deployment(
            name,
            ns,
            {"spec": {"replicas": desired["spec"]["replicas"]}},
            _preload_content=False,
            _content_type="application/merge-patch+json",
        )
    if resp.status >= 300:
        raise kopf.TemporaryError(
            f"deployment write failed: {resp.status} {await resp.text()}", delay=1
        )
    current = json.loads(await resp.read())
    for key, value in status_for(foo, current).items():
        patch.status[key] = value
