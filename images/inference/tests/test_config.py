"""Command line, config file and the GPU-memory default; the vLLM engine arguments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from harness import Artifacts
from kaito_inference.config import ConfigError, default_gpu_memory_utilization, parse_settings
from kaito_inference.engines import EngineError

GIB = 1 << 30


@pytest.mark.parametrize(
    ("free", "total", "expected"),
    [
        (80 * GIB, 80 * GIB, 0.95),  # capped
        (10 * GIB, 80 * GIB, 0.11),  # (10240 - 600) / 81920 = 0.1176 -> floored
        (500 << 20, 16 * GIB, 0.01),  # less free than the headroom: the floor
        (0, 0, 0.84),  # nonsense from the driver: fallback
    ],
)
def test_gpu_memory_utilization_default(free: int, total: int, expected: float) -> None:
    assert default_gpu_memory_utilization(lambda: (free, total)) == expected


def test_gpu_memory_utilization_falls_back_without_a_gpu() -> None:
    def broken() -> tuple[int, int]:
        raise RuntimeError("no driver")

    assert default_gpu_memory_utilization(broken) == 0.84
    assert default_gpu_memory_utilization() == 0.84  # this machine has no CUDA device


def test_defaults() -> None:
    s = parse_settings(["--model", "/m"])
    assert s.engine == "vllm"
    assert s.served_model_name == "/m"
    assert s.port == 5000
    assert s.adapters_dir == Path("/mnt/adapter")
    assert s.gpu_memory_utilization is None  # computed by the vLLM engine at start
    assert s.max_concurrent_requests == 256
    assert s.max_request_bytes == 4 << 20
    assert s.engine_extra == {}


def test_config_file_overrides_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "inference_config.yaml"
    config.write_text(
        "max_probe_steps: 6\n"  # Kaito key for another component: ignored
        "max-concurrent-requests: 9\n"
        "vllm:\n"
        "  gpu-memory-utilization: 0.9\n"
        "  max-model-len: 4096\n"
        "  swap-space: 4\n"
        "  enforce-eager: true\n"
        "transformers:\n"
        "  dtype: float32\n"
    )
    s = parse_settings(["--model", "/m", "--max-model-len", "1024", "--config-file", str(config)])
    assert s.max_model_len == 4096
    assert s.gpu_memory_utilization == 0.9
    assert s.max_concurrent_requests == 9
    assert s.dtype == "auto"  # the transformers section applies to that engine only
    assert s.engine_extra == {}
    assert s.config_engine_extra == {"swap_space": 4, "enforce_eager": True}
    t = parse_settings(["--model", "/m", "--engine", "transformers", "--config-file", str(config)])
    assert t.dtype == "float32"


def test_unknown_flags_pass_to_vllm_only(tmp_path: Path) -> None:
    s = parse_settings(["--model", "/m", "--enforce-eager", "--kv-cache-dtype", "fp8", "--x=1"])
    assert s.engine_extra == {"enforce_eager": True, "kv_cache_dtype": "fp8", "x": 1}
    with pytest.raises(ConfigError, match="unrecognized argument: --enforce-eager"):
        parse_settings(["--model", "/m", "--engine", "transformers", "--enforce-eager"])


def test_bad_config_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        parse_settings(["--model", "/m", "--config-file", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping, got list"):
        parse_settings(["--model", "/m", "--config-file", str(bad)])


def test_vllm_engine_arguments_size_lora_from_the_adapters(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    from kaito_inference.engines.vllm_engine import VLLMEngine

    adapters = tmp_path / "adapters"
    shutil.copytree(artifacts.adapters / "alpha", adapters / "a")
    shutil.copytree(artifacts.adapters / "beta", adapters / "b")
    config = tmp_path / "inference_config.yaml"
    config.write_text("vllm:\n  swap-space: 4\n  cpu-offload-gb: 1\n")
    settings = parse_settings(
        [
            "--model",
            str(artifacts.model),
            "--adapters-dir",
            str(adapters),
            "--enforce-eager",
            "--config-file",
            str(config),
        ]
    )
    args = VLLMEngine(settings).engine_args()
    assert args.enable_lora is True
    assert args.max_lora_rank == 8
    assert args.max_loras == 2
    assert args.enforce_eager is True
    assert args.cpu_offload_gb == 1
    assert not hasattr(args, "swap_space")  # gone from vLLM 0.32: dropped with a warning
    assert args.gpu_memory_utilization == 0.84
    no_adapters = parse_settings(["--model", str(artifacts.model), "--adapters-dir", ""])
    assert VLLMEngine(no_adapters).engine_args().enable_lora is False
    wrong = parse_settings(["--model", str(artifacts.model), "--no-such-vllm-flag", "1"])
    with pytest.raises(EngineError, match="no_such_vllm_flag"):
        VLLMEngine(wrong).engine_args()
