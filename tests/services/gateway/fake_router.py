"""A small real RouterService for the gateway and Envoy tests, served by the shared runtime.

It answers through `GrpcService` (so errors carry the same status details, `retry-after` and
`x-llmesh-trace-id` metadata as the real router) and echoes what it received, so tests can
check the OpenAI -> proto mapping end to end. Behaviour is picked by the key and the model:

- `Bearer good-key` passes; `Bearer limited-key` is rate limited (retry after 7 s); anything
  else is UNAUTHENTICATED.
- model `forbidden` -> PERMISSION_DENIED, `missing` -> NOT_FOUND, `down` -> UNAVAILABLE,
  `bad-args` -> INVALID_ARGUMENT naming a param, `slow` sleeps 5 s, `wait` 1 s, `break` fails mid-stream,
  `hang` streams one chunk then waits until cancelled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.runtime.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from libs.runtime.interceptors import add_response_metadata
from libs.runtime.server import GrpcService
from libs.runtime.settings import ServiceSettings

GOOD_KEY = "good-key"
LIMITED_KEY = "limited-key"
MODELS = [
    pb.Model(id="smollm2-135m", aliases=["small"], tier=1, context_length=2048, owned_by="llmesh"),
    pb.Model(id="smollm2-135m-int4", aliases=["tiny"], tier=0, context_length=2048),
]


def _md(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


class FakeRouter(pb_grpc.RouterServiceServicer):
    """Echoes requests back; see the module docstring for the special keys and models."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.calls: list[str] = []

    def _auth(self, context: grpc.aio.ServicerContext) -> dict[str, str]:
        md = _md(context)
        header = md.get("authorization", "")
        if not header:
            raise Unauthenticated(
                "missing API key: send `authorization: Bearer <key>`", reason="API_KEY_MISSING"
            )
        if header == f"Bearer {LIMITED_KEY}":
            raise ResourceExhausted(
                "rate limit of key limited reached: 1 requests per minute",
                retry_after_s=7,
                reason="RATE_LIMITED",
            )
        if header != f"Bearer {GOOD_KEY}":
            raise Unauthenticated("unknown API key", reason="API_KEY_UNKNOWN")
        return md

    async def _model(self, options: pb.GenerationOptions) -> str:
        model = options.model
        if model == "forbidden":
            raise PermissionDenied("key may not use model forbidden", reason="MODEL_NOT_ALLOWED")
        if model == "missing":
            raise NotFound("model missing does not exist", reason="MODEL_NOT_FOUND")
        if model == "down":
            raise Unavailable("no inference backend is available", reason="NO_BACKEND")
        if model == "bad-args":
            raise InvalidArgument("prompt too long for the model", metadata={"param": "messages"})
        if model == "slow":
            await asyncio.sleep(5)
        if model == "wait":
            await asyncio.sleep(1)
        add_response_metadata("x-llmesh-cache", "hit" if options.cache == "force" else "miss")
        return model

    @staticmethod
    def _echo(request: Any, md: dict[str, str]) -> str:
        seen = MessageToDict(request, preserving_proto_field_name=True)
        seen["traceparent"] = md.get("traceparent", "")
        seen["x_request_id"] = md.get("x-request-id", "")
        return json.dumps(seen, sort_keys=True)

    @staticmethod
    def _usage(text: str) -> gen_pb.Usage:
        return gen_pb.Usage(
            prompt_tokens=5, completion_tokens=len(text) // 4, total_tokens=5 + len(text) // 4
        )

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        self.calls.append("CreateChatCompletion")
        md = self._auth(context)
        model = await self._model(request.options)
        text = self._echo(request, md)
        return pb.CreateChatCompletionResponse(
            id="chatcmpl-fake",
            created=1700000000,
            model=model,
            choices=[
                pb.Choice(
                    index=0, message=gen_pb.ChatMessage(role="assistant", content=text), finish_reason="stop"
                )
            ],
            usage=self._usage(text),
            route=pb.RouteInfo(model=model, reason="fake", cache="miss", safety="allow", cost_usd=0.001),
        )

    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        self.calls.append("StreamChatCompletion")
        md = self._auth(context)
        model = await self._model(request.options)
        text = self._echo(request, md)
        pieces = [
            text[: len(text) // 3],
            text[len(text) // 3 : 2 * len(text) // 3],
            text[2 * len(text) // 3 :],
        ]

        def chunk(**fields: Any) -> pb.StreamChatCompletionResponse:
            return pb.StreamChatCompletionResponse(
                id="chatcmpl-fake-stream", created=1700000000, model=model, **fields
            )

        yield chunk(choices=[pb.ChoiceDelta(index=0, role="assistant")])
        try:
            for i, piece in enumerate(pieces):
                if model == "break" and i == 1:
                    raise Unavailable("inference backend failed mid-stream", reason="BACKEND_FAILED")
                if model == "hang" and i == 1:
                    await asyncio.sleep(60)
                yield chunk(choices=[pb.ChoiceDelta(index=0, content=piece)])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield chunk(
            choices=[pb.ChoiceDelta(index=0, finish_reason="stop")],
            usage=self._usage(text),
            route=pb.RouteInfo(model=model, reason="fake", cache="miss"),
        )

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        self.calls.append("CreateCompletion")
        md = self._auth(context)
        model = await self._model(request.options)
        text = self._echo(request, md)
        return pb.CreateCompletionResponse(
            id="cmpl-fake",
            created=1700000000,
            model=model,
            choices=[pb.TextChoice(index=0, text=text, finish_reason="length")],
            usage=self._usage(text),
            route=pb.RouteInfo(model=model, cache="miss"),
        )

    async def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        self.calls.append("StreamCompletion")
        md = self._auth(context)
        model = await self._model(request.options)
        text = self._echo(request, md)
        half = len(text) // 2
        for piece in (text[:half], text[half:]):
            yield pb.StreamCompletionResponse(
                id="cmpl-fake-stream",
                created=1700000000,
                model=model,
                choices=[pb.TextChoice(index=0, text=piece)],
            )
        yield pb.StreamCompletionResponse(
            id="cmpl-fake-stream",
            created=1700000000,
            model=model,
            choices=[pb.TextChoice(index=0, finish_reason="length")],
            usage=self._usage(text),
            route=pb.RouteInfo(model=model, cache="miss"),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        self.calls.append("ListModels")
        self._auth(context)
        return pb.ListModelsResponse(models=MODELS)

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        self.calls.append("GetUsage")
        self._auth(context)
        return pb.GetUsageResponse(
            key_id="0123456789abcdef",
            tenant="acme",
            window=request.window or "day",
            models=[pb.ModelUsage(model="smollm2-135m", requests=3, prompt_tokens=30, completion_tokens=12)],
            spent_usd=0.25,
            budget_usd=10.0,
            remaining_usd=9.75,
        )


def build_fake_router(port: int = 0) -> tuple[GrpcService, FakeRouter]:
    """The fake router as a `GrpcService` (call `start()`), and its servicer for inspection."""
    service = GrpcService("router", ServiceSettings(port=port, metrics_port=-1, grace_period_s=1.0))
    servicer = FakeRouter()
    service.add_servicer(
        pb_grpc.add_RouterServiceServicer_to_server,
        servicer,
        pb.DESCRIPTOR.services_by_name["RouterService"].full_name,
    )
    return service, servicer
