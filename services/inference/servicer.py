"""InferenceService: a thin adapter between the proto contract and the model backends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.inference.backends import ModelRegistry
from services.inference.generation import Delta, FinishReason, GenerationRequest, SamplingConfig

# Most prefix-block digests reported per model in one GetLoad (8 bytes each).
MAX_PREFIX_DIGESTS = 1024

_FINISH = {
    FinishReason.STOP: gen_pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: gen_pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: gen_pb.FINISH_REASON_CANCELLED,
}


log = logging.getLogger("llmesh.inference")


def sampling_config(params: gen_pb.SamplingParams) -> SamplingConfig:
    """Proto sampling parameters to the engine's config (unset fields keep the defaults)."""
    return SamplingConfig(
        temperature=params.temperature if params.HasField("temperature") else 0.0,
        top_p=params.top_p if params.HasField("top_p") else 1.0,
        top_k=params.top_k if params.HasField("top_k") else 0,
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
    )


def _usage(delta: Delta) -> gen_pb.Usage | None:
    if delta.usage is None:
        return None
    u = delta.usage
    return gen_pb.Usage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens
    )


def _generation_request(request: pb.GenerateRequest | pb.GenerateStreamRequest) -> GenerationRequest:
    """The engine's request; the prompt's token ids are logged at DEBUG only (never at INFO)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "generation requested",
            extra={"fields": {"request_id": request.request_id, "model": request.model,
                              "prompt_token_ids": list(request.prompt_token_ids)}},
        )  # fmt: skip
    return GenerationRequest(
        tuple(request.prompt_token_ids), sampling_config(request.sampling), request.request_id
    )


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Serves the model registry over gRPC."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        backend = self.registry.get(request.model)
        req = _generation_request(request)
        out = pb.GenerateResponse(model_version=f"{backend.card.name}@{backend.card.version}")
        text: list[str] = []
        async for delta in backend.generate(req):
            out.token_ids.extend(delta.token_ids)
            text.append(delta.text)
            if delta.ttft_ms:
                out.time_to_first_token_ms = delta.ttft_ms
                out.queue_ms = delta.queue_ms
            if delta.finish_reason is not None:
                out.finish_reason = _FINISH[delta.finish_reason]
                usage = _usage(delta)
                if usage is not None:
                    out.usage.CopyFrom(usage)
        out.text = "".join(text)
        return out

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        backend = self.registry.get(request.model)
        req = _generation_request(request)
        version = f"{backend.card.name}@{backend.card.version}"
        async for delta in backend.generate(req):
            msg = pb.GenerateStreamResponse(token_ids=delta.token_ids, text=delta.text, model_version=version)
            if delta.finish_reason is not None:
                msg.finish_reason = _FINISH[delta.finish_reason]
                usage = _usage(delta)
                if usage is not None:
                    msg.usage.CopyFrom(usage)
            yield msg

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=c.name,
                    version=c.version,
                    context_length=c.context_length,
                    backend=c.backend,
                    precision=c.precision,
                )
                for c in (b.card for b in self.registry.all())
            ]
        )

    async def GetLoad(
        self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoadResponse:
        models = self.registry.all()
        out = pb.GetLoadResponse(
            running=sum(b.running for b in models),
            queued=sum(b.queued for b in models),
            max_batch=sum(b.max_batch for b in models),
            max_queue=sum(b.max_queue for b in models),
        )
        limit = min(request.max_prefix_digests, MAX_PREFIX_DIGESTS)
        for backend in models if limit > 0 else []:
            cache = backend.prefix_cache
            if cache is not None:
                out.prefix_caches.add(
                    model=backend.card.name,
                    block_size=cache.block_size,
                    block_digests=cache.wire_digests(limit),
                )
        return out
