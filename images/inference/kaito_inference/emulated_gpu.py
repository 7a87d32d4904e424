"""A GPU pod on a node whose "GPU" is a CPU: the local cluster's emulated GPU nodes.

The local cluster's nodes advertise ``nvidia.com/gpu`` through a device plugin, as a GPU
node's NVIDIA plugin does, but they have no GPU. Their plugin's Allocate response sets
``KAITO_EMULATED_GPU=cpu`` in the container, the way NVIDIA's sets
``NVIDIA_VISIBLE_DEVICES``. The image and the pod spec stay exactly what a GPU node runs;
this module makes the few changes a CPU needs to run the same command, and logs each of
them, so a GPU-tuned preset starts on the stand-in:

- ``--dtype float16|bfloat16|half`` -> ``float32`` (no half-precision kernels on CPU);
- ``--tensor-parallel-size N`` -> 1 (one CPU process per node); on one node
  ``--pipeline-parallel-size`` is dropped, in a multi-node group (``--group-hosts``) it
  is kept and equals the number of nodes (one pipeline stage per node, the split a GPU
  group makes across its nodes);
- ``--max-model-len`` capped at the model's ``max_position_embeddings`` (the stand-in
  model's context is shorter than the presets').

Without the variable nothing changes: on a real GPU node it is never set.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from .config import ConfigError, Settings

log = structlog.get_logger(__name__)

EMULATED_GPU_ENV = "KAITO_EMULATED_GPU"
"""Set by the local cluster's device plugin; its one value is ``cpu``."""

_HALF_DTYPES = {"float16", "bfloat16", "half", "fp16", "bf16"}
_PIPELINE_KEYS = ("pipeline_parallel_size",)


def _model_context(model: str) -> int | None:
    """The model folder's ``max_position_embeddings`` (None: not a local folder, or unknown)."""
    config = Path(model) / "config.json"
    try:
        value = json.loads(config.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def adapt_for_emulated_gpu(
    settings: Settings, env: Mapping[str, str] | None = None
) -> tuple[Settings, list[str]]:
    """``settings`` changed for a CPU standing in for a GPU, and the list of changes."""
    env = os.environ if env is None else env
    value = env.get(EMULATED_GPU_ENV)
    if value is None:
        return settings, []
    if value != "cpu":
        raise ConfigError(
            f"{EMULATED_GPU_ENV}={value!r}: the only emulated GPU is 'cpu' (set by the "
            "local cluster's device plugin)"
        )
    changes: dict[str, Any] = {}
    adaptations: list[str] = []
    if settings.dtype.lower() in _HALF_DTYPES:
        changes["dtype"] = "float32"
        adaptations.append(f"--dtype {settings.dtype} -> float32 (no half precision on CPU)")
    if settings.tensor_parallel_size != 1:
        changes["tensor_parallel_size"] = 1
        adaptations.append(
            f"--tensor-parallel-size {settings.tensor_parallel_size} -> 1 (one CPU process)"
        )
    nodes = len([h for h in (settings.group_hosts or "").split(",") if h.strip()])
    for name in ("engine_extra", "config_engine_extra"):
        extra = dict(getattr(settings, name))
        for key in _PIPELINE_KEYS:
            if key not in extra:
                continue
            flag = f"--{key.replace('_', '-')} {extra[key]}"
            if nodes < 2:
                extra.pop(key)
                adaptations.append(f"{flag} dropped (one CPU process)")
                changes[name] = extra
            elif extra[key] != nodes:
                extra[key] = nodes
                adaptations.append(f"{flag} -> {nodes} (one CPU process per node of the group)")
                changes[name] = extra
    context = _model_context(settings.model)
    limit = settings.max_model_len
    if limit is not None and context is not None and limit > context:
        changes["max_model_len"] = context
        adaptations.append(f"--max-model-len {limit} -> {context} (the model's context)")
    for line in adaptations:
        log.warning("emulated_gpu_adaptation", change=line, env=f"{EMULATED_GPU_ENV}={value}")
    return dataclasses.replace(settings, **changes), adaptations
