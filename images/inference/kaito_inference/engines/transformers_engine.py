"""Engine over Hugging Face transformers and PEFT, for CPUs and GPUs vLLM does not support.

Generations run one at a time on a single worker thread (`model.generate` is neither
batched across requests nor thread-safe); requests wait in the executor's queue, which
the server bounds through admission. Tokens stream back through a streamer that pushes
text deltas onto the request's asyncio queue; abort sets a flag that a stopping
criterion checks after every token, and a queued request that was aborted never starts.

LoRA adapters are loaded on first use into one `PeftModel` and activated per request;
an adapter with a strength other than 1.0 is served through `add_weighted_adapter`
(`cat` combination: exactly `strength * B @ A`), the base model through
`disable_adapter()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..config import Settings
from .base import Adapter, Delta, Engine, EngineError, EngineInfo, SamplingOptions
from .detokenize import IncrementalDecoder

log = structlog.get_logger(__name__)

_GREEDY_BELOW_TEMPERATURE = 1e-5  # vLLM's _SAMPLING_EPS
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 300)


class _VllmCompatibleMetrics:
    """The subset of vLLM's `vllm:*` metrics this engine can report, same names and labels.

    Dashboards and autoscalers written for vLLM keep working on this engine.
    """

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        labels = ["model_name", "engine"]
        values = {"model_name": model_name, "engine": "0"}
        self.running = Gauge(
            "vllm:num_requests_running", "Requests being generated.", labels, registry=registry
        ).labels(**values)
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting to start.", labels, registry=registry
        ).labels(**values)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=registry
        ).labels(**values)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens processed.", labels, registry=registry
        ).labels(**values)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        ).labels(**values)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency.",
            labels,
            buckets=_E2E_BUCKETS,
            registry=registry,
        ).labels(**values)
        self._success = Counter(
            "vllm:request_success",
            "Finished requests, by finish reason.",
            [*labels, "finished_reason"],
            registry=registry,
        )
        self._values = values

    def finished(self, reason: str) -> None:
        self._success.labels(**self._values, finished_reason=reason).inc()


@dataclass(kw_only=True)
class _Job:
    request_id: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    adapter: Adapter | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta | BaseException]
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrival: float = field(default_factory=time.monotonic)

    def send(self, item: Delta | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _Streamer:
    """transformers' streamer protocol (`put`, `end`) feeding a job's queue."""

    def __init__(self, job: _Job, tokenizer: Any, metrics: _VllmCompatibleMetrics) -> None:
        self._job = job
        self._decoder = IncrementalDecoder(tokenizer, job.options.stop)
        self._metrics = metrics
        self._prompt_seen = False
        self._pending_tokens = 0
        self.tokens = 0
        self.last_token: int | None = None

    @property
    def stopped(self) -> bool:
        return self._decoder.stopped

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        ids = [int(t) for t in value.reshape(-1).tolist()]
        if self.tokens == 0:
            self._metrics.ttft.observe(time.monotonic() - self._job.arrival)
        self.tokens += len(ids)
        self._pending_tokens += len(ids)
        self.last_token = ids[-1]
        text = self._decoder.push(ids)
        if self._decoder.stopped:
            self._job.cancelled.set()  # stop string: end generation after this token
        self._job.send(Delta(text=text, tokens=self._pending_tokens))
        self._pending_tokens = 0

    def end(self) -> None:
        """Called by generate() when it returns; the final delta is sent by the worker."""

    def final(self, finish_reason: str) -> Delta:
        return Delta(
            text=self._decoder.finish(), tokens=self._pending_tokens, finish_reason=finish_reason
        )


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self._settings = settings
        self._registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _VllmCompatibleMetrics(self._registry, settings.served_model_name)
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: dict[str, _Job] = {}
        self._tokenizer: Any = None
        self._model: Any = None
        self._peft: Any = None
        self._loaded: dict[str, tuple[Path, float, str]] = {}
        self._device = "cpu"
        self._failed: BaseException | None = None
        self._max_model_len = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        return EngineInfo(
            model_path=self._settings.model,
            served_model_name=self._settings.served_model_name,
            max_model_len=self._max_model_len,
            vocab_size=len(self._tokenizer),
        )

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.monotonic()
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype: Any = self._settings.dtype
        if dtype == "auto":
            dtype = torch.bfloat16 if self._device == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype.replace("half", "float16"))
        trust = self._settings.trust_remote_code
        self._tokenizer = AutoTokenizer.from_pretrained(
            self._settings.model, trust_remote_code=trust
        )
        model = AutoModelForCausalLM.from_pretrained(
            self._settings.model, dtype=dtype, trust_remote_code=trust
        )
        self._model = model.to(self._device).eval()
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        self._max_model_len = min(self._settings.max_model_len or context, context)
        if self._settings.seed is not None:
            torch.manual_seed(self._settings.seed)
        log.info(
            "model loaded",
            engine=self.name,
            model=self._settings.model,
            device=self._device,
            dtype=str(dtype),
            max_model_len=self._max_model_len,
            seconds=round(time.monotonic() - started, 2),
        )

    async def stop(self) -> None:
        for job in list(self._jobs.values()):
            job.cancelled.set()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    # -- prompts -----------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def apply_chat_template(self, messages: Sequence[dict[str, object]]) -> str:
        return str(
            self._tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        )

    # -- generation --------------------------------------------------------------------

    async def generate(
        self,
        *,
        request_id: str,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        adapter: Adapter | None,
    ) -> AsyncIterator[Delta]:
        if self._executor is None:
            raise EngineError("engine is not running")
        loop = asyncio.get_running_loop()
        job = _Job(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            options=options,
            adapter=adapter,
            loop=loop,
            queue=asyncio.Queue(),
        )
        self._jobs[request_id] = job
        self._metrics.waiting.inc()
        future = loop.run_in_executor(self._executor, self._run, job)
        future.add_done_callback(_log_worker_failure)
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed: {item}") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled.set()
            self._jobs.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is not None:
            job.cancelled.set()

    async def check_health(self) -> None:
        if self._failed is not None:
            raise EngineError(f"engine failed: {self._failed}")
        if self._executor is None:
            raise EngineError("engine is not running")

    def metric_registries(self) -> Sequence[object]:
        return (self._registry,)

    # -- worker thread -----------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        self._metrics.waiting.dec()
        if job.cancelled.is_set():
            job.send(Delta(text="", tokens=0, finish_reason="abort"))
            self._metrics.finished("abort")
            return
        self._metrics.running.inc()
        try:
            delta = self._generate(job)
        except BaseException as exc:
            log.exception("generation failed", request_id=job.request_id)
            job.send(exc)
            self._metrics.finished("error")
            if isinstance(exc, MemoryError | SystemError):
                self._failed = exc
            return
        finally:
            self._metrics.running.dec()
        self._metrics.e2e.observe(time.monotonic() - job.arrival)
        self._metrics.finished(delta.finish_reason or "stop")
        job.send(delta)

    def _generate(self, job: _Job) -> Delta:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), job.cancelled.is_set(), dtype=torch.bool)

        options = job.options
        # As vLLM: a temperature this close to 0 is greedy decoding (dividing the logits
        # by it overflows float32 into inf and NaN probabilities).
        sample = options.temperature >= _GREEDY_BELOW_TEMPERATURE
        model = self._model_for(job.adapter)
        streamer = _Streamer(job, self._tokenizer, self._metrics)
        input_ids = torch.tensor([job.prompt_token_ids], device=self._device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": options.max_tokens,
            "do_sample": sample,
            "pad_token_id": self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
            "eos_token_id": self._tokenizer.eos_token_id,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
        }
        if sample:
            kwargs["temperature"] = options.temperature
            kwargs["top_p"] = options.top_p
            kwargs["top_k"] = options.top_k  # 0: no top-k (OpenAI), unlike transformers' 50
        if options.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = options.repetition_penalty
        if options.ignore_eos:
            kwargs["min_new_tokens"] = options.max_tokens  # masks EOS until the end
        if options.seed is not None:
            torch.manual_seed(options.seed)
        self._metrics.prompt_tokens.inc(len(job.prompt_token_ids))
        context = (
            self._peft.disable_adapter()
            if job.adapter is None and self._peft is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), context:
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        self._metrics.generation_tokens.inc(streamer.tokens)
        if streamer.stopped:
            reason = "stop"
        elif job.cancelled.is_set():
            reason = "abort"
        elif streamer.last_token == self._tokenizer.eos_token_id:
            reason = "stop"
        else:
            reason = "length"
        return streamer.final(reason)

    def _model_for(self, adapter: Adapter | None) -> Any:
        """The model to call for `adapter`, loading and activating it (worker thread only)."""
        if adapter is None:
            return self._peft if self._peft is not None else self._model
        from peft import PeftModel

        loaded = self._loaded.get(adapter.name)
        if loaded is None or loaded[:2] != (adapter.path, adapter.strength):
            started = time.monotonic()
            name = adapter.name
            if loaded is not None:  # reloaded with another path or strength
                for old in {name, loaded[2]}:
                    self._peft.delete_adapter(old)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self._model, str(adapter.path), adapter_name=name
                )
                self._peft.eval()
            else:
                self._peft.load_adapter(str(adapter.path), adapter_name=name)
            active = name
            if adapter.strength != 1.0:
                active = f"{name}@strength"
                self._peft.add_weighted_adapter(
                    adapters=[name],
                    weights=[adapter.strength],
                    adapter_name=active,
                    combination_type="cat",
                )
            self._loaded[name] = (adapter.path, adapter.strength, active)
            log.info(
                "adapter loaded",
                adapter=name,
                path=str(adapter.path),
                strength=adapter.strength,
                seconds=round(time.monotonic() - started, 3),
            )
        self._peft.set_adapter(self._loaded[adapter.name][2])
        return self._peft


def _log_worker_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("generation worker failed", error=repr(future.exception()))
