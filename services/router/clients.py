"""gRPC clients of the tokenizer, safety and cache services (the `ports` the pipeline uses).

Channels carry the trace context and retry idempotent calls on UNAVAILABLE; every call gets the
deadline the pipeline computed. Failures are re-raised as typed errors that name the service.

`channel` is `libs.runtime.channels.make_channel`; every call made here carries an explicit
deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from llmesh.cache.v1 import cache_service_pb2 as cache_pb
from llmesh.cache.v1 import cache_service_pb2_grpc as cache_grpc
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.safety.v1 import safety_service_pb2 as safety_pb
from llmesh.safety.v1 import safety_service_pb2_grpc as safety_grpc
from llmesh.tokenizer.v1 import tokenizer_service_pb2 as tok_pb
from llmesh.tokenizer.v1 import tokenizer_service_pb2_grpc as tok_grpc

from libs.runtime.channels import grpc_target, make_channel
from libs.runtime.errors import LlmeshError, Unavailable, from_rpc_error


def channel(
    target: str,
    service: str,
    idempotent_methods: Sequence[str] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A channel with retries for idempotent methods, trace propagation and optional mTLS.

    `target` may list several replicas (`host:port,host:port`): calls go round robin over them."""
    return make_channel(
        grpc_target(target), service, idempotent_methods=idempotent_methods, credentials=credentials
    )


def upstream_error(err: grpc.aio.AioRpcError, upstream: str) -> LlmeshError:
    """A downstream failure as a typed error whose message names the service that failed.

    CANCELLED here is the callee dropping the call (a server that began shutting down as the
    call arrived, or whose grace period ran out): our own cancellations surface as
    asyncio.CancelledError, never as an RPC error. To the router that is the callee being
    unavailable, so it is retried elsewhere like any other UNAVAILABLE.
    """
    if err.code() == grpc.StatusCode.CANCELLED:
        return Unavailable(
            f"{upstream}: dropped the call (CANCELLED; shutting down?)", reason="UPSTREAM_CANCELLED"
        )
    exc = from_rpc_error(err, upstream=upstream)
    if not exc.message.startswith(upstream):
        exc.message = f"{upstream}: {exc.message}"
        exc.args = (exc.message,)
    return exc


def _full_name(descriptor: object, service: str) -> str:
    return str(descriptor.services_by_name[service].full_name)  # type: ignore[attr-defined]


class TokenizerClient:
    """TokenizerService over gRPC."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None):
        self.target = target
        self.channel = channel(
            target,
            _full_name(tok_pb.DESCRIPTOR, "TokenizerService"),
            ["Encode", "ApplyChatTemplate", "CountTokens"],
            credentials,
        )
        self.stub = tok_grpc.TokenizerServiceStub(self.channel)

    async def chat_token_ids(
        self, model: str, messages: Sequence[gen_pb.ChatMessage], timeout_s: float
    ) -> list[int]:
        try:
            resp = await self.stub.ApplyChatTemplate(
                tok_pb.ApplyChatTemplateRequest(model=model, messages=messages, add_generation_prompt=True),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"tokenizer ({self.target})") from None
        return list(resp.token_ids)

    async def encode(self, model: str, text: str, timeout_s: float) -> list[int]:
        try:
            resp = await self.stub.Encode(tok_pb.EncodeRequest(model=model, text=text), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"tokenizer ({self.target})") from None
        return list(resp.token_ids)

    async def close(self) -> None:
        await self.channel.close()


class _GrpcOutputScreen:
    """A ScreenOutput bidi stream."""

    def __init__(self, call: grpc.aio.StreamStreamCall, target: str):
        self.call = call
        self.target = target

    def _ended(self) -> Unavailable:
        return Unavailable(
            f"safety ({self.target}): the output stream has already ended", reason="SAFETY_STREAM_CLOSED"
        )

    async def write(self, request: safety_pb.ScreenOutputRequest) -> None:
        try:
            await self.call.write(request)
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"safety ({self.target})") from None
        except asyncio.InvalidStateError:
            # The call already finished (it failed, or was cancelled after a block).
            raise self._ended() from None

    async def done_writing(self) -> None:
        try:
            await self.call.done_writing()
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"safety ({self.target})") from None
        except asyncio.InvalidStateError:
            raise self._ended() from None

    async def read(self) -> safety_pb.ScreenOutputResponse | None:
        try:
            msg = await self.call.read()
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"safety ({self.target})") from None
        if msg is grpc.aio.EOF:
            return None
        assert isinstance(msg, safety_pb.ScreenOutputResponse)
        return msg

    def cancel(self) -> None:
        self.call.cancel()


class SafetyClient:
    """SafetyService over gRPC."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None):
        self.target = target
        self.channel = channel(
            target,
            _full_name(safety_pb.DESCRIPTOR, "SafetyService"),
            ["ScreenInput", "ScreenText", "GetPolicy"],
            credentials,
        )
        self.stub = safety_grpc.SafetyServiceStub(self.channel)

    async def screen_input(
        self, tenant: str, request_id: str, messages: Sequence[gen_pb.ChatMessage], timeout_s: float
    ) -> safety_pb.ScreenInputResponse:
        try:
            resp: safety_pb.ScreenInputResponse = await self.stub.ScreenInput(
                safety_pb.ScreenInputRequest(tenant=tenant, request_id=request_id, messages=messages),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"safety ({self.target})") from None
        return resp

    def screen_output(self, timeout_s: float) -> _GrpcOutputScreen:
        return _GrpcOutputScreen(self.stub.ScreenOutput(timeout=timeout_s), self.target)

    async def close(self) -> None:
        await self.channel.close()


class CacheClient:
    """CacheService over gRPC."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None):
        self.target = target
        self.channel = channel(
            target, _full_name(cache_pb.DESCRIPTOR, "CacheService"), ["Lookup", "GetStats"], credentials
        )
        self.stub = cache_grpc.CacheServiceStub(self.channel)

    async def lookup(self, request: cache_pb.LookupRequest, timeout_s: float) -> cache_pb.LookupResponse:
        try:
            resp: cache_pb.LookupResponse = await self.stub.Lookup(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"cache ({self.target})") from None
        return resp

    async def store(self, request: cache_pb.StoreRequest, timeout_s: float) -> cache_pb.StoreResponse:
        try:
            resp: cache_pb.StoreResponse = await self.stub.Store(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"cache ({self.target})") from None
        return resp

    async def close(self) -> None:
        await self.channel.close()
