"""The HTTP server: routes, errors, admission, readiness and adapter resolution.

Request flow for a generation: ready? (503) -> body within the size limit (413) ->
valid JSON and schema (400) -> known model or adapter (400) -> admitted (429) ->
prompt rendered and measured against the context (400) -> engine. Every error body has
OpenAI's shape; nothing a client sends produces a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import structlog
from aiohttp import web

from . import adapters as adapter_dir
from .config import Settings
from .engines import (
    Adapter,
    Engine,
    EngineError,
    EngineInfo,
    EngineOverloadedError,
    EngineRequestError,
    SamplingOptions,
)
from .generation import (
    Choice,
    Generation,
    chat_delta_chunk,
    chat_first_chunk,
    collect,
    completion_delta_chunk,
    completion_echo_chunk,
    json_text,
    stream_response,
)
from .group import BOOT_ID, GroupWatch
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics, render
from .protocol import (
    SEED_MIN,
    RequestError,
    Sampling,
    decode_body,
    parse_chat_request,
    parse_completion_request,
    parse_json,
    parse_messages,
    parse_quickstart_options,
)

log = structlog.get_logger(__name__)

HEALTH_CHECK_TIMEOUT_S = 5.0
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
_GENERATION_ROUTES = frozenset({"/chat", "/v1/chat/completions", "/v1/completions"})


def json_error(exc: RequestError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, dumps=json_text)


class Server:
    """One engine behind the HTTP API. `app()` builds the aiohttp application."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        metrics: ServerMetrics | None = None,
        group: GroupWatch | None = None,
    ) -> None:
        self.settings = settings
        self.group = group
        """Rank 0 of a multi-node group: the other ranks' health (None on one node)."""
        self.engine = engine
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.info: EngineInfo | None = None
        self.adapters: dict[str, Adapter] = {}
        self.startup_error: str | None = None
        self._in_flight = 0

    # -- lifecycle ---------------------------------------------------------------------

    def mark_ready(self, info: EngineInfo) -> None:
        self.info = info
        self.refresh_adapters()
        log.info(
            "server ready",
            model=info.served_model_name,
            adapters=sorted(self.adapters),
            max_model_len=info.max_model_len,
        )

    def refresh_adapters(self) -> dict[str, Adapter]:
        found = adapter_dir.scan(self.settings.adapters_dir)
        for name, adapter in found.items():
            if self.adapters.get(name) != adapter:
                self.engine.register_adapter(adapter)
                log.info("adapter found", adapter=name, path=str(adapter.path))
        for name in self.adapters.keys() - found.keys():
            log.info("adapter removed", adapter=name)
        self.adapters = found
        return found

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_request_bytes, middlewares=[self._middleware]
        )
        app.router.add_post("/chat", self.quickstart_chat)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.prometheus)
        return app

    # -- middleware --------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except RequestError as exc:
            status = exc.status
            return json_error(exc)
        except web.HTTPException as exc:
            status = exc.status
            if exc.status == 413:
                message = (
                    f"Request body too large: the limit is {self.settings.max_request_bytes} bytes"
                )
            else:
                message = f"{exc.reason}: {request.method} {request.path}"
            return json_error(RequestError(message, status=exc.status))
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499  # nginx's "client closed request"
            log.info("client disconnected", route=route, seconds=_since(started))
            raise
        except Exception:
            log.exception("request failed", route=route, method=request.method)
            return json_error(RequestError("Internal server error", status=500))
        finally:
            self.metrics.requests.labels(route, request.method, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            if route in _GENERATION_ROUTES:
                log.info("request finished", route=route, status=status, seconds=_since(started))

    # -- plain endpoints ---------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        group: dict[str, Any] = {}
        if self.group is not None:
            group = {"boot": BOOT_ID, "ranks": self.group.summary()}
            if self.group.lost:
                body = {"status": "unhealthy", "error": self.group.lost, **group}
                return web.json_response(body, status=503)
        if self.info is None:
            state = "failed" if self.startup_error else "loading"
            body = {"status": state, **group}
            if self.startup_error:
                body["error"] = self.startup_error
            elif self.group is not None:
                body["waiting_for"] = self.group.waiting_for()
            return web.json_response(body, status=503)
        try:
            async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_S):
                await self.engine.check_health()
        except (EngineError, TimeoutError) as exc:
            return web.json_response({"status": "unhealthy", "error": str(exc)}, status=503)
        return web.json_response({"status": "ok", **group})

    async def prometheus(self, request: web.Request) -> web.Response:
        registries = [self.metrics.registry, *self.engine.metric_registries()]
        return web.Response(body=render(registries), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        info = self._ready()
        created = int(time.time())
        base = {
            "id": info.served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "kaito",
            "root": info.model_path,
            "parent": None,
            "max_model_len": info.max_model_len,
        }
        data = [base]
        for adapter in self.refresh_adapters().values():
            data.append(
                {
                    "id": adapter.name,
                    "object": "model",
                    "created": created,
                    "owned_by": "kaito",
                    "root": str(adapter.path),
                    "parent": info.served_model_name,
                    "max_model_len": info.max_model_len,
                }
            )
        return web.json_response({"object": "list", "data": data}, dumps=json_text)

    # -- request helpers ---------------------------------------------------------------

    def _ready(self) -> EngineInfo:
        if self.info is None:
            raise RequestError("The model is still loading; retry later", status=503)
        return self.info

    async def _body(self, request: web.Request) -> dict[str, Any]:
        limit = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(
                f"Request body too large: {request.content_length} bytes, the limit is {limit}",
                status=413,
            )
        try:
            raw = await request.read()
        except web.HTTPException:
            raise  # 413 beyond client_max_size
        except Exception as exc:  # aiohttp's payload errors: broken chunked encoding...
            raise RequestError(f"Request body cannot be read: {exc}".strip()) from exc
        return parse_json(decode_body(raw, request.headers.get("Content-Encoding"), limit))

    def _resolve(self, model: str, info: EngineInfo) -> Adapter | None:
        """The adapter `model` names, None for the base model; 400 for anything else."""
        if model == info.served_model_name:
            return None
        adapter = self.adapters.get(model) or self.refresh_adapters().get(model)
        if adapter is None:
            available = ", ".join([info.served_model_name, *self.adapters])
            raise RequestError(
                f"The model '{model}' does not exist. Available models: {available}",
                param="model",
                code="model_not_found",
            )
        if not self.engine.serves_adapters:
            raise RequestError(
                f"The model '{model}' is a LoRA adapter, and this server was started without "
                "LoRA support (--enable-lora)",
                param="model",
            )
        return adapter

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        limit = self.settings.max_concurrent_requests
        if self._in_flight >= limit:
            self.metrics.rejected.labels("queue_full").inc()
            raise RequestError(
                f"Too many requests in flight ({limit}); retry later",
                status=429,
                code="queue_full",
            )
        self._in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()

    def _max_tokens(
        self,
        info: EngineInfo,
        prompt_len: int,
        requested: int | None,
        default: int | None,
        *,
        prompt_param: str,
        limit_param: str = "max_tokens",
    ) -> int:
        limit = info.max_model_len
        if prompt_len == 0:
            # vLLM refuses an empty prompt, transformers fails on it: nothing to continue.
            raise RequestError(
                f"'{prompt_param}' is empty: the prompt has no tokens to continue",
                param=prompt_param,
            )
        if prompt_len >= limit:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"has {prompt_len} tokens. Please reduce the length of the prompt.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        remaining = limit - prompt_len
        if requested is None:
            return remaining if default is None else min(default, remaining)
        if requested > remaining:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} in "
                "the completion). Please reduce the length of the prompt or completion.",
                param=limit_param,
                code="context_length_exceeded",
            )
        return requested

    def _render_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        try:
            prompt = self.engine.apply_chat_template(messages)
        except Exception as exc:  # jinja raises on roles or orders a template rejects
            raise RequestError(
                f"The messages cannot be rendered with the model's chat template: {exc}",
                param="messages",
            ) from exc
        return self.engine.tokenize(prompt, add_special_tokens=False)

    def _check_token_ids(self, info: EngineInfo, ids: list[int]) -> None:
        for token in ids:
            if not 0 <= token < info.vocab_size:
                raise RequestError(
                    f"'prompt' holds token id {token}, outside the vocabulary "
                    f"(0..{info.vocab_size - 1})",
                    param="prompt",
                )

    @staticmethod
    def _options(
        info: EngineInfo, sampling: Sampling, max_tokens: int, sample: int
    ) -> SamplingOptions:
        seed = None if sampling.seed is None else _wrap_seed(sampling.seed + sample)
        return _engine_options(
            info,
            SamplingOptions(
                max_tokens=max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                repetition_penalty=sampling.repetition_penalty,
                stop=sampling.stop,
                seed=seed,
                ignore_eos=sampling.ignore_eos,
            ),
        )

    def _generation(self, adapter: Adapter | None, choices: list[Choice]) -> Generation:
        return Generation(
            engine=self.engine, adapter=adapter, choices=choices, metrics=self.metrics
        )

    @staticmethod
    def _engine_error(exc: Exception) -> tuple[str, str]:
        """Message and OpenAI error type for an engine failure during a response."""
        if isinstance(exc, EngineRequestError):
            return str(exc), "invalid_request_error"
        if isinstance(exc, EngineOverloadedError):
            return str(exc), "rate_limit_error"
        log.error("generation failed", error=repr(exc))
        return f"Generation failed: {exc}", "internal_server_error"

    async def _run(self, generation: Generation) -> None:
        """Run a non-streamed generation; engine errors become HTTP errors."""
        try:
            await collect(generation)
        except EngineRequestError as exc:
            raise RequestError(str(exc)) from exc
        except EngineOverloadedError as exc:
            self.metrics.rejected.labels("engine_queue_full").inc()
            raise RequestError(str(exc), status=429, code="queue_full") from exc
        except EngineError as exc:
            log.error("generation failed", error=repr(exc))
            raise RequestError(f"Generation failed: {exc}", status=500) from exc

    # -- generation endpoints ----------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        info = self._ready()
        req = parse_chat_request(await self._body(request))
        adapter = self._resolve(req.model, info)
        with self._admitted():
            ids = self._render_chat(req.messages)
            max_tokens = self._max_tokens(
                info,
                len(ids),
                req.sampling.max_tokens,
                None,
                prompt_param="messages",
                limit_param=req.sampling.max_tokens_field,
            )
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            choices = [
                Choice(
                    index=i,
                    request_id=request_id if req.sampling.n == 1 else f"{request_id}-{i}",
                    prompt_token_ids=ids,
                    options=self._options(info, req.sampling, max_tokens, i),
                )
                for i in range(req.sampling.n)
            ]
            generation = self._generation(adapter, choices)
            created = int(time.time())
            if req.stream:
                return await stream_response(
                    request,
                    generation,
                    envelope={
                        "id": request_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": req.model,
                    },
                    include_usage=req.include_usage,
                    first_chunk=chat_first_chunk,
                    delta_chunk=chat_delta_chunk,
                    on_error=self._engine_error,
                )
            await self._run(generation)
            body = {
                "id": request_id,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": "".join(c.text)},
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                    for c in choices
                ],
                "usage": generation.usage(),
            }
            return web.json_response(body, dumps=json_text)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        info = self._ready()
        req = parse_completion_request(await self._body(request))
        adapter = self._resolve(req.model, info)
        with self._admitted():
            request_id = f"cmpl-{uuid.uuid4().hex}"
            choices: list[Choice] = []
            for p, prompt in enumerate(req.prompts):
                if isinstance(prompt, str):
                    ids = self.engine.tokenize(prompt)
                    text = prompt
                else:
                    self._check_token_ids(info, prompt)
                    ids, text = prompt, ""
                max_tokens = self._max_tokens(
                    info,
                    len(ids),
                    req.sampling.max_tokens,
                    COMPLETIONS_DEFAULT_MAX_TOKENS,
                    prompt_param="prompt",
                    limit_param=req.sampling.max_tokens_field,
                )
                for i in range(req.sampling.n):
                    index = p * req.sampling.n + i
                    choices.append(
                        Choice(
                            index=index,
                            request_id=request_id if index == 0 else f"{request_id}-{index}",
                            prompt_token_ids=ids,
                            options=self._options(info, req.sampling, max_tokens, i),
                            prefix=text if req.echo else "",
                        )
                    )
            generation = self._generation(adapter, choices)
            created = int(time.time())
            if req.stream:
                return await stream_response(
                    request,
                    generation,
                    envelope={
                        "id": request_id,
                        "object": "text_completion",
                        "created": created,
                        "model": req.model,
                    },
                    include_usage=req.include_usage,
                    first_chunk=completion_echo_chunk if req.echo else None,
                    delta_chunk=completion_delta_chunk,
                    on_error=self._engine_error,
                )
            await self._run(generation)
            body = {
                "id": request_id,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": c.index,
                        "text": c.prefix + "".join(c.text),
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                    for c in choices
                ],
                "usage": generation.usage(),
            }
            return web.json_response(body, dumps=json_text)

    async def quickstart_chat(self, request: web.Request) -> web.Response:
        """Kaito's original endpoint: `{"prompt"| "messages", "generate_kwargs"}` -> Result."""
        info = self._ready()
        body = await self._body(request)
        prompt, messages = body.get("prompt"), body.get("messages")
        if prompt is None and messages is None:
            raise RequestError("Text generation parameter prompt required", param="prompt")
        if prompt is not None and messages is not None:
            raise RequestError("Give either 'prompt' or 'messages', not both", param="prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise RequestError("'prompt' must be a string", param="prompt")
        kwargs = body.get("generate_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise RequestError("'generate_kwargs' must be an object", param="generate_kwargs")
        model = body.get("model")
        adapter = self._resolve(model, info) if isinstance(model, str) else None
        with self._admitted():
            if messages is not None:
                ids = self._render_chat(parse_messages(messages))
                prefix = ""
            else:
                assert isinstance(prompt, str)
                ids = self.engine.tokenize(prompt)
                prefix = prompt if body.get("return_full_text", True) else ""
            options = parse_quickstart_options(kwargs, len(ids))
            max_tokens = self._max_tokens(
                info,
                len(ids),
                options.max_tokens,
                None,
                prompt_param="messages" if messages is not None else "prompt",
                limit_param="generate_kwargs."
                + ("max_new_tokens" if kwargs.get("max_new_tokens") is not None else "max_length"),
            )
            options = _engine_options(info, dataclasses.replace(options, max_tokens=max_tokens))
            choice = Choice(
                index=0,
                request_id=f"chat-{uuid.uuid4().hex}",
                prompt_token_ids=ids,
                options=options,
            )
            await self._run(self._generation(adapter, [choice]))
            return web.json_response({"Result": prefix + "".join(choice.text)}, dumps=json_text)


def _wrap_seed(seed: int) -> int:
    """`seed` folded into 64 signed bits (seed + sample index can leave them)."""
    return (seed - SEED_MIN) % 2**64 + SEED_MIN


def _engine_options(info: EngineInfo, options: SamplingOptions) -> SamplingOptions:
    """`options` as every engine takes them: a top-k beyond the vocabulary filters nothing
    (vLLM's worker would otherwise see integers that overflow its tensors)."""
    if options.top_k >= info.vocab_size:
        return dataclasses.replace(options, top_k=0)
    return options


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


__all__ = ["Server"]
