"""Backend that streams token ids from Triton (the same engine, inside Triton's python backend).

Triton speaks token ids only; text deltas and stop sequences are produced here with the same
incremental detokenizer and stop matcher the embedded engine uses, and a matched stop sequence
cancels the Triton stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from libs.runtime.channels import channel_options
from libs.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.inference.backends import ModelCard
from services.inference.generation import Delta, FinishReason, GenerationRequest, Usage
from services.inference.model_info import ModelFolder
from services.inference.prefix_cache import PrefixCache
from services.inference.text_stream import IncrementalDetokenizer, StopMatcher

log = logging.getLogger("llmesh.inference.triton")
TRITON_SERVICE = "inference.GRPCInferenceService"
_FINISH = {1: FinishReason.STOP, 2: FinishReason.LENGTH}


def _tensor(name: str, value: np.ndarray, dtype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def _error(exc: InferenceServerException) -> Exception:
    message = exc.message() or str(exc)
    if "RESOURCE_EXHAUSTED" in message:
        return ResourceExhausted(message)
    if "INVALID_ARGUMENT" in message:
        return InvalidArgument(message)
    return Unavailable(f"triton: {message}")


class TritonBackend:
    """One model served by Triton at ``url``."""

    def __init__(self, url: str, folder: ModelFolder, ready_timeout_s: float = 120.0) -> None:
        self.url = url
        self.folder = folder
        self.ready_timeout_s = ready_timeout_s
        m = folder.manifest
        self.card = ModelCard(m.served_name, m.version, m.context_length, "triton", m.precision)
        self._tokenizer = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
        self._client: triton.InferenceServerClient | None = None
        self._running = 0

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
        served = config["config"].get("parameters", {}).get("max_context", {}).get("string_value")
        if served:
            self.card = ModelCard(
                self.card.name,
                self.card.version,
                min(self.card.context_length, int(served)),
                "triton",
                self.card.precision,
            )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return 0

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """Triton's engine keeps its prefix cache inside Triton; it is not reported."""
        return None

    def _validate(self, request: GenerationRequest) -> None:
        request.sampling.validate()
        prompt, wanted = len(request.prompt_token_ids), request.sampling.max_tokens
        if not prompt:
            raise InvalidArgument("prompt_token_ids is empty")
        if wanted is not None and prompt + wanted > self.card.context_length:
            raise InvalidArgument(
                f"prompt ({prompt} tokens) + max_tokens ({wanted}) exceeds the context window of "
                f"{self.card.context_length} tokens"
            )

    def _inputs(self, request: GenerationRequest) -> list[triton.InferInput]:
        s = request.sampling
        inputs = [
            _tensor("prompt_token_ids", np.asarray(request.prompt_token_ids, np.int32), "INT32"),
            _tensor("temperature", np.asarray([s.temperature], np.float32), "FP32"),
            _tensor("top_p", np.asarray([s.top_p], np.float32), "FP32"),
            _tensor("top_k", np.asarray([s.top_k], np.int32), "INT32"),
        ]
        if s.max_tokens is not None:
            inputs.append(_tensor("max_tokens", np.asarray([s.max_tokens], np.int32), "INT32"))
        if s.seed is not None:
            inputs.append(_tensor("seed", np.asarray([s.seed], np.int64), "INT64"))
        return inputs

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self._client is None:
            raise Unavailable(f"triton backend for {self.card.name} is not started")
        self._validate(request)
        item: dict[str, Any] = {
            "model_name": self.card.name,
            "inputs": self._inputs(request),
            "request_id": request.request_id,
        }

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield item

        detok = IncrementalDetokenizer(self._tokenizer)
        stops = StopMatcher(request.sampling.stop)
        generated: list[int] = []
        started = time.perf_counter()
        first = True
        responses = self._client.stream_infer(one())
        self._running += 1
        try:
            async for result, error in responses:
                if error is not None:
                    raise _error(error)
                ids = [int(t) for t in result.as_numpy("token_ids").reshape(-1)]
                code = int(result.as_numpy("finish_reason").reshape(-1)[0])
                text = ""
                for token in ids:
                    generated.append(token)
                    text += stops.push(detok.push(token))
                    if stops.matched:
                        break
                delta = Delta(ids, text)
                if first:
                    first = False
                    delta.ttft_ms = (time.perf_counter() - started) * 1000
                reason = FinishReason.STOP if stops.matched else _FINISH.get(code)
                if reason is not None:
                    if not stops.matched:
                        delta.text += stops.flush()
                    delta.finish_reason = reason
                    delta.usage = Usage(len(request.prompt_token_ids), len(generated))
                    yield delta
                    return
                yield delta
            raise Unavailable(f"triton closed the stream of {self.card.name} before it finished")
        finally:
            self._running -= 1
            responses.cancel()
