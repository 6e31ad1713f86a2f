"""Backend that streams token ids from Triton (the same engine, inside Triton's python backend).

Triton speaks token ids only; text deltas and stop sequences are produced here with the same
incremental detokenizer and stop matcher the embedded engine uses, and a matched stop sequence
cancels the Triton stream. Requests are checked here with the engine's own check
(`generation.max_new_tokens`) and sent with an explicit max_tokens, so both backends refuse and
bound a request the same way.

The engine runs in Triton's process, so this backend records the engine metric names for the
requests it sends: TTFT and inter-token latency as seen here, tokens, finishes, queue wait and
batch size as the engine reported them on the responses, and requests in flight split into queued
(no token yet) and running. GetLoad reports those counts. The engine's own queue wait and prefill
time go on the request's span as the queue_wait and prefill events, marked
``llmesh.measured_in=triton``; ``llmesh.triton.first_response_ms`` is the first token as seen here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import tritonclient.grpc.aio as triton
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from libs.runtime.channels import channel_options
from libs.runtime.errors import InvalidArgument, LlmeshError, ResourceExhausted, Unavailable
from services.inference import triton_wire
from services.inference.backends import ModelCard
from services.inference.generation import Delta, FinishReason, GenerationRequest, Usage, max_new_tokens
from services.inference.metrics import EngineMetrics, RequestSpan
from services.inference.model_info import ModelFolder
from services.inference.prefix_cache import PrefixCache
from services.inference.text_stream import IncrementalDetokenizer, StopMatcher

log = logging.getLogger("llmesh.inference.triton")
TRITON_SERVICE = "inference.GRPCInferenceService"
_IN_TRITON: dict[str, AttributeValue] = {"llmesh.measured_in": "triton"}


def _tensor(name: str, value: Any, dtype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def _error(exc: InferenceServerException) -> LlmeshError:
    """A Triton error response as the typed error it carries (Triton's own errors by their text)."""
    message = exc.message() or str(exc)
    typed = triton_wire.decode_error(message)
    if typed is not None:
        return typed
    if "RESOURCE_EXHAUSTED" in message:
        return ResourceExhausted(message)
    if "INVALID_ARGUMENT" in message:
        return InvalidArgument(message)
    return Unavailable(f"triton: {message}")


class TritonBackend:
    """One model served by Triton at ``url``."""

    def __init__(
        self,
        url: str,
        folder: ModelFolder,
        metrics: EngineMetrics | None = None,
        default_max_tokens: int = 256,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.url = url
        self.folder = folder
        self.default_max_tokens = default_max_tokens
        self.ready_timeout_s = ready_timeout_s
        m = folder.manifest
        self.card = ModelCard(m.served_name, m.version, m.context_length, "triton", m.precision)
        self._metrics = metrics or EngineMetrics(CollectorRegistry())
        self._tokenizer = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
        self._client: triton.InferenceServerClient | None = None
        self._queued = 0
        self._running = 0
        self._last_step: dict[int, int] = {}  # engine instance -> last decode step observed
        self._max_batch, self._max_queue = 16, 64
        self._requested_providers: tuple[str, ...] = ()
        self.providers: tuple[str, ...] = ()
        self.missing_providers: tuple[str, ...] = ()

    async def start(self) -> None:
        # Round robin over every Triton pod a headless Service name resolves to (dns:///triton:8001).
        options = channel_options(TRITON_SERVICE, idempotent_methods=("ModelReady", "ModelConfig"))
        self._client = triton.InferenceServerClient(self.url, channel_args=options)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                if await self._client.is_model_ready(self.card.name):
                    break
            except InferenceServerException as exc:
                log.info("waiting for triton model %s: %s", self.card.name, exc.message())
            if time.monotonic() > deadline:
                raise Unavailable(f"triton at {self.url} has no ready model {self.card.name}")
            await asyncio.sleep(0.5)
        config = await self._client.get_model_config(self.card.name, as_json=True)
        params = {k: v.get("string_value", "") for k, v in config["config"].get("parameters", {}).items()}
        if params.get("max_context"):
            context = min(self.card.context_length, int(params["max_context"]))
            self.card = dataclasses.replace(self.card, context_length=context)
        self._max_batch = int(params.get("max_batch") or self._max_batch)
        self._max_queue = int(params.get("max_queue") or self._max_queue)
        requested = params.get("execution_providers") or "CPUExecutionProvider"
        self._requested_providers = tuple(p for p in requested.split(",") if p)
        self._set_load()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def running(self) -> int:
        """Requests streaming tokens from Triton."""
        return self._running

    @property
    def queued(self) -> int:
        """Requests sent to Triton that have no token yet (queued or prefilling in its engine)."""
        return self._queued

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """Triton's engine keeps its prefix cache inside Triton; it is not reported."""
        return None

    def _set_load(self) -> None:
        self._metrics.queued.labels(self.card.name).set(self._queued)
        self._metrics.running.labels(self.card.name).set(self._running)

    def _note_providers(self, active: tuple[str, ...]) -> None:
        """Record the providers Triton's engine reported; warn once about a requested one it lacks."""
        if active == self.providers:
            return
        self.providers = active
        self.missing_providers = tuple(p for p in self._requested_providers if p not in active)
        self._metrics.providers(self.card.name, active, self.missing_providers)
        if self.missing_providers:
            log.warning(
                "triton model %s: requested execution provider(s) %s not in use; running on %s",
                self.card.name, ",".join(self.missing_providers), ",".join(active),
            )  # fmt: skip
        else:
            log.info("triton model %s runs on %s", self.card.name, ",".join(active))

    def _observe_step(self, engine_id: int, delta: Delta) -> None:
        """Batch size once per engine step, not once per sequence in it (steps of each engine)."""
        if delta.step <= self._last_step.get(engine_id, 0):
            return
        if engine_id not in self._last_step and len(self._last_step) >= 64:
            self._last_step.clear()  # engines come and go (restarts, pods); keep a few
        self._last_step[engine_id] = delta.step
        self._metrics.batch_size.labels(self.card.name).observe(delta.batch_size)

    def _inputs(self, request: GenerationRequest, max_new: int) -> list[triton.InferInput]:
        sampling = dataclasses.replace(request.sampling, max_tokens=max_new)
        sent = dataclasses.replace(request, sampling=sampling)
        return [_tensor(name, value, dtype) for name, value, dtype in triton_wire.request_tensors(sent)]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self._client is None:
            raise Unavailable(f"triton backend for {self.card.name} is not started")
        max_new = max_new_tokens(
            request, self.card.context_length, self.folder.layout.vocab_size, self.default_max_tokens
        )
        item: dict[str, Any] = {
            "model_name": self.card.name,
            "inputs": self._inputs(request, max_new),
            "request_id": request.request_id,
        }

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield item

        name, metrics = self.card.name, self._metrics
        span = RequestSpan(name)
        detok = IncrementalDetokenizer(self._tokenizer)
        stops = StopMatcher(request.sampling.stop)
        generated: list[int] = []
        started = last = time.perf_counter()
        streaming = ended = False
        responses = self._client.stream_infer(one())
        self._queued += 1
        self._set_load()
        try:
            async for result, error in responses:
                now = time.perf_counter()
                if error is not None:
                    ended = True
                    exc = _error(error)
                    if isinstance(exc, ResourceExhausted):
                        metrics.rejected.labels(name).inc()
                    raise exc
                response = triton_wire.read_response(result.as_numpy)
                delta = response.delta
                if not streaming:
                    streaming = True
                    self._queued, self._running = self._queued - 1, self._running + 1
                    self._set_load()
                    metrics.ttft.labels(name).observe(now - started)
                    first_ms = round((now - started) * 1000, 3)
                    span.span.set_attribute("llmesh.triton.first_response_ms", first_ms)
                    if not delta.first:  # a model that reports no timings: the time seen here
                        delta.first, delta.ttft_ms = True, first_ms
                    metrics.queue_wait.labels(name).observe(delta.queue_ms / 1000)
                    metrics.prefix_reused_tokens.labels(name).inc(delta.cached_tokens)
                    if response.providers:
                        self._note_providers(response.providers)
                else:
                    metrics.inter_token.labels(name).observe(now - last)
                last = now
                metrics.tokens.labels(name).inc()  # one response per token the engine sampled
                self._observe_step(response.engine_id, delta)
                text = ""
                for token in delta.token_ids:
                    generated.append(token)
                    text += stops.push(detok.push(token))
                    if stops.matched:
                        break
                delta.text = text
                reason = FinishReason.STOP if stops.matched else delta.finish_reason
                if reason is not None:
                    ended = True
                    if not stops.matched:
                        delta.text += stops.flush()
                    delta.finish_reason = reason
                    delta.usage = Usage(len(request.prompt_token_ids), len(generated))
                    metrics.finished.labels(name, reason.value).inc()
                span.record(delta, _IN_TRITON if delta.first else None)
                yield delta
                if ended:
                    return
            ended = True
            raise Unavailable(f"triton closed the stream of {name} before it finished")
        finally:
            if not ended:
                metrics.finished.labels(name, FinishReason.CANCELLED.value).inc()
            if streaming:
                self._running -= 1
            else:
                self._queued -= 1
            self._set_load()
            responses.cancel()
