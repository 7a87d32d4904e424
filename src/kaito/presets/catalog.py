"""The model preset catalog (``models.yaml``) and the command line each preset runs.

A preset turns a name in a Workspace (``phi-3-mini-4k-instruct``) into everything the
controller needs: GPU count and memory for the webhook's checks, disk for the Machine,
and the inference server's command line for the engine the node's GPU can run. The
`Catalog` carries the GPU SKU table (``skus.yaml``, `kaito.presets.skus`) beside the
presets, so that one object answers both questions; the workspace controller is given
one and resolves each reconcile's plan from it.

The figures are data (``models.yaml`` beside this module), not code, so adding a model
is a reviewed data change. The loader checks every entry when the catalog is first read
and names the bad one, because a typo found at admission time would be a 500 for users.

Engine choice (`select_runtime`), in order:

1. the ``kaito.sh/runtime`` annotation (``vllm`` | ``transformers``), when the preset
   supports that engine;
2. transformers when the preset has no vLLM parameters;
3. transformers when the SKU's GPU cannot run vLLM (compute capability < 7.5: V100,
   e.g. Standard_NC6s_v3) — vLLM's kernels need Turing or newer;
4. transformers when an adapter asks for a strength other than 1: vLLM applies LoRA
   adapters at full weight, only the transformers engine merges them weighted;
5. vLLM otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from kaito.api.workspace import Runtime
from kaito.presets.skus import GpuSku, load_skus
from kaito.runtime.quantity import quantity_gib

__all__ = [
    "VLLM_MIN_COMPUTE_CAPABILITY",
    "Catalog",
    "Defaults",
    "EngineParams",
    "Preset",
    "RuntimeChoice",
    "inference_command",
    "load_catalog",
    "select_runtime",
]

VLLM_MIN_COMPUTE_CAPABILITY = (7, 5)
"""vLLM's CUDA kernels need Turing (7.5) or newer; V100 (7.0) runs the transformers engine."""

BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
"""bfloat16 needs Ampere (8.0) or newer; older GPUs get float16 instead."""


class _Data(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


Scalar = str | int | float | bool


class EngineParams(_Data):
    """One engine's settings for a preset (merged over the catalog's defaults)."""

    dtype: str
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    args: dict[str, Scalar] = Field(default_factory=dict)
    """Extra flags, ``{"enforce-eager": true}`` -> ``--enforce-eager``."""


class HuggingFaceSource(_Data):
    repo: str
    revision: str = Field(pattern=r"^[0-9a-f]{40}$")


class Preset(_Data):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    family: str
    hugging_face: HuggingFaceSource | None
    gpus: int = Field(ge=0)
    total_gpu_memory: str = Field(alias="totalGPUMemory")
    per_gpu_memory: str = Field(alias="perGPUMemory")
    disk: str
    max_model_len: int = Field(gt=0)
    vllm: EngineParams | None
    transformers: EngineParams
    tuning: bool = False
    distributed: bool = False
    download_auth_required: bool = False
    deprecated: bool = False
    tag: str
    image: str
    """The catalog's model image for public access: ``<registry>/kaito-<name>:<tag>``."""

    @field_validator("total_gpu_memory", "per_gpu_memory", "disk")
    @classmethod
    def _quantity(cls, value: str) -> str:
        quantity_gib(value)
        return value

    @property
    def total_gpu_memory_gib(self) -> float:
        return quantity_gib(self.total_gpu_memory)

    @property
    def per_gpu_memory_gib(self) -> float:
        return quantity_gib(self.per_gpu_memory)

    def engine(self, runtime: Runtime) -> EngineParams | None:
        return self.vllm if runtime is Runtime.VLLM else self.transformers


class Defaults(_Data):
    image_registry: str
    command: list[str]
    weights_dir: str
    adapters_dir: str
    port: int
    vllm: EngineParams
    transformers: EngineParams


@dataclass(frozen=True)
class Catalog:
    """The presets (``models.yaml``) and the GPU SKU table (``skus.yaml``) together."""

    defaults: Defaults
    presets: dict[str, Preset]
    skus: Mapping[str, GpuSku] = field(default_factory=dict)
    """VM sizes keyed lower-cased; empty means every size is unknown (CPU-only)."""

    def get(self, name: str) -> Preset | None:
        """The preset called ``name`` (any case), or None."""
        return self.presets.get(name.lower())

    def sku(self, vm_size: str) -> GpuSku | None:
        """The SKU for ``vm_size`` (any case), or None when the table does not know it."""
        return self.skus.get(vm_size.lower())

    def names(self, *, include_deprecated: bool = False) -> list[str]:
        return sorted(n for n, p in self.presets.items() if include_deprecated or not p.deprecated)


def _merge_engine(default: EngineParams, given: Any) -> dict[str, Any]:
    base = default.model_dump(by_alias=True)
    if not isinstance(given, dict):
        raise ValueError(f"engine parameters must be a mapping, got {given!r}")
    merged = {**base, **given}
    merged["args"] = {**base["args"], **(given.get("args") or {})}
    return merged


def parse_catalog(data: Any, *, skus: Mapping[str, GpuSku] | None = None) -> Catalog:
    """Check and build the catalog from ``models.yaml``'s content (and ``skus``, the SKU
    table keyed lower-cased); errors name the entry."""
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list):
        raise ValueError("models.yaml: expected a mapping with 'defaults' and a list 'presets'")
    try:
        defaults = Defaults.model_validate(data.get("defaults"))
    except ValidationError as e:
        raise ValueError(f"models.yaml: defaults are invalid: {e}") from e
    presets: dict[str, Preset] = {}
    for i, entry in enumerate(data["presets"]):
        label = entry.get("name", f"#{i}") if isinstance(entry, dict) else f"#{i}"
        try:
            if not isinstance(entry, dict):
                raise ValueError("an entry must be a mapping")
            raw = dict(entry)
            if raw.get("vllm", {}) is not None:
                raw["vllm"] = _merge_engine(defaults.vllm, raw.get("vllm", {}))
            raw["transformers"] = _merge_engine(defaults.transformers, raw.get("transformers", {}))
            raw["image"] = f"{defaults.image_registry}/kaito-{raw.get('name')}:{raw.get('tag')}"
            preset = Preset.model_validate(raw)
        except (ValidationError, ValueError) as e:
            raise ValueError(f"models.yaml: preset {label} is invalid: {e}") from e
        if preset.name in presets:
            raise ValueError(f"models.yaml: preset {preset.name} is listed twice")
        presets[preset.name] = preset
    return Catalog(defaults=defaults, presets=presets, skus=dict(skus or {}))


@functools.cache
def load_catalog() -> Catalog:
    """The packaged catalog with the packaged SKU table; read and checked once per process."""
    text = resources.files("kaito.presets").joinpath("models.yaml").read_text(encoding="utf-8")
    return parse_catalog(yaml.safe_load(text), skus=load_skus())


# -- runtime selection ----------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    reason: str
    """Why this engine: logged, and shown in the workload's annotations."""


def _needs_strength(strength: str | None) -> bool:
    if strength is None or not strength.strip():
        return False
    try:
        return float(strength) != 1.0
    except ValueError:
        return False  # the webhook rejects it; not this function's concern


def select_runtime(
    preset: Preset,
    sku: GpuSku | None,
    *,
    requested: str | None = None,
    adapter_strengths: Sequence[str | None] = (),
) -> RuntimeChoice:
    """The engine ``preset`` runs on for this SKU (rules in the module docstring)."""
    if requested:
        try:
            wanted = Runtime(requested.strip().lower())
        except ValueError:
            wanted = None
        if wanted is not None and preset.engine(wanted) is not None:
            return RuntimeChoice(wanted, "requested by the kaito.sh/runtime annotation")
    if preset.vllm is None:
        return RuntimeChoice(Runtime.TRANSFORMERS, f"preset {preset.name} has no vLLM support")
    if sku is not None and sku.compute_capability_tuple < VLLM_MIN_COMPUTE_CAPABILITY:
        return RuntimeChoice(
            Runtime.TRANSFORMERS,
            f"{sku.name} has {sku.gpu} GPUs (compute capability {sku.compute_capability}); "
            f"vLLM needs {'.'.join(map(str, VLLM_MIN_COMPUTE_CAPABILITY))} or newer",
        )
    if any(_needs_strength(s) for s in adapter_strengths):
        return RuntimeChoice(
            Runtime.TRANSFORMERS, "an adapter has a strength other than 1, which vLLM cannot apply"
        )
    return RuntimeChoice(Runtime.VLLM, "default engine")


# -- the command line -----------------------------------------------------------------


def _dtype(dtype: str, sku: GpuSku | None) -> str:
    if (
        dtype == "bfloat16"
        and sku is not None
        and sku.compute_capability_tuple < BF16_MIN_COMPUTE_CAPABILITY
    ):
        return "float16"
    return dtype


def _flags(args: dict[str, Scalar]) -> list[str]:
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out += [flag, "false"]
        else:
            out += [flag, str(value)]
    return out


def inference_command(
    preset: Preset,
    *,
    runtime: Runtime,
    sku: GpuSku | None,
    node_count: int = 1,
    adapter_count: int = 0,
    config_file: str | None = None,
    catalog: Catalog | None = None,
) -> list[str]:
    """The inference container's command: ``python -m kaito_inference --engine ...``.

    - ``--served-model-name`` is the preset's name, the id clients put in ``model``;
    - ``--dtype``: the preset's, with bfloat16 lowered to float16 on pre-Ampere GPUs;
    - ``--gpu-memory-utilization`` (vLLM only: transformers allocates as it goes);
    - ``--max-model-len``: the preset's context;
    - ``--tensor-parallel-size``: the GPUs of one node (the SKU's), so one pod uses all
      of its node's GPUs; multi-node vLLM adds ``--pipeline-parallel-size`` = nodes;
    - LoRA: ``--enable-lora --adapters-dir /mnt/adapter`` when adapters exist (vLLM
      also ``--max-loras`` = their number, so every adapter fits in one batch);
    - the preset's extra engine flags, then ``--config-file`` (the user's
      inference_config.yaml: the server applies it after everything else).
    """
    cat = catalog or load_catalog()
    engine = preset.engine(runtime)
    if engine is None:
        raise ValueError(f"preset {preset.name} does not support the {runtime} engine")
    gpus_per_node = sku.gpus if sku is not None else max(1, preset.gpus // max(1, node_count))
    argv = [
        *cat.defaults.command,
        "--engine",
        str(runtime),
        "--model",
        cat.defaults.weights_dir,
        "--served-model-name",
        preset.name,
        "--dtype",
        _dtype(engine.dtype, sku),
        "--max-model-len",
        str(preset.max_model_len),
        "--tensor-parallel-size",
        str(max(1, gpus_per_node)),
        "--port",
        str(cat.defaults.port),
    ]
    if runtime is Runtime.VLLM:
        if engine.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
        if node_count > 1:
            argv += ["--pipeline-parallel-size", str(node_count)]
    if adapter_count > 0:
        argv += ["--enable-lora", "--adapters-dir", cat.defaults.adapters_dir]
        if runtime is Runtime.VLLM:
            argv += ["--max-loras", str(adapter_count)]
    argv += _flags(engine.args)
    if config_file:
        argv += ["--config-file", config_file]
    return argv
