"""RouterService: the public API over the pipeline (proto ↔ domain, auth, shedding, deadlines)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.keys import KeyRecord
from libs.runtime import telemetry
from libs.runtime.errors import ResourceExhausted
from libs.runtime.interceptors import add_response_metadata
from services.router.accounting import Accounting
from services.router.deadline import Deadline
from services.router.generation import FINISH_NAMES, Finished, GenerationInput, Route, Started, TextDelta
from services.router.metrics import SHED
from services.router.pipeline import Pipeline
from services.router.registry import ModelRegistry
from services.router.validation import check_messages, check_options, check_prompt


class Authenticator(Protocol):
    """`libs.keys.KeyStore`: bearer token → key record, or Unauthenticated."""

    async def authenticate(self, bearer_token: str | None) -> KeyRecord: ...


def _header(value: str) -> str:
    """A value safe for an HTTP/2 header: printable ASCII, one line, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in value)[:512]


def _route_info(route: Route) -> pb.RouteInfo:
    return pb.RouteInfo(
        model=route.model,
        reason=route.reason,
        attempts=route.attempts,
        cache=route.cache,
        safety=route.safety,
        trace_id=route.trace_id,
        cost_usd=route.cost_usd,
        output_safety=route.output_safety,
        output_blocked_reason=route.output_blocked_reason,
    )


class RouterServicer(pb_grpc.RouterServiceServicer):
    """Serves the pipeline over gRPC."""

    def __init__(
        self,
        pipeline: Pipeline,
        registry: ModelRegistry,
        keys: Authenticator,
        accounting: Accounting,
        *,
        max_inflight: int,
        request_timeout_s: float,
    ):
        self.pipeline = pipeline
        self.registry = registry
        self.keys = keys
        self.accounting = accounting
        self.max_inflight = max_inflight
        self.request_timeout_s = request_timeout_s
        self.inflight = 0

    async def _key(self, context: grpc.aio.ServicerContext) -> KeyRecord:
        token = next((str(v) for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        return await self.keys.authenticate(token)

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        left = context.time_remaining()
        return Deadline(min(self.request_timeout_s, left) if left is not None else self.request_timeout_s)

    def _admit(self) -> None:
        if self.inflight >= self.max_inflight:
            SHED.inc()
            raise ResourceExhausted(
                f"the router is at its limit of {self.max_inflight} requests in flight; retry shortly",
                retry_after_s=1.0,
                reason="OVERLOADED",
            )

    async def _run(self, req: GenerationInput, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        """Admission, authentication and the pipeline's events, with response headers on Started."""
        self._admit()
        self.inflight += 1
        try:
            deadline = self._deadline(context)
            key = await self._key(context)
            request_id = uuid.uuid4().hex
            events = self.pipeline.generate(req, key, deadline, request_id, telemetry.current_trace_id())
            try:
                async for event in events:
                    if isinstance(event, Started):
                        add_response_metadata("x-llmesh-cache", event.cache)
                        add_response_metadata("x-llmesh-model", event.model)
                        add_response_metadata("x-llmesh-route-reason", _header(event.reason))
                        add_response_metadata("x-llmesh-request-id", request_id)
                    yield event
            finally:
                await events.aclose()
        finally:
            self.inflight -= 1

    @staticmethod
    def _input(options: pb.GenerationOptions, **kw: object) -> GenerationInput:
        mode = check_options(options.n, options.sampling, options.cache)
        return GenerationInput(
            model=options.model or "auto",
            sampling=options.sampling,
            cache_mode=mode,
            user=options.user,
            **kw,  # type: ignore[arg-type]
        )

    async def _collect(self, req: GenerationInput, context: grpc.aio.ServicerContext) -> tuple[str, Finished]:
        parts: list[str] = []
        finished: Finished | None = None
        async for event in self._run(req, context):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                finished = event
        assert finished is not None, "the pipeline ends every generation with Finished"
        return "".join(parts), finished

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        check_messages(request.messages)
        req = self._input(request.options, messages=list(request.messages))
        text, done = await self._collect(req, context)
        return pb.CreateChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=done.route.model,
            choices=[
                pb.Choice(
                    index=0,
                    message=gen_pb.ChatMessage(role="assistant", content=text),
                    finish_reason=FINISH_NAMES.get(done.finish_reason, "stop"),
                )
            ],
            usage=done.usage,
            route=_route_info(done.route),
        )

    async def _chunks(
        self, req: GenerationInput, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tuple[str, str, Finished | None]]:
        """(model, text delta, None) per released piece of text, then (model, "", Finished)."""
        model = ""
        async for event in self._run(req, context):
            if isinstance(event, Started):
                model = event.model
            elif isinstance(event, TextDelta):
                yield model, event.text, None
            elif isinstance(event, Finished):
                yield model, "", event

    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        check_messages(request.messages)
        req = self._input(request.options, messages=list(request.messages))
        cid, created, first = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), True
        async for model, text, done in self._chunks(req, context):
            role = "assistant" if first else ""
            first = False
            if done is None:
                delta = pb.ChoiceDelta(index=0, content=text, role=role)
                yield pb.StreamChatCompletionResponse(id=cid, created=created, model=model, choices=[delta])
                continue
            delta = pb.ChoiceDelta(
                index=0, role=role, finish_reason=FINISH_NAMES.get(done.finish_reason, "stop")
            )
            yield pb.StreamChatCompletionResponse(
                id=cid,
                created=created,
                model=model,
                choices=[delta],
                usage=done.usage,
                route=_route_info(done.route),
            )

    async def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        check_prompt(request.prompt)
        req = self._input(request.options, prompt=request.prompt)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        async for model, text, done in self._chunks(req, context):
            if done is None:
                yield pb.StreamCompletionResponse(
                    id=cid, created=created, model=model, choices=[pb.TextChoice(index=0, text=text)]
                )
                continue
            choice = pb.TextChoice(index=0, finish_reason=FINISH_NAMES.get(done.finish_reason, "stop"))
            yield pb.StreamCompletionResponse(
                id=cid,
                created=created,
                model=model,
                choices=[choice],
                usage=done.usage,
                route=_route_info(done.route),
            )

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        check_prompt(request.prompt)
        req = self._input(request.options, prompt=request.prompt)
        text, done = await self._collect(req, context)
        return pb.CreateCompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=done.route.model,
            choices=[
                pb.TextChoice(index=0, text=text, finish_reason=FINISH_NAMES.get(done.finish_reason, "stop"))
            ],
            usage=done.usage,
            route=_route_info(done.route),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        key = await self._key(context)
        return pb.ListModelsResponse(
            models=[
                pb.Model(
                    id=s.name,
                    aliases=list(s.aliases),
                    tier=s.tier,
                    context_length=s.context_length,
                    input_price_per_1k=s.input_price_per_1k,
                    output_price_per_1k=s.output_price_per_1k,
                    owned_by=s.owned_by,
                )
                for s in self.registry.allowed(key.models)
            ]
        )

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        key = await self._key(context)
        window = request.window or "day"
        budget = key.budget_day_usd if window == "day" else key.budget_month_usd
        usage = await self.accounting.usage(key.key_id, window, budget)
        return pb.GetUsageResponse(
            key_id=key.key_id,
            tenant=key.tenant,
            window=window,
            models=[
                pb.ModelUsage(
                    model=name,
                    requests=t.requests,
                    prompt_tokens=t.prompt_tokens,
                    completion_tokens=t.completion_tokens,
                    cost_usd=t.cost_usd,
                )
                for name, t in sorted(usage.models.items())
            ],
            spent_usd=usage.spent_usd,
            budget_usd=usage.budget_usd,
            remaining_usd=usage.remaining_usd,
        )
