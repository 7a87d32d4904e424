"""The interface every engine implements, and the values that cross it.

The server owns HTTP, validation, tokenization of chat messages and admission; an
engine owns the model. One generation is one prompt (token ids) producing one stream of
text deltas; the server fans out `n > 1` into several generations, so engines never see
`n`. An engine must stop work for a request when `abort` is called or when the consumer
of `generate` stops iterating (the server always calls `abort` in that case too).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path


class EngineError(Exception):
    """A failure inside the engine; the server answers 500 and logs it."""


class EngineRequestError(EngineError):
    """The engine rejected a request as invalid; the server answers 400."""


class EngineOverloadedError(EngineError):
    """The engine's own queue is full; the server answers 429."""


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """Sampling parameters of one generation (OpenAI names; defaults are OpenAI's).

    `temperature` 0 means greedy; `top_k` 0 means no top-k filtering; `repetition_penalty`
    and `ignore_eos` are vLLM's extensions (benchmarks use `ignore_eos` for fixed lengths).
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(slots=True, kw_only=True)
class Delta:
    """New output of one generation since the previous delta.

    `finish_reason` is set on the last delta only: "stop" (EOS or a stop string),
    "length" (max_tokens or context reached) or "abort".
    """

    text: str
    tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Adapter:
    """A LoRA adapter served as its own model id."""

    name: str
    path: Path
    strength: float = 1.0


@dataclass(kw_only=True)
class EngineInfo:
    """Static facts the server needs about the loaded model."""

    model_path: str
    served_model_name: str
    max_model_len: int
    vocab_size: int


class Engine(abc.ABC):
    """A model behind an async, streaming, abortable `generate`."""

    name: str = "engine"

    @abc.abstractmethod
    async def start(self) -> EngineInfo:
        """Load the model; returns when ready to generate."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Release the model and any worker threads or processes."""

    @abc.abstractmethod
    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` with the model's tokenizer."""

    @abc.abstractmethod
    def apply_chat_template(self, messages: Sequence[dict[str, object]]) -> str:
        """The prompt text for chat `messages`, ending with the assistant turn prefix."""

    @abc.abstractmethod
    def generate(
        self,
        *,
        request_id: str,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        adapter: Adapter | None,
    ) -> AsyncIterator[Delta]:
        """Stream deltas of one generation; the last one carries `finish_reason`."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop the generation `request_id` if it is queued or running; idempotent."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise `EngineError` when the engine can no longer serve."""

    @property
    def serves_adapters(self) -> bool:
        """Whether requests may name an adapter (vLLM: only when started with LoRA)."""
        return True

    def register_adapter(self, adapter: Adapter) -> None:  # noqa: B027 - optional hook
        """Called when the server discovers a new adapter directory (default: nothing)."""

    def metric_registries(self) -> Sequence[object]:
        """Prometheus registries holding the engine's `vllm:*` metrics."""
        return ()
