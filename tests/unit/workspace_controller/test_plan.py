"""A reconcile's plan: resolved once from the injected catalog, and what the builders use."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kaito.api.workspace import Runtime, Workspace
from kaito.controllers.workspace.plan import DEFAULT_DISK, PresetNotFound, resolve_plan
from kaito.controllers.workspace.tuning.job import tuning_job
from kaito.controllers.workspace.workload.inference import inference_objects
from kaito.presets.catalog import Catalog, load_catalog

Obj = dict[str, Any]
CATALOG = load_catalog()


def workspace(instance_type: str = "Standard_NC12s_v3", count: int = 1, **body: Any) -> Workspace:
    return Workspace.model_validate(
        {
            "metadata": {"name": "phi", "namespace": "ns", "uid": "u", **body.pop("metadata", {})},
            "resource": {
                "instanceType": instance_type,
                "count": count,
                "labelSelector": {"matchLabels": {"apps": "phi"}},
            },
            **(body or {"inference": {"preset": {"name": "phi-3-mini-4k-instruct"}}}),
        }
    )


def test_a_preset_workspace_plans_its_preset_sku_engine_disk_and_gpus() -> None:
    plan = resolve_plan(workspace("Standard_NC24ads_A100_v4"), CATALOG)
    assert plan.preset is CATALOG.get("phi-3-mini-4k-instruct")
    assert plan.sku is not None and plan.sku.name == "Standard_NC24ads_A100_v4"
    assert plan.runtime is not None and plan.runtime.runtime is Runtime.VLLM
    assert plan.disk == plan.preset.disk
    assert plan.gpus_per_node == plan.sku.gpus


def test_the_runtime_annotation_and_the_sku_decide_the_engine() -> None:
    v100 = resolve_plan(workspace("Standard_NC6s_v3"), CATALOG)
    assert v100.runtime is not None and v100.runtime.runtime is Runtime.TRANSFORMERS
    asked = workspace(
        "Standard_NC24ads_A100_v4", metadata={"annotations": {"kaito.sh/runtime": "transformers"}}
    )
    choice = resolve_plan(asked, CATALOG).runtime
    assert choice is not None and choice.runtime is Runtime.TRANSFORMERS
    assert "annotation" in choice.reason


def test_a_custom_template_has_no_preset_and_the_default_disk() -> None:
    template = {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    plan = resolve_plan(workspace(inference={"template": template}), CATALOG)
    assert (plan.preset, plan.runtime, plan.disk) == (None, None, DEFAULT_DISK)
    assert plan.gpus_per_node == 2  # Standard_NC12s_v3


def test_outside_the_sku_table_each_node_gets_the_presets_share_of_gpus() -> None:
    ws = workspace("Standard_NC999_unknown", count=2, inference={"preset": {"name": "falcon-40b"}})
    plan = resolve_plan(ws, CATALOG)
    assert plan.sku is None
    assert plan.gpus_per_node == 1  # falcon-40b's 2 GPUs over 2 nodes


def test_a_tuning_workspace_plans_its_preset_but_no_engine() -> None:
    ws = workspace(
        tuning={
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "qlora",
            "input": {"urls": ["https://example.com/d.jsonl"]},
            "output": {"volumeSource": {"emptyDir": {}}},
        }
    )
    plan = resolve_plan(ws, CATALOG)
    assert plan.preset is not None and plan.runtime is None
    _, job = tuning_job(ws, plan, revision="r")
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": str(plan.gpus_per_node)}


def test_a_preset_the_catalog_lacks_is_preset_not_found() -> None:
    smaller = dataclasses.replace(CATALOG, presets={})
    with pytest.raises(PresetNotFound, match="phi-3-mini-4k-instruct is not in the catalog"):
        resolve_plan(workspace(), smaller)


def test_a_catalog_without_skus_knows_no_vm_size() -> None:
    no_skus: Catalog = dataclasses.replace(CATALOG, skus={})
    plan = resolve_plan(workspace("Standard_NC24ads_A100_v4"), no_skus)
    assert plan.sku is None and plan.gpus_per_node == 1


def test_the_builders_take_the_injected_catalogs_command_and_directories() -> None:
    defaults = CATALOG.defaults.model_copy(
        update={"command": ["python", "-m", "other_server"], "adapters_dir": "/mnt/other"}
    )
    injected = dataclasses.replace(CATALOG, defaults=defaults)
    ws = workspace(
        "Standard_NC24ads_A100_v4",
        inference={
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "adapters": [{"source": {"name": "a", "image": "reg/a:1"}}],
        },
    )
    objs = {
        b["kind"]: b for _, b in inference_objects(ws, resolve_plan(ws, injected), revision="r")
    }
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "other_server"]
    assert container["command"][container["command"].index("--adapters-dir") + 1] == "/mnt/other"
    assert {"name": "adapters", "mountPath": "/mnt/other"} in container["volumeMounts"]
