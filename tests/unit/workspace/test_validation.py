"""Every admission rule of WORKSPACE.md, one spec each, with the message users see.

These run the same `validate` the webhook runs, minus TLS; the integration tests send a
subset through the real apiserver.
"""

from __future__ import annotations

from typing import Any

import pytest

from kaito.controllers.workspace.admission.resource import check_capacity
from kaito.controllers.workspace.admission.validation import parse, validate, warnings
from kaito.presets.catalog import load_catalog
from kaito.presets.skus import get_sku
from kaito_contracts import url_problem
from tests.unit.workspace.specs import (
    DELETE,
    QUICK_START,
    QUICK_START_ADAPTER,
    TUNING,
    adapter,
    workspace,
)

CONFIGMAPS: dict[tuple[str, str], dict[str, Any]] = {
    ("default", "good-inference"): {
        "data": {"inference_config.yaml": "vllm:\n  max-model-len: 2048\n  enforce-eager: true\n"}
    },
    ("default", "good-training"): {
        "data": {"training_config.yaml": "training_config:\n  LoraConfig: {r: 16}\n"}
    },
    ("default", "no-key"): {"data": {"other.yaml": "a: 1"}},
    ("default", "broken-yaml"): {"data": {"inference_config.yaml": "vllm: [unclosed\n"}},
    ("default", "list-flag"): {
        "data": {"inference_config.yaml": "vllm:\n  max-model-len: [1, 2]\n"}
    },
    ("default", "not-a-mapping"): {"data": {"training_config.yaml": "- a\n- b\n"}},
    ("default", "bad-section"): {
        "data": {"training_config.yaml": "training_config:\n  LoraConfig: 8\n"}
    },
}


async def read_configmap(namespace: str, name: str) -> dict[str, Any] | None:
    return CONFIGMAPS.get((namespace, name))


async def errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    return [str(e) for e in await validate(obj, old, read_configmap=read_configmap)]


# -- accepted -------------------------------------------------------------------------

VALID = {
    "quick start: phi-3-mini on Standard_NC6s_v3": QUICK_START,
    "quick start with an adapter": QUICK_START_ADAPTER,
    "tuning with URL input and image output": TUNING,
    "tiny CPU test preset": workspace(inference__preset__name="tiny-llama-test"),
    "custom template": workspace(
        inference={"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}
    ),
    "custom template on a CPU size (any SKU, as upstream)": workspace(
        resource__instanceType="Standard_D8s_v3",
        inference={"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
    ),
    "labelSelector In with one value (a node label)": workspace(
        resource__labelSelector={
            "matchLabels": {"apps": "phi-3"},
            "matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}],
        }
    ),
    "output image with a port and a digest-free tag": workspace(
        TUNING, tuning__output__image="registry.local:5000/team/adapter-1:v0.1"
    ),
    "GPU size missing from the SKU table (no memory check)": workspace(
        resource__instanceType="Standard_NC999ads_Z900_v9",
        inference__preset__name="qwen2.5-coder-32b-instruct",
    ),
    "too little memory, but checks bypassed by annotation": workspace(
        metadata__annotations={"kaito.sh/bypass-resource-checks": "True"},
        inference__preset__name="phi-3-medium-4k-instruct",
    ),
    "two nodes add up to enough memory for a preset that spans nodes": workspace(
        resource__count=2,
        resource__instanceType="Standard_NC48ads_A100_v4",
        inference__preset={
            "name": "llama-3.3-70b-instruct",
            "presetOptions": {"modelAccessSecret": "hf-token"},
        },
    ),
    "two copies of a preset that fits one node": workspace(
        resource__count=2,
        resource__instanceType="Standard_NC24s_v3",
        inference__preset__name="phi-3-medium-4k-instruct",
    ),
    "llama-3.3-70b on 4 A100 80GB": workspace(
        resource__instanceType="Standard_NC96ads_A100_v4",
        inference__preset={
            "name": "llama-3.3-70b-instruct",
            "presetOptions": {"modelAccessSecret": "hf-token"},
        },
    ),
    "gated preset from a private image (no download, no token)": workspace(
        resource__instanceType="Standard_NC24ads_A100_v4",
        inference__preset={
            "name": "llama-3.1-8b-instruct",
            "accessMode": "private",
            "presetOptions": {"image": "myacr.azurecr.io/llama:1"},
        },
    ),
    "a token Secret for a public preset too": workspace(
        inference__preset={
            "name": "phi-3-mini-4k-instruct",
            "presetOptions": {"modelAccessSecret": "hf-token"},
        },
    ),
    "private image": workspace(
        inference__preset={
            "name": "phi-3-mini-4k-instruct",
            "accessMode": "private",
            "presetOptions": {"image": "myacr.azurecr.io/phi3:1"},
        }
    ),
    "runtime annotation transformers": workspace(
        metadata__annotations={"kaito.sh/runtime": "transformers"}
    ),
    "existing inference config": workspace(inference__config="good-inference"),
    "existing training config": workspace(TUNING, tuning__config="good-training"),
    "tuning with volume input and output": workspace(
        TUNING,
        tuning__input={"volumeSource": {"persistentVolumeClaim": {"claimName": "data"}}},
        tuning__output={"volumeSource": {"emptyDir": {}}},
    ),
    "ten adapters with strengths": workspace(
        inference__adapters=[adapter(f"a{i}", strength=f"0.{i}") for i in range(10)]
    ),
}


@pytest.mark.parametrize("obj", VALID.values(), ids=VALID.keys())
async def test_valid_workspace_is_admitted(obj: dict[str, Any]) -> None:
    assert await errors(obj) == []


# -- rejected on create ---------------------------------------------------------------

DEFAULT_URL = "https://example.com/data.jsonl"

INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "name with a dot",
        workspace(metadata__name="phi.3"),
        'metadata.name: "phi.3" is not a DNS-1123 label',
    ),
    (
        "name longer than 63",
        workspace(metadata__name="w" * 64),
        "metadata.name: " + '"' + "w" * 64 + '" is not a DNS-1123 label',
    ),
    (
        "neither inference nor tuning",
        workspace(inference=DELETE),
        "inference, tuning: exactly one of inference and tuning must be set, got none",
    ),
    (
        "both inference and tuning",
        workspace(tuning=TUNING["tuning"]),
        "inference, tuning: exactly one of inference and tuning must be set, got inference, tuning",
    ),
    (
        "preset and template",
        workspace(inference__template={"spec": {}}),
        "inference: exactly one of preset and template must be set, got preset, template",
    ),
    (
        "neither preset nor template",
        workspace(inference={"config": ""}),
        "inference: exactly one of preset and template must be set, got none",
    ),
    (
        "unknown preset",
        workspace(inference__preset__name="gpt-5"),
        'inference.preset.name: unknown preset "gpt-5"; known presets: deepseek-r1-distill-llama-8b',
    ),
    (
        "deprecated preset",
        workspace(inference__preset__name="phi-2"),
        "inference.preset.name: preset phi-2 is deprecated and no longer accepted; "
        "use another phi preset: phi-3-medium-128k-instruct",
    ),
    (
        "private access without an image",
        workspace(inference__preset__accessMode="private"),
        "inference.preset.presetOptions.image: accessMode private needs presetOptions.image",
    ),
    (
        "gated preset without a token Secret",
        workspace(
            resource__instanceType="Standard_NC24ads_A100_v4",
            inference__preset__name="llama-3.1-8b-instruct",
        ),
        "inference.preset.presetOptions.modelAccessSecret: preset llama-3.1-8b-instruct is "
        "gated on Hugging Face (meta-llama/Llama-3.1-8B-Instruct): name a Secret in the "
        "workspace's namespace whose key HF_TOKEN holds a token with access to it",
    ),
    (
        "token Secret name that is not a Secret name",
        workspace(
            inference__preset={
                "name": "phi-3-mini-4k-instruct",
                "presetOptions": {"modelAccessSecret": "HF Token"},
            },
        ),
        'inference.preset.presetOptions.modelAccessSecret: "HF Token" is not a valid Secret name',
    ),
    (
        "unknown instance type",
        workspace(resource__instanceType="Standard_D4s_v3"),
        "resource.instanceType: unknown instance type Standard_D4s_v3; use a GPU size (Standard_N*)",
    ),
    (
        "too little total GPU memory",
        workspace(inference__preset__name="phi-3-medium-4k-instruct"),
        "resource.instanceType: instance type Standard_NC6s_v3 has 16Gi of GPU memory in total; "
        "preset phi-3-medium-4k-instruct needs 28Gi",
    ),
    (
        "fractional requirement",
        workspace(inference__preset__name="deepseek-r1-distill-llama-8b"),
        "resource.instanceType: instance type Standard_NC6s_v3 has 16Gi of GPU memory in total; "
        "preset deepseek-r1-distill-llama-8b needs 16.5Gi",
    ),
    (
        "too few GPUs",
        workspace(
            resource__instanceType="Standard_NC24ads_A100_v4", inference__preset__name="falcon-40b"
        ),
        "resource.instanceType: instance type Standard_NC24ads_A100_v4 has 1 GPU; "
        "preset falcon-40b needs 2 GPUs",
    ),
    (
        "too little memory per GPU",
        workspace(
            resource__instanceType="Standard_NC64as_T4_v3",
            inference__preset__name="llama-3.3-70b-instruct",
        ),
        "resource.instanceType: instance type Standard_NC64as_T4_v3 has 16Gi of memory per GPU; "
        "preset llama-3.3-70b-instruct needs 80Gi per GPU",
    ),
    (
        "several nodes still too small",
        workspace(
            resource__count=2,
            resource__instanceType="Standard_NC64as_T4_v3",
            inference__preset__name="llama-3.3-70b-instruct",
        ),
        "resource.instanceType: 2 x instance type Standard_NC64as_T4_v3 have 128Gi of GPU memory "
        "in total; preset llama-3.3-70b-instruct needs 320Gi",
    ),
    (
        "a preset that cannot span nodes must fit on one",
        workspace(
            resource__count=2,
            resource__instanceType="Standard_NC24s_v3",
            inference__preset__name="qwen2.5-coder-32b-instruct",
        ),
        "resource.instanceType: instance type Standard_NC24s_v3 has 64Gi of GPU memory in total; "
        "preset qwen2.5-coder-32b-instruct needs 70Gi; preset qwen2.5-coder-32b-instruct cannot "
        "span nodes, so resource.count 2 runs 2 copies, each on one node",
    ),
    (
        "eleven adapters",
        workspace(inference__adapters=[adapter(f"a{i}") for i in range(11)]),
        "inference.adapters: 11 adapters given; at most 10 are allowed",
    ),
    (
        "duplicate adapter names",
        workspace(inference__adapters=[adapter("a"), adapter("a")]),
        'inference.adapters[1].source.name: duplicate adapter name "a" (also inference.adapters[0])',
    ),
    (
        "adapter name not a DNS-1123 subdomain",
        workspace(inference__adapters=[adapter("Bad_Name")]),
        'inference.adapters[0].source.name: "Bad_Name" is not a DNS-1123 subdomain',
    ),
    (
        "adapter without a name",
        workspace(inference__adapters=[adapter("")]),
        "inference.adapters[0].source.name: required: the adapter's name",
    ),
    (
        "adapter without image or volume",
        workspace(inference__adapters=[adapter("a", image=None)]),
        "inference.adapters[0].source: exactly one of image and volumeSource must be set, got none",
    ),
    (
        "adapter without a source",
        workspace(inference__adapters=[{"strength": "0.5"}]),
        "inference.adapters[0].source: required",
    ),
    (
        "adapter strength not a number",
        workspace(inference__adapters=[adapter("a", strength="strong")]),
        'inference.adapters[0].strength: "strong" is not a number; use a float in [0, 1]',
    ),
    (
        "adapter strength above 1",
        workspace(inference__adapters=[adapter("a", strength="1.5")]),
        "inference.adapters[0].strength: 1.5 is outside [0, 1]",
    ),
    (
        "adapter strength NaN",
        workspace(inference__adapters=[adapter("a", strength="nan")]),
        'inference.adapters[0].strength: "nan" is not a number',
    ),
    (
        "adapters on a template",
        workspace(inference={"template": {"spec": {}}, "adapters": [adapter("a")]}),
        "inference.adapters: adapters need inference.preset",
    ),
    (
        "unknown runtime annotation",
        workspace(metadata__annotations={"kaito.sh/runtime": "tensorrt"}),
        'metadata.annotations[kaito.sh/runtime]: "tensorrt" is not a runtime; use vllm or transformers',
    ),
    (
        "tuning method unknown",
        workspace(TUNING, tuning__method="dpo"),
        'tuning.method: "dpo" is not a tuning method; use lora or qlora',
    ),
    (
        "tuning method missing",
        workspace(TUNING, tuning__method=DELETE),
        "tuning.method: required: lora or qlora",
    ),
    (
        "tuning without a preset",
        workspace(TUNING, tuning__preset=DELETE),
        "tuning.preset: required",
    ),
    (
        "tuning a preset that does not tune",
        workspace(TUNING, tuning__preset__name="falcon-7b-instruct"),
        "tuning.preset.name: preset falcon-7b-instruct does not support tuning; presets that do:",
    ),
    (
        "tuning input with urls and image",
        workspace(TUNING, tuning__input={"urls": [DEFAULT_URL], "image": "x/data:1"}),
        "tuning.input: exactly one of urls, image and volumeSource must be set, got urls, image",
    ),
    (
        "tuning input missing",
        workspace(TUNING, tuning__input=DELETE),
        "tuning.input: required",
    ),
    (
        "tuning URL not http(s)",
        workspace(TUNING, tuning__input={"urls": ["ftp://example.com/data.jsonl"]}),
        "tuning.input.urls[0]: ftp://example.com/data.jsonl is not an http(s) URL",
    ),
    (
        "tuning URL to a private address",
        workspace(TUNING, tuning__input={"urls": [DEFAULT_URL, "http://10.0.0.5/d.jsonl"]}),
        "tuning.input.urls[1]: http://10.0.0.5/d.jsonl points at 10.0.0.5, a private address",
    ),
    (
        "tuning URL to the metadata service",
        workspace(TUNING, tuning__input={"urls": ["http://169.254.169.254/metadata/instance"]}),
        "points at 169.254.169.254, a cloud metadata address",
    ),
    (
        "tuning URL to localhost",
        workspace(TUNING, tuning__input={"urls": ["http://localhost:8080/d.jsonl"]}),
        "tuning.input.urls[0]: http://localhost:8080/d.jsonl points at localhost",
    ),
    (
        "tuning output with neither image nor volume",
        workspace(TUNING, tuning__output={}),
        "tuning.output: exactly one of image and volumeSource must be set, got none",
    ),
    (
        "tuning output image without push secret",
        workspace(TUNING, tuning__output={"image": "myacr.azurecr.io/out:1"}),
        "tuning.output.imagePushSecret: pushing the adapter to myacr.azurecr.io/out:1 needs "
        "imagePushSecret",
    ),
    (
        "tuning on two nodes",
        workspace(TUNING, resource__count=2),
        "resource.count: tuning runs on one node; got 2",
    ),
    (
        "inference config ConfigMap missing",
        workspace(inference__config="nope"),
        "inference.config: ConfigMap default/nope not found; create it before the workspace",
    ),
    (
        "inference config without its key",
        workspace(inference__config="no-key"),
        "inference.config: ConfigMap default/no-key has no key inference_config.yaml",
    ),
    (
        "inference config that does not parse",
        workspace(inference__config="broken-yaml"),
        "inference.config: inference_config.yaml in ConfigMap default/broken-yaml does not parse as YAML",
    ),
    (
        "inference config with a list as a flag",
        workspace(inference__config="list-flag"),
        "inference.config: inference_config.yaml in ConfigMap default/list-flag sets "
        "vllm.max-model-len to a list; flags take scalars",
    ),
    (
        "training config not a mapping",
        workspace(TUNING, tuning__config="not-a-mapping"),
        "tuning.config: training_config.yaml in ConfigMap default/not-a-mapping must be a YAML "
        "mapping, got list",
    ),
    (
        "training config section not a mapping",
        workspace(TUNING, tuning__config="bad-section"),
        "tuning.config: training_config.yaml in ConfigMap default/bad-section has a LoraConfig "
        "that is not a mapping",
    ),
    (
        "preset name in the wrong case",
        workspace(inference__preset__name="Phi-3-Mini-4k-Instruct"),
        'inference.preset.name: unknown preset "Phi-3-Mini-4k-Instruct" (preset names are '
        'case-sensitive); did you mean "phi-3-mini-4k-instruct"?',
    ),
    (
        "labelSelector NotIn",
        workspace(
            resource__labelSelector={
                "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["b"]}]
            }
        ),
        "resource.labelSelector.matchExpressions[0]: NotIn cannot become a node label",
    ),
    (
        "labelSelector Exists",
        workspace(
            resource__labelSelector={"matchExpressions": [{"key": "team", "operator": "Exists"}]}
        ),
        "resource.labelSelector.matchExpressions[0]: Exists cannot become a node label",
    ),
    (
        "labelSelector DoesNotExist",
        workspace(
            resource__labelSelector={
                "matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]
            }
        ),
        "resource.labelSelector.matchExpressions[0]: DoesNotExist cannot become a node label",
    ),
    (
        "labelSelector In with two values",
        workspace(
            resource__labelSelector={
                "matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]
            }
        ),
        "resource.labelSelector.matchExpressions[0]: In with 2 values cannot become a node "
        "label (a node carries one value per key); use matchLabels (team: <value>) or In "
        "with exactly one value",
    ),
    (
        "labelSelector unknown operator",
        workspace(
            resource__labelSelector={
                "matchExpressions": [{"key": "team", "operator": "Gt", "values": ["1"]}]
            }
        ),
        'resource.labelSelector.matchExpressions[0]: "Gt" is not a label selector operator',
    ),
    (
        "output image with an uppercase repository",
        workspace(TUNING, tuning__output__image="myacr.azurecr.io/Adapters/Phi:1"),
        "tuning.output.image: not a valid image reference: 'myacr.azurecr.io/Adapters/Phi:1': "
        "bad repository 'Adapters/Phi'",
    ),
    (
        "output image with a bad host",
        workspace(TUNING, tuning__output__image="my_acr.azurecr.io/adapter:1"),
        "tuning.output.image: not a valid image reference: 'my_acr.azurecr.io/adapter:1': bad "
        "registry host 'my_acr.azurecr.io'",
    ),
    (
        "output image with a bad tag",
        workspace(TUNING, tuning__output__image="myacr.azurecr.io/adapter:-1"),
        "bad tag '-1'",
    ),
    (
        "input image without a registry",
        workspace(TUNING, tuning__input={"image": "data:1"}),
        "tuning.input.image: not a valid image reference: 'data:1' names no registry host",
    ),
    (
        "adapter image uppercase",
        workspace(inference__adapters=[adapter("a", image="myacr.azurecr.io/A:1")]),
        "inference.adapters[0].source.image: not a valid image reference",
    ),
    (
        "falcon-7b on one 8 GB M60 (Standard_NV6)",
        workspace(resource__instanceType="Standard_NV6", inference__preset__name="falcon-7b"),
        "resource.instanceType: instance type Standard_NV6 has 8Gi of GPU memory in total; "
        "preset falcon-7b needs 14Gi",
    ),
    (
        "a CPU size for a preset",
        workspace(resource__instanceType="Standard_D8s_v3"),
        "resource.instanceType: unknown instance type Standard_D8s_v3",
    ),
    (
        "wrong type (the schema's job, still a field error)",
        workspace(resource__count="many"),
        "resource.count: Input should be a valid integer",
    ),
]


@pytest.mark.parametrize(
    ("obj", "message"), [(o, m) for _, o, m in INVALID], ids=[i for i, _, _ in INVALID]
)
async def test_invalid_workspace_is_rejected_with_its_message(
    obj: dict[str, Any], message: str
) -> None:
    got = await errors(obj)
    assert any(message in e for e in got), f"expected {message!r} in {got}"


async def test_every_capacity_shortfall_is_reported_at_once() -> None:
    got = await errors(
        workspace(
            resource__instanceType="Standard_NC24ads_A100_v4", inference__preset__name="falcon-40b"
        )
    )
    assert got == [
        "resource.instanceType: instance type Standard_NC24ads_A100_v4 has 1 GPU; preset falcon-40b "
        'needs 2 GPUs (annotation kaito.sh/bypass-resource-checks: "True" skips this check)',
        "resource.instanceType: instance type Standard_NC24ads_A100_v4 has 80Gi of GPU memory in "
        'total; preset falcon-40b needs 90Gi (annotation kaito.sh/bypass-resource-checks: "True" '
        "skips this check)",
    ]


def test_capacity_check_against_every_sku_and_preset_never_crashes() -> None:
    catalog = load_catalog()
    for name in ["Standard_NC6s_v3", "Standard_ND96isr_H200_v5", "Standard_NV72ads_A10_v5"]:
        sku = get_sku(name)
        assert sku is not None
        for preset in catalog.presets.values():
            for err in check_capacity(preset, sku, 1):
                assert err.field == "resource.instanceType"
                assert preset.name in err.message and sku.name in err.message


def test_unknown_gpu_size_is_admitted_with_a_warning_and_known_or_template_without() -> None:
    unknown = workspace(resource__instanceType="Standard_NC999ads_Z900_v9")
    assert warnings(unknown) == [
        "resource.instanceType: Standard_NC999ads_Z900_v9 is not in KAITO's GPU SKU table; "
        "admitted without checking its GPU count and memory against the preset"
    ]
    assert warnings(QUICK_START) == []
    template = workspace(
        resource__instanceType="Standard_D8s_v3",
        inference={"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
    )
    assert warnings(template) == []


def test_instance_type_lookup_is_case_insensitive() -> None:
    ws, errs = parse(workspace(resource__instanceType="standard_nc6s_v3"))
    assert ws is not None and not errs


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://huggingface.co/datasets/x/y.parquet", None),
        ("http://8.8.8.8/d.jsonl", None),
        ("file:///etc/passwd", "is not an http(s) URL"),
        ("https://127.0.0.1/d", "a loopback address"),
        ("https://127.1/d", "a loopback address"),
        ("https://2130706433/d", "a loopback address"),
        ("https://0x7f000001/d", "a loopback address"),
        ("https://[::1]/d", "a loopback address"),
        ("https://[::ffff:10.1.2.3]/d", "a private address"),
        ("https://192.168.1.1/d", "a private address"),
        ("https://172.16.0.1/d", "a private address"),
        ("https://169.254.10.10/d", "a link-local address"),
        ("https://[fe80::1]/d", "a link-local address"),
        ("https://168.63.129.16/d", "a cloud metadata address"),
        ("https://100.64.1.1/d", "not a public address"),
        ("https://0.0.0.0/d", "the unspecified address"),
        ("https://metadata.google.internal/x", "a cloud metadata service"),
        ("https://api.localhost/x", "a local service"),
        ("https:///nohost", "has no host"),
    ],
)
def test_download_urls_must_be_public_http(url: str, reason: str | None) -> None:
    problem = url_problem(url)
    if reason is None:
        assert problem is None
    else:
        assert problem is not None and reason in problem, problem


# -- updates --------------------------------------------------------------------------

UPDATES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "count",
        QUICK_START,
        workspace(resource__count=2),
        "resource.count: field is immutable (was 1, now 2)",
    ),
    (
        "instance type",
        QUICK_START,
        workspace(resource__instanceType="Standard_NC12s_v3"),
        "resource.instanceType: field is immutable (was Standard_NC6s_v3, now Standard_NC12s_v3)",
    ),
    (
        "label selector",
        QUICK_START,
        workspace(resource__labelSelector={"matchLabels": {"apps": "other"}}),
        "resource.labelSelector: field is immutable",
    ),
    (
        "inference preset",
        QUICK_START,
        workspace(inference__preset__name="phi-3.5-mini-instruct"),
        "inference.preset: field is immutable",
    ),
    (
        "inference to tuning",
        QUICK_START,
        workspace(QUICK_START, inference=DELETE, tuning=TUNING["tuning"]),
        "inference, tuning: a workspace cannot switch between inference and tuning (it was inference)",
    ),
    (
        "tuning method",
        TUNING,
        workspace(TUNING, tuning__method="lora"),
        "tuning.method: field is immutable (was qlora, now lora)",
    ),
    (
        "tuning input source",
        TUNING,
        workspace(TUNING, tuning__input={"image": "myacr.azurecr.io/data:2"}),
        "tuning.input.image: field is immutable: it names the data this workspace tunes on "
        "(was unset, now myacr.azurecr.io/data:2)",
    ),
    (
        "tuning input urls",
        TUNING,
        workspace(TUNING, tuning__input={"urls": ["https://example.com/other.jsonl"]}),
        "tuning.input.urls: field is immutable: it names the data this workspace tunes on",
    ),
    (
        "tuning preset",
        TUNING,
        workspace(TUNING, tuning__preset__name="phi-3-medium-4k-instruct"),
        "tuning.preset: field is immutable",
    ),
    (
        "template unset",
        workspace(inference={"template": {"spec": {}}}),
        workspace(inference={"template": None}),
        "inference.template: cannot be set or unset after creation",
    ),
    (
        "adapters revalidated",
        QUICK_START_ADAPTER,
        workspace(QUICK_START_ADAPTER, inference__adapters=[adapter("a", strength="2")]),
        "inference.adapters[0].strength: 2 is outside [0, 1]",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "message"), [(o, n, m) for _, o, n, m in UPDATES], ids=[i for i, *_ in UPDATES]
)
async def test_update_of_immutable_field_is_rejected(
    old: dict[str, Any], new: dict[str, Any], message: str
) -> None:
    got = await errors(new, old)
    assert any(message in e for e in got), f"expected {message!r} in {got}"


async def test_update_of_mutable_parts_is_admitted() -> None:
    new = workspace(
        QUICK_START_ADAPTER,
        metadata__labels={"team": "a"},
        metadata__finalizers=["workspace.finalizer.kaito.sh"],
        inference__adapters=[adapter("phi-3-adapter", strength="0.5"), adapter("second")],
        inference__config="good-inference",
    )
    assert await errors(new, QUICK_START_ADAPTER) == []


async def test_update_may_reorder_input_urls_and_rotate_pull_secrets() -> None:
    """The input's identity (the set of URLs, the image, the volume, the name) is
    immutable; the order of the URLs and the pull credentials are not part of it."""
    urls = ["https://example.com/a.jsonl", "https://example.com/b.jsonl"]
    old = workspace(TUNING, tuning__input={"urls": urls})
    new = workspace(
        TUNING, tuning__input={"urls": urls[::-1], "imagePullSecrets": ["rotated-token"]}
    )
    assert await errors(new, old) == []


async def test_update_does_not_rejudge_a_stored_spec_against_the_catalog() -> None:
    """A workspace admitted before its preset was deprecated (or an adapter rule tightened)
    must still accept the controller's finalizer removal."""
    old = workspace(inference__preset__name="phi-2", inference__adapters=[adapter("A_B")])
    new = workspace(old, metadata__finalizers=[])
    assert await errors(new, old) == []


async def test_update_checks_a_newly_named_configmap() -> None:
    got = await errors(workspace(inference__config="nope"), QUICK_START)
    assert got == [
        "inference.config: ConfigMap default/nope not found; create it before the workspace"
    ]
