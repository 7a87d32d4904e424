"""The GPU SKU table: which Azure VM sizes carry how many GPUs, with how much memory.

The data lives in ``skus.yaml`` beside this module. The workspace controller checks GPU
count and memory against it; the AKS emulator gives its simulated Nodes the matching
``nvidia.com/gpu`` capacity. Sizes missing from the table are not errors here: callers
decide (the emulator treats them as CPU-only VMs).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GpuSku", "get_sku", "load_skus"]


class GpuSku(BaseModel):
    """One VM size. Immutable; ``name`` keeps Azure's spelling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^Standard_[A-Za-z0-9_]+$")
    gpus: int = Field(gt=0)
    gpu_memory_gb: int = Field(gt=0)
    """Total GPU memory of the VM (all GPUs), in GB as Azure publishes it."""
    gpu: str
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    vcpus: int = Field(gt=0)
    memory_gib: int = Field(gt=0)

    @property
    def gpu_memory_per_gpu_gb(self) -> float:
        return self.gpu_memory_gb / self.gpus

    @property
    def compute_capability_tuple(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


def _parse(data: Any) -> dict[str, GpuSku]:
    if not isinstance(data, dict) or not isinstance(data.get("skus"), list):
        raise ValueError("skus.yaml: expected a mapping with a list under 'skus'")
    table: dict[str, GpuSku] = {}
    for i, entry in enumerate(data["skus"]):
        try:
            sku = GpuSku.model_validate(entry)
        except ValueError as e:
            raise ValueError(f"skus.yaml: entry {i} is invalid: {e}") from e
        key = sku.name.lower()
        if key in table:
            raise ValueError(f"skus.yaml: {sku.name} is listed twice")
        table[key] = sku
    return table


@functools.cache
def load_skus() -> dict[str, GpuSku]:
    """The table keyed by lower-cased VM size; read once per process."""
    text = resources.files("kaito.presets").joinpath("skus.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text))


def get_sku(vm_size: str) -> GpuSku | None:
    """The SKU for ``vm_size`` (any case), or None when the table does not know it."""
    return load_skus().get(vm_size.lower())
