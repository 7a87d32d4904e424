"""The local control plane is a real Kubernetes 1.20.2 and custom resources work on it.

Uses kubernetes-asyncio's own generated clients (not our runtime client) so the
foundation is proven independently of kaito.runtime.
"""

from __future__ import annotations

import asyncio
import uuid

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio import watch as kwatch

GROUP, VERSION, PLURAL = "smoke.kaito.sh", "v1", "widgets"

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


async def _api(kubeconfig: str) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    await kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return k8s.ApiClient(configuration=cfg)


async def test_apiserver_is_kubernetes_1_20_2(kubeconfig: str) -> None:
    async with await _api(kubeconfig) as api:
        info = await k8s.VersionApi(api).get_code()
    print(f"kube-apiserver version {info.git_version}")
    assert info.git_version.startswith("v1.20.2"), info.git_version


async def test_custom_object_create_get_list_patch_watch_delete(kubeconfig: str) -> None:
    async with await _api(kubeconfig) as api:
        ext = k8s.ApiextensionsV1Api(api)
        await ext.create_custom_resource_definition(CRD)
        objects = k8s.CustomObjectsApi(api)
        ns = "default"
        for _ in range(100):  # the CRD is served a moment after it is created
            try:
                await objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
                break
            except k8s.ApiException:
                await asyncio.sleep(0.1)
        name = f"w-{uuid.uuid4().hex[:6]}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"size": 1},
        }
        created = await objects.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        rv = created["metadata"]["resourceVersion"]

        got = await objects.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        assert got["spec"] == {"size": 1}
        listed = await objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        assert [i["metadata"]["name"] for i in listed["items"]] == [name]

        patched = await objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            {"spec": {"size": 3}},
            _content_type="application/merge-patch+json",
        )
        assert patched["spec"]["size"] == 3

        events = []
        w = kwatch.Watch()
        async with asyncio.timeout(30):
            async for ev in w.stream(
                objects.list_namespaced_custom_object,
                GROUP,
                VERSION,
                ns,
                PLURAL,
                resource_version=rv,
                timeout_seconds=10,
            ):
                events.append((ev["type"], ev["object"]["spec"]["size"]))
                if ev["type"] == "MODIFIED":
                    w.stop()
        assert events == [("MODIFIED", 3)]

        await objects.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        listed = await objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        assert listed["items"] == []
        await ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")
