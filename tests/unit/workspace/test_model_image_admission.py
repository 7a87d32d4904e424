"""Admission of ``presetOptions.modelImage``: a valid reference, the one source of the
weights, its pull Secrets Secret names; each refusal names its field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from kaito.controllers.workspace.admission.validation import validate
from tests.unit.workspace.specs import workspace

DIGEST = "sha256:" + "ab" * 32


async def errors(obj: dict[str, Any]) -> list[str]:
    async def no_configmaps(namespace: str, name: str) -> None:
        return None

    return [str(e) for e in await validate(obj, None, read_configmap=no_configmaps)]


def preset(name: str = "phi-3-mini-4k-instruct", **fields: Any) -> dict[str, Any]:
    access = fields.pop("accessMode", None)
    body: dict[str, Any] = {"name": name, "presetOptions": fields}
    if access:
        body["accessMode"] = access
    return workspace(resource__instanceType="Standard_NC24ads_A100_v4", inference__preset=body)


ADMITTED = {
    "a tag": preset(modelImage="myacr.azurecr.io/models/phi-3:0a67737"),
    "a digest, with pull Secrets": preset(
        modelImage=f"myacr.azurecr.io/models/phi-3@{DIGEST}", modelImagePullSecrets=["acr-pull"]
    ),
    "a local registry with a port": preset(modelImage="127.0.0.1:5000/models/phi-3:1"),
    "private access with a model image instead of a private image": preset(
        accessMode="private", modelImage="myacr.azurecr.io/models/phi-3:1"
    ),
    "a gated preset from a model image needs no Hugging Face token": preset(
        "llama-3.1-8b-instruct", modelImage="myacr.azurecr.io/models/llama:1"
    ),
}


@pytest.mark.parametrize("obj", ADMITTED.values(), ids=ADMITTED.keys())
async def test_a_model_image_is_admitted(obj: dict[str, Any]) -> None:
    assert await errors(obj) == []


REFUSED = [
    (
        "no registry host",
        preset(modelImage="models/phi-3:1"),
        "inference.preset.presetOptions.modelImage: 'models/phi-3:1' names no registry host",
    ),
    (
        "an upper-case repository",
        preset(modelImage="myacr.azurecr.io/Models/Phi3:1"),
        "inference.preset.presetOptions.modelImage: 'myacr.azurecr.io/Models/Phi3:1': "
        "bad repository",
    ),
    (
        "a short digest",
        preset(modelImage="myacr.azurecr.io/models/phi-3@sha256:abc"),
        "inference.preset.presetOptions.modelImage: "
        "'myacr.azurecr.io/models/phi-3@sha256:abc': bad digest",
    ),
    (
        "a private image and a model image",
        preset(
            accessMode="private",
            image="myacr.azurecr.io/phi3-server:1",
            modelImage="myacr.azurecr.io/models/phi-3:1",
        ),
        "inference.preset.presetOptions.modelImage: conflicts with presetOptions.image",
    ),
    (
        "a Hugging Face token and a model image",
        preset(modelImage="myacr.azurecr.io/models/phi-3:1", modelAccessSecret="hf"),
        "inference.preset.presetOptions.modelAccessSecret: conflicts with presetOptions.modelImage",
    ),
    (
        "pull Secrets without a model image",
        preset(modelImagePullSecrets=["acr-pull"]),
        "inference.preset.presetOptions.modelImagePullSecrets: set only with "
        "presetOptions.modelImage",
    ),
    (
        "a pull Secret that is not a Secret name",
        preset(modelImage="myacr.azurecr.io/m:1", modelImagePullSecrets=["ACR pull"]),
        'inference.preset.presetOptions.modelImagePullSecrets[0]: "ACR pull" is not a valid '
        "Secret name",
    ),
    (
        "private access with neither image",
        preset(accessMode="private"),
        "accessMode private needs presetOptions.image (the private model image) or "
        "presetOptions.modelImage",
    ),
]


@pytest.mark.parametrize(
    ("obj", "message"), [(o, m) for _, o, m in REFUSED], ids=[i for i, _, _ in REFUSED]
)
async def test_a_bad_model_image_is_refused_naming_the_field(
    obj: dict[str, Any], message: str
) -> None:
    got = await errors(obj)
    assert any(message in e for e in got), f"expected {message!r} in {got}"


async def test_a_tuning_base_model_may_come_from_a_model_image_too() -> None:
    obj = workspace(
        resource__instanceType="Standard_NC24ads_A100_v4",
        inference=None,
        tuning={
            "preset": {
                "name": "phi-3-mini-4k-instruct",
                "presetOptions": {"modelImage": "myacr.azurecr.io/models/phi-3:1"},
            },
            "method": "qlora",
            "input": {"urls": ["https://example.com/data.jsonl"]},
            "output": {"image": "myacr.azurecr.io/out:1", "imagePushSecret": "push"},
        },
    )
    assert await errors(obj) == []
