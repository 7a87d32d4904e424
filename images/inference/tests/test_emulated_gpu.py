"""A GPU preset's command on a node whose "GPU" is a CPU (KAITO_EMULATED_GPU=cpu)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kaito_inference.config import ConfigError, parse_settings
from kaito_inference.emulated_gpu import EMULATED_GPU_ENV, adapt_for_emulated_gpu

EMULATED = {EMULATED_GPU_ENV: "cpu"}


def _model(tmp_path: Path, context: int = 2048) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": context}))
    return str(tmp_path)


def test_a_gpu_preset_command_is_adapted_and_every_change_is_listed(tmp_path: Path) -> None:
    settings = parse_settings(
        [
            "--model", _model(tmp_path), "--dtype", "bfloat16", "--tensor-parallel-size", "2",
            "--pipeline-parallel-size", "2", "--max-model-len", "8192", "--enforce-eager",
        ]
    )  # fmt: skip
    adapted, changes = adapt_for_emulated_gpu(settings, EMULATED)
    assert adapted.dtype == "float32"
    assert adapted.tensor_parallel_size == 1
    assert adapted.max_model_len == 2048
    assert adapted.engine_extra == {"enforce_eager": True}
    assert changes == [
        "--dtype bfloat16 -> float32 (no half precision on CPU)",
        "--tensor-parallel-size 2 -> 1 (one CPU process)",
        "--pipeline-parallel-size 2 dropped (one CPU process)",
        "--max-model-len 8192 -> 2048 (the model's context)",
    ]


def test_nothing_changes_without_the_variable_or_when_nothing_needs_to(tmp_path: Path) -> None:
    settings = parse_settings(
        ["--model", _model(tmp_path), "--dtype", "float16", "--max-model-len", "8192"]
    )
    assert adapt_for_emulated_gpu(settings, {}) == (settings, [])
    plain = parse_settings(["--model", _model(tmp_path), "--max-model-len", "1024"])
    assert adapt_for_emulated_gpu(plain, EMULATED) == (plain, [])


def test_a_pipeline_size_from_the_config_file_is_dropped_too(tmp_path: Path) -> None:
    config = tmp_path / "inference_config.yaml"
    config.write_text("vllm:\n  pipeline-parallel-size: 4\n")
    settings = parse_settings(["--model", "/m", "--config-file", str(config)])
    adapted, changes = adapt_for_emulated_gpu(settings, EMULATED)
    assert adapted.config_engine_extra == {}
    assert changes == ["--pipeline-parallel-size 4 dropped (one CPU process)"]


def test_an_unknown_emulation_is_refused_with_the_variable_named() -> None:
    with pytest.raises(ConfigError, match=r"KAITO_EMULATED_GPU='tpu'.*only emulated GPU is 'cpu'"):
        adapt_for_emulated_gpu(parse_settings(["--model", "/m"]), {EMULATED_GPU_ENV: "tpu"})


def test_in_a_multinode_group_the_pipeline_is_kept_one_stage_per_node(tmp_path: Path) -> None:
    settings = parse_settings(
        [
            "--model", _model(tmp_path), "--tensor-parallel-size", "4",
            "--pipeline-parallel-size", "2", "--group-hosts", "ws-0.h,ws-1.h",
        ]
    )  # fmt: skip
    adapted, changes = adapt_for_emulated_gpu(settings, EMULATED)
    assert adapted.tensor_parallel_size == 1
    assert adapted.engine_extra == {"pipeline_parallel_size": 2}
    assert changes == ["--tensor-parallel-size 4 -> 1 (one CPU process)"]
