"""Kaito's `training_config.yaml`, the subset this trainer honours, with defaults.

    training_config:
      ModelConfig:        {torch_dtype: bfloat16}
      QuantizationConfig: {load_in_4bit: true, bnb_4bit_quant_type: nf4, ...}
      LoraConfig:         {r: 8, lora_alpha: 16, lora_dropout: 0.05, target_modules: [...]}
      TrainingArguments:  {max_steps, num_train_epochs, per_device_train_batch_size,
                           gradient_accumulation_steps, learning_rate, logging_steps, seed}
      DatasetConfig:      {shuffle_dataset: true, max_seq_length: 1024}

Unknown keys are reported, not fatal: Kaito's presets carry keys for other trainers.
The layout and the types of the keys above are the schema in ``kaito_contracts``, the
one the operator's webhook admits ConfigMaps with: a file is checked against it first,
so a wrong type is refused here with the same words as by ``kubectl apply``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import structlog
import yaml

from kaito_contracts import TRAINING_CONFIG, schema_problem

log = structlog.get_logger(__name__)


class ConfigError(Exception):
    """The training config cannot be read or has a value of the wrong type."""


@dataclass(kw_only=True)
class LoraSettings:
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass(kw_only=True)
class QuantizationSettings:
    load_in_4bit: bool = True
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_compute_dtype: str = "bfloat16"
    bnb_4bit_use_double_quant: bool = True


@dataclass(kw_only=True)
class TrainingSettings:
    max_steps: int = -1  # -1: run num_train_epochs
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    seed: int = 42


@dataclass(kw_only=True)
class DatasetSettings:
    shuffle_dataset: bool = True
    max_seq_length: int = 1024


@dataclass(kw_only=True)
class TrainingConfig:
    torch_dtype: str = "auto"
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)


def _fill(target: Any, values: dict[str, Any] | None, section: str) -> None:
    """Copy the known keys of a section (checked against the schema) onto ``target``."""
    known = {f.name for f in fields(target)}
    for key, value in (values or {}).items():
        if key not in known:
            log.warning("training config key ignored", section=section, key=key)
            continue
        current = getattr(target, key)
        if isinstance(current, int | float) and not isinstance(current, bool):
            # YAML 1.1 reads `2e-4` (no dot) as a string; the schema admits a string
            # that spells a number, and float() reads it.
            value = type(current)(float(value))
        setattr(target, key, value)


def load_config(path: Path | None) -> TrainingConfig:
    """The config in `path` (Kaito's layout), defaults where absent; defaults for None."""
    config = TrainingConfig()
    if path is None:
        return config
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    document: Any = {} if data is None else data
    problem = schema_problem(TRAINING_CONFIG, document)
    if problem:
        raise ConfigError(f"{path} {problem}")
    root: dict[str, Any] = document.get("training_config", document)
    model = root.get("ModelConfig") or {}
    config.torch_dtype = str(model.get("torch_dtype", config.torch_dtype))
    _fill(config.lora, root.get("LoraConfig"), "LoraConfig")
    _fill(config.quantization, root.get("QuantizationConfig"), "QuantizationConfig")
    _fill(config.training, root.get("TrainingArguments"), "TrainingArguments")
    _fill(config.dataset, root.get("DatasetConfig"), "DatasetConfig")
    for key in root.keys() - {
        "ModelConfig",
        "LoraConfig",
        "QuantizationConfig",
        "TrainingArguments",
        "DatasetConfig",
    }:
        log.warning("training config section ignored", section=key)
    return config
