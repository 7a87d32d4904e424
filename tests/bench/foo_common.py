"""The benchmark's Foo custom resource and the Deployment a Foo asks for.

Shared by the kaito.runtime and kopf versions of the controller so both do exactly the
same API work: per Foo, one Deployment create (or patch when it drifts) and one status
write copied from the Deployment.
"""

from __future__ import annotations

from typing import Any

GROUP, VERSION, PLURAL, KIND = "bench.kaito.sh", "v1", "foos", "Foo"

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "foo", "kind": KIND},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def deployment_for(foo: dict[str, Any]) -> dict[str, Any]:
    meta = foo["metadata"]
    labels = {"app": "foo", "foo": meta["name"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{meta['name']}-deploy",
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": int(foo.get("spec", {}).get("replicas", 0)),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
            },
        },
    }


def status_for(foo: dict[str, Any], deploy: dict[str, Any]) -> dict[str, Any]:
    """What the Foo's status says: the generation handled and the Deployment's replicas."""
    return {
        "observedGeneration": foo["metadata"].get("generation"),
        "replicas": deploy["spec"]["replicas"],
        "availableReplicas": deploy.get("status", {}).get("availableReplicas", 0),
    }
