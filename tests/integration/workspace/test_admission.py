"""Workspaces through the real kube-apiserver and our webhook (served on 127.0.0.1).

What users see: ``kubectl apply`` of the quick start succeeds; a bad spec comes back
with the webhook's message naming the field and the numbers; immutable fields stay.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import ssl
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import generate_latest

from kaito.api.workspace import WORKSPACES, WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.admission.webhook import (
    CONFIGURATION_NAME,
    VALIDATING_WEBHOOK_CONFIGURATIONS,
    WebhookOptions,
    WebhookServer,
    run_with_manager,
)
from kaito.runtime import metrics
from kaito.runtime.client import Client, PatchType
from kaito.runtime.errors import Invalid
from kaito.runtime.manager import Manager, ManagerOptions
from kaito.runtime.resource import CONFIGMAPS, SECRETS
from kaito.runtime.webhook import load_or_create_certificate, register
from tests.unit.workspace.specs import (
    DELETE,
    QUICK_START,
    QUICK_START_ADAPTER,
    TUNING,
    adapter,
    workspace,
)

DENIED = 'admission webhook "validation.workspace.kaito.sh" denied the request: '


def in_namespace(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    return obj


async def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """kubectl as a subprocess without blocking the loop: the webhook answers on it."""
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        f"--kubeconfig={kubeconfig}",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECTL_COMMAND_HEADERS": "false"},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_quick_start_is_admitted_by_kubectl_apply_and_listed_with_its_columns(
    client: Client, kubeconfig: str, namespace: str, webhook: WebhookServer
) -> None:
    manifest = yaml.safe_dump(in_namespace(QUICK_START, namespace))
    rc, out, err = await kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest)
    assert rc == 0, err
    assert "workspace.kaito.sh/workspace-phi-3-mini created" in out

    rc, out, err = await kubectl(kubeconfig, "get", "workspace", "-n", namespace)
    assert rc == 0, err
    header = out.splitlines()[0].split()
    assert header == [
        "NAME",
        "INSTANCE",
        "RESOURCEREADY",
        "INFERENCEREADY",
        "JOBSTARTED",
        "WORKSPACEREADY",
        "AGE",
    ]
    assert out.splitlines()[1].split()[:2] == ["workspace-phi-3-mini", "Standard_NC6s_v3"]
    rc, out, _ = await kubectl(kubeconfig, "get", "wk", "-n", namespace, "-o", "name")
    assert out.strip() == "workspace.kaito.sh/workspace-phi-3-mini"

    # Stored once, served as both versions; the schema's default applied.
    stored = await client.get(WORKSPACES, "workspace-phi-3-mini", namespace)
    assert stored["apiVersion"] == "kaito.sh/v1beta1"
    assert stored["resource"]["count"] == 1
    assert stored["inference"]["preset"]["accessMode"] == "public"
    await client.delete(WORKSPACES, "workspace-phi-3-mini", namespace)


async def test_quick_start_with_adapter_is_admitted(
    client: Client, namespace: str, webhook: WebhookServer
) -> None:
    created = await client.create(WORKSPACES_V1ALPHA1, in_namespace(QUICK_START_ADAPTER, namespace))
    assert created["inference"]["adapters"][0]["source"]["name"] == "phi-3-adapter"
    await client.delete(WORKSPACES_V1ALPHA1, created["metadata"]["name"], namespace)


async def test_tuning_workspace_is_admitted(
    client: Client, namespace: str, webhook: WebhookServer
) -> None:
    created = await client.create(WORKSPACES, in_namespace(TUNING, namespace))
    assert created["tuning"]["method"] == "qlora"
    await client.delete(WORKSPACES, created["metadata"]["name"], namespace)


async def test_a_gated_preset_naming_its_token_secret_is_admitted_and_keeps_the_field(
    client: Client, namespace: str, webhook: WebhookServer
) -> None:
    """The CRD's schema carries ``presetOptions.modelAccessSecret`` (the apiserver prunes
    fields its schema lacks), in both versions."""
    preset = {"name": "llama-3.1-8b-instruct", "presetOptions": {"modelAccessSecret": "hf"}}
    for resource in (WORKSPACES, WORKSPACES_V1ALPHA1):
        obj = workspace(
            metadata__name=f"gated-{resource.version}",
            resource__instanceType="Standard_NC24ads_A100_v4",
            inference__preset=preset,
        )
        obj["apiVersion"] = resource.api_version
        created = await client.create(resource, in_namespace(obj, namespace))
        assert created["inference"]["preset"]["presetOptions"]["modelAccessSecret"] == "hf"
        await client.delete(resource, created["metadata"]["name"], namespace)


THROUGH_APISERVER: list[tuple[str, dict[str, Any], str]] = [
    (
        "gated preset without a token Secret",
        workspace(
            resource__instanceType="Standard_NC24ads_A100_v4",
            inference__preset__name="llama-3.1-8b-instruct",
        ),
        "inference.preset.presetOptions.modelAccessSecret: preset llama-3.1-8b-instruct is "
        "gated on Hugging Face (meta-llama/Llama-3.1-8B-Instruct): name a Secret in the "
        "workspace's namespace whose key HF_TOKEN holds a token",
    ),
    (
        "too little GPU memory",
        workspace(inference__preset__name="phi-3-medium-4k-instruct"),
        "resource.instanceType: instance type Standard_NC6s_v3 has 16Gi of GPU memory in total; "
        "preset phi-3-medium-4k-instruct needs 28Gi",
    ),
    (
        "too few GPUs",
        workspace(
            resource__instanceType="Standard_NC24ads_A100_v4", inference__preset__name="falcon-40b"
        ),
        "resource.instanceType: instance type Standard_NC24ads_A100_v4 has 1 GPU; preset falcon-40b needs 2 GPUs",
    ),
    (
        "per-GPU memory",
        workspace(
            resource__instanceType="Standard_NC64as_T4_v3",
            inference__preset__name="llama-3.3-70b-instruct",
        ),
        "instance type Standard_NC64as_T4_v3 has 16Gi of memory per GPU; preset llama-3.3-70b-instruct needs 80Gi per GPU",
    ),
    (
        "unknown preset",
        workspace(inference__preset__name="gpt-5"),
        'inference.preset.name: unknown preset "gpt-5"',
    ),
    ("deprecated preset", workspace(inference__preset__name="phi-2"), "preset phi-2 is deprecated"),
    (
        "unknown instance type",
        workspace(resource__instanceType="Standard_D4s_v3"),
        "resource.instanceType: unknown instance type Standard_D4s_v3",
    ),
    (
        "name not a DNS label",
        workspace(metadata__name="phi.3"),
        'metadata.name: "phi.3" is not a DNS-1123 label',
    ),
    (
        "neither inference nor tuning",
        workspace(inference=DELETE),
        "inference, tuning: exactly one of inference and tuning must be set, got none",
    ),
    (
        "preset and template",
        workspace(inference__template={"spec": {"containers": []}}),
        "inference: exactly one of preset and template must be set, got preset, template",
    ),
    (
        "private without image",
        workspace(inference__preset__accessMode="private"),
        "inference.preset.presetOptions.image: accessMode private needs presetOptions.image",
    ),
    (
        "adapter strength",
        workspace(inference__adapters=[adapter("a", strength="1.5")]),
        "inference.adapters[0].strength: 1.5 is outside [0, 1]",
    ),
    (
        "duplicate adapters",
        workspace(inference__adapters=[adapter("a"), adapter("a")]),
        'inference.adapters[1].source.name: duplicate adapter name "a"',
    ),
    (
        "eleven adapters",
        workspace(inference__adapters=[adapter(f"a{i}") for i in range(11)]),
        "inference.adapters: 11 adapters given; at most 10 are allowed",
    ),
    (
        "tuning method",
        workspace(TUNING, tuning__method="dpo"),
        'tuning.method: "dpo" is not a tuning method',
    ),
    (
        "tuning a preset that cannot",
        workspace(TUNING, tuning__preset__name="mistral-7b-instruct"),
        "tuning.preset.name: preset mistral-7b-instruct does not support tuning",
    ),
    (
        "metadata URL",
        workspace(TUNING, tuning__input={"urls": ["http://169.254.169.254/latest/meta-data"]}),
        "tuning.input.urls[0]: http://169.254.169.254/latest/meta-data points at 169.254.169.254, a cloud metadata address",
    ),
    (
        "output without push secret",
        workspace(TUNING, tuning__output={"image": "myacr.azurecr.io/out:1"}),
        "tuning.output.imagePushSecret: pushing the adapter to myacr.azurecr.io/out:1 needs imagePushSecret",
    ),
    (
        "tuning on two nodes",
        workspace(TUNING, resource__count=2),
        "resource.count: tuning runs on one node; got 2",
    ),
    (
        "private address URL",
        workspace(TUNING, tuning__input={"urls": ["https://10.1.2.3/data.jsonl"]}),
        "tuning.input.urls[0]: https://10.1.2.3/data.jsonl points at 10.1.2.3, a private "
        "address; use a public URL",
    ),
    (
        "not an http URL",
        workspace(TUNING, tuning__input={"urls": ["ftp://example.com/data.jsonl"]}),
        "tuning.input.urls[0]: ftp://example.com/data.jsonl is not an http(s) URL",
    ),
    (
        "runtime annotation",
        workspace(metadata__annotations={"kaito.sh/runtime": "tensorrt"}),
        'metadata.annotations[kaito.sh/runtime]: "tensorrt" is not a runtime',
    ),
    # Parity with upstream's rules (issue 14).
    (
        "preset names are case-sensitive",
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
        "labelSelector In with two values",
        workspace(
            resource__labelSelector={
                "matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]
            }
        ),
        "resource.labelSelector.matchExpressions[0]: In with 2 values cannot become a node label",
    ),
    (
        "output image with an uppercase repository",
        workspace(TUNING, tuning__output__image="myacr.azurecr.io/Adapters/Phi:1"),
        "tuning.output.image: not a valid image reference: 'myacr.azurecr.io/Adapters/Phi:1': "
        "bad repository 'Adapters/Phi'",
    ),
    (
        "falcon-7b on one 8 GB M60",
        workspace(resource__instanceType="Standard_NV6", inference__preset__name="falcon-7b"),
        "resource.instanceType: instance type Standard_NV6 has 8Gi of GPU memory in total; "
        "preset falcon-7b needs 14Gi",
    ),
]


@pytest.mark.parametrize(
    ("obj", "message"),
    [(o, m) for _, o, m in THROUGH_APISERVER],
    ids=[i for i, _, _ in THROUGH_APISERVER],
)
async def test_apiserver_returns_the_webhooks_message(
    client: Client, namespace: str, webhook: WebhookServer, obj: dict[str, Any], message: str
) -> None:
    resource = WORKSPACES if obj["apiVersion"] == WORKSPACES.api_version else WORKSPACES_V1ALPHA1
    with pytest.raises(Invalid) as err:
        await client.create(resource, in_namespace(obj, namespace))
    assert err.value.status == 422
    assert err.value.message.startswith(DENIED), err.value.message
    assert message in err.value.message


async def test_a_template_runs_on_any_instance_type(
    client: Client, namespace: str, webhook: WebhookServer
) -> None:
    """Upstream admits any SKU for a custom template (a CPU size for a CPU workload)."""
    obj = workspace(
        metadata__name="template-cpu",
        resource__instanceType="Standard_D8s_v3",
        inference={"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    )
    created = await client.create(WORKSPACES_V1ALPHA1, in_namespace(obj, namespace))
    assert created["resource"]["instanceType"] == "Standard_D8s_v3"
    await client.delete(WORKSPACES, "template-cpu", namespace)


async def test_kubectl_warns_of_a_gpu_size_the_table_lacks(
    client: Client, kubeconfig: str, namespace: str, webhook: WebhookServer
) -> None:
    """Admitted (a new Azure size must not need a KAITO release), but not silently: the
    AdmissionReview's warnings reach the user as kubectl's ``Warning:`` lines."""
    obj = workspace(metadata__name="new-size", resource__instanceType="Standard_NC8ads_Z900_v9")
    manifest = yaml.safe_dump(in_namespace(obj, namespace))
    rc, out, err = await kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest)
    assert rc == 0, err
    assert "workspace.kaito.sh/new-size created" in out
    assert (
        "Warning: resource.instanceType: Standard_NC8ads_Z900_v9 is not in KAITO's GPU SKU "
        "table; admitted without checking its GPU count and memory against the preset" in err
    ), err
    await client.delete(WORKSPACES, "new-size", namespace)


async def test_kubectl_apply_of_a_bad_spec_prints_the_message(
    kubeconfig: str, namespace: str, webhook: WebhookServer
) -> None:
    bad = in_namespace(workspace(inference__preset__name="phi-3-medium-4k-instruct"), namespace)
    rc, _, err = await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(bad))
    assert rc != 0
    # kubectl renders a 422 from its causes: the object, then each field and message.
    assert (
        'The Workspace "workspace-phi-3-mini" is invalid: '
        "resource.instanceType: instance type Standard_NC6s_v3 has 16Gi of GPU memory in total; "
        "preset phi-3-medium-4k-instruct needs 28Gi" in err
    )


async def test_configmaps_are_checked_in_the_cluster(
    client: Client, namespace: str, webhook: WebhookServer
) -> None:
    missing = workspace(metadata__name="cfg", inference__config="inference-params")
    with pytest.raises(Invalid) as err:
        await client.create(WORKSPACES_V1ALPHA1, in_namespace(missing, namespace))
    assert (
        f"inference.config: ConfigMap {namespace}/inference-params not found" in err.value.message
    )

    cm = {
        "metadata": {"name": "inference-params", "namespace": namespace},
        "data": {"inference_config.yaml": "vllm: [not, a, mapping\n"},
    }
    await client.create(CONFIGMAPS, cm)
    with pytest.raises(Invalid) as err:
        await client.create(WORKSPACES_V1ALPHA1, in_namespace(missing, namespace))
    assert "does not parse as YAML" in err.value.message

    cm["data"] = {"inference_config.yaml": "vllm:\n  max-model-len: 2048\n"}
    await client.update(CONFIGMAPS, {**cm, "metadata": {**cm["metadata"]}})
    created = await client.create(WORKSPACES_V1ALPHA1, in_namespace(missing, namespace))
    await client.delete(WORKSPACES_V1ALPHA1, created["metadata"]["name"], namespace)


IMMUTABLE: list[tuple[str, Any, str]] = [
    ("count", {"resource": {"count": 2}}, "resource.count: field is immutable (was 1, now 2)"),
    (
        "instance type",
        {"resource": {"instanceType": "Standard_NC12s_v3"}},
        "resource.instanceType: field is immutable (was Standard_NC6s_v3, now Standard_NC12s_v3)",
    ),
    (
        "label selector",
        {"resource": {"labelSelector": {"matchLabels": {"apps": "other"}}}},
        "resource.labelSelector: field is immutable",
    ),
    (
        "preset",
        {"inference": {"preset": {"name": "phi-3.5-mini-instruct"}}},
        "inference.preset: field is immutable",
    ),
    (
        "switch to tuning",
        {"inference": None, "tuning": TUNING["tuning"]},
        "inference, tuning: a workspace cannot switch between inference and tuning",
    ),
    (
        "bad adapter added",
        {"inference": {"adapters": [adapter("x", strength="-1")]}},
        "inference.adapters[0].strength: -1 is outside [0, 1]",
    ),
]


async def test_updates_of_immutable_fields_are_rejected(
    client: Client, namespace: str, webhook: WebhookServer
) -> None:
    name = "immutable"
    await client.create(
        WORKSPACES_V1ALPHA1, in_namespace(workspace(metadata__name=name), namespace)
    )
    try:
        for label, patch, message in IMMUTABLE:
            with pytest.raises(Invalid) as err:
                await client.patch(
                    WORKSPACES_V1ALPHA1, name, patch, namespace, patch_type=PatchType.MERGE
                )
            assert message in err.value.message, (label, err.value.message)

        # What may change does: labels, finalizers, adapters, and status (not sent to us).
        updated = await client.patch(
            WORKSPACES,
            name,
            {
                "metadata": {
                    "labels": {"team": "a"},
                    "finalizers": ["workspace.finalizer.kaito.sh"],
                },
                "inference": {"adapters": [adapter("x", strength="0.5")]},
            },
            namespace,
        )
        assert updated["metadata"]["labels"] == {"team": "a"}
        status = await client.patch(
            WORKSPACES,
            name,
            {"status": {"workerNodes": ["n1"]}},
            namespace,
            subresource="status",
        )
        assert status["status"]["workerNodes"] == ["n1"]
        await client.patch(WORKSPACES, name, {"metadata": {"finalizers": None}}, namespace)
    finally:
        await client.delete(WORKSPACES, name, namespace)


async def test_tuning_input_identity_is_immutable_but_not_its_order_or_credentials(
    client: Client, namespace: str, webhook: WebhookServer
) -> None:
    name = "tuning-input"
    urls = ["https://example.com/a.jsonl", "https://example.com/b.jsonl"]
    obj = workspace(TUNING, metadata__name=name, tuning__input={"urls": urls})
    await client.create(WORKSPACES, in_namespace(obj, namespace))
    try:
        with pytest.raises(Invalid) as err:
            await client.patch(
                WORKSPACES,
                name,
                {"tuning": {"input": {"urls": ["https://example.com/c.jsonl"]}}},
                namespace,
                patch_type=PatchType.MERGE,
            )
        assert (
            "tuning.input.urls: field is immutable: it names the data this workspace tunes on"
            in err.value.message
        ), err.value.message
        updated = await client.patch(
            WORKSPACES,
            name,
            {"tuning": {"input": {"urls": urls[::-1], "imagePullSecrets": ["rotated"]}}},
            namespace,
            patch_type=PatchType.MERGE,
        )
        assert updated["tuning"]["input"]["urls"] == urls[::-1]
    finally:
        await client.delete(WORKSPACES, name, namespace)


async def test_replicas_share_one_certificate_through_the_secret(
    client: Client, namespace: str
) -> None:
    hosts = ["kaito-workspace-webhook.kaito-system.svc", "127.0.0.1"]
    first, second = await asyncio.gather(
        load_or_create_certificate(
            client, namespace=namespace, secret_name="webhook-cert", hosts=hosts
        ),
        load_or_create_certificate(
            client, namespace=namespace, secret_name="webhook-cert", hosts=hosts
        ),
    )
    assert first.ca_pem == second.ca_pem
    secret = await client.get(SECRETS, "webhook-cert", namespace)
    assert secret["type"] == "kubernetes.io/tls"
    # A certificate that does not name a new host is renewed (new CA, stored again).
    renewed = await load_or_create_certificate(
        client, namespace=namespace, secret_name="webhook-cert", hosts=[*hosts, "other.example"]
    )
    assert renewed.ca_pem != first.ca_pem and renewed.usable_for([*hosts, "other.example"])


async def test_registration_is_idempotent_and_carries_our_ca(
    client: Client, webhook: WebhookServer
) -> None:
    before = await client.get(VALIDATING_WEBHOOK_CONFIGURATIONS, CONFIGURATION_NAME)
    await register(client, webhook.configuration())
    after = await client.get(VALIDATING_WEBHOOK_CONFIGURATIONS, CONFIGURATION_NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert webhook.certificate is not None
    (hook,) = after["webhooks"]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == webhook.certificate.ca_pem
    assert hook["clientConfig"]["url"] == f"https://127.0.0.1:{webhook.port}/validate/workspaces"
    assert webhook.ready_check() is None


async def test_webhook_requests_are_counted(webhook: WebhookServer) -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    assert (
        'controller_runtime_webhook_requests_total{code="200",webhook="/validate/workspaces"}'
        in text
    )


async def test_a_malformed_review_gets_400(webhook: WebhookServer) -> None:
    assert webhook.certificate is not None
    ctx = ssl.create_default_context(cadata=webhook.certificate.ca_pem.decode())
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"https://127.0.0.1:{webhook.port}/validate/workspaces", data=b"{}", ssl=ctx) as r,
    ):
        assert r.status == 400


async def test_webhook_runs_beside_the_manager_and_joins_its_readiness(client: Client) -> None:
    manager = Manager(
        client,
        ManagerOptions(metrics_bind_address="0", health_probe_bind_address="127.0.0.1:0"),
    )
    options = WebhookOptions(bind_address="127.0.0.1:0", cert_secret="", register=False)
    task = asyncio.create_task(run_with_manager(manager, options))
    try:
        async with asyncio.timeout(20):
            while manager.probe_server is None or manager.probe_server.port is None:
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{manager.probe_server.port}/readyz?verbose"
            async with aiohttp.ClientSession() as s:
                while True:
                    async with s.get(url) as r:
                        if r.status == 200:
                            assert "[+]webhook ok" in await r.text()
                            break
                    await asyncio.sleep(0.05)
    finally:
        manager.stop()
        await asyncio.wait_for(task, 20)
