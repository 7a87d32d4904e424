"""Weights from a model image (``presetOptions.modelImage``): the plan, the
``fetch-weights`` init container that pulls it into the node's model cache, and the
server's and tuning run's ``--model``, as a reconcile builds them. The init container's
argv is parsed by the puller's own parser (``python -m kaito_inference.fetch.image``),
and the folder it fills is the one ``--model`` names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaito.api.workspace import Workspace
from kaito.controllers.workspace.plan import Weights, resolve_plan
from kaito.controllers.workspace.podspec import weights_parts
from kaito.controllers.workspace.tuning.job import tuning_job
from kaito.controllers.workspace.workload.inference import inference_objects
from kaito.presets.catalog import load_catalog
from tests.unit.workspace_controller.test_images_and_weights import REV, pod_spec_of, workspace

CATALOG = load_catalog()
CACHE = "/var/lib/kaito/models"
DIGEST = "sha256:" + "0f" * 32
TAGGED = "myacr.azurecr.io/models/phi-3-mini:0a67737"
PINNED = f"myacr.azurecr.io/models/phi-3-mini@{DIGEST}"
INFERENCE_IMAGE = "ghcr.io/kaito-project/kaito-python/inference:0.1.0"


def options(image: str, *secrets: str) -> dict[str, Any]:
    body: dict[str, Any] = {"modelImage": image}
    if secrets:
        body["modelImagePullSecrets"] = list(secrets)
    return {"name": "phi-3-mini-4k-instruct", "presetOptions": body}


def deployment_pod(ws: Workspace) -> dict[str, Any]:
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    return pod_spec_of(next(b for _, b in objs if b["kind"] == "Deployment"))


def model_arg(argv: list[str]) -> str:
    return argv[argv.index("--model") + 1]


def test_a_pinned_model_image_is_pulled_into_its_digest_folder_and_served_from_there() -> None:
    pod = deployment_pod(workspace("inference", options(PINNED, "acr-pull")))
    (fetch,) = pod["initContainers"]
    assert fetch["name"] == "fetch-weights"
    assert fetch["image"] == INFERENCE_IMAGE  # our image pulls it; kubelet never does
    assert fetch["command"] == [
        "python", "-m", "kaito_inference.fetch.image", "--image", PINNED,
        "--cache-dir", CACHE,
        "--docker-config", "/mnt/pull-secrets/acr-pull/.dockerconfigjson",
    ]  # fmt: skip
    assert {"name": "model-cache", "mountPath": CACHE} in fetch["volumeMounts"]
    assert {
        "name": "weights-pull-secret-0",
        "mountPath": "/mnt/pull-secrets/acr-pull",
        "readOnly": True,
    } in fetch["volumeMounts"]
    assert {
        "name": "weights-pull-secret-0",
        "secret": {
            "secretName": "acr-pull",
            "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}],
        },
    } in pod["volumes"]
    env = {e["name"] for e in fetch["env"]}
    assert env == {"POD_NAME", "POD_NAMESPACE"}  # progress on its own pod; no hub settings
    (server,) = pod["containers"]
    assert server["image"] == INFERENCE_IMAGE
    assert model_arg(server["command"]) == f"{CACHE}/oci/sha256-{'0f' * 32}"
    assert {"name": "model-cache", "mountPath": CACHE, "readOnly": True} in server["volumeMounts"]
    assert all(m["name"] != "weights-pull-secret-0" for m in server["volumeMounts"])
    assert "imagePullSecrets" not in pod  # the model image's Secrets are the puller's


def test_a_tagged_model_image_is_served_through_the_link_the_pull_makes() -> None:
    pod = deployment_pod(workspace("inference", options(TAGGED)))
    (fetch,) = pod["initContainers"]
    assert fetch["command"][-2:] == ["--link", "/mnt/model-image/model"]
    assert {"name": "model-link", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model-link", "mountPath": "/mnt/model-image"} in fetch["volumeMounts"]
    (server,) = pod["containers"]
    assert model_arg(server["command"]) == "/mnt/model-image/model"
    assert {"name": "model-link", "mountPath": "/mnt/model-image", "readOnly": True} in server[
        "volumeMounts"
    ]
    # The link points into the cache, which the server mounts at the same path.
    assert {"name": "model-cache", "mountPath": CACHE, "readOnly": True} in server["volumeMounts"]


def test_the_tuning_job_loads_its_base_model_from_the_model_image_the_same_way() -> None:
    ws = workspace("tuning", options(TAGGED, "acr-pull"))
    pod = pod_spec_of(tuning_job(ws, resolve_plan(ws, CATALOG), revision=REV)[1])
    fetch, download = pod["initContainers"]
    assert fetch["command"][:3] == ["python", "-m", "kaito_inference.fetch.image"]
    assert download["name"] == "data-downloader"
    tuning = pod["containers"][0]
    assert " --model /mnt/model-image/model " in tuning["command"][-1]
    names = {m["name"] for m in tuning["volumeMounts"]}
    assert {"model-cache", "model-link"} <= names


def test_pull_secrets_are_deduplicated_and_each_mounted_once() -> None:
    plan = resolve_plan(workspace("inference", options(PINNED, "a", "b", "a", "")), CATALOG)
    assert plan.weights is not None
    assert plan.weights.pull_secrets == ("a", "b")
    volumes, (init,), _ = weights_parts(plan.weights, INFERENCE_IMAGE)
    assert [v["name"] for v in volumes] == [
        "model-cache",
        "weights-pull-secret-0",
        "weights-pull-secret-1",
    ]
    assert init["command"].count("--docker-config") == 2


def test_a_private_image_still_brings_its_own_weights() -> None:
    preset = {
        "name": "phi-3-mini-4k-instruct",
        "accessMode": "private",
        "presetOptions": {"image": "myacr.azurecr.io/phi3:1"},
    }
    plan = resolve_plan(workspace("inference", preset), CATALOG)
    assert plan.weights == Weights(model="/workspace/weights")


@pytest.mark.parametrize("image", [PINNED, TAGGED, "127.0.0.1:5000/models/tiny:1"])
def test_the_fetch_argv_parses_with_the_pullers_own_parser(image: str) -> None:
    """The contract across programs: what the controller writes is what the puller
    reads, and the folder it fills (or links) is the one ``--model`` names."""
    from kaito_inference.fetch.image import image_target, parse_args

    plan = resolve_plan(workspace("inference", options(image, "acr-pull")), CATALOG)
    weights = plan.weights
    assert weights is not None
    _, (init,), _ = weights_parts(weights, INFERENCE_IMAGE)
    argv = init["command"]
    assert argv[:3] == ["python", "-m", "kaito_inference.fetch.image"]
    args = parse_args(argv[3:])
    assert args.image == image
    assert args.cache_dir == Path(CACHE)
    assert args.docker_config == [Path("/mnt/pull-secrets/acr-pull/.dockerconfigjson")]
    if "@" in image:
        assert args.link is None
        assert str(image_target(args.cache_dir, DIGEST)) == weights.model
    else:
        assert str(args.link) == weights.model
