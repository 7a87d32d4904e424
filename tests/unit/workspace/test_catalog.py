"""The preset catalog: its figures, engine selection, and the command line per engine.

The command lines are parsed by the inference server's own argument parser
(images/inference), so a flag the server does not know fails here, not in a pod.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kaito.api.workspace import Runtime
from kaito.presets.catalog import (
    check_image_registry,
    fetch_command,
    inference_command,
    load_catalog,
    model_path,
    parse_catalog,
    select_runtime,
)
from kaito.presets.skus import GpuSku, get_sku
from kaito.runtime.quantity import quantity_gib

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "images" / "inference"))
from kaito_inference.config import parse_settings

ROOT = Path(__file__).resolve().parents[3]

# WORKSPACE.md's table: preset, GPUs, total GPU memory, per-GPU memory, disk, tuning.
TABLE = [
    ("phi-2", 1, 12, 0, 80, True),
    ("phi-3-mini-4k-instruct", 1, 9, 0, 80, True),
    ("phi-3-mini-128k-instruct", 1, 9, 0, 80, True),
    ("phi-3-medium-4k-instruct", 1, 28, 0, 120, True),
    ("phi-3-medium-128k-instruct", 1, 28, 0, 120, True),
    ("phi-3.5-mini-instruct", 1, 8, 0, 70, True),
    ("phi-4", 1, 40, 0, 150, True),
    ("phi-4-mini-instruct", 1, 8, 0, 70, True),
    ("falcon-7b", 1, 14, 0, 90, True),
    ("falcon-7b-instruct", 1, 14, 0, 90, False),
    ("falcon-40b", 2, 90, 0, 280, True),
    ("falcon-40b-instruct", 2, 90, 0, 280, False),
    ("mistral-7b", 1, 14, 0, 90, True),
    ("mistral-7b-instruct", 1, 16, 0, 90, False),
    ("qwen2.5-coder-7b-instruct", 1, 24, 0, 110, True),
    ("qwen2.5-coder-32b-instruct", 1, 70, 0, 230, True),
    ("llama-3.1-8b-instruct", 1, 22, 0, 110, False),
    ("llama-3.3-70b-instruct", 4, 320, 80, 220, False),
    ("deepseek-r1-distill-llama-8b", 1, 16.5, 0, 90, False),
    ("deepseek-r1-distill-qwen-14b", 1, 25.7, 0, 120, False),
]


def sku(name: str) -> GpuSku:
    found = get_sku(name)
    assert found is not None, name
    return found


@pytest.mark.parametrize(("name", "gpus", "total", "per_gpu", "disk", "tuning"), TABLE)
def test_catalog_carries_the_published_figures(
    name: str, gpus: int, total: float, per_gpu: float, disk: int, tuning: bool
) -> None:
    preset = load_catalog().get(name)
    assert preset is not None
    assert preset.gpus == gpus
    assert preset.total_gpu_memory_gib == pytest.approx(total)
    assert preset.per_gpu_memory_gib == pytest.approx(per_gpu)
    assert quantity_gib(preset.disk) == disk
    assert preset.tuning is tuning
    assert preset.hugging_face is not None and len(preset.hugging_face.revision) == 40


def test_catalog_flags_auth_distributed_and_deprecated_presets() -> None:
    cat = load_catalog()
    assert {n for n, p in cat.presets.items() if p.download_auth_required} == {
        "llama-3.1-8b-instruct",
        "llama-3.3-70b-instruct",
    }
    assert {n for n, p in cat.presets.items() if p.distributed} == {"llama-3.3-70b-instruct"}
    assert {n for n, p in cat.presets.items() if p.deprecated} == {"phi-2"}
    assert "phi-2" not in cat.names() and "phi-2" in cat.names(include_deprecated=True)


def test_tiny_test_preset_needs_no_gpu_and_no_hub() -> None:
    tiny = load_catalog().get("tiny-llama-test")
    assert tiny is not None
    assert tiny.gpus == 0 and tiny.total_gpu_memory_gib == 0 and tiny.hugging_face is None
    assert tiny.transformers.dtype == "float32"


def test_lookup_is_case_insensitive() -> None:
    assert load_catalog().get("Phi-3-Mini-4k-Instruct") is not None


def test_a_bad_catalog_entry_fails_at_load_naming_the_entry() -> None:
    data: dict[str, Any] = {
        "defaults": {
            "images": {"inference": "i", "tuning": "t"},
            "command": ["python"],
            "fetchCommand": ["python", "-m", "fetch"],
            "modelCacheDir": "/c",
            "weightsDir": "/w",
            "adaptersDir": "/a",
            "port": 5000,
            "vllm": {"dtype": "bfloat16"},
            "transformers": {"dtype": "bfloat16"},
        },
        "presets": [
            {
                "name": "broken",
                "family": "x",
                "huggingFace": None,
                "gpus": 1,
                "totalGPUMemory": "nine gigs",
                "perGPUMemory": "0",
                "disk": "1Gi",
                "maxModelLen": 10,
            }
        ],
    }
    with pytest.raises(ValueError, match="preset broken is invalid"):
        parse_catalog(data)


@pytest.mark.parametrize(
    ("quantity", "gib"), [("9Gi", 9), ("16.5Gi", 16.5), ("0", 0), ("512Mi", 0.5), ("1Ti", 1024)]
)
def test_memory_quantities(quantity: str, gib: float) -> None:
    assert quantity_gib(quantity) == pytest.approx(gib)


# -- runtime selection ----------------------------------------------------------------


def test_v100_runs_transformers_because_vllm_needs_compute_capability_7_5() -> None:
    choice = select_runtime(
        load_catalog().presets["phi-3-mini-4k-instruct"], sku("Standard_NC6s_v3")
    )
    assert choice.runtime is Runtime.TRANSFORMERS
    assert "compute capability 7.0" in choice.reason


@pytest.mark.parametrize(
    "size", ["Standard_NC4as_T4_v3", "Standard_NV36ads_A10_v5", "Standard_NC24ads_A100_v4"]
)
def test_turing_and_newer_run_vllm(size: str) -> None:
    choice = select_runtime(load_catalog().presets["phi-3-mini-4k-instruct"], sku(size))
    assert choice.runtime is Runtime.VLLM


def test_annotation_overrides_the_gpu_rule() -> None:
    preset = load_catalog().presets["phi-3-mini-4k-instruct"]
    assert select_runtime(preset, sku("Standard_NC6s_v3"), requested="vllm").runtime is Runtime.VLLM
    assert (
        select_runtime(preset, sku("Standard_NC24ads_A100_v4"), requested="Transformers").runtime
        is Runtime.TRANSFORMERS
    )


def test_adapter_strength_below_one_needs_transformers() -> None:
    preset = load_catalog().presets["phi-3-mini-4k-instruct"]
    a100 = sku("Standard_NC24ads_A100_v4")
    assert select_runtime(preset, a100, adapter_strengths=["1.0", None]).runtime is Runtime.VLLM
    assert select_runtime(preset, a100, adapter_strengths=["0.5"]).runtime is Runtime.TRANSFORMERS


def test_unknown_sku_defaults_to_vllm() -> None:
    preset = load_catalog().presets["phi-3-mini-4k-instruct"]
    assert select_runtime(preset, None).runtime is Runtime.VLLM


# -- the command line -----------------------------------------------------------------


def argv_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_quick_start_command_on_v100() -> None:
    preset = load_catalog().presets["phi-3-mini-4k-instruct"]
    argv = inference_command(preset, runtime=Runtime.TRANSFORMERS, sku=sku("Standard_NC6s_v3"))
    assert argv[:3] == ["python", "-m", "kaito_inference"]
    assert argv_value(argv, "--engine") == "transformers"
    assert argv_value(argv, "--served-model-name") == "phi-3-mini-4k-instruct"
    assert argv_value(argv, "--dtype") == "float16"
    assert argv_value(argv, "--max-model-len") == "4096"
    assert argv_value(argv, "--tensor-parallel-size") == "1"
    assert "--gpu-memory-utilization" not in argv  # transformers allocates as it goes
    assert "--enable-lora" not in argv


def test_vllm_command_on_a100_keeps_bfloat16_and_sets_memory_utilization() -> None:
    preset = load_catalog().presets["mistral-7b-instruct"]
    argv = inference_command(preset, runtime=Runtime.VLLM, sku=sku("Standard_NC24ads_A100_v4"))
    assert argv_value(argv, "--dtype") == "bfloat16"
    assert argv_value(argv, "--gpu-memory-utilization") == "0.9"
    assert argv_value(argv, "--max-model-len") == "32768"


def test_bfloat16_becomes_float16_before_ampere() -> None:
    preset = load_catalog().presets["mistral-7b-instruct"]
    argv = inference_command(preset, runtime=Runtime.VLLM, sku=sku("Standard_NC4as_T4_v3"))
    assert argv_value(argv, "--dtype") == "float16"


def test_tensor_parallel_size_is_the_gpus_of_one_node() -> None:
    preset = load_catalog().presets["llama-3.3-70b-instruct"]
    argv = inference_command(
        preset, runtime=Runtime.VLLM, sku=sku("Standard_NC48ads_A100_v4"), node_count=2
    )
    assert argv_value(argv, "--tensor-parallel-size") == "2"
    assert argv_value(argv, "--pipeline-parallel-size") == "2"


def test_lora_flags_when_adapters_exist() -> None:
    preset = load_catalog().presets["phi-3-mini-4k-instruct"]
    a100 = sku("Standard_NC24ads_A100_v4")
    vllm = inference_command(preset, runtime=Runtime.VLLM, sku=a100, adapter_count=2)
    assert "--enable-lora" in vllm
    assert argv_value(vllm, "--adapters-dir") == "/mnt/adapter"
    assert argv_value(vllm, "--max-loras") == "2"
    tf = inference_command(preset, runtime=Runtime.TRANSFORMERS, sku=a100, adapter_count=2)
    assert "--enable-lora" in tf and "--max-loras" not in tf


def test_config_file_comes_last() -> None:
    preset = load_catalog().presets["phi-3-mini-4k-instruct"]
    argv = inference_command(
        preset, runtime=Runtime.VLLM, sku=None, config_file="/mnt/config/inference_config.yaml"
    )
    assert argv[-2:] == ["--config-file", "/mnt/config/inference_config.yaml"]


PRESET_ENGINE = [
    (name, runtime)
    for name, preset in load_catalog().presets.items()
    for runtime in Runtime
    if preset.engine(runtime) is not None
]


@pytest.mark.parametrize(("name", "runtime"), PRESET_ENGINE)
def test_every_command_line_parses_with_the_inference_server(name: str, runtime: Runtime) -> None:
    preset = load_catalog().presets[name]
    argv = inference_command(
        preset, runtime=runtime, sku=sku("Standard_NC24ads_A100_v4"), adapter_count=1
    )
    settings = parse_settings(argv[3:])
    assert settings.engine == runtime.value
    assert settings.model == model_path(preset, load_catalog().defaults)
    assert settings.served_model_name == name
    assert settings.max_model_len == preset.max_model_len
    assert settings.enable_lora is True


def test_the_catalog_carries_the_sku_table() -> None:
    cat = load_catalog()
    assert cat.sku("standard_nc12s_v3") == get_sku("Standard_NC12s_v3")
    assert cat.sku("Standard_D4s_v3") is None


# -- images and weights ---------------------------------------------------------------


def test_every_preset_runs_the_projects_images_tagged_with_the_operator_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = load_catalog().images
    assert images.inference == f"ghcr.io/kaito-project/kaito-python/inference:{version}"
    assert images.tuning == f"ghcr.io/kaito-project/kaito-python/tuning:{version}"


def test_the_image_registry_is_one_setting() -> None:
    cat = load_catalog().with_image_registry("127.0.0.1:5000/kaito/")
    assert cat.images.inference == "127.0.0.1:5000/kaito/kaito-python/inference:0.1.0"
    assert cat.images.tuning == "127.0.0.1:5000/kaito/kaito-python/tuning:0.1.0"
    assert cat.presets is load_catalog().presets


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("https://myacr.azurecr.io", "no scheme"),
        ("myacr.azurecr.io/kaito:1", "no tag"),
        ("my acr", "spaces"),
    ],
)
def test_a_bad_image_registry_is_refused_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_image_registry(value)


def test_the_catalog_names_no_upstream_image() -> None:
    text = (ROOT / "src" / "kaito" / "presets" / "models.yaml").read_text()
    assert "mcr.microsoft.com" not in text
    assert "kaito-python/inference" in text


def test_a_hub_preset_loads_from_its_folder_in_the_node_model_cache() -> None:
    cat = load_catalog()
    preset = cat.presets["phi-3-mini-4k-instruct"]
    revision = "0a67737cc96d2554230f90338b163bc6380a2a85"
    assert model_path(preset, cat.defaults) == (
        f"/var/lib/kaito/models/microsoft--Phi-3-mini-4k-instruct@{revision}"
    )
    assert fetch_command(preset, cat.defaults) == [
        "python",
        "-m",
        "kaito_inference.fetch",
        "--repo",
        "microsoft/Phi-3-mini-4k-instruct",
        "--revision",
        revision,
        "--cache-dir",
        "/var/lib/kaito/models",
    ]


def test_a_preset_built_locally_has_nothing_to_fetch() -> None:
    cat = load_catalog()
    tiny = cat.presets["tiny-llama-test"]
    assert model_path(tiny, cat.defaults) == "/workspace/weights"
    with pytest.raises(ValueError, match="no huggingFace source"):
        fetch_command(tiny, cat.defaults)


@pytest.mark.parametrize("name", [n for n, p in load_catalog().presets.items() if p.hugging_face])
def test_every_fetch_command_parses_with_the_fetchers_own_parser(name: str) -> None:
    """The init container's argv, parsed by ``python -m kaito_inference.fetch``'s parser:
    the folder it fills is the one the server's ``--model`` names."""
    from kaito_inference.fetch.cli import parse_args

    cat = load_catalog()
    preset = cat.presets[name]
    argv = fetch_command(preset, cat.defaults)
    assert argv[:3] == ["python", "-m", "kaito_inference.fetch"]
    args = parse_args(argv[3:])
    assert preset.hugging_face is not None
    assert (args.repo, args.revision) == (preset.hugging_face.repo, preset.hugging_face.revision)
    folder = f"{args.cache_dir}/{args.repo.replace('/', '--')}@{args.revision}"
    assert folder == model_path(preset, cat.defaults)
