"""Engines: the model behind the server, one interface (`Engine`), two implementations.

Implementations are imported lazily by `create_engine` so that importing the server
never imports vLLM or torch.
"""

from __future__ import annotations

from ..config import ConfigError, Settings
from ..group import Group
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


def create_engine(settings: Settings, group: Group | None = None) -> Engine:
    """The engine named by `settings.engine` ("vllm" or "transformers"); only vLLM runs
    one model across the nodes of a ``group``."""
    if settings.engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(settings, group)
    if group is not None:
        raise ConfigError(
            f"--engine {settings.engine} runs on one node; a model split across "
            f"{group.size} nodes (--group-hosts) needs --engine vllm"
        )
    if settings.engine == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    raise ValueError(f"unknown engine {settings.engine!r}")
