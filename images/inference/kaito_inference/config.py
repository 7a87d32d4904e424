"""Command-line flags and the inference config file.

Flags mirror vLLM's names where they exist. `--config-file` names a YAML file (Kaito's
`inference_config.yaml`); its top-level keys that are flags of this server, and every
key of the section named after the engine (`vllm:` or `transformers:`), become flags
appended after the command line, so the user's file overrides the preset's command.
Flags of the vLLM engine that are not flags of this server (`--enforce-eager`,
`--cpu-offload-gb`, ...) are passed to vLLM's `AsyncEngineArgs`: from the command line an
unknown one is an error, from the config file a warning (presets outlive vLLM versions;
`swap-space`, say, no longer exists in vLLM 0.32).

The file's grammar (a mapping; each engine section a mapping of scalars) is the one the
operator's webhook admits: both check it against the schema in ``kaito_contracts``, so a
file the webhook admitted is never refused here for its shape (only for a flag value
this server or vLLM rejects).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from kaito_contracts import INFERENCE_CONFIG, schema_problem

log = structlog.get_logger(__name__)

MIB = 1 << 20
GPU_MEMORY_HEADROOM = 600 * MIB
GPU_MEMORY_UTILIZATION_CAP = 0.95
GPU_MEMORY_UTILIZATION_FALLBACK = 0.84


class ConfigError(Exception):
    """The command line or the config file is invalid."""


@dataclass(kw_only=True)
class Settings:
    """Everything the server and the engines are configured with."""

    model: str
    served_model_name: str
    engine: str = "vllm"
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    enable_lora: bool = False
    max_lora_rank: int | None = None
    max_loras: int | None = None
    adapters_dir: Path | None = Path("/mnt/adapter")
    host: str = "0.0.0.0"
    port: int = 5000
    max_request_bytes: int = 4 * MIB
    max_concurrent_requests: int = 256
    trust_remote_code: bool = False
    seed: int = 0
    log_format: str = "auto"
    log_level: str = "info"
    engine_extra: dict[str, Any] = field(default_factory=dict)
    config_engine_extra: dict[str, Any] = field(default_factory=dict)
    group_hosts: str | None = None
    group_rank: int | None = None
    group_port: int = 29500


def default_gpu_memory_utilization(
    mem_get_info: Callable[[], tuple[int, int]] | None = None,
) -> float:
    """`(free - 600 MiB) / total`, floored to hundredths, within [0.01, 0.95]; 0.84 if unknown.

    Leaves room for the CUDA context and the server itself on a GPU another process
    may already use; the fallback applies when no GPU can be queried.
    """
    if mem_get_info is None:
        try:
            import torch

            if not torch.cuda.is_available():
                return GPU_MEMORY_UTILIZATION_FALLBACK
            mem_get_info = torch.cuda.mem_get_info
        except Exception:  # torch missing or the driver failing: use the fallback
            return GPU_MEMORY_UTILIZATION_FALLBACK
    try:
        free, total = mem_get_info()
    except Exception:
        return GPU_MEMORY_UTILIZATION_FALLBACK
    if total <= 0:
        return GPU_MEMORY_UTILIZATION_FALLBACK
    ratio = math.floor((free - GPU_MEMORY_HEADROOM) / total * 100) / 100
    return min(max(ratio, 0.01), GPU_MEMORY_UTILIZATION_CAP)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _bool_flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kaito_inference",
        description="OpenAI-compatible inference server (port 5000) over vLLM or transformers.",
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="model directory or name (required)")
    p.add_argument("--served-model-name", help="model id clients use (default: the --model value)")
    p.add_argument(
        "--engine",
        choices=("vllm", "transformers"),
        default="vllm",
        help="inference engine (default vllm; transformers for CPUs and GPUs vLLM lacks)",
    )
    p.add_argument("--dtype", default="auto", help="weights dtype (default auto)")
    p.add_argument(
        "--max-model-len", type=_positive_int, help="context length (default: the model's)"
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=_fraction,
        help="fraction of GPU memory for vLLM (default (free-600MiB)/total, max 0.95)",
    )
    p.add_argument(
        "--tensor-parallel-size", type=_positive_int, default=1, help="GPUs per model (default 1)"
    )
    p.add_argument(
        "--enable-lora",
        nargs="?",
        const=True,
        default=False,
        type=_bool_flag,
        help="serve LoRA adapters (default: on when --adapters-dir holds adapters)",
    )
    p.add_argument(
        "--max-lora-rank", type=_positive_int, help="largest adapter rank (default: from adapters)"
    )
    p.add_argument(
        "--max-loras", type=_positive_int, help="adapters per batch (default: adapter count)"
    )
    p.add_argument(
        "--adapters-dir",
        default="/mnt/adapter",
        help="directory of LoRA adapters, one per subdirectory (default /mnt/adapter; '' for none)",
    )
    p.add_argument("--config-file", help="inference_config.yaml with overrides (default none)")
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=5000, help="listen port (default 5000)")
    p.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        default=4 * MIB,
        help="largest request body accepted, larger gets 413 (default 4 MiB)",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=_positive_int,
        default=256,
        help="generation requests admitted at once, more get 429 (default 256)",
    )
    p.add_argument(
        "--trust-remote-code",
        nargs="?",
        const=True,
        default=False,
        type=_bool_flag,
        help="allow model code from the model directory (default off)",
    )
    p.add_argument("--seed", type=int, default=0, help="engine random seed (default 0)")
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log rendering (default auto: console on a terminal, JSON otherwise)",
    )
    p.add_argument("--log-level", default="info", help="log level (default info)")
    p.add_argument(
        "--group-hosts",
        help="one model across several nodes: every rank's address (host or host:port of "
        "its HTTP API), rank 0 first, comma-separated (default: one node)",
    )
    p.add_argument(
        "--group-rank",
        type=int,
        help="this process's rank in the group (default: the StatefulSet ordinal of "
        "$POD_NAME or the host name)",
    )
    p.add_argument(
        "--group-port",
        type=int,
        default=29500,
        help="rank 0's torch.distributed port (default 29500)",
    )
    return p


def _flag_args(mapping: dict[str, Any], *, source: str) -> list[str]:
    args: list[str] = []
    for key, value in mapping.items():
        flag = "--" + str(key).replace("_", "-")
        if isinstance(value, dict | list):
            raise ConfigError(f"{source}: '{key}' must be a scalar")
        if value is None:
            continue
        if isinstance(value, bool):
            args += [flag, "true" if value else "false"]
        else:
            args += [flag, str(value)]
    return args


def _config_file_args(path: Path, engine: str, known: set[str]) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    data = {} if data is None else data
    problem = schema_problem(INFERENCE_CONFIG, data)
    if problem:
        raise ConfigError(f"config file {path} {problem}")
    top: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            continue
        if "--" + str(key).replace("_", "-") in known:
            top[key] = value
        else:
            log.info("config key ignored", key=key, file=str(path))
    section = data.get(engine) or {}
    return _flag_args(top, source=str(path)) + _flag_args(section, source=f"{path}:{engine}")


def _extra_engine_args(rest: Sequence[str], engine: str) -> dict[str, Any]:
    """Turn unknown `--foo-bar value` pairs into `{"foo_bar": value}` (vLLM only)."""
    extra: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or engine != "vllm":
            raise ConfigError(f"unrecognized argument: {token}")
        key, _, inline = token[2:].partition("=")
        if inline:
            value: Any = yaml.safe_load(inline)
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            value = yaml.safe_load(rest[i + 1])
            i += 2
        else:
            value = True
            i += 1
        extra[key.replace("-", "_")] = value
    return extra


def parse_settings(argv: Sequence[str]) -> Settings:
    """Settings from the command line plus the config file's overrides."""
    parser = build_parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    first, cli_rest = parser.parse_known_args(argv)
    args_list = list(argv)
    if first.config_file:
        args_list += _config_file_args(Path(first.config_file), first.engine, known)
    args, rest = parser.parse_known_args(args_list)
    extra = _extra_engine_args(cli_rest, args.engine)
    config_extra = _extra_engine_args(rest[len(cli_rest) :], args.engine)
    return Settings(
        model=args.model,
        served_model_name=args.served_model_name or args.model,
        engine=args.engine,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        enable_lora=args.enable_lora,
        max_lora_rank=args.max_lora_rank,
        max_loras=args.max_loras,
        adapters_dir=Path(args.adapters_dir) if args.adapters_dir else None,
        host=args.host,
        port=args.port,
        max_request_bytes=args.max_request_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        trust_remote_code=args.trust_remote_code,
        seed=args.seed,
        log_format=args.log_format,
        log_level=args.log_level,
        engine_extra=extra,
        config_engine_extra=config_extra,
        group_hosts=args.group_hosts,
        group_rank=args.group_rank,
        group_port=args.group_port,
    )
