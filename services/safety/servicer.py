"""SafetyService: a thin adapter between the proto contract and the screening domain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
from llmesh.common.v1 import generation_pb2
from llmesh.safety.v1 import safety_service_pb2 as pb
from llmesh.safety.v1 import safety_service_pb2_grpc as pb_grpc

from libs.runtime.errors import InvalidArgument, Unavailable
from services.safety.decisions import Decision
from services.safety.policy import Action, Direction
from services.safety.screening import Screener
from services.safety.streaming import StreamClosed

_ACTIONS = {Action.ALLOW: pb.ACTION_ALLOW, Action.REDACT: pb.ACTION_REDACT, Action.BLOCK: pb.ACTION_BLOCK}
_DIRECTIONS = {pb.DIRECTION_INPUT: Direction.INPUT, pb.DIRECTION_OUTPUT: Direction.OUTPUT}


def _findings(decisions: Sequence[Decision]) -> list[pb.Finding]:
    return [
        pb.Finding(
            type=d.detection.type,
            message_index=d.message_index,
            start=d.detection.start,
            end=d.detection.end,
            score=d.detection.score,
            rule=d.detection.rule,
            action=_ACTIONS[d.action],
            placeholder=d.placeholder,
        )
        for d in decisions
    ]


class SafetyServicer(pb_grpc.SafetyServiceServicer):
    """Serves a `Screener` (set once the models have loaded) over gRPC."""

    def __init__(self, max_text_chars: int) -> None:
        self.screener: Screener | None = None
        self._max_chars = max_text_chars

    def _ready(self) -> Screener:
        if self.screener is None:
            raise Unavailable("safety models are still loading")
        return self.screener

    def _check_text(self, what: str, text: str) -> None:
        if len(text) > self._max_chars:
            raise InvalidArgument(f"{what} has {len(text)} characters; the limit is {self._max_chars}")

    @staticmethod
    def _require(tenant: str, request_id: str, what: str) -> None:
        if not tenant:
            raise InvalidArgument(f"{what}: tenant is required")
        if not request_id:
            raise InvalidArgument(f"{what}: request_id is required")

    async def ScreenInput(
        self, request: pb.ScreenInputRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScreenInputResponse:
        screener = self._ready()
        self._require(request.tenant, request.request_id, "ScreenInput")
        if not request.messages:
            raise InvalidArgument("ScreenInput: messages must not be empty")
        for i, m in enumerate(request.messages):
            self._check_text(f"messages[{i}].content", m.content)
        messages = [(m.role, m.content) for m in request.messages]
        result = await asyncio.to_thread(
            screener.screen_messages, request.tenant, request.request_id, messages, Direction.INPUT
        )
        return pb.ScreenInputResponse(
            action=_ACTIONS[result.action],
            messages=[
                generation_pb2.ChatMessage(role=m.role, content=text, name=m.name)
                for m, text in zip(request.messages, result.texts, strict=True)
            ],
            findings=_findings(result.decisions),
            reason=result.reason,
            restore=result.restore,
        )

    async def ScreenText(
        self, request: pb.ScreenTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScreenTextResponse:
        screener = self._ready()
        self._require(request.tenant, request.request_id, "ScreenText")
        direction = _DIRECTIONS.get(request.direction)
        if direction is None:
            raise InvalidArgument("ScreenText: direction must be DIRECTION_INPUT or DIRECTION_OUTPUT")
        self._check_text("text", request.text)
        result = await asyncio.to_thread(
            screener.screen_text, request.tenant, request.request_id, request.text, direction
        )
        return pb.ScreenTextResponse(
            action=_ACTIONS[result.action],
            text=result.texts[0],
            findings=_findings(result.decisions),
            reason=result.reason,
        )

    async def ScreenOutput(
        self, request_iterator: AsyncIterator[pb.ScreenOutputRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScreenOutputResponse]:
        screener = self._ready()
        stream = None
        async for request in request_iterator:
            if stream is None:
                self._require(request.tenant, request.request_id, "ScreenOutput first message")
                stream = screener.open_stream(request.tenant, request.request_id, dict(request.restore))
            self._check_text("chunk", request.chunk)
            try:
                step = stream.feed(request.chunk, request.end_of_stream)
            except StreamClosed as exc:
                raise InvalidArgument(f"ScreenOutput: {exc}") from exc
            yield pb.ScreenOutputResponse(
                text=step.text,
                action=_ACTIONS[step.action],
                findings=_findings(step.decisions),
                reason=step.reason,
            )
            if stream.closed:
                return

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyResponse:
        policy = self._ready().policies.get(request.tenant)
        return pb.GetPolicyResponse(tenant=request.tenant, policy_yaml=policy.to_yaml())
