"""Engine over vLLM's `AsyncLLM` (the production engine on GPUs).

The server hands vLLM token ids (it has already applied the chat template and measured
the prompt against the context), so vLLM's own tokenization is skipped. Output is
requested as deltas, which is what the server streams. LoRA adapters are passed per
request as `LoRARequest`s with stable integer ids; vLLM loads them on first use.

vLLM registers its `vllm:*` metrics in prometheus_client's default registry, which is
therefore this engine's metrics registry.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog

from ..adapters import adapter_rank, scan
from ..config import Settings, default_gpu_memory_utilization
from ..group import Group
from ..threads import in_daemon_thread
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

log = structlog.get_logger(__name__)

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _lora_rank_for(ranks: Sequence[int]) -> int:
    largest = max(ranks, default=0)
    return next((r for r in _LORA_RANKS if r >= largest), _LORA_RANKS[-1])


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, settings: Settings, group: Group | None = None) -> None:
        self._settings = settings
        self._group = group
        self._executor: Any = None
        self._llm: Any = None
        self._tokenizer: Any = None
        self._lora_ids: dict[str, int] = {}
        self._lora_enabled = False

    def engine_args(self) -> Any:
        """vLLM's `AsyncEngineArgs` for the settings (LoRA sized from the adapters found)."""
        from vllm.engine.arg_utils import AsyncEngineArgs

        s = self._settings
        adapters = scan(s.adapters_dir)
        enable_lora = bool(s.enable_lora) or bool(adapters)
        kwargs: dict[str, Any] = {
            "model": s.model,
            "served_model_name": [s.served_model_name],
            "dtype": s.dtype,
            "max_model_len": s.max_model_len,
            "tensor_parallel_size": s.tensor_parallel_size,
            "trust_remote_code": s.trust_remote_code,
            "seed": s.seed,
            "gpu_memory_utilization": (
                s.gpu_memory_utilization
                if s.gpu_memory_utilization is not None
                else default_gpu_memory_utilization()
            ),
            "enable_lora": enable_lora,
        }
        if enable_lora:
            ranks = [adapter_rank(a.path) for a in adapters.values()]
            kwargs["max_lora_rank"] = s.max_lora_rank or _lora_rank_for(ranks)
            kwargs["max_loras"] = s.max_loras or max(1, len(adapters))
        fields = set(AsyncEngineArgs.__dataclass_fields__)
        unknown = set(s.engine_extra) - fields
        if unknown:
            raise EngineError(f"unknown vLLM engine arguments: {', '.join(sorted(unknown))}")
        for key, value in s.config_engine_extra.items():
            if key in fields:
                kwargs[key] = value
            else:
                log.warning("config key ignored", key=key, reason="not an argument of this vLLM")
        kwargs.update(s.engine_extra)
        if self._group is not None:
            kwargs.update(self._group.vllm_args())
        self._lora_enabled = bool(kwargs["enable_lora"])
        log.info(
            "vllm engine arguments",
            **{k: v for k, v in kwargs.items() if k not in ("model", "served_model_name")},
        )
        return AsyncEngineArgs(**kwargs)

    async def start(self) -> EngineInfo:
        # Let vLLM's log lines go through the server's structlog handler.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        started = time.monotonic()
        args = self.engine_args()
        from vllm.v1.engine.async_llm import AsyncLLM

        # Engine start blocks for tens of seconds (in a group: until every rank joined);
        # keep the event loop serving /health, and let a stop abandon it.
        self._llm = await in_daemon_thread(
            lambda: AsyncLLM.from_engine_args(args), name="vllm-engine-start"
        )
        self._tokenizer = self._llm.get_tokenizer()
        max_model_len = int(self._llm.model_config.max_model_len)
        log.info(
            "model loaded",
            engine=self.name,
            model=self._settings.model,
            max_model_len=max_model_len,
            lora=self._lora_enabled,
            seconds=round(time.monotonic() - started, 2),
        )
        return EngineInfo(
            model_path=self._settings.model,
            served_model_name=self._settings.served_model_name,
            max_model_len=max_model_len,
            vocab_size=len(self._tokenizer),
        )

    def run_group_worker(self, joined: threading.Event) -> None:
        """Rank > 0 of a group: run this node's vLLM workers until one exits (blocking),
        then raise, saying which and how.

        What ``vllm serve --headless`` does on a worker node: the multiprocessing
        executor starts the node's workers, which join rank 0's torch.distributed group
        and then execute what rank 0's scheduler sends them. ``joined`` is set once they
        have joined.
        """
        from vllm.v1.executor.multiproc_executor import MultiprocExecutor

        assert self._group is not None
        assert not self._group.is_head
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        started = time.monotonic()
        config = self.engine_args().create_engine_config(headless=True)
        executor = MultiprocExecutor(config, monitor_workers=False)
        self._executor = executor
        log.info(
            "group workers joined",
            rank=self._group.rank,
            head=self._group.head_host,
            seconds=round(time.monotonic() - started, 2),
        )
        joined.set()
        try:
            executor.start_worker_monitor(inline=True)  # returns once a worker died
            dead = [
                f"{handle.proc.name} (exit code {handle.proc.exitcode})"
                for handle in executor.workers
                if handle.proc.exitcode is not None
            ]
        finally:
            executor.shutdown()
        raise RuntimeError(f"vLLM's workers exited: {', '.join(dead) or 'the executor stopped'}")

    async def stop(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown)
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def apply_chat_template(self, messages: Sequence[dict[str, object]]) -> str:
        return str(
            self._tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        )

    @property
    def serves_adapters(self) -> bool:
        return self._lora_enabled

    def register_adapter(self, adapter: Adapter) -> None:
        if adapter.name not in self._lora_ids:
            self._lora_ids[adapter.name] = len(self._lora_ids) + 1
            if adapter.strength != 1.0:
                log.warning(
                    "adapter strength ignored",
                    adapter=adapter.name,
                    strength=adapter.strength,
                    reason="vLLM applies LoRA adapters at full strength",
                )

    def _lora_request(self, adapter: Adapter | None) -> Any:
        if adapter is None:
            return None
        if not self._lora_enabled:
            raise EngineRequestError(
                f"adapter '{adapter.name}' cannot be served: the server was started "
                "without --enable-lora and without adapters"
            )
        from vllm.lora.request import LoRARequest

        self.register_adapter(adapter)
        return LoRARequest(adapter.name, self._lora_ids[adapter.name], str(adapter.path))

    async def generate(
        self,
        *,
        request_id: str,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        adapter: Adapter | None,
    ) -> AsyncIterator[Delta]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        llm = self._llm
        if llm is None:
            raise EngineError("engine is not running")
        params = SamplingParams(
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            repetition_penalty=options.repetition_penalty,
            ignore_eos=options.ignore_eos,
            stop=list(options.stop) or None,
            seed=options.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        stream = llm.generate(
            tokens_input(prompt_token_ids),
            params,
            request_id,
            lora_request=self._lora_request(adapter),
        )
        try:
            async for out in stream:
                completion = out.outputs[0]
                yield Delta(
                    text=completion.text,
                    tokens=len(completion.token_ids),
                    finish_reason=_finish_reason(completion.finish_reason, out.finished),
                )
        except VLLMClientError as exc:
            raise EngineRequestError(str(exc)) from exc
        except Exception as exc:
            if type(exc).__name__ in ("QueueOverflowError", "MaxQueuedTokensError"):
                raise EngineOverloadedError(str(exc) or type(exc).__name__) from exc
            raise
        finally:
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError("engine is not running")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineError(f"vLLM engine is unhealthy: {exc}") from exc

    def metric_registries(self) -> Sequence[object]:
        from prometheus_client import REGISTRY

        return (REGISTRY,)


def _finish_reason(reason: str | None, finished: bool) -> str | None:
    if not finished:
        return None
    if reason in ("stop", "length", "abort"):
        return reason
    return "stop" if reason is None else str(reason)
