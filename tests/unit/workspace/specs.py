"""Workspace manifests the workspace tests share: the quick start's two, and builders.

The quick start's text is Kaito's: phi-3-mini-4k-instruct on Standard_NC6s_v3, and the
same model with one LoRA adapter from an image.
"""

from __future__ import annotations

import copy
from typing import Any

QUICK_START: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1alpha1",
    "kind": "Workspace",
    "metadata": {"name": "workspace-phi-3-mini", "namespace": "default"},
    "resource": {
        "instanceType": "Standard_NC6s_v3",
        "labelSelector": {"matchLabels": {"apps": "phi-3"}},
    },
    "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
}

QUICK_START_ADAPTER: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1alpha1",
    "kind": "Workspace",
    "metadata": {"name": "workspace-phi-3-mini-adapter", "namespace": "default"},
    "resource": {
        "instanceType": "Standard_NC6s_v3",
        "labelSelector": {"matchLabels": {"apps": "phi-3-adapter"}},
    },
    "inference": {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "adapters": [
            {
                "source": {"name": "phi-3-adapter", "image": "myacr.azurecr.io/adapter:0.0.1"},
                "strength": "1.0",
            }
        ],
    },
}

TUNING: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1beta1",
    "kind": "Workspace",
    "metadata": {"name": "workspace-tuning-phi-3", "namespace": "default"},
    "resource": {
        "instanceType": "Standard_NC24ads_A100_v4",
        "labelSelector": {"matchLabels": {"app": "tuning-phi-3"}},
    },
    "tuning": {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "qlora",
        "input": {
            "urls": [
                "https://huggingface.co/datasets/philschmid/dolly-15k-oai-style/resolve/main/data.parquet"
            ]
        },
        "output": {"image": "myacr.azurecr.io/adapter:0.0.1", "imagePushSecret": "acr-secret"},
    },
}


def workspace(base: dict[str, Any] = QUICK_START, **paths: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``a__b__c=value`` set (``value=DELETE`` removes it)."""
    obj = copy.deepcopy(base)
    for path, value in paths.items():
        keys = path.split("__")
        node = obj
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return obj


DELETE = object()


def adapter(
    name: str, *, image: str | None = "myacr.azurecr.io/a:1", strength: str | None = None
) -> dict[str, Any]:
    source: dict[str, Any] = {"name": name}
    if image:
        source["image"] = image
    out: dict[str, Any] = {"source": source}
    if strength is not None:
        out["strength"] = strength
    return out
