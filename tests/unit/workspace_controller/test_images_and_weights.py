"""Every workload runs the project's own images, and a preset's weights are fetched at
start into the node's model cache: the inference workloads and tuning Jobs of every
preset in the catalog, built as a reconcile builds them."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api.workspace import Workspace
from kaito.controllers.workspace.plan import resolve_plan
from kaito.controllers.workspace.tuning.job import tuning_job
from kaito.controllers.workspace.workload.inference import inference_objects
from kaito.presets.catalog import Catalog, load_catalog

Obj = dict[str, Any]
CATALOG = load_catalog()
REV = "r" * 64
CACHE = "/var/lib/kaito/models"
PHI3 = "microsoft--Phi-3-mini-4k-instruct@0a67737cc96d2554230f90338b163bc6380a2a85"
UPSTREAM_IMAGE = re.compile(r"(^|/)kaito-(?!python/)[a-z0-9.-]+:")


def workspace(section: str, preset: Obj, *, count: int = 1) -> Workspace:
    body: Obj = {
        "metadata": {"name": "ws", "namespace": "team", "uid": "u-1"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "count": count,
            "labelSelector": {"matchLabels": {"apps": "x"}},
        },
    }
    if section == "inference":
        body["inference"] = {"preset": preset}
    else:
        body["tuning"] = {
            "preset": preset,
            "method": "qlora",
            "input": {"urls": ["https://example.com/data.jsonl"]},
            "output": {"image": "myacr.azurecr.io/out:1", "imagePushSecret": "push"},
        }
    return Workspace.model_validate(body)


def pod_spec_of(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def workloads(catalog: Catalog) -> Iterator[tuple[str, Obj]]:
    """(label, body) of every workload of every preset: its inference Deployment (and
    StatefulSet on two nodes when distributed), and its tuning Job when it tunes."""
    for name, preset in catalog.presets.items():
        counts = (1, 2) if preset.distributed else (1,)
        for count in counts:
            ws = workspace("inference", {"name": name}, count=count)
            for _, body in inference_objects(ws, resolve_plan(ws, catalog), revision=REV):
                if body["kind"] in ("Deployment", "StatefulSet"):
                    yield f"{name} {body['kind']}", body
        if preset.tuning:
            ws = workspace("tuning", {"name": name})
            yield f"{name} Job", tuning_job(ws, resolve_plan(ws, catalog), revision=REV)[1]


def test_no_preset_and_no_workload_references_upstream_images() -> None:
    seen = 0
    ours = {CATALOG.images.inference, CATALOG.images.tuning}
    for label, body in workloads(CATALOG):
        seen += 1
        for text in strings(body):
            assert "mcr.microsoft.com" not in text, (label, text)
            assert not UPSTREAM_IMAGE.search(text), (label, text)
        pod = pod_spec_of(body)
        for c in (*pod.get("initContainers", ()), *pod["containers"]):
            if c["name"] != "pusher":  # the Job's oras sidecar (a tool, not a model image)
                assert c["image"] in ours, (label, c["name"], c["image"])
    assert seen > len(CATALOG.presets)  # every preset, and the tuning Jobs


def test_the_image_registry_setting_reaches_every_workload() -> None:
    catalog = CATALOG.with_image_registry("myacr.azurecr.io")
    for label, body in workloads(catalog):
        pod = pod_spec_of(body)
        images = {
            c["image"]
            for c in (*pod.get("initContainers", ()), *pod["containers"])
            if c["name"] != "pusher"
        }
        assert images <= {
            "myacr.azurecr.io/kaito-python/inference:0.1.0",
            "myacr.azurecr.io/kaito-python/tuning:0.1.0",
        }, label


def test_the_server_loads_weights_an_init_container_fetched_into_the_node_cache() -> None:
    ws = workspace(
        "inference",
        {"name": "phi-3-mini-4k-instruct", "presetOptions": {"modelAccessSecret": "hf"}},
    )
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    pod = pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))
    (fetch,) = pod["initContainers"]
    assert fetch["name"] == "fetch-weights"
    assert fetch["image"] == "ghcr.io/kaito-project/kaito-python/inference:0.1.0"
    assert fetch["command"] == [
        "python",
        "-m",
        "kaito_inference.fetch",
        "--repo",
        "microsoft/Phi-3-mini-4k-instruct",
        "--revision",
        "0a67737cc96d2554230f90338b163bc6380a2a85",
        "--cache-dir",
        CACHE,
    ]
    assert fetch["volumeMounts"] == [{"name": "model-cache", "mountPath": CACHE}]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in fetch["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}
    assert env["HF_HUB_OFFLINE"] == "0"
    assert {
        "name": "model-cache",
        "hostPath": {"path": CACHE, "type": "DirectoryOrCreate"},
    } in pod["volumes"]
    (server,) = pod["containers"]
    assert server["image"] == fetch["image"]
    assert {"name": "model-cache", "mountPath": CACHE, "readOnly": True} in server["volumeMounts"]
    cmd = server["command"]
    assert cmd[cmd.index("--model") + 1] == f"{CACHE}/{PHI3}"
    assert "env" not in server  # the token stays with the fetch


def test_a_public_preset_without_a_token_fetches_anonymously() -> None:
    ws = workspace("inference", {"name": "phi-3-mini-4k-instruct"})
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    (fetch,) = pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))["initContainers"]
    assert "HF_TOKEN" not in {e["name"] for e in fetch["env"]}


def test_the_tuning_job_fetches_its_base_model_the_same_way() -> None:
    ws = workspace(
        "tuning", {"name": "phi-3-mini-4k-instruct", "presetOptions": {"modelAccessSecret": "hf"}}
    )
    _, job = tuning_job(ws, resolve_plan(ws, CATALOG), revision=REV)
    pod = pod_spec_of(job)
    fetch, download = pod["initContainers"]
    assert fetch["name"] == "fetch-weights"
    assert fetch["image"] == "ghcr.io/kaito-project/kaito-python/inference:0.1.0"
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}},
    } in (fetch["env"])
    assert download["image"] == "ghcr.io/kaito-project/kaito-python/tuning:0.1.0"
    tuning = pod["containers"][0]
    assert tuning["image"] == "ghcr.io/kaito-project/kaito-python/tuning:0.1.0"
    assert f"--model {CACHE}/{PHI3} " in tuning["command"][-1]
    assert {"name": "model-cache", "mountPath": CACHE, "readOnly": True} in tuning["volumeMounts"]


@pytest.mark.parametrize("section", ["inference", "tuning"])
def test_a_private_preset_image_keeps_its_own_weights_and_nothing_is_fetched(
    section: str,
) -> None:
    preset = {
        "name": "phi-3-mini-4k-instruct",
        "accessMode": "private",
        "presetOptions": {"image": "myacr.azurecr.io/phi3:1", "imagePullSecrets": ["acr"]},
    }
    ws = workspace(section, preset)
    plan = resolve_plan(ws, CATALOG)
    if section == "inference":
        objs = inference_objects(ws, plan, revision=REV)
        pod = pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))
        assert "initContainers" not in pod
        argv = pod["containers"][0]["command"]
    else:
        pod = pod_spec_of(tuning_job(ws, plan, revision=REV)[1])
        assert [c["name"] for c in pod["initContainers"]] == ["data-downloader"]
        argv = pod["containers"][0]["command"][-1].split()
    assert pod["containers"][0]["image"] == "myacr.azurecr.io/phi3:1"
    assert argv[argv.index("--model") + 1] == "/workspace/weights"
    assert all("hostPath" not in v for v in pod["volumes"])


def test_a_preset_built_locally_fetches_nothing() -> None:
    ws = workspace("inference", {"name": "tiny-llama-test"})
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    pod = pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))
    assert "initContainers" not in pod
    (server,) = pod["containers"]
    assert server["image"] == "ghcr.io/kaito-project/kaito-python/inference:0.1.0"
    assert server["command"][server["command"].index("--model") + 1] == "/workspace/weights"


# -- the one setting: --image-registry / KAITO_IMAGE_REGISTRY ---------------------------

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "workspace-controller"


def parse(*argv: str) -> argparse.Namespace:
    from kaito.cli import build_parser

    return build_parser().parse_args(["workspace-controller", *argv])


def test_the_flag_defaults_to_the_environment_then_to_ghcr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAITO_IMAGE_REGISTRY", raising=False)
    assert parse().image_registry == "ghcr.io/kaito-project"
    monkeypatch.setenv("KAITO_IMAGE_REGISTRY", "myacr.azurecr.io")
    assert parse().image_registry == "myacr.azurecr.io"
    assert parse("--image-registry", "127.0.0.1:5000/").image_registry == "127.0.0.1:5000"


def test_a_bad_registry_flag_is_refused_naming_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse("--image-registry", "https://myacr.azurecr.io")
    assert "argument --image-registry: image registry" in capsys.readouterr().err


def test_deploy_feeds_the_registry_from_its_kustomization() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert "KAITO_IMAGE_REGISTRY=ghcr.io/kaito-project" in generator["literals"]
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": generator["name"]}} in container["envFrom"]


def test_the_hub_endpoint_setting_reaches_every_weights_fetch_and_only_it() -> None:
    catalog = CATALOG.with_hf_endpoint("http://10.0.0.2:8080/")
    ws = workspace("inference", {"name": "phi-3-mini-4k-instruct"})
    objs = inference_objects(ws, resolve_plan(ws, catalog), revision=REV)
    pod = pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))
    (fetch,) = pod["initContainers"]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert env["HF_ENDPOINT"] == "http://10.0.0.2:8080"
    assert "HF_ENDPOINT" not in {e["name"] for c in pod["containers"] for e in c.get("env") or ()}
    ws = workspace("tuning", {"name": "phi-3-mini-4k-instruct"})
    job = tuning_job(ws, resolve_plan(ws, catalog), revision=REV)[1]
    (tuning_fetch,) = [
        c for c in job["spec"]["template"]["spec"]["initContainers"] if c["name"] == "fetch-weights"
    ]
    assert {"name": "HF_ENDPOINT", "value": "http://10.0.0.2:8080"} in tuning_fetch["env"]
    # Without the setting the fetcher uses huggingface_hub's default hub.
    ws = workspace("inference", {"name": "phi-3-mini-4k-instruct"})
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    (fetch,) = pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))["initContainers"]
    assert "HF_ENDPOINT" not in {e["name"] for e in fetch["env"]}


def test_the_hub_endpoint_flag_defaults_to_the_environment_and_refuses_a_non_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KAITO_HF_ENDPOINT", raising=False)
    assert parse().hf_endpoint == ""
    monkeypatch.setenv("KAITO_HF_ENDPOINT", "https://hub.example.com")
    assert parse().hf_endpoint == "https://hub.example.com"
    with pytest.raises(SystemExit):
        parse("--hf-endpoint", "hub.example.com")
    assert "argument --hf-endpoint: hub endpoint 'hub.example.com'" in capsys.readouterr().err


def test_only_the_named_plain_http_registries_get_plain_http_pushes_and_pulls() -> None:
    catalog = CATALOG.with_plain_http_registries(["10.0.0.4:5000"])
    body: Obj = {
        "metadata": {"name": "ws", "namespace": "team", "uid": "u-1"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"apps": "x"}},
        },
        "inference": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "adapters": [
                {"source": {"name": "a", "image": "10.0.0.4:5000/adapters/a:1"}},
                {"source": {"name": "b", "image": "10.0.0.4:5001/adapters/b:1"}},
                {"source": {"name": "c", "image": "myacr.azurecr.io/adapters/c:1"}},
            ],
        },
    }
    ws = Workspace.model_validate(body)
    objs = inference_objects(ws, resolve_plan(ws, catalog), revision=REV)
    inits = {
        c["name"]: c["command"]
        for c in pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))[
            "initContainers"
        ]
    }
    assert "--plain-http" in inits["adapter-0"]
    assert "--plain-http" not in inits["adapter-1"], "another port is another registry"
    assert "--plain-http" not in inits["adapter-2"]

    ws = workspace("tuning", {"name": "phi-3-mini-4k-instruct"})
    ws.tuning.output.image = "10.0.0.4:5000/adapters/out:1"  # type: ignore[union-attr]
    job = tuning_job(ws, resolve_plan(ws, catalog), revision=REV)[1]
    (pusher,) = [c for c in pod_spec_of(job)["containers"] if c["name"] == "pusher"]
    assert pusher["command"][-1] == "--plain-http"
    # Without the setting nothing is downgraded.
    job = tuning_job(ws, resolve_plan(ws, CATALOG), revision=REV)[1]
    (pusher,) = [c for c in pod_spec_of(job)["containers"] if c["name"] == "pusher"]
    assert "--plain-http" not in pusher["command"]

    model = workspace(
        "inference",
        {"name": "phi-3-mini-4k-instruct", "presetOptions": {"modelImage": "10.0.0.4:5000/m:1"}},
    )
    objs = inference_objects(model, resolve_plan(model, catalog), revision=REV)
    (fetch,) = pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))["initContainers"]
    assert "--plain-http" in fetch["command"] + fetch.get("args", [])


def test_the_plain_http_flag_repeats_falls_back_to_the_environment_and_refuses_a_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kaito.controllers.workspace.cli import plain_http_registries

    monkeypatch.delenv("KAITO_PLAIN_HTTP_REGISTRIES", raising=False)
    assert plain_http_registries(parse()) == []
    monkeypatch.setenv("KAITO_PLAIN_HTTP_REGISTRIES", "10.0.0.4:5000, reg.local")
    assert plain_http_registries(parse()) == ["10.0.0.4:5000", "reg.local"]
    args = parse("--plain-http-registry", "a:1", "--plain-http-registry", "b:2")
    assert plain_http_registries(args) == ["a:1", "b:2"]
    with pytest.raises(SystemExit):
        parse("--plain-http-registry", "http://a:1")
    assert "argument --plain-http-registry: plain-http registry 'http://a:1'" in (
        capsys.readouterr().err
    )


def test_a_bad_plain_http_registry_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kaito.controllers.workspace.cli import cmd_workspace_controller

    monkeypatch.setenv("KAITO_PLAIN_HTTP_REGISTRIES", "reg.local,http://a:1")
    assert cmd_workspace_controller(parse()) == 2
    err = capsys.readouterr().err
    assert err.startswith("kaito workspace-controller: KAITO_PLAIN_HTTP_REGISTRIES: ")
    assert "'http://a:1'" in err
