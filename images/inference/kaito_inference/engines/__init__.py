"""Engines: the model behind the server, one interface (`Engine`), two implementations.

Implementations are imported lazily by `create_engine` so that importing the server
never imports vLLM or torch.
"""

from __future__ import annotations

from ..config import Settings
from .base import (
    Adapter,
    Delta,
    Engine,
    EngineError,
    EngineInfo,
    EngineOverloadedError,
    EngineRequestError,
    SamplingOptions,
)

__all__ = [
    "Adapter",
    "Delta",
    "Engine",
    "EngineError",
    "EngineInfo",
    "EngineOverloadedError",
    "EngineRequestError",
    "SamplingOptions",
    "create_engine",
]


def create_engine(settings: Settings) -> Engine:
    """The engine named by `settings.engine` ("vllm" or "transformers")."""
    if settings.engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(settings)
    if settings.engine == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    raise ValueError(f"unknown engine {settings.engine!r}")
