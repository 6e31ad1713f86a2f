"""The tokenizer service as a real grpc.aio server on loopback, called through its stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.common.v1 import generation_pb2 as common
from llmesh.tokenizer.v1 import tokenizer_service_pb2 as pb
from llmesh.tokenizer.v1 import tokenizer_service_pb2_grpc as pb_grpc

from libs.runtime.server import GrpcService
from services.tokenizer.server import build_server
from services.tokenizer.settings import TokenizerSettings

MODELS = Path(__file__).resolve().parents[3] / "build" / "models"
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[tuple[GrpcService, pb_grpc.TokenizerServiceStub, grpc.aio.Channel]]:
    service = build_server(TokenizerSettings(port=0, metrics_port=-1, models_dir=MODELS, max_text_bytes=4096))
    await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield service, pb_grpc.TokenizerServiceStub(channel), channel
    finally:
        await channel.close()
        await service.stop(grace_s=1)


async def test_encode_decode_round_trip(served) -> None:
    _, stub, _ = served
    text = "Grüße, llmesh! 東京 🚀"
    ids = (await stub.Encode(pb.EncodeRequest(model=MODEL, text=text))).token_ids
    assert len(ids) > 5 and all(isinstance(i, int) for i in ids)
    back = await stub.Decode(pb.DecodeRequest(model=MODEL, token_ids=ids))
    assert back.text == text


async def test_precision_alias_resolves_to_same_tokenizer(served) -> None:
    _, stub, _ = served
    a = await stub.Encode(pb.EncodeRequest(model=MODEL, text="hello there"))
    b = await stub.Encode(pb.EncodeRequest(model=f"{MODEL}-int8", text="hello there"))
    assert list(a.token_ids) == list(b.token_ids)


async def test_chat_template_and_count_agree(served) -> None:
    _, stub, _ = served
    msgs = [common.ChatMessage(role="user", content="What is the capital of France?")]
    rendered = await stub.ApplyChatTemplate(
        pb.ApplyChatTemplateRequest(model=MODEL, messages=msgs, add_generation_prompt=True)
    )
    assert "What is the capital of France?" in rendered.prompt
    assert rendered.prompt.rstrip().endswith("assistant")
    count = await stub.CountTokens(pb.CountTokensRequest(model=MODEL, messages=msgs))
    assert count.count == len(rendered.token_ids)


async def test_unknown_model_is_not_found_with_known_names(served) -> None:
    _, stub, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Encode(pb.EncodeRequest(model="gpt-17", text="x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert MODEL in err.value.details()
    keys = [k for k, _ in err.value.trailing_metadata()]
    assert "grpc-status-details-bin" in keys and "x-llmesh-trace-id" in keys


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.DecodeRequest(model=MODEL, token_ids=[1, 10_000_000]), "outside the vocabulary"),
        (pb.EncodeRequest(model=MODEL, text="x" * 5000), "limit is 4096 bytes"),
        (pb.EncodeRequest(model="", text="x"), "model is required"),
    ],
)
async def test_bad_input_is_invalid_argument(served, request_, needle: str) -> None:
    _, stub, _ = served
    call = stub.Decode if isinstance(request_, pb.DecodeRequest) else stub.Encode
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


async def test_bad_role_names_the_message(served) -> None:
    _, stub, _ = served
    msgs = [common.ChatMessage(role="user", content="hi"), common.ChatMessage(role="wizard", content="x")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ApplyChatTemplate(pb.ApplyChatTemplateRequest(model=MODEL, messages=msgs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[1].role" in err.value.details()


async def test_health_serving_and_reflection_listed(served) -> None:
    _, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="llmesh.tokenizer.v1.TokenizerService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(one()):
        names = {s.name for s in reply.list_services_response.service}
        assert "llmesh.tokenizer.v1.TokenizerService" in names
        break


async def test_sigterm_path_reports_not_serving_and_drains_in_flight_calls() -> None:
    """stop(): health flips to NOT_SERVING at once while a slow in-flight call still completes."""
    settings = TokenizerSettings(port=0, metrics_port=-1, models_dir=MODELS)
    service = build_server(settings)
    servicer = service._servicers[0][1]
    release = asyncio.Event()
    original = servicer.Encode

    async def slow_encode(request, context):
        await release.wait()
        return await original(request, context)

    servicer.Encode = slow_encode  # handlers bind at start(), so patch before it
    await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    stub = pb_grpc.TokenizerServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    in_flight = asyncio.ensure_future(stub.Encode(pb.EncodeRequest(model=MODEL, text="drain me")))
    await asyncio.sleep(0.2)
    stopping = asyncio.ensure_future(service.stop(grace_s=5))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not in_flight.done()
    release.set()
    reply = await in_flight
    assert len(reply.token_ids) > 0
    await stopping
    await channel.close()
